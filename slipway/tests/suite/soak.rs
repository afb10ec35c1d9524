//! Soak: jobs run while workers and orchestrators are SIGKILLed and restarted at
//! random. Every job must end, none may be lost, no attempt may write after a newer
//! one began (fencing), and no clone folder or container may be left.
//!
//! Exactly-once is checked from the outside: the Docker engine's own event stream
//! (`docker events`, read from the start of the soak) shows, per job, that no two of
//! its containers were ever alive at once and that exactly one ran to a clean end.
//!
//! The default suite runs 20 jobs; `SLIPWAY_SOAK_JOBS=200 scripts/test -E
//! 'test(soak)'` runs the long version.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::*;
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
        let slots = settings(&[("SLIPWAY_WORKER_SLOTS", "3")]);
        spawn_worker(&format!("soak-worker-{i}"), self.worker_ports[i], self.work.path(), slots)
    }

    fn spawn_server(&self, i: usize) -> Slipway {
        // A worker killed between a run's committed end and its clean-up leaves the
        // container to the sweep.
        // Its jobs ask for the most attempts Slipway gives, to outlive the kills.
        let sweep = settings(&[("SLIPWAY_SWEEP_INTERVAL", "500ms"), ("SLIPWAY_MAX_ATTEMPTS", "20")]);
        spawn_server(&format!("soak-orchestrator-{i}"), &self.db_url, &self.server_ports[i], &self.worker_ports, sweep)
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
    let instance: uuid::Uuid =
        sqlx::query_scalar("select id from slipway_instance").fetch_one(db.store.pool()).await.unwrap();
    let mut engine_events = EngineEvents::follow(&instance.to_string());
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

    // Kill one process at random every 2–4 s and start it again, until every job
    // ended. The first kill waits for a running container and takes its worker, so
    // that every soak kills at least one worker in the middle of a run.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60 + 6 * jobs as u64);
    let mut kills = 0;
    let mut runs_hit = 0;
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
        let victim = if kills == 0 {
            running_worker(&db, deadline).await
        } else {
            tokio::time::sleep(Duration::from_millis(2000 + rng.below(2000))).await;
            rng.below(4) as usize
        };
        if victim < 2 {
            if let Some(w) = workers[victim].take() {
                w.signal("KILL");
            }
            runs_hit += running_on(&db, victim).await;
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
    eprintln!(
        "soak: {jobs} jobs ended in {:?} with {kills} kills; {runs_hit} running container(s) lost their worker to a kill",
        started.elapsed()
    );
    assert!(runs_hit >= 1, "no kill landed on a running job");

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
        // Log rows too name the attempt that wrote them: no line of an attempt was
        // stored after a line of a newer one.
        let attempts: Vec<i32> = sqlx::query_scalar("select attempt from job_logs where job_id = $1::uuid order by id")
            .bind(id)
            .fetch_all(db.store.pool())
            .await
            .unwrap();
        assert!(attempts.is_sorted(), "job {id}: a log line of an older attempt came after a newer one: {attempts:?}");
        assert!(attempts.iter().all(|a| *a <= attempt), "job {id}: a log line of an attempt the history never saw");
    }

    // Exactly once, as the engine saw it (once every job's clean end has reached
    // the event stream).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !{
        let seen = engine_events.read();
        ids.iter().all(|id| seen.lives_of(id).iter().any(|l| l.exit_code == Some(0)))
    } {
        assert!(Instant::now() < deadline, "the engine's events never showed every job's end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = engine_events.stop();
    for id in &ids {
        let lives = seen.lives_of(id);
        for pair in lives.windows(2) {
            assert!(
                pair[0].died.is_some_and(|d| d <= pair[1].started),
                "job {id}: two containers alive at once: {lives:?}"
            );
        }
        let clean = lives.iter().filter(|l| l.exit_code == Some(0)).count();
        assert_eq!(clean, 1, "job {id}: {clean} containers ran to a clean end: {lives:?}");
    }

    // Every container goes: removed by its worker, or by the sweep when the worker
    // died before it could.
    for id in &ids {
        wait_containers_gone(id, Duration::from_secs(30)).await;
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
        // Its clean-up runs before it serves.
        wait_for_port(cluster.worker_ports[i], Duration::from_secs(30));
        w.terminate(Duration::from_secs(30));
    }
    let left = job_folders(cluster.work.path());
    assert!(left.is_empty(), "clone folders left: {left:?}");
}

/// Waits for a job with a container running; returns the index of its worker.
async fn running_worker(db: &TestDb, deadline: Instant) -> usize {
    loop {
        let worker: Option<String> = sqlx::query_scalar(
            "select lease_worker from jobs where state = 'running' and container_id is not null
               and lease_worker like 'soak-worker-%' limit 1",
        )
        .fetch_optional(db.store.pool())
        .await
        .unwrap()
        .flatten();
        if let Some(index) = worker.and_then(|w| w.strip_prefix("soak-worker-").and_then(|i| i.parse().ok())) {
            return index;
        }
        assert!(Instant::now() < deadline, "no job ever reached a running container");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many jobs had a container running under worker `i` as it was killed.
async fn running_on(db: &TestDb, i: usize) -> usize {
    let n: i64 = sqlx::query_scalar(
        "select count(*) from jobs where state = 'running' and container_id is not null and lease_worker = $1",
    )
    .bind(format!("soak-worker-{i}"))
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    n as usize
}

/// One container's life, from the engine's events.
#[derive(Debug, Clone)]
struct Life {
    container: String,
    started: i128,
    died: Option<i128>,
    exit_code: Option<i64>,
}

/// The engine's container events for one installation, read as they happen by a
/// `docker events` process (the engine keeps only its last few hundred events, so
/// asking afterwards could miss some).
struct EngineEvents {
    child: std::process::Child,
    out: tempfile::NamedTempFile,
}

struct SeenEvents {
    /// (job id, container, action, time in ns, exit code)
    events: Vec<(String, String, String, i128, Option<i64>)>,
}

impl EngineEvents {
    fn follow(instance: &str) -> Self {
        let out = tempfile::NamedTempFile::new().unwrap();
        let format = r#"{{.TimeNano}} {{.Action}} {{.Actor.ID}} {{index .Actor.Attributes "slipway.job_id"}} {{index .Actor.Attributes "exitCode"}}"#;
        let child = std::process::Command::new("docker")
            .args(["events", "--filter", "type=container", "--filter", &format!("label=slipway.instance={instance}")])
            .args(["--filter", "event=start", "--filter", "event=die", "--format", format])
            .stdout(out.reopen().unwrap())
            .spawn()
            .expect("docker events starts");
        EngineEvents { child, out }
    }

    /// The events seen so far.
    fn read(&mut self) -> SeenEvents {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("docker events stopped: {status:?}");
        }
        Self::parse(self.out.path())
    }

    fn stop(mut self) -> SeenEvents {
        let seen = self.read();
        let _ = self.child.kill();
        let _ = self.child.wait();
        seen
    }

    fn parse(path: &std::path::Path) -> SeenEvents {
        let text = std::fs::read_to_string(path).unwrap();
        let events = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let at: i128 = parts.next()?.parse().ok()?;
                let action = parts.next()?.to_string();
                let container = parts.next()?.to_string();
                let job = parts.next()?.to_string();
                let exit_code = parts.next().and_then(|c| c.parse().ok());
                Some((job, container, action, at, exit_code))
            })
            .collect();
        SeenEvents { events }
    }
}

impl SeenEvents {
    /// The lives of a job's containers, in the order they started.
    fn lives_of(&self, job: &str) -> Vec<Life> {
        let mut lives: Vec<Life> = Vec::new();
        for (j, container, action, at, exit_code) in &self.events {
            if j != job {
                continue;
            }
            match action.as_str() {
                "start" => lives.push(Life { container: container.clone(), started: *at, died: None, exit_code: None }),
                "die" => {
                    if let Some(life) = lives.iter_mut().rev().find(|l| l.container == *container && l.died.is_none()) {
                        life.died = Some(*at);
                        life.exit_code = *exit_code;
                    }
                }
                _ => {}
            }
        }
        lives.sort_by_key(|l| l.started);
        lives
    }
}
