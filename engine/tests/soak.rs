//! Soak: jobs run while workers and orchestrators are SIGKILLed and restarted at
//! random. Every job must end, none may be lost, no attempt may write after a newer
//! one began (fencing), and no clone folder or container may be left.
//!
//! The default suite runs 20 jobs; `SLIPWAY_SOAK_JOBS=200 scripts/test -E
//! 'test(soak)'` runs the long version.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A small PRNG (xorshift64*), seeded from the clock and printed, so a failing
/// sequence of kills can be replayed with `SLIPWAY_SOAK_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Cluster {
    db_url: String,
    work: tempfile::TempDir,
    worker_ports: [u16; 2],
    server_ports: [Ports; 2],
}

impl Cluster {
    fn spawn_worker(&self, i: usize) -> Slipway {
        let env = BTreeMap::from([
            ("SLIPWAY_WORKER_ADDR", format!("127.0.0.1:{}", self.worker_ports[i])),
            ("SLIPWAY_WORKER_ID", format!("soak-worker-{i}")),
            ("SLIPWAY_WORK_DIR", self.work.path().display().to_string()),
            ("SLIPWAY_WORKER_SLOTS", "3".to_string()),
            ("SLIPWAY_WORKER_METRICS_ADDR", format!("127.0.0.1:{}", free_port())),
        ]);
        Slipway::spawn(&format!("worker-{i}"), &["worker"], &env)
    }

    fn spawn_server(&self, i: usize) -> Slipway {
        let mut env = self.server_ports[i].server_env();
        env.insert("DATABASE_URL", self.db_url.clone());
        let workers: Vec<String> = self.worker_ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
        env.insert("SLIPWAY_WORKERS", workers.join(","));
        env.insert("SLIPWAY_ORCHESTRATOR_ID", format!("soak-orchestrator-{i}"));
        Slipway::spawn(&format!("server-{i}"), &["server"], &env)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn soak_jobs_survive_random_kills_of_workers_and_orchestrators() {
    let jobs: usize = std::env::var("SLIPWAY_SOAK_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed: u64 = std::env::var("SLIPWAY_SOAK_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(now_secs) | 1;
    eprintln!("soak: {jobs} jobs, seed {seed}");
    let mut rng = Rng(seed);

    let db = TestDb::new().await;
    let git = GitServer::start();
    let app = app_repo(&git, "app");
    let cluster = Cluster {
        db_url: db.url.clone(),
        work: tempfile::tempdir().unwrap(),
        worker_ports: [free_port(), free_port()],
        server_ports: [Ports::new(), Ports::new()],
    };
    let mut workers = [Some(cluster.spawn_worker(0)), Some(cluster.spawn_worker(1))];
    let mut servers = [Some(cluster.spawn_server(0)), Some(cluster.spawn_server(1))];
    let apis = [cluster.server_ports[0].api(), cluster.server_ports[1].api()];
    for api in &apis {
        wait_healthy(api, Duration::from_secs(30)).await;
    }

    let registry = open_registry();
    let mut ids = Vec::new();
    for i in 0..jobs {
        let body = json!({
            "repo": app,
            "image": format!("{registry}/soak/app:{}", unique("t")),
            "run": { "command": sleeping_command(1) },
            "retry": { "max_attempts": 20, "initial_backoff_ms": 100, "max_backoff_ms": 1000 },
        });
        ids.push(submit(&apis[i % 2], &body).await["id"].as_str().unwrap().to_string());
    }

    // Kill one process at random every 2–4 s and start it again, until every job ended.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60 + 6 * jobs as u64);
    let mut kills = 0;
    loop {
        let finished: i64 =
            sqlx::query_scalar("select count(*) from jobs where state in ('succeeded', 'failed', 'cancelled')")
                .fetch_one(db.store.pool())
                .await
                .unwrap();
        if finished as usize == jobs {
            break;
        }
        assert!(Instant::now() < deadline, "only {finished} of {jobs} jobs ended in {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(2000 + rng.below(2000))).await;
        let victim = rng.below(4) as usize;
        if victim < 2 {
            if let Some(w) = workers[victim].take() {
                w.signal("KILL");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            workers[victim] = Some(cluster.spawn_worker(victim));
        } else {
            let i = victim - 2;
            if let Some(s) = servers[i].take() {
                s.signal("KILL");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            servers[i] = Some(cluster.spawn_server(i));
        }
        kills += 1;
    }
    eprintln!("soak: {jobs} jobs ended in {:?} with {kills} kills", started.elapsed());

    let states: Vec<(String, i64)> =
        sqlx::query_as("select state::text, count(*) from jobs group by state order by state")
            .fetch_all(db.store.pool())
            .await
            .unwrap();
    assert_eq!(states, [("succeeded".to_string(), jobs as i64)], "every job succeeded, none lost");

    // Fencing, from the history: attempts only move forward, each attempt writes from
    // one worker, and no attempt writes after a newer one began.
    for id in &ids {
        let history = events(&db, id).await;
        let mut attempt = 0;
        let mut worker_of_attempt: BTreeMap<i32, String> = BTreeMap::new();
        for (state, a, worker, reason) in &history {
            assert!(*a >= attempt, "job {id}: attempt {a} wrote after attempt {attempt}: {history:?}");
            attempt = *a;
            // Rows that end a lease name the worker that lost it; others the writer.
            let ends_lease = reason.as_deref().is_some_and(|r| {
                r.starts_with("lease_expired") || r.starts_with("retry") || r.starts_with("handed_back")
            });
            if let (Some(worker), false) = (worker, ends_lease) {
                let first = worker_of_attempt.entry(*a).or_insert_with(|| worker.clone());
                assert_eq!(first, worker, "job {id}: attempt {a} written by two workers: {history:?}");
            }
            let _ = state;
        }
        let runs: i64 = sqlx::query_scalar(
            "select count(*) from job_steps where job_id = $1::uuid and step = 'run' and outcome = 'succeeded'",
        )
        .bind(id)
        .fetch_one(db.store.pool())
        .await
        .unwrap();
        assert_eq!(runs, 1, "job {id} succeeded exactly once");
    }

    // Stop everything gracefully, then start each worker once: a worker clears what a
    // killed run of it left; nothing may remain.
    for slot in workers.iter_mut() {
        if let Some(mut w) = slot.take() {
            w.terminate(Duration::from_secs(30));
        }
    }
    for i in 0..2 {
        let mut w = cluster.spawn_worker(i);
        tokio::time::sleep(Duration::from_millis(500)).await;
        w.terminate(Duration::from_secs(30));
    }
    let left = job_folders(cluster.work.path());
    assert!(left.is_empty(), "clone folders left: {left:?}");
    for id in &ids {
        assert!(containers_of(id).is_empty(), "a container of job {id} is left");
    }
}
