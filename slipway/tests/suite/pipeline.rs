//! One job end to end with real parts: separate `slipway server` and `slipway
//! worker` processes, Postgres, git daemon, the Docker engine and a registry.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;
use sqlx::Connection;

const JOB_LIMIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread")]
async fn a_job_runs_end_to_end_on_a_separate_server_and_worker() {
    let db = TestDb::new().await;
    let git = GitServer::start();
    // A build argument reaches the image (ARG → ENV), the job's env the container.
    let dockerfile = "FROM scratch\nCOPY busybox /bin/busybox\nARG FLAVOUR=plain\nENV FLAVOUR=$FLAVOUR\n\
                      CMD [\"/bin/busybox\", \"sh\", \"-c\", \"echo hello $GREETING $FLAVOUR; echo done >&2\"]\n";
    let repo = git.repo("app", &[("Dockerfile", Entry::Text(dockerfile)), ("busybox", Entry::Busybox)]);
    let registry = AuthRegistry::start();
    let work_dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();

    // A folder a killed worker of the same id left behind is removed at start.
    let stale = work_dir.path().join("worker-e2e/job-stale-1");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("file"), "x").unwrap();

    // The worker gets no DATABASE_URL: it reaches the database only through the server.
    let credentials = [
        ("SLIPWAY_REGISTRY_HOST", registry.addr.as_str()),
        ("SLIPWAY_REGISTRY_USERNAME", REGISTRY_USER),
        ("SLIPWAY_REGISTRY_PASSWORD", REGISTRY_PASSWORD),
    ];
    let _worker = spawn_worker("worker-e2e", ports.worker, work_dir.path(), settings(&credentials));
    let _server = spawn_server("server", &db.url, &ports, &[ports.worker], []);
    wait_healthy(&ports.api(), Duration::from_secs(30)).await;

    let greeting = unique("world-");
    let tag = unique("t");
    let image = format!("{}/e2e/app:{tag}", registry.addr);
    let job = submit(
        &ports.api(),
        &json!({ "repo": repo, "image": image, "env": { "GREETING": greeting }, "build_args": { "FLAVOUR": "salty" } }),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["state"], "queued");

    let job = wait_finished(&ports.api(), &id, JOB_LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["exit_code"], 0);
    assert_eq!(job["commit_sha"], git.head("app"));
    assert!(job["image_id"].as_str().unwrap().starts_with("sha256:"), "{job}");
    let pushed = job["pushed_ref"].as_str().unwrap();
    let digest = pushed.strip_prefix(&format!("{}/e2e/app@", registry.addr)).expect("pushed ref names the image");
    let steps: Vec<&str> = job["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["clone", "build", "push", "run"]);
    assert!(
        job["steps"].as_array().unwrap().iter().all(|s| s["outcome"] == "succeeded" && !s["finished_at"].is_null())
    );

    // The story in SQL, in order, and the same over HTTP.
    let history = state_history(&db, &id).await;
    assert_eq!(history, ["queued", "cloning", "building", "pushing", "running", "succeeded"]);
    let events: serde_json::Value =
        http().get(format!("{}/v1/jobs/{id}/events", ports.api())).send().await.unwrap().json().await.unwrap();
    let over_http: Vec<&str> =
        events["events"].as_array().unwrap().iter().map(|e| e["to_state"].as_str().unwrap()).collect();
    assert_eq!(over_http, history);
    assert_eq!(events["events"][1]["from_state"], "queued");
    assert_eq!(events["events"][1]["worker"], "worker-e2e");

    // The views answer the usual questions.
    let uuid: uuid::Uuid = id.parse().unwrap();
    let transitions: i64 =
        sqlx::query_scalar("select count(*) from job_history where job_id = $1 and time_in_previous_state is not null")
            .bind(uuid)
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert_eq!(transitions, 5);
    let steps: Vec<(String, bool)> = sqlx::query_as(
        "select step::text, duration > interval '0' from job_step_durations where job_id = $1 order by started_at",
    )
    .bind(uuid)
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    assert_eq!(steps.len(), 4);
    assert!(steps.iter().all(|(_, positive)| *positive));
    // The queue wait is the time from the `queued` event to the `cloning` one.
    let (waited, between): (sqlx::postgres::types::PgInterval, sqlx::postgres::types::PgInterval) = sqlx::query_as(
        "select queue_wait,
                (select max(at) filter (where to_state = 'cloning') - max(at) filter (where to_state = 'queued')
                 from job_events where job_id = $1)
         from job_queue_wait where job_id = $1",
    )
    .bind(uuid)
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!(waited, between);
    assert!(waited.microseconds > 0, "{waited:?}");
    let stuck: i64 = sqlx::query_scalar("select count(*) from jobs_stuck").fetch_one(db.store.pool()).await.unwrap();
    assert_eq!(stuck, 0);

    // The logs hold every step's output, in order, tagged with step and stream.
    let lines = all_logs(&ports.api(), &id).await;
    let position =
        |step: &str| lines.iter().position(|l| l["step"] == step).unwrap_or_else(|| panic!("no {step} lines"));
    assert!(
        position("clone") < position("build")
            && position("build") < position("push")
            && position("push") < position("run")
    );
    assert!(
        lines
            .iter()
            .any(|l| l["step"] == "run" && l["stream"] == "stdout" && l["line"] == format!("hello {greeting} salty")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l["step"] == "run" && l["stream"] == "stderr" && l["line"] == "done"));

    // The registry has the image under its tag, with the recorded digest.
    let manifest = http()
        .get(format!("http://{}/v2/e2e/app/manifests/{tag}", registry.addr))
        .basic_auth(REGISTRY_USER, Some(REGISTRY_PASSWORD))
        .header("Accept", "application/vnd.docker.distribution.manifest.v2+json")
        .send()
        .await
        .unwrap();
    assert_eq!(manifest.status(), 200);
    assert_eq!(manifest.headers()["docker-content-digest"].to_str().unwrap(), digest);

    // Nothing is left behind: no clone folder, no container.
    let left = job_folders_left(work_dir.path(), Duration::from_secs(10)).await;
    assert!(left.is_empty(), "the work folder still holds {left:?}");
    wait_containers_gone(&id, Duration::from_secs(10)).await;

    // A job naming another registry (another port on loopback) gets none of the
    // credentials configured for this one.
    let stranger = RecordingRegistry::start().await;
    let image = format!("{}/e2e/app:{tag}", stranger.addr);
    let id = submit(&ports.api(), &json!({ "repo": repo, "image": image, "retry": { "max_attempts": 1 } })).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = wait_finished(&ports.api(), &id, JOB_LIMIT).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(stranger.requests.load(std::sync::atomic::Ordering::Relaxed) > 0, "the push never reached the stranger");
    let sent = stranger.authorizations.lock().unwrap().clone();
    assert!(sent.is_empty(), "the stranger got credentials: {sent:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_failure_ends_the_job_failed_with_its_cause() {
    let db = TestDb::new().await;
    let git = GitServer::start();
    let app = app_repo(&git, "app");
    let broken = git.repo(
        "broken",
        &[
            ("Dockerfile", Entry::Text("FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo about to fail; exit 7\"]\n")),
            ("busybox", Entry::Busybox),
        ],
    );
    let unparsable = git.repo("unparsable", &[("Dockerfile", Entry::Text("FROM scratch\nCOPY . /\nRUNN echo\n"))]);
    let empty = git.repo("empty", &[("README", Entry::Text("no dockerfile here"))]);
    let escape = git.repo("escape", &[("Dockerfile", Entry::Symlink("/etc/hostname"))]);
    let locked = AuthRegistry::start();
    let open = open_registry();
    let work_dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let slots = settings(&[("SLIPWAY_WORKER_SLOTS", "4")]);
    let _slipway = spawn_standalone("standalone", Some(&db.url), &ports, work_dir.path(), slots);
    wait_healthy(&ports.api(), Duration::from_secs(30)).await;

    let image = |name: &str| format!("{open}/failures/{name}:{}", unique("t"));
    let cases = [
        ("repo_not_found", json!({ "repo": git.url("nope"), "image": image("a") })),
        ("ref_not_found", json!({ "repo": app, "ref": "no-such-branch", "image": image("b") })),
        ("dockerfile_missing", json!({ "repo": empty, "image": image("c") })),
        ("path_escapes_repository", json!({ "repo": escape, "image": image("d") })),
        ("build_failed", json!({ "repo": broken, "image": image("e") })),
        ("dockerfile_invalid", json!({ "repo": unparsable, "image": image("h") })),
        ("push_refused", json!({ "repo": app, "image": format!("{}/failures/f:1", locked.addr) })),
        (
            "exit_nonzero",
            json!({ "repo": app, "image": image("g"), "run": { "command": ["/bin/busybox", "sh", "-c", "echo bye; exit 3"] } }),
        ),
    ];
    let mut ids = Vec::new();
    for (code, body) in &cases {
        ids.push((*code, submit(&ports.api(), body).await["id"].as_str().unwrap().to_string()));
    }
    for (code, id) in ids {
        let job = wait_finished(&ports.api(), &id, JOB_LIMIT).await;
        assert_eq!(job["state"], "failed", "{code}: {job}");
        assert_eq!(job["error"]["code"], code, "{job}");
        let message = job["error"]["message"].as_str().unwrap();
        let history = state_history(&db, &id).await;
        assert_eq!(history.last().map(String::as_str), Some("failed"));
        match code {
            "build_failed" => {
                assert!(message.contains("RUN [\"/bin/busybox\""), "names the failing instruction: {message}");
                assert!(message.contains("about to fail"), "carries the output: {message}");
                assert!(message.contains('7'), "carries the exit code: {message}");
            }
            "exit_nonzero" => {
                assert_eq!(job["exit_code"], 3);
                assert_eq!(history, ["queued", "cloning", "building", "pushing", "running", "failed"]);
                wait_containers_gone(&id, Duration::from_secs(10)).await;
            }
            "dockerfile_invalid" => {
                assert!(message.contains("Dockerfile does not parse: line 3") && message.contains("RUNN"), "{message}");
                assert_eq!(history, ["queued", "cloning", "building", "failed"], "not retried");
            }
            "ref_not_found" => assert!(message.contains("no-such-branch"), "{message}"),
            "repo_not_found" => assert!(message.contains("nope"), "{message}"),
            _ => {}
        }
    }
    let left = job_folders_left(work_dir.path(), Duration::from_secs(10)).await;
    assert!(left.is_empty(), "the work folder still holds {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_standalones_share_one_database() {
    let db = TestDb::new().await;
    let git = GitServer::start();
    let repo = app_repo(&git, "app");
    let work_dir = tempfile::tempdir().unwrap();
    let mut processes = Vec::new();
    let mut apis = Vec::new();
    for name in ["first", "second"] {
        let ports = Ports::new();
        let mut env = vec![("SLIPWAY_WORKER_SLOTS", "1".to_string()), ("SLIPWAY_WORKER_ID", format!("worker-{name}"))];
        // One builds with the classic builder, the other with what the engine offers.
        if name == "first" {
            env.push(("SLIPWAY_BUILDER", "classic".into()));
        }
        processes.push(spawn_standalone(name, Some(&db.url), &ports, work_dir.path(), env));
        apis.push(ports.api());
    }
    for api in &apis {
        wait_healthy(api, Duration::from_secs(30)).await;
    }
    let registry = open_registry();
    let mut ids = Vec::new();
    for i in 0..4 {
        let body = json!({ "repo": repo, "image": format!("{registry}/shared/app:{}", unique("t")), "env": { "GREETING": i.to_string() } });
        ids.push(submit(&apis[i % 2], &body).await["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let job = wait_finished(&apis[0], id, JOB_LIMIT).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    let workers: Vec<String> = sqlx::query_scalar("select distinct worker from job_steps order by worker")
        .fetch_all(db.store.pool())
        .await
        .unwrap();
    assert_eq!(workers, ["worker-first", "worker-second"], "both processes ran jobs");
    let mut builders = Vec::new();
    for id in &ids {
        let lines = all_logs(&apis[0], id).await;
        let sent = lines.iter().filter_map(|l| l["line"].as_str()).find(|l| l.starts_with("sending a build context"));
        builders.push(sent.unwrap_or_default().rsplit(" to ").next().unwrap().to_string());
    }
    builders.sort();
    builders.dedup();
    assert_eq!(builders, ["buildkit", "the classic builder"]);
    // Both builders count the build's steps after FROM, by their own names for them:
    // the classic builder's `Step 3/3 : CMD …` is one, BuildKit makes no vertex of a CMD.
    let counted: Vec<(String, i32, i32)> = sqlx::query_as(
        "select worker, cache_hits, cache_steps from job_steps where step = 'build' order by started_at",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    assert_eq!(counted.len(), 4);
    for (i, (worker, hits, steps)) in counted.iter().enumerate() {
        let expected = if worker == "worker-first" { 2 } else { 1 };
        assert!(*steps == expected && (0..=*steps).contains(hits), "{counted:?}");
        // A worker's second build of the repository takes every step from cache.
        if counted[..i].iter().any(|(earlier, _, _)| earlier == worker) {
            assert_eq!(hits, steps, "{counted:?}");
        }
    }
    let runs: i64 = sqlx::query_scalar("select count(*) from job_steps where step = 'run'")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert_eq!(runs, 4, "each job ran once");
}

#[tokio::test(flavor = "multi_thread")]
async fn standalone_without_database_url_starts_a_private_postgres() {
    let data = tempfile::tempdir().unwrap();
    // Postgres runs as the postgres user under root: it must be able to enter the folder.
    std::fs::set_permissions(data.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let work_dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let config = data.path().join("config");
    let data_dir =
        [("SLIPWAY_DATA_DIR", data.path().display().to_string()), ("XDG_CONFIG_HOME", config.display().to_string())];
    let mut slipway = spawn_standalone("standalone", None, &ports, work_dir.path(), data_dir);
    wait_healthy(&ports.api(), Duration::from_secs(90)).await;

    // Its first start made an owner token and saved it for the CLI, readable by its owner only.
    let credentials = config.join("slipway/credentials.toml");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&credentials).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let saved = std::fs::read_to_string(&credentials).unwrap();
    let token = saved.lines().find_map(|l| l.strip_prefix("token = \"")?.strip_suffix('"')).unwrap().to_string();
    assert!(!slipway.output().contains(&token), "the token is in the log");
    let listed =
        reqwest::Client::new().get(format!("{}/v1/jobs", ports.api())).bearer_auth(&token).send().await.unwrap();
    assert_eq!(listed.status(), 200, "the saved token lets the CLI in");
    // The test's own token, granted in the private database, for the helpers.
    let password = std::fs::read_to_string(data.path().join("postgres.password")).unwrap();
    let socket_url = format!(
        "postgres://slipway:{}@localhost:5432/slipway?host={}",
        password.trim(),
        data.path().join("run").display()
    );
    let store = slipway_engine::store::Store::connect(&socket_url, Duration::from_secs(10)).await.unwrap();
    grant_test_token(&store).await;

    let git = GitServer::start();
    let repo = app_repo(&git, "app");
    let image = format!("{}/private/app:{}", open_registry(), unique("t"));
    let id = submit(&ports.api(), &json!({ "repo": repo, "image": image })).await["id"].as_str().unwrap().to_string();
    let job = wait_finished(&ports.api(), &id, JOB_LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(slipway.output().contains(&data.path().display().to_string()), "the data folder is named at start-up");

    // It listens on no TCP port, only on a socket in a private folder; the cluster
    // asks for the password, which only the owner of its file may read, and no log
    // line shows it.
    let password_file = data.path().join("postgres.password");
    let mode_of = |path: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions()) & 0o777
    };
    assert_eq!(mode_of(&password_file), 0o600);
    let socket_dir = data.path().join("run");
    assert_eq!(mode_of(&socket_dir), 0o700);
    let password = std::fs::read_to_string(&password_file).unwrap();
    assert!(!slipway.output().contains(password.trim()), "the password is in the log");
    let pid_file = std::fs::read_to_string(data.path().join("postgres/postmaster.pid")).unwrap();
    let port = pid_file.lines().nth(3).unwrap().trim().to_string();
    let socket = socket_dir.display();
    let without = format!("postgres://slipway@localhost:{port}/slipway?host={socket}");
    let refused = sqlx::PgConnection::connect(&without).await.unwrap_err().to_string();
    assert!(refused.contains("password"), "{refused}");
    let with = format!("postgres://slipway:{}@localhost:{port}/slipway?host={socket}", password.trim());
    let mut conn = sqlx::PgConnection::connect(&with).await.expect("the password lets Slipway in");
    let addresses: String = sqlx::query_scalar("show listen_addresses").fetch_one(&mut conn).await.unwrap();
    assert_eq!(addresses, "", "the private postgres listens on TCP");

    let status = slipway.terminate(Duration::from_secs(60)).expect("standalone stops on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!data.path().join("postgres/postmaster.pid").exists(), "the private postgres is stopped");
}

#[tokio::test(flavor = "multi_thread")]
async fn live_logs_arrive_while_the_container_runs_and_resume_without_gap_or_repeat() {
    let standalone = Standalone::start(&[]).await;
    let (repo, ports) = (&standalone.repo, &standalone.ports);

    let script =
        "echo one; sleep 2; i=0; while [ $i -lt 200 ]; do echo tick $i; i=$((i+1)); usleep 10000; done; echo two";
    let body = json!({
        "repo": repo,
        "image": format!("{}/live/app:{}", open_registry(), unique("t")),
        "run": { "command": ["/bin/busybox", "sh", "-c", script] },
    });
    let id = submit(&ports.api(), &body).await["id"].as_str().unwrap().to_string();
    let url = format!("{}/v1/jobs/{id}/logs?follow=true", ports.api());

    // The first line of the container arrives while it still runs.
    let mut first = SseReader::open(&url, None).await;
    let mut seen: Vec<i64> = Vec::new();
    let mut delays_ms: Vec<f64> = Vec::new();
    loop {
        let event = first.next().await.expect("the stream ended before the container printed");
        assert_eq!(event.event, "line", "{event:?}");
        let line: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        seen.push(event.id.unwrap().parse().unwrap());
        if line["step"] == "run" && line["line"] == "one" {
            break;
        }
    }
    assert_eq!(get_job(&ports.api(), &id).await["state"], "running", "the line came before the container ended");

    // Read some ticks, drop the connection, resume from the last id seen.
    for _ in 0..20 {
        let event = first.next().await.unwrap();
        seen.push(event.id.unwrap().parse().unwrap());
    }
    drop(first);
    let mut second = SseReader::open(&url, Some(&seen.last().unwrap().to_string())).await;
    let end = loop {
        let event = second.next().await.expect("the stream ended without an end event");
        if event.event == "end" {
            break event;
        }
        let line: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        let at = chrono::DateTime::parse_from_rfc3339(line["at"].as_str().unwrap()).unwrap();
        delays_ms
            .push((chrono::Utc::now() - at.with_timezone(&chrono::Utc)).num_microseconds().unwrap() as f64 / 1000.0);
        seen.push(event.id.unwrap().parse().unwrap());
    };
    assert_eq!(serde_json::from_str::<serde_json::Value>(&end.data).unwrap()["state"], "succeeded");
    assert!(second.next().await.is_none(), "the stream ends after the end event");

    let stored: Vec<i64> = all_logs(&ports.api(), &id).await.iter().map(|l| l["id"].as_i64().unwrap()).collect();
    assert_eq!(seen, stored, "every line once, in order, across the reconnect");

    delays_ms.sort_by(f64::total_cmp);
    let at = |p: f64| delays_ms[((delays_ms.len() - 1) as f64 * p).round() as usize];
    eprintln!(
        "figure: container print → SSE client, p50 {:.1} ms, p99 {:.1} ms over {} lines",
        at(0.5),
        at(0.99),
        delays_ms.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_log_past_its_limit_keeps_a_marker_and_drops_the_rest() {
    let standalone = Standalone::start(&[("SLIPWAY_MAX_LOG_BYTES", "6000")]).await;
    let (repo, ports) = (&standalone.repo, &standalone.ports);

    let script = "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done";
    let body = json!({
        "repo": repo,
        "image": format!("{}/limit/app:{}", open_registry(), unique("t")),
        "run": { "command": ["/bin/busybox", "sh", "-c", script] },
    });
    let id = submit(&ports.api(), &body).await["id"].as_str().unwrap().to_string();
    let job = wait_finished(&ports.api(), &id, JOB_LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");

    let lines = all_logs(&ports.api(), &id).await;
    let markers: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["line"].as_str().unwrap().contains("reached its limit of 6000 bytes")).collect();
    assert_eq!(markers.len(), 1, "one marker");
    assert_eq!(lines.last().unwrap(), markers[0], "nothing after the marker");
    let kept: usize = lines[..lines.len() - 1].iter().map(|l| l["line"].as_str().unwrap().len()).sum();
    assert!(kept <= 6000, "{kept} bytes kept");
    assert!(lines.iter().any(|l| l["line"] == "line 0"));
    assert!(!lines.iter().any(|l| l["line"] == "line 1999"));
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_follow_streams_the_logs_and_exits_with_the_outcome() {
    let standalone = Standalone::start(&[]).await;
    let (repo, api) = (standalone.repo.clone(), standalone.api());
    let follow = move |command: &'static str| {
        let image = format!("{}/follow/app:{}", open_registry(), unique("t"));
        let out = slipway_command()
            .args(["submit", "--repo", &repo, "--image", &image, "-e", "GREETING=cli", "--follow"])
            .args(["--", "/bin/busybox", "sh", "-c", command])
            .env("SLIPWAY_API", &api)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let again = follow.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || follow("echo hello $GREETING")).await.unwrap();
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("[run stdout] hello cli"), "{out}");
    assert!(out.contains("[clone system]") && out.contains("[build system]"), "{out}");
    assert!(err.contains("--- attempt 1: run") && err.contains("succeeded"), "{err}");

    let (code, _, err) = tokio::task::spawn_blocking(move || again("exit 4")).await.unwrap();
    assert_eq!(code, Some(4), "--follow exits with the container's code: {err}");
    assert!(err.contains("failed") && err.contains("exited with code 4"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_the_live_log_streams_of_unfinished_jobs_and_the_server_stops_within_its_grace() {
    let mut standalone = Standalone::start(&[("SLIPWAY_SHUTDOWN_GRACE", "2s")]).await;
    let api = standalone.api();
    let image = format!("{}/live/app:{}", open_registry(), unique("t"));
    let body = json!({ "repo": standalone.repo, "image": image, "run": { "command": sleeping_command(300) } });
    let id = submit(&api, &body).await["id"].as_str().unwrap().to_string();
    wait_state(&api, &id, "running", JOB_LIMIT).await;
    // Followed over the API and by the CLI, neither of which would end on its own.
    let mut stream = SseReader::open(&format!("{api}/v1/jobs/{id}/logs?follow=true"), None).await;
    let mut cli = slipway_command()
        .args(["logs", "--follow", &id])
        .env("SLIPWAY_API", &api)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (said, mut stderr) = (said.clone(), cli.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut stderr, &mut buffer) {
                said.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        })
    };
    stream.next().await.expect("the stream is open");
    // The CLI follows too once it has printed the first step's header.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !said.lock().unwrap().contains("--- attempt 1") {
        assert!(Instant::now() < deadline, "the CLI never followed: {}", said.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let stopping = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = standalone.process.terminate(Duration::from_secs(30));
        (status, standalone)
    });
    let ended = loop {
        match stream.next().await {
            Some(event) if event.event == "line" => continue,
            other => break other,
        }
    };
    let ended = ended.expect("the stream says why it ends");
    assert_eq!(ended.event, "shutdown", "{ended:?}");
    assert!(ended.data.contains("the job goes on"), "{ended:?}");
    assert!(stream.next().await.is_none(), "the stream ends after it");
    let (status, standalone) = status.await.unwrap();
    let status = status.unwrap_or_else(|| panic!("standalone hangs on SIGTERM: {}", standalone.process.output()));
    assert!(status.success(), "{status:?}");
    println!("stopped in {:?} with a follower open", stopping.elapsed());
    let exited = cli.wait().unwrap();
    reader.join().unwrap();
    let said = said.lock().unwrap().clone();
    assert!(said.contains("shutting down") && said.contains(&format!("slipway logs -f {id}")), "{said}");
    assert_ne!(exited.code(), Some(0), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn follow_shows_each_attempt_why_it_failed_and_what_a_queued_job_waits_for() {
    let standalone = Standalone::start(&[]).await;
    let api = standalone.api();
    // Fails on its first attempt only; the second runs the pushed image again.
    let image = format!("{}/attempts/app:{}", open_registry(), unique("t"));
    let (repo, cli_api) = (standalone.repo.clone(), api.clone());
    let out = tokio::task::spawn_blocking(move || {
        slipway_command()
            .args(["submit", "--repo", &repo, "--image", &image, "--follow", "--retry-on-failure"])
            .args(["--", "/bin/busybox", "sh", "-c", "echo try $SLIPWAY_ATTEMPT; [ $SLIPWAY_ATTEMPT -ge 2 ]"])
            .env("SLIPWAY_API", &cli_api)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("--- attempt 1: run") && stderr.contains("--- attempt 2: run"), "{stderr}");
    let failed = stdout.lines().find(|l| l.contains("attempt 1 failed")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(failed.contains("exited with code 1") && failed.contains("attempt 2 starts at the run"), "{failed}");
    assert!(stdout.find("try 1") < stdout.find("attempt 1 failed") && stdout.contains("try 2"), "{stdout}");

    // No worker offers what this job requires: the follower says so, and Ctrl-C
    // leaves the job going with the commands to follow or cancel it.
    let body = json!({ "repo": standalone.repo, "image": "waits:dev", "requires": { "region": "mars" } });
    let id = submit(&api, &body).await["id"].as_str().unwrap().to_string();
    let follower = slipway_command()
        .args(["logs", "-f", &id])
        .env("SLIPWAY_API", &api)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let interrupted = std::process::Command::new("kill").args(["-INT", &follower.id().to_string()]).status().unwrap();
    assert!(interrupted.success());
    let out = tokio::task::spawn_blocking(move || follower.wait_with_output().unwrap()).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is waiting for a worker") && stderr.contains("region=mars"), "{stderr}");
    assert!(stderr.contains("goes on") && stderr.contains(&format!("slipway cancel {id}")), "{stderr}");
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert_eq!(get_job(&api, &id).await["state"], "queued", "the job goes on");
}

/// A loopback TCP proxy to `target` that counts the connections it accepted.
async fn counting_proxy(target: String) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (address, accepted)
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_wait_says_what_it_waits_for_and_keeps_one_connection() {
    let standalone = Standalone::start(&[]).await;
    let api = standalone.api();
    // Its shell is the container's first process, which ignores SIGTERM: the stop
    // takes the engine's grace period, a wait of seconds.
    let image = format!("{}/cancel/app:{}", open_registry(), unique("t"));
    let body = json!({ "repo": standalone.repo, "image": image, "run": { "command": sleeping_command(120) } });
    let id = submit(&api, &body).await["id"].as_str().unwrap().to_string();
    wait_state(&api, &id, "running", JOB_LIMIT).await;
    let (proxy, accepted) = counting_proxy(api.trim_start_matches("http://").to_string()).await;
    let out = tokio::task::spawn_blocking(move || {
        slipway_command().args(["cancel", "--wait", &id]).env("SLIPWAY_API", &proxy).output().unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let job: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(stderr.contains("waiting for job") && stderr.contains("it is running"), "{stderr}");
    let connections = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(connections <= 2, "{connections} connections for one wait");
}
