//! The build cache with real parts: builds of the same repository, Dockerfile and
//! context reuse each other's layers (through the engine and through the last
//! pushed image), say so in the job, the log, the metric and the views, and a
//! second job of a repository goes to the worker that holds its layers.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

const JOB_LIMIT: Duration = Duration::from_secs(180);

/// A repository whose Dockerfile has four steps after `FROM`, the first of them
/// copying a file unique to this repository, so that its first build is cold
/// whatever the engine built before.
fn layered_repo(git: &GitServer, name: &str, token: &str) -> String {
    let dockerfile = "FROM scratch\nCOPY token /token\nCOPY busybox /bin/busybox\n\
                      RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo layer > /layer\"]\n\
                      COPY app.txt /app.txt\nCMD [\"/bin/busybox\", \"cat\", \"/app.txt\"]\n";
    git.repo(
        name,
        &[
            ("Dockerfile", Entry::Text(dockerfile)),
            ("busybox", Entry::Busybox),
            ("token", Entry::Text(token)),
            ("app.txt", Entry::Text("hello from the app\n")),
        ],
    )
}

/// The build step of a finished job: (cache hits, cache steps). No other step has any.
fn build_counts(job: &Value) -> (i64, i64) {
    let steps = job["steps"].as_array().unwrap();
    let counted: Vec<&Value> = steps.iter().filter(|s| s.get("cache_steps").is_some()).collect();
    assert!(counted.iter().all(|s| s["step"] == "build"), "{steps:?}");
    let build = steps.iter().find(|s| s["step"] == "build").expect("a build step");
    (build["cache_hits"].as_i64().expect("cache_hits"), build["cache_steps"].as_i64().expect("cache_steps"))
}

fn build_lines(lines: &[Value]) -> Vec<String> {
    lines.iter().filter(|l| l["step"] == "build").map(|l| l["line"].as_str().unwrap().to_string()).collect()
}

async fn run_job(api: &str, body: &Value) -> (Value, Vec<String>) {
    let id = submit(api, body).await["id"].as_str().unwrap().to_string();
    let job = wait_finished(api, &id, JOB_LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let lines = build_lines(&all_logs(api, &id).await);
    (job, lines)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_build_of_the_same_commit_comes_from_cache_and_a_missing_cache_image_builds_cold() {
    let registry = AuthRegistry::start();
    let login = [
        ("SLIPWAY_REGISTRY_HOST", registry.addr.as_str()),
        ("SLIPWAY_REGISTRY_USERNAME", REGISTRY_USER),
        ("SLIPWAY_REGISTRY_PASSWORD", REGISTRY_PASSWORD),
    ];
    let standalone = Standalone::start(&login).await;
    let api = standalone.api();
    let repo = layered_repo(&standalone.git, "layered", &unique("token-"));
    let image = format!("{}/cache/app:{}", registry.addr, unique("t"));
    let job = json!({ "repo": repo, "image": image });

    // Cold: nothing of this repository was ever built.
    let (first, lines) = run_job(&api, &job).await;
    assert_eq!(build_counts(&first), (0, 4), "{lines:?}");
    assert!(lines.contains(&"build: 0 of 4 steps from cache".to_string()), "{lines:?}");
    let pushed = first["pushed_ref"].as_str().unwrap().to_string();

    // The engine forgets the pushed image: the next build pulls it back (with the
    // worker's login for that registry) to take its cache from it.
    docker_cli(&["rmi", "-f", first["image_id"].as_str().unwrap()]);
    // An image a job names itself is pulled with the job's own login only: this
    // job (of another repository) pushes to another registry, so the worker's
    // login for the cache image's registry is not used, and the pull is refused.
    let other_repo = layered_repo(&standalone.git, "other", &unique("token-"));
    let elsewhere = format!("{}/cache/other:{}", open_registry(), unique("t"));
    let (_, lines) = run_job(&api, &json!({ "repo": other_repo, "image": elsewhere, "cache_from": [pushed] })).await;
    let refused = format!("cache: cannot use {pushed} (");
    assert!(lines.iter().any(|l| l.starts_with(&refused) && l.contains("building without it")), "{lines:?}");
    let (second, lines) = run_job(&api, &job).await;
    assert!(lines.contains(&format!("cache: pulling {pushed}")), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("cannot use")), "{lines:?}");
    // Same commit, another job: nothing Slipway adds changes a cache key.
    assert_eq!(build_counts(&second), (4, 4), "{lines:?}");
    assert!(lines.contains(&"build: 4 of 4 steps from cache".to_string()), "{lines:?}");

    // A cache image that does not exist never fails the build; the log says why.
    let missing = format!("{}/cache/nothing:{}", registry.addr, unique("t"));
    let (named, lines) = run_job(&api, &json!({ "repo": repo, "image": image, "cache_from": [missing] })).await;
    assert!(lines.iter().any(|l| l.starts_with(&format!("cache: cannot use {missing} ("))), "{lines:?}");
    assert_eq!(named["spec"]["cache_from"], json!([missing]));

    // `"cache": false` builds every step afresh.
    let (fresh, lines) = run_job(&api, &json!({ "repo": repo, "image": image, "cache": false })).await;
    assert_eq!(build_counts(&fresh), (0, 4), "{lines:?}");
    assert!(!lines.iter().any(|l| l.starts_with("cache: ")), "{lines:?}");

    // The hit rate of the day, and the build that missed while an earlier one existed.
    let pool = standalone.db.store.pool();
    let (builds, steps, hits, cold): (i64, i64, i64, i64) =
        sqlx::query_as("select builds, steps, cache_hits, cold_builds from build_cache where repository = $1")
            .bind(&repo)
            .fetch_one(pool)
            .await
            .unwrap();
    let all = [&first, &second, &named, &fresh];
    let hits_of_all: i64 = all.iter().map(|job| build_counts(job).0).sum();
    assert_eq!((builds, steps, hits, cold), (4, 16, hits_of_all, 2));
    let misses: Vec<(uuid::Uuid, uuid::Uuid)> =
        sqlx::query_as("select job_id, earlier_job_id from build_cache_misses where repository = $1")
            .bind(&repo)
            .fetch_all(pool)
            .await
            .unwrap();
    let id = |job: &Value| job["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap();
    assert_eq!(misses, [(id(&fresh), id(&named))]);

    // The metric counts the same steps.
    let metrics = http().get(format!("{api}/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |series: &str| metrics.lines().find_map(|l| l.strip_prefix(series)).map(str::trim).map(str::to_string);
    assert_eq!(value("slipway_build_cache_steps_total{result=\"hit\"}"), Some(hits_of_all.to_string()));
    assert_eq!(value("slipway_build_cache_steps_total{result=\"miss\"}"), Some((16 + 4 - hits_of_all).to_string()));
}

/// Why the job's first step started where it did, from its history.
async fn dispatch_reason(api: &str, id: &str) -> String {
    let events: Value = http().get(format!("{api}/v1/jobs/{id}/events")).send().await.unwrap().json().await.unwrap();
    let cloning = events["events"].as_array().unwrap().iter().find(|e| e["to_state"] == "cloning").expect("cloning");
    cloning["reason"].as_str().unwrap_or_default().to_string()
}

/// Waits until the orchestrator has heard from `worker` since `since` (until then
/// a job may rightly go to a worker that answers).
async fn answered_since(api: &str, worker: &str, since: chrono::DateTime<chrono::Utc>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let list: Value = http().get(format!("{api}/v1/workers")).send().await.unwrap().json().await.unwrap();
        let answered = list["workers"].as_array().unwrap().iter().any(|w| {
            w["id"] == worker
                && w["reachable"] == true
                && w["last_answer_at"].as_str().and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
                    > Some(since)
        });
        if answered {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{worker} never answered again: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn worker_of(job: &Value) -> &str {
    job["steps"][0]["worker"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repository_goes_back_to_the_worker_holding_its_layers_unless_it_stays_busy_past_the_wait() {
    let db = TestDb::new().await;
    let git = GitServer::start();
    let repo = layered_repo(&git, "affine", &unique("token-"));
    let (work_a, work_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ports = Ports::new();
    let port_b = free_port();
    // One slot each; worker-b offers a label, so that a job requiring it goes there
    // first (worker-a is asked first, so without affinity it would take the rest).
    let one = [("SLIPWAY_WORKER_SLOTS", "1")];
    let _a = spawn_worker("worker-a", ports.worker, work_a.path(), settings(&one));
    let worker_b =
        || spawn_worker("worker-b", port_b, work_b.path(), settings(&[one[0], ("SLIPWAY_WORKER_LABELS", "pool=b")]));
    let mut b = worker_b();
    let _server = spawn_server("server", &db.url, &ports, &[ports.worker, port_b], []);
    let api = ports.api();
    wait_healthy(&api, Duration::from_secs(30)).await;
    let image = format!("{}/affinity/app:{}", open_registry(), unique("t"));

    let (first, _) = run_job(&api, &json!({ "repo": repo, "image": image, "requires": { "pool": "b" } })).await;
    assert_eq!(worker_of(&first), "worker-b");

    // Both workers are free: the next build of the repository goes where its layers are.
    let (second, lines) = run_job(&api, &json!({ "repo": repo, "image": image })).await;
    assert_eq!(worker_of(&second), "worker-b", "{lines:?}");
    let id = second["id"].as_str().unwrap();
    assert_eq!(dispatch_reason(&api, id).await, "dispatched to worker-b: holds the cache of this repository");
    assert_eq!(build_counts(&second), (4, 4));

    // A restarted worker reads from its engine's images which layers it holds.
    b.terminate(Duration::from_secs(30)).expect("worker-b stops");
    b = worker_b();
    answered_since(&api, "worker-b", chrono::Utc::now()).await;
    let (again, _) = run_job(&api, &json!({ "repo": repo, "image": image })).await;
    assert_eq!(worker_of(&again), "worker-b");
    let id = again["id"].as_str().unwrap();
    assert_eq!(dispatch_reason(&api, id).await, "dispatched to worker-b: holds the cache of this repository");

    // worker-b busy: a build of the repository waits for it, then any worker takes it.
    let busy = json!({ "repo": repo, "image": image, "requires": { "pool": "b" }, "run": { "command": sleeping_command(60) } });
    let busy = submit(&api, &busy).await["id"].as_str().unwrap().to_string();
    wait_state(&api, &busy, "running", JOB_LIMIT).await;
    let waiting = submit(&api, &json!({ "repo": repo, "image": image })).await["id"].as_str().unwrap().to_string();
    let third = wait_finished(&api, &waiting, JOB_LIMIT).await;
    assert_eq!((third["state"].as_str(), worker_of(&third)), (Some("succeeded"), "worker-a"), "{third}");
    assert_eq!(
        dispatch_reason(&api, &waiting).await,
        "dispatched to worker-a: the workers holding the cache of this repository had no free slot within 2 s"
    );
    let waited: f64 =
        sqlx::query_scalar("select extract(epoch from queue_wait)::float8 from job_queue_wait where job_id = $1")
            .bind(waiting.parse::<uuid::Uuid>().unwrap())
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert!(waited >= 2.0, "it went elsewhere after {waited} s, before the affinity wait");
    cancel(&api, &busy).await;
    wait_finished(&api, &busy, JOB_LIMIT).await;
    drop(b);
}
