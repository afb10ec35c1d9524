//! Durability under faults, with real processes and real signals: killed and
//! paused workers, a killed orchestrator, cancels in every state, retries,
//! deadlines. Test settings: heartbeat 200 ms, worker timeout 2 s.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(120);

fn image(name: &str) -> String {
    format!("{}/faults/{name}:{}", open_registry(), unique("t"))
}

/// A server with two workers configured, of which only the first runs; the test
/// starts the second when it has done something to the first.
struct FirstOfTwo {
    db: TestDb,
    git: GitServer,
    work: tempfile::TempDir,
    ports: Ports,
    second_port: u16,
    first: Slipway,
    server: Slipway,
}

async fn first_of_two_workers(first_settings: &[(&'static str, &str)]) -> FirstOfTwo {
    let db = TestDb::new().await;
    let git = GitServer::start();
    let work = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let (first_port, second_port) = (free_port(), free_port());
    let first = spawn_worker("worker-first", first_port, work.path(), settings(first_settings));
    let server = spawn_server("orchestrator", &db.url, &ports, &[first_port, second_port], []);
    wait_healthy(&ports.api(), Duration::from_secs(30)).await;
    FirstOfTwo { db, git, work, ports, second_port, first, server }
}

impl FirstOfTwo {
    fn start_second(&self) -> Slipway {
        spawn_worker("worker-second", self.second_port, self.work.path(), [])
    }

    /// Submits `body` and waits until the job is in `state`; returns its id.
    async fn job_in(&self, body: serde_json::Value, state: &str) -> String {
        let id = submit(&self.ports.api(), &body).await["id"].as_str().unwrap().to_string();
        wait_state(&self.ports.api(), &id, state, LIMIT).await;
        id
    }
}

/// A job in its slow build on the first of two workers.
async fn building_on_first_worker(build_seconds: u32, name: &str) -> (FirstOfTwo, String) {
    let setup = first_of_two_workers(&[]).await;
    let repo = slow_build_repo(&setup.git, "slow", build_seconds);
    let id = setup.job_in(json!({ "repo": repo, "image": image(name) }), "building").await;
    (setup, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_worker_is_killed_while_building_succeeds_on_another_worker() {
    let (setup, id) = building_on_first_worker(4, "killed").await;
    let (db, ports) = (&setup.db, &setup.ports);
    setup.first.signal("KILL");
    let killed_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select now()").fetch_one(db.store.pool()).await.unwrap();
    let _second = setup.start_second();

    let job = wait_finished(&ports.api(), &id, LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempt"], 2);
    assert_eq!(job["workers_lost"], 1, "the killed worker is counted on the job: {job}");
    let lost: Vec<(String, Option<String>)> = sqlx::query_as(
        "select step::text, error_code from job_steps where job_id = $1::uuid and attempt = 1 and outcome = 'failed'",
    )
    .bind(&id)
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    assert_eq!(lost, [("build".to_string(), Some("worker_lost".to_string()))], "the step its worker died in");
    let events = events(db, &id).await;
    let expiry = events.iter().position(|e| e.3.as_deref().is_some_and(|r| r.starts_with("lease_expired")));
    let expiry = expiry.unwrap_or_else(|| panic!("no lease expiry in {events:?}"));
    assert_eq!((events[expiry].0.as_str(), events[expiry].1), ("queued", 2), "{events:?}");
    assert_eq!(events[expiry].2.as_deref(), Some("worker-first"));
    let after: Vec<&str> = events[expiry + 1..].iter().map(|e| e.0.as_str()).collect();
    assert_eq!(after, ["cloning", "building", "pushing", "running", "succeeded"]);
    assert!(events[expiry + 1..].iter().all(|e| e.1 == 2 && e.2.as_deref() != Some("worker-first")));
    // A follower is told in the build's log, where the attempt stopped.
    let lines = all_logs(&ports.api(), &id).await;
    let said = lines.iter().find(|l| l["line"].as_str().is_some_and(|t| t.starts_with("attempt 1 ended")));
    let said = said.unwrap_or_else(|| panic!("no line says the attempt ended: {lines:?}"));
    assert_eq!(
        (said["step"].as_str(), said["stream"].as_str(), said["attempt"].as_i64()),
        (Some("build"), Some("system"), Some(1))
    );
    assert!(
        said["line"].as_str().unwrap().contains("the worker went silent; attempt 2 starts from the clone"),
        "{said}"
    );
    let restarted: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "select at from job_events where job_id = $1::uuid and attempt = 2 and to_state = 'cloning'",
    )
    .bind(&id)
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    eprintln!(
        "figure: the killed worker's job restarted elsewhere {} ms after the kill",
        (restarted - killed_at).num_milliseconds()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_orchestrator_is_killed_while_running_is_finished_by_another_with_one_container() {
    let db = TestDb::new().await;
    let git = GitServer::start();
    let repo = app_repo(&git, "app");
    let work = tempfile::tempdir().unwrap();
    let worker_port = free_port();
    let _worker = spawn_worker("worker", worker_port, work.path(), []);
    let first_ports = Ports::new();
    let first = spawn_server("orchestrator-first", &db.url, &first_ports, &[worker_port], []);
    wait_healthy(&first_ports.api(), Duration::from_secs(30)).await;
    let since = now_secs();

    let body = json!({ "repo": repo, "image": image("orphaned"), "run": { "command": sleeping_command(4) } });
    let id = submit(&first_ports.api(), &body).await["id"].as_str().unwrap().to_string();
    wait_state(&first_ports.api(), &id, "running", LIMIT).await;
    let second_ports = Ports::new();
    let _second = spawn_server("orchestrator-second", &db.url, &second_ports, &[worker_port], []);
    wait_healthy(&second_ports.api(), Duration::from_secs(30)).await;
    first.signal("KILL");

    let job = wait_finished(&second_ports.api(), &id, LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempt"], 1, "the job never ran twice");
    let lines = all_logs(&second_ports.api(), &id).await;
    assert!(lines.iter().any(|l| l["line"] == "finished"), "the container ran to its end");
    assert_eq!(containers_created(&id, since), 1, "exactly one container was ever created");
    let owner: Option<String> =
        sqlx::query_scalar("select worker from job_events where job_id = $1::uuid and to_state = 'succeeded'")
            .bind(&id)
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert_eq!(owner.as_deref(), Some("worker"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_worker_that_comes_back_cannot_overwrite_the_newer_attempt() {
    let (setup, id) = building_on_first_worker(3, "paused").await;
    let (db, ports, first) = (&setup.db, &setup.ports, &setup.first);
    first.signal("STOP");
    let _second = setup.start_second();
    // The second worker takes the job over after the lease expires.
    let deadline = Instant::now() + LIMIT;
    loop {
        let job = get_job(&ports.api(), &id).await;
        if job["attempt"] == 2 && job["worker"] == "worker-second" {
            break;
        }
        assert!(Instant::now() < deadline, "the job was never taken over: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.signal("CONT");

    let job = wait_finished(&ports.api(), &id, LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempt"], 2);
    let events = events(db, &id).await;
    let expiry = events.iter().position(|e| e.3.as_deref().is_some_and(|r| r.starts_with("lease_expired"))).unwrap();
    assert!(
        events[expiry + 1..].iter().all(|e| e.2.as_deref() != Some("worker-first")),
        "the paused worker changed nothing after it lost the lease: {events:?}"
    );
    // No line of the old attempt was stored after the new one began.
    let (last_old, first_new): (Option<i64>, Option<i64>) = sqlx::query_as(
        "select max(id) filter (where attempt = 1), min(id) filter (where attempt = 2) from job_logs where job_id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert!(last_old.unwrap_or(0) < first_new.expect("the second attempt logged"));
    // The woken worker did try to write for its old attempt, and was refused.
    let deadline = Instant::now() + LIMIT;
    while !setup.server.output().lines().any(|l| l.contains("stale report refused") && l.contains(&id)) {
        assert!(Instant::now() < deadline, "the paused worker never tried a write:\n{}", setup.server.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let still: i64 = sqlx::query_scalar(
        "select count(*) from job_events where job_id = $1::uuid and worker = 'worker-first' and attempt > 1
           and reason not like 'lease_expired%'",
    )
    .bind(&id)
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!(still, 0, "nothing of the paused worker was stored for the newer attempt");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_works_in_every_state_even_with_the_worker_down() {
    let db = TestDb::new().await;
    let git = GitServer::start();
    let app = app_repo(&git, "app");
    let slow = slow_build_repo(&git, "slow", 30);
    let work = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let worker_port = free_port();
    let worker_process = spawn_worker("worker", worker_port, work.path(), []);
    let _server =
        spawn_server("orchestrator", &db.url, &ports, &[worker_port], settings(&[("SLIPWAY_SWEEP_INTERVAL", "300ms")]));
    wait_healthy(&ports.api(), Duration::from_secs(30)).await;
    let api = ports.api();

    // Building: the build is aborted.
    let building =
        submit(&api, &json!({ "repo": slow, "image": image("building") })).await["id"].as_str().unwrap().to_string();
    wait_state(&api, &building, "building", LIMIT).await;
    let (status, _) = cancel(&api, &building).await;
    assert_eq!(status, 202);
    let job = wait_finished(&api, &building, Duration::from_secs(20)).await;
    assert_eq!(job["state"], "cancelled", "{job}");

    // Running: the container is stopped and removed.
    let body = json!({ "repo": app, "image": image("running"), "run": { "command": sleeping_command(60) } });
    let running = submit(&api, &body).await["id"].as_str().unwrap().to_string();
    wait_state(&api, &running, "running", LIMIT).await;
    let asked = Instant::now();
    assert_eq!(cancel(&api, &running).await.0, 202);
    let job = wait_finished(&api, &running, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(containers_of(&running).is_empty(), "the container is gone");
    let last = events(&db, &running).await.pop().unwrap();
    assert!(last.3.as_deref().is_some_and(|r| r.starts_with("cancelled: stopped ")), "{last:?}");
    eprintln!("a running container was stopped and its job cancelled in {:?}", asked.elapsed());

    // Running while its worker is down: the job ends cancelled when the lease expires,
    // and never starts another step.
    let body = json!({ "repo": app, "image": image("orphan"), "run": { "command": sleeping_command(60) } });
    let orphan = submit(&api, &body).await["id"].as_str().unwrap().to_string();
    wait_state(&api, &orphan, "running", LIMIT).await;
    worker_process.signal("KILL");
    assert_eq!(cancel(&api, &orphan).await.0, 202);
    let job = wait_finished(&api, &orphan, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    let states: Vec<String> = events(&db, &orphan).await.into_iter().map(|e| e.0).collect();
    assert_eq!(states, ["queued", "cloning", "building", "pushing", "running", "cancelled"]);

    // Queued (no worker can take it): cancelled at once.
    let queued =
        submit(&api, &json!({ "repo": app, "image": image("queued") })).await["id"].as_str().unwrap().to_string();
    let (status, job) = cancel(&api, &queued).await;
    assert_eq!((status, job["state"].as_str()), (200, Some("cancelled")));
    let states: Vec<String> = events(&db, &queued).await.into_iter().map(|e| e.0).collect();
    assert_eq!(states, ["queued", "cancelled"]);

    // Finished: nothing to cancel.
    let (status, body) = cancel(&api, &queued).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("already_finished")));

    // Each `cancelled` row names who asked, whoever wrote it (the API at once, or
    // the sweep when the worker was gone).
    let actors: Vec<Option<String>> =
        sqlx::query_scalar("select actor from job_events where to_state = 'cancelled' order by id")
            .fetch_all(db.store.pool())
            .await
            .unwrap();
    assert!(!actors.is_empty());
    let prefix = &test_token().prefix;
    assert!(actors.iter().all(|a| a.as_deref().is_some_and(|a| a.starts_with(prefix.as_str()))), "{actors:?}");

    // The dead worker's container still runs; once the worker is back, the sweep
    // removes it, since its job has ended.
    assert_eq!(containers_of(&orphan).len(), 1);
    let _back = spawn_worker("worker", worker_port, work.path(), []);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !containers_of(&orphan).is_empty() {
        assert!(Instant::now() < deadline, "the cancelled job's container is still there");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_follow_the_policy_and_a_deadline_stops_a_container() {
    let standalone = Standalone::start(&[("SLIPWAY_WORKER_SLOTS", "3")]).await;
    let (db, app, ports) = (&standalone.db, &standalone.repo, &standalone.ports);
    let api = ports.api();
    let fast_retry = json!({ "max_attempts": 3, "initial_backoff_ms": 100, "max_backoff_ms": 200 });

    // A registry that cannot be reached: retryable, so tried three times, then failed.
    let unreachable = format!("127.0.0.1:{}/faults/app:1", free_port());
    let pushing = submit(&api, &json!({ "repo": app, "image": unreachable, "retry": fast_retry })).await;
    // A container that fails on its first attempt only, with retries asked for: the
    // second attempt runs the pushed image again without rebuilding it.
    let command = json!(["/bin/busybox", "sh", "-c", "echo attempt $SLIPWAY_ATTEMPT; [ $SLIPWAY_ATTEMPT -ge 2 ]"]);
    let body = json!({ "repo": app, "image": image("flaky"), "retry": fast_retry, "run": { "command": command, "retry_on_failure": true } });
    let flaky = submit(&api, &body).await;
    // A container past its deadline.
    let body = json!({ "repo": app, "image": image("slow"), "run": { "command": sleeping_command(60), "timeout_seconds": 1 } });
    let slow = submit(&api, &body).await;

    let job = wait_finished(&api, pushing["id"].as_str().unwrap(), LIMIT).await;
    assert_eq!((job["state"].as_str(), job["attempt"].as_i64()), (Some("failed"), Some(3)), "{job}");
    assert_eq!(job["error"]["code"], "push_failed");
    let events = events(db, pushing["id"].as_str().unwrap()).await;
    let retries = events.iter().filter(|e| e.3.as_deref().is_some_and(|r| r.starts_with("retry in"))).count();
    assert_eq!(retries, 2, "{events:?}");

    let id = flaky["id"].as_str().unwrap();
    let job = wait_finished(&api, id, LIMIT).await;
    assert_eq!((job["state"].as_str(), job["attempt"].as_i64()), (Some("succeeded"), Some(2)), "{job}");
    let second: Vec<String> =
        sqlx::query_scalar("select step::text from job_steps where job_id = $1::uuid and attempt = 2")
            .bind(id)
            .fetch_all(db.store.pool())
            .await
            .unwrap();
    assert_eq!(second, ["run"], "the second attempt only ran the container again");
    let lines = all_logs(&api, id).await;
    assert!(lines.iter().any(|l| l["line"] == "attempt 1") && lines.iter().any(|l| l["line"] == "attempt 2"));

    let classes: Vec<(String, i64)> =
        sqlx::query_as("select error_code, retries from retries_by_error_class order by error_code")
            .fetch_all(db.store.pool())
            .await
            .unwrap();
    assert_eq!(classes, [("exit_nonzero".to_string(), 1), ("push_failed".to_string(), 2)]);

    let job = wait_finished(&api, slow["id"].as_str().unwrap(), LIMIT).await;
    assert_eq!((job["state"].as_str(), job["error"]["code"].as_str()), (Some("failed"), Some("timed_out")), "{job}");
    assert!(containers_of(slow["id"].as_str().unwrap()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_stopped_with_sigterm_hands_its_job_back_within_the_grace_period() {
    let mut setup = first_of_two_workers(&[("SLIPWAY_SHUTDOWN_GRACE", "1s")]).await;
    let app = app_repo(&setup.git, "app");
    let body = json!({ "repo": app, "image": image("handed"), "run": { "command": sleeping_command(8) } });
    let id = setup.job_in(body, "running").await;
    let stopping = Instant::now();
    let status = setup.first.terminate(Duration::from_secs(20)).expect("the worker exits after its grace period");
    assert!(status.success(), "{status:?}");
    let stopped = stopping.elapsed();
    eprintln!("the worker stopped in {stopped:?}");
    // It let the job run for its grace period, then handed it back long before the
    // container's own end.
    assert!(stopped >= Duration::from_secs(1), "the worker stopped before its grace period ended: {stopped:?}");
    assert!(stopped < Duration::from_secs(8), "the worker waited for the job instead of handing it back: {stopped:?}");
    let _second = setup.start_second();
    let (db, ports, work) = (&setup.db, &setup.ports, &setup.work);

    let job = wait_finished(&ports.api(), &id, LIMIT).await;
    assert_eq!((job["state"].as_str(), job["attempt"].as_i64()), (Some("succeeded"), Some(2)), "{job}");
    assert_eq!(job["workers_lost"], 0, "a hand-back loses no worker: {job}");
    let events = events(db, &id).await;
    let handed = events.iter().find(|e| e.3.as_deref().is_some_and(|r| r.starts_with("handed_back")));
    let handed = handed.unwrap_or_else(|| panic!("no hand-back in {events:?}"));
    assert_eq!((handed.0.as_str(), handed.2.as_deref()), ("running", Some("worker-first")));
    assert!(job_folders(work.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_job_of_a_batch_completes_across_a_postgres_restart() {
    let postgres = PrivatePostgres::start();
    let store = slipway_engine::store::Store::open(&postgres.url(), Duration::from_secs(30)).await.unwrap();
    grant_test_token(&store).await;
    let git = GitServer::start();
    let app = app_repo(&git, "app");
    let work = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let slots = settings(&[("SLIPWAY_WORKER_SLOTS", "3")]);
    let _slipway = spawn_standalone("standalone", Some(&postgres.url()), &ports, work.path(), slots);
    wait_healthy(&ports.api(), Duration::from_secs(30)).await;

    let mut ids = Vec::new();
    for i in 0..6 {
        let body = json!({ "repo": app, "image": image("restart"), "run": { "command": sleeping_command(1 + i % 3) } });
        ids.push(submit(&ports.api(), &body).await["id"].as_str().unwrap().to_string());
    }
    // The first job has reached its run (it may be done already: its image is cached).
    let deadline = Instant::now() + LIMIT;
    while !matches!(get_job(&ports.api(), &ids[0]).await["state"].as_str(), Some("running" | "succeeded")) {
        assert!(Instant::now() < deadline, "the batch never started running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    postgres.down();
    tokio::time::sleep(Duration::from_secs(3)).await;
    postgres.up();

    for id in &ids {
        let job = wait_finished(&ports.api(), id, LIMIT).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    let runs: i64 = sqlx::query_scalar("select count(*) from job_steps where step = 'run' and outcome = 'succeeded'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(runs, 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweep_deletes_expired_jobs_their_images_and_leftovers_of_this_installation_only() {
    let standalone = Standalone::start(&[("SLIPWAY_RETENTION", "3s"), ("SLIPWAY_SWEEP_INTERVAL", "500ms")]).await;
    let (db, ports, slipway) = (&standalone.db, &standalone.ports, &standalone.process);

    // Content of its own, so that no other test's job shares the image.
    let dockerfile = format!("{BUSYBOX_DOCKERFILE}LABEL test.unique={}\n", unique("u"));
    let app = &standalone.git.repo("own", &[("Dockerfile", Entry::Text(&dockerfile)), ("busybox", Entry::Busybox)]);
    let registry = open_registry();
    let id = submit(&ports.api(), &json!({ "repo": app, "image": format!("{registry}/faults/sweep:{}", unique("t")) }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = wait_finished(&ports.api(), &id, LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let image_id = job["image_id"].as_str().unwrap().to_string();
    let digest = job["pushed_ref"].as_str().unwrap().split_once('@').unwrap().1.to_string();

    // Leftover containers of a job that no longer exists: one of this installation,
    // one of another installation sharing the engine.
    let instance: uuid::Uuid =
        sqlx::query_scalar("select id from slipway_instance").fetch_one(db.store.pool()).await.unwrap();
    let leftover = |instance: String| {
        let out = std::process::Command::new("docker")
            .args(["create", "--label", &format!("slipway.job_id={}", uuid::Uuid::now_v7())])
            .args(["--label", &format!("slipway.instance={instance}"), &image_id])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let tagged = std::process::Command::new("docker")
        .args(["image", "inspect", &format!("slipway-jobs/{instance}:{id}")])
        .output()
        .unwrap();
    assert!(tagged.status.success(), "the image is tagged for its job");
    let ours = leftover(instance.to_string());
    let theirs = leftover(uuid::Uuid::new_v4().to_string());

    let deadline = Instant::now() + Duration::from_secs(60);
    while http().get(format!("{}/v1/jobs/{id}", ports.api())).send().await.unwrap().status() != 404 {
        assert!(Instant::now() < deadline, "the expired job was never deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let events: i64 = sqlx::query_scalar("select count(*) from job_events where job_id = $1::uuid")
        .bind(&id)
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert_eq!(events, 0, "its history went with it");
    let manifest = http()
        .get(format!("http://{registry}/v2/faults/sweep/manifests/{digest}"))
        .header("Accept", "application/vnd.docker.distribution.manifest.v2+json")
        .send()
        .await
        .unwrap();
    assert_eq!(manifest.status(), 404, "the pushed image is deleted from the registry");

    let exists = |what: &str, id: &str| {
        std::process::Command::new("docker").args([what, "inspect", id]).output().unwrap().status.success()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while exists("container", &ours) || exists("image", &image_id) {
        assert!(Instant::now() < deadline, "leftovers of this installation remain");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(exists("container", &theirs), "another installation's container is left alone");
    let _ = std::process::Command::new("docker").args(["rm", "-f", &theirs]).output();
    assert!(slipway.output().contains("sweep removed"), "the sweep reports its counts");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_worker_dies_while_running_reattaches_to_its_container() {
    let setup = first_of_two_workers(&[]).await;
    let (db, ports) = (&setup.db, &setup.ports);
    let app = app_repo(&setup.git, "app");
    let since = now_secs();
    let body = json!({ "repo": app, "image": image("reattach"), "run": { "command": sleeping_command(5) } });
    let id = setup.job_in(body, "running").await;
    // The container is recorded before the worker waits on it; its first line is
    // stored before the worker dies.
    let deadline = Instant::now() + LIMIT;
    while get_job(&ports.api(), &id).await["container_id"].is_null()
        || !all_logs(&ports.api(), &id).await.iter().any(|l| l["line"] == "started")
    {
        assert!(Instant::now() < deadline, "the container id or its first line was never stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    setup.first.signal("KILL");
    let _second = setup.start_second();

    let job = wait_finished(&ports.api(), &id, LIMIT).await;
    assert_eq!((job["state"].as_str(), job["attempt"].as_i64()), (Some("succeeded"), Some(2)), "{job}");
    assert_eq!(containers_created(&id, since), 1, "the second attempt ran no second container");
    let second: Vec<String> =
        sqlx::query_scalar("select step::text from job_steps where job_id = $1::uuid and attempt = 2")
            .bind(&id)
            .fetch_all(db.store.pool())
            .await
            .unwrap();
    assert_eq!(second, ["run"], "the second attempt resumed at the run, without a rebuild");
    let lines = all_logs(&ports.api(), &id).await;
    assert!(
        lines.iter().any(|l| l["attempt"] == 2 && l["line"].as_str().is_some_and(|t| t.starts_with("re-attaching")))
    );
    assert!(lines.iter().any(|l| l["line"] == "finished"), "the container's end was seen");
    let output: Vec<&str> =
        lines.iter().filter(|l| l["stream"] == "stdout").filter_map(|l| l["line"].as_str()).collect();
    assert_eq!(output, ["started", "finished"], "the re-attached output goes on where the stored log stopped");
    wait_containers_gone(&id, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_cloning_from_a_stalled_remote_is_cancelled_at_once() {
    // A git server that accepts connections and never answers.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = stalled.local_addr().unwrap().port();
    let (connected, mut clone_waits) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = stalled.accept().await {
            held.push(socket);
            let _ = connected.send(());
        }
    });
    let standalone = Standalone::start(&[]).await;
    let api = standalone.api();
    let body = json!({ "repo": format!("git://127.0.0.1:{port}/stalled"), "image": image("stalled") });
    let id = submit(&api, &body).await["id"].as_str().unwrap().to_string();
    wait_state(&api, &id, "cloning", LIMIT).await;
    // The clone is waiting on the remote.
    tokio::time::timeout(LIMIT, clone_waits.recv()).await.expect("the clone never reached the remote");

    let asked = Instant::now();
    assert_eq!(cancel(&api, &id).await.0, 202);
    let job = wait_finished(&api, &id, Duration::from_secs(10)).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    let states: Vec<String> = events(&standalone.db, &id).await.into_iter().map(|e| e.0).collect();
    assert_eq!(states, ["queued", "cloning", "cancelled"]);
    eprintln!("a clone hanging on its remote was cancelled in {:?}", asked.elapsed());
    assert!(job_folders(standalone.work.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_reaches_the_worker_at_once_not_at_the_next_heartbeat() {
    // A heartbeat far longer than the test: only the cancel's notification can
    // reach the worker in time.
    let db = TestDb::new().await;
    let git = GitServer::start();
    let work = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let port = free_port();
    let worker = spawn_worker("worker", port, work.path(), []);
    let slow = [("SLIPWAY_HEARTBEAT_INTERVAL", "60s"), ("SLIPWAY_WORKER_TIMEOUT", "120s")];
    let _server = spawn_server("orchestrator", &db.url, &ports, &[port], settings(&slow));
    wait_healthy(&ports.api(), Duration::from_secs(30)).await;
    let app = app_repo(&git, "app");
    let body = json!({ "repo": app, "image": image("cancel-now"), "run": { "command": sleeping_command(300) } });
    let id = submit(&ports.api(), &body).await["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + LIMIT;
    while !all_logs(&ports.api(), &id).await.iter().any(|l| l["line"] == "started") {
        assert!(Instant::now() < deadline, "the container never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let asked = chrono::Utc::now();
    assert_eq!(cancel(&ports.api(), &id).await.0, 202);
    let job = wait_finished(&ports.api(), &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    let output = worker.output();
    let heard = output
        .lines()
        .find(|l| l.contains("cancelling job"))
        .and_then(|l| l.split_whitespace().find_map(|w| chrono::DateTime::parse_from_rfc3339(&strip_ansi(w)).ok()))
        .unwrap_or_else(|| panic!("the worker never heard of the cancel:\n{output}"));
    // From the moment the request was stored (the API's own clock is this machine's).
    let requested: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select cancel_requested_at from jobs where id = $1::uuid")
            .bind(&id)
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert!(requested >= asked - chrono::Duration::seconds(1));
    let reached = (heard.with_timezone(&chrono::Utc) - requested).to_std().unwrap_or_default();
    let reason = events(&db, &id).await.last().and_then(|e| e.3.clone()).unwrap_or_default();
    eprintln!("a cancel reached the worker {reached:?} after the request; the job ended `{reason}`");
    assert!(reached < Duration::from_secs(30), "the cancel waited for a heartbeat: {reached:?}");
    assert!(containers_of(&id).is_empty());
}

/// A word of a log line without the terminal colour codes (`ESC [ … m`) in it.
fn strip_ansi(word: &str) -> String {
    let mut plain = String::new();
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}
