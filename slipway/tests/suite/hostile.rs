//! Hostile repositories and hostile output: content made to crash, hang or swell
//! the process ends in a clear error or in output with markers, and the process
//! lives on with bounded memory.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(120);

fn image(name: &str) -> String {
    format!("{}/hostile/{name}:{}", open_registry(), unique("t"))
}

/// A repository of the busybox app with `extra` files.
fn repo_with(git: &GitServer, name: &str, extra: Vec<(&str, Entry)>) -> String {
    let mut files = vec![("Dockerfile", Entry::Text(BUSYBOX_DOCKERFILE)), ("busybox", Entry::Busybox)];
    files.extend(extra);
    git.repo(name, &files)
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_repositories_fail_with_a_named_error_and_the_process_lives_on() {
    let context_limit = 32 << 20;
    let clone_limit = 3 * context_limit;
    let standalone = Standalone::start(&[
        ("SLIPWAY_WORKER_SLOTS", "4"),
        ("SLIPWAY_MAX_CONTEXT_BYTES", &context_limit.to_string()),
        ("SLIPWAY_MAX_CLONE_BYTES", &clone_limit.to_string()),
    ])
    .await;
    let idle = standalone.process.memory();
    let git = &standalone.git;
    let stars = "*".repeat(200_000);
    let backtracking = "*a*a*a*a*a*a*a*a*a*a*a*a*b\n";
    let long_name = format!("{}.txt", "a".repeat(200));
    let zeros = 2 * context_limit as usize;
    let cases = [
        ("stars", repo_with(git, "stars", vec![(".dockerignore", Entry::Text(&stars))]), "dockerignore_invalid"),
        (
            "dev-zero",
            repo_with(git, "zero", vec![(".dockerignore", Entry::Symlink("/dev/zero"))]),
            "dockerignore_invalid",
        ),
        ("zeros", repo_with(git, "big", vec![("zeros", Entry::Zeros(zeros))]), "context_too_large"),
        // A download larger than the clone may take.
        (
            "noise",
            repo_with(git, "noise", vec![("noise", Entry::Noise(clone_limit as usize + (1 << 20)))]),
            "clone_too_large",
        ),
        // A tiny pack whose checkout would write more than the clone may take.
        (
            "huge",
            repo_with(git, "huge", vec![("zeros", Entry::Zeros(clone_limit as usize + (1 << 20)))]),
            "clone_too_large",
        ),
    ];
    let backtracking_repo = repo_with(
        git,
        "backtracking",
        vec![(".dockerignore", Entry::Text(backtracking)), (long_name.as_str(), Entry::Text("x"))],
    );
    let mut ids = Vec::new();
    for (name, repo, _) in &cases {
        ids.push(submit(&standalone.api(), &json!({ "repo": repo, "image": image(name) })).await["id"].clone());
    }
    let body = json!({ "repo": backtracking_repo, "image": image("backtracking") });
    let backtracking_id = submit(&standalone.api(), &body).await["id"].as_str().unwrap().to_string();

    for ((name, _, code), id) in cases.iter().zip(&ids) {
        let job = wait_finished(&standalone.api(), id.as_str().unwrap(), LIMIT).await;
        assert_eq!(
            (job["state"].as_str(), job["error"]["code"].as_str()),
            (Some("failed"), Some(*code)),
            "{name}: {job}"
        );
        assert_eq!(job["attempt"], 1, "{name}: a job that cannot be built is not retried: {job}");
    }
    // The noise is stopped while it downloads, the zeros before they are written.
    for (name, said) in [("noise", "its download"), ("huge", "its files")] {
        let at = cases.iter().position(|c| c.0 == name).unwrap();
        let job = get_job(&standalone.api(), id_of(&ids[at])).await;
        let message = job["error"]["message"].as_str().unwrap();
        assert!(message.contains(said) && message.contains("SLIPWAY_MAX_CLONE_BYTES"), "{name}: {message}");
    }
    let job = wait_finished(&standalone.api(), &backtracking_id, LIMIT).await;
    assert_eq!(job["state"], "succeeded", "a pattern made to backtrack is matched in linear time: {job}");

    let (peak, grew) = (standalone.process.peak_memory(), standalone.process.peak_memory().saturating_sub(idle));
    eprintln!("standalone memory: {} MiB idle, peak {} MiB with the hostile repositories", idle >> 20, peak >> 20);
    // The clone holds the file once (libgit2 inflates a blob whole to check it out);
    // the build context never holds it again.
    assert!(grew < zeros as u64 * 3 / 2, "the {zeros}-byte file was held twice: grew {grew} bytes");
    assert_eq!(get_job(&standalone.api(), id_of(&ids[0])).await["state"], "failed", "the API still answers");
}

/// Submits a job that must succeed; its container's standard output, line by line.
async fn run_and_read(standalone: &Standalone, body: &serde_json::Value) -> Vec<String> {
    let id = submit(&standalone.api(), body).await["id"].as_str().unwrap().to_string();
    let job = wait_finished(&standalone.api(), &id, LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    all_logs(&standalone.api(), &id)
        .await
        .iter()
        .filter(|l| l["stream"] == "stdout")
        .map(|l| l["line"].as_str().unwrap().to_string())
        .collect()
}

fn id_of(id: &serde_json::Value) -> &str {
    id.as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_output_is_kept_with_markers_and_no_line_is_lost_without_one() {
    let standalone = Standalone::start(&[("SLIPWAY_MAX_LOG_BYTES", "67108864")]).await;
    let idle = standalone.process.memory();
    let repo = &standalone.repo;
    let run = |script: &str| json!({ "repo": repo, "image": image("output"), "run": { "command": ["/bin/busybox", "sh", "-c", script] } });

    // 50 MB with no newline, alone: read in bounded memory.
    let long = "/bin/busybox head -c 50000000 /dev/zero | /bin/busybox tr '\\000' y";
    let last = run_and_read(&standalone, &run(long)).await.pop().unwrap();
    let peak = standalone.process.peak_memory();
    eprintln!("standalone memory: {} MiB idle, peak {} MiB after a 50 MB line", idle >> 20, peak >> 20);
    assert!(peak.saturating_sub(idle) < 32 << 20, "the 50 MB line was held: peak {peak}, idle {idle}");

    // A 5 MB line, the line after it, 2,000 lines of 10 KB, and the 50 MB line again.
    let script = "b=/bin/busybox; $b head -c 5000000 /dev/zero | $b tr '\\000' x; echo; echo after-the-long-line; \
                  i=0; while [ $i -lt 2000 ]; do $b head -c 10000 /dev/zero | $b tr '\\000' z; echo; i=$((i+1)); done; \
                  echo after-the-many-lines; $b head -c 50000000 /dev/zero | $b tr '\\000' y";
    let lines = run_and_read(&standalone, &run(script)).await;
    let max = 64 * 1024;
    // A cut line: `max` bytes of `kept`, then a marker counting what was cut (at
    // least the rest of the line: Docker 20.10's follow mode may repeat an entry, a
    // part of a long line included). Told apart briefly: the lines are too long to print.
    let check_cut = |line: &str, kept: u8, total: usize, what: &str| {
        let tail = &line[line.len().saturating_sub(90)..];
        let odd = line.bytes().take(max).position(|b| b != kept);
        let marker = line.get(max..).unwrap_or_default();
        let cut: Option<usize> = marker
            .strip_prefix(" [slipway: ")
            .and_then(|m| m.strip_suffix(&format!(" more bytes of this line cut at {max} bytes]")))
            .and_then(|n| n.parse().ok());
        assert!(
            odd.is_none() && cut.is_some_and(|cut| cut >= total - max),
            "{what}: {} bytes, first odd byte at {odd:?}, ending {tail:?}",
            line.len()
        );
    };
    check_cut(&lines[0], b'x', 5_000_000, "the 5 MB line keeps its start and says what was cut");
    assert_eq!(lines[1], "after-the-long-line");
    let tens = lines.iter().filter(|l| l.len() == 10_000 && l.bytes().all(|b| b == b'z')).count();
    // At least: the engine's follow mode (Docker 20.10) may send an entry twice.
    assert!(tens >= 2000, "every 10 KB line is stored whole: {tens} of 2000");
    let after = lines.iter().position(|l| l == "after-the-many-lines").expect("the line after the many");
    assert_eq!(after, 2 + tens, "nothing but the 10 KB lines between");
    check_cut(lines.last().unwrap(), b'y', 50_000_000, "the unterminated 50 MB line ends the log, cut");
    check_cut(&last, b'y', 50_000_000, "alone, the 50 MB line is cut the same way");
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_leftovers_touches_only_what_slipway_made() {
    use slipway_steps::docker::leftovers::{Leftover, remove};
    let docker = slipway_steps::docker::connect().unwrap();
    // An image and a container someone else made on the same engine.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY busybox /bin/busybox\n").unwrap();
    std::fs::copy(env("SLIPWAY_TEST_BUSYBOX"), dir.path().join("busybox")).unwrap();
    let name = format!("stranger-{}:1", unique("t"));
    docker_cli(&["build", "-q", "-t", &name, &dir.path().display().to_string()]);
    let container = docker_cli(&["create", &name, "/bin/busybox", "true"]);
    let disguised = format!("slipway-jobs/other-installation:{}", unique("job"));
    docker_cli(&["tag", &name, &disguised]);

    let job_id = "01a22ee5-2edf-73b7-8e61-c91417b10ac9".to_string();
    let attempts = [
        Leftover::Container { id: container.clone(), job_id: job_id.clone() },
        Leftover::Image { id: name.clone(), job_id: job_id.clone() },
        Leftover::Image { id: disguised.clone(), job_id: disguised.rsplit(':').next().unwrap().to_string() },
    ];
    for leftover in &attempts {
        let refused = remove(&docker, leftover).await.unwrap_err();
        assert!(refused.message.contains("not made by Slipway"), "{leftover:?}: {}", refused.message);
    }
    // All still there.
    docker_cli(&["inspect", &container]);
    docker_cli(&["image", "inspect", &name]);
    docker_cli(&["image", "inspect", &disguised]);
    docker_cli(&["rm", &container]);
    docker_cli(&["rmi", &name, &disguised]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_s_container_runs_within_its_limits_and_gains_no_privileges() {
    let standalone = Standalone::start(&[("SLIPWAY_RUN_MEMORY", "256m"), ("SLIPWAY_RUN_PIDS", "64")]).await;
    let script = "b=/bin/busybox; $b cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null; \
                  $b cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max 2>/dev/null; $b grep NoNewPrivs /proc/self/status";
    let body = json!({ "repo": standalone.repo, "image": image("limits"), "run": { "command": ["/bin/busybox", "sh", "-c", script] } });
    let lines = run_and_read(&standalone, &body).await;
    assert!(lines.contains(&(256u64 << 20).to_string()), "no 256 MiB memory limit: {lines:?}");
    assert!(lines.contains(&"64".to_string()), "no limit of 64 processes: {lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')), "{lines:?}");

    // A job may ask for its own size, within the worker's maximum.
    let cpu = "b=/bin/busybox; $b cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null; \
               $b cat /sys/fs/cgroup/cpu.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null; true";
    let command = json!(["/bin/busybox", "sh", "-c", cpu]);
    let body = json!({ "repo": standalone.repo, "image": image("sized"), "run": { "command": command, "memory": 64, "cpu": 512 } });
    let lines = run_and_read(&standalone, &body).await;
    assert!(lines.contains(&(64u64 << 20).to_string()), "no 64 MiB memory limit: {lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("50000")), "no half-CPU quota (50000 µs a 100 ms period): {lines:?}");
    let body = json!({ "repo": standalone.repo, "image": image("greedy"), "run": { "memory": 64 * 1024 } });
    let id = submit(&standalone.api(), &body).await["id"].as_str().unwrap().to_string();
    let job = wait_finished(&standalone.api(), &id, LIMIT).await;
    assert_eq!((job["state"].as_str(), job["error"]["code"].as_str()), (Some("failed"), Some("run_failed")), "{job}");
    assert!(job["error"]["message"].as_str().unwrap().contains("SLIPWAY_RUN_MAX_MEMORY"), "{job}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_and_slow_http_clients_are_closed_and_the_api_answers_again() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let settings = [("SLIPWAY_HTTP_MAX_CONNECTIONS", "50"), ("SLIPWAY_HTTP_HEADER_TIMEOUT", "1s")];
    let standalone = Standalone::start(&settings).await;
    let addr = standalone.api().trim_start_matches("http://").to_string();

    // 200 connections that send nothing, and one that sends half a request head.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
    // While they hold every place, a new client still gets in: it takes the place
    // of the oldest idle connection (an idle keep-alive of its own may have been
    // that one, so it comes on a new connection).
    let fresh = client_with(reqwest::Client::builder().pool_max_idle_per_host(0));
    let started = std::time::Instant::now();
    let health = fresh.get(format!("{}/healthz", standalone.api())).send().await.unwrap();
    assert_eq!(health.status(), 200);
    eprintln!("/healthz with 201 hostile connections at a cap of 50: {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Past the header timeout every one of them is closed by the server (a few
    // seconds of slack for a loaded machine).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut closed = 0;
    for stream in idle.iter_mut().chain(std::iter::once(&mut slow)) {
        let mut byte = [0u8; 1];
        // The end of the stream, or a reset (one over the cap, dropped with its
        // half-sent head unread): closed either way.
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout_at(deadline, stream.read(&mut byte)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 201, "connections left open by the server");
    let started = std::time::Instant::now();
    let health = fresh.get(format!("{}/healthz", standalone.api())).send().await.unwrap();
    assert_eq!(health.status(), 200);
    eprintln!("/healthz after 201 hostile connections were closed: {:?}", started.elapsed());

    // A body announced and never sent: 408 with the JSON error body, no row.
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
        test_token().secret
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repository_on_an_internal_host_is_refused_by_its_resolved_address_and_the_scheme_by_policy() {
    // The launcher allows 127.0.0.1 (the tests' git server) and nothing else: the
    // same server named `localhost` resolves to a loopback address it does not allow.
    let standalone = Standalone::start(&[]).await;
    let api = standalone.api();
    let port = standalone.repo.rsplit_once(':').unwrap().1.split('/').next().unwrap().to_string();
    let by_name = format!("git://localhost:{port}/app");
    let job = submit(&api, &json!({ "repo": by_name, "image": image("by-name") })).await;
    let job = wait_finished(&api, id_of(&job["id"]), LIMIT).await;
    assert_eq!(
        (job["state"].as_str(), job["error"]["code"].as_str()),
        (Some("failed"), Some("repo_not_allowed")),
        "{job}"
    );
    let message = job["error"]["message"].as_str().unwrap();
    assert!(message.contains("localhost") && message.contains("internal address"), "{message}");
    assert_eq!(job["attempt"], 1, "a refused host is not retried: {job}");

    // A server that does not allow insecure schemes refuses git:// at submission.
    let strict = Standalone::start(&[("SLIPWAY_REPO_ALLOW_INSECURE", "false")]).await;
    let body = json!({ "repo": strict.repo, "image": image("strict") });
    let response = http().post(format!("{}/v1/jobs", strict.api())).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("repo")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("SLIPWAY_REPO_ALLOW_INSECURE"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_s_container_reaches_neither_another_job_nor_the_worker_s_port() {
    let standalone = Standalone::start(&[]).await;
    let api = standalone.api();
    // A job that says its address and listens.
    let listen = "b=/bin/busybox; echo ip=$($b ip -4 -o addr show eth0 | $b awk '{print $4}' | $b cut -d/ -f1); \
                  echo gw=$($b ip route | $b awk '/default/ {print $3}'); $b nc -l -p 8080";
    let body = json!({ "repo": standalone.repo, "image": image("listener"),
                       "run": { "command": ["/bin/busybox", "sh", "-c", listen], "timeout_seconds": 120 } });
    let listener = submit(&api, &body).await["id"].as_str().unwrap().to_string();
    let said = |key: &'static str| {
        let (api, listener) = (api.clone(), listener.clone());
        async move {
            let deadline = std::time::Instant::now() + LIMIT;
            loop {
                let lines = all_logs(&api, &listener).await;
                if let Some(value) = lines.iter().filter_map(|l| l["line"].as_str()?.strip_prefix(key)).next() {
                    return value.to_string();
                }
                assert!(std::time::Instant::now() < deadline, "the listener never said {key}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let (ip, gateway) = (said("ip=").await, said("gw=").await);
    assert!(!ip.is_empty() && !gateway.is_empty(), "{ip} {gateway}");

    // Another job tries the listener, and the worker's port through the gateway.
    let worker_port = standalone.ports.worker;
    let probe = format!(
        "b=/bin/busybox; for target in '{ip} 8080' '{gateway} {worker_port}'; do \
         if echo x | $b nc -w 3 $target; then echo \"reached $target\"; else echo \"unreachable $target\"; fi; done"
    );
    let body = json!({ "repo": standalone.repo, "image": image("probe"),
                       "run": { "command": ["/bin/busybox", "sh", "-c", probe] } });
    let lines = run_and_read(&standalone, &body).await;
    assert!(lines.contains(&format!("unreachable {ip} 8080")), "a job reached another job: {lines:?}");
    assert!(lines.contains(&format!("unreachable {gateway} {worker_port}")), "a job reached the worker: {lines:?}");
    cancel(&api, &listener).await;
    wait_finished(&api, &listener, LIMIT).await;

    let network = docker_cli(&["network", "inspect", "slipway-jobs", "--format", "{{json .Options}}"]);
    assert!(network.contains("\"com.docker.network.bridge.enable_icc\":\"false\""), "{network}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_classic_builder_builds_within_the_run_limits() {
    let standalone = Standalone::start(&[("SLIPWAY_BUILDER", "classic"), ("SLIPWAY_RUN_MEMORY", "256m")]).await;
    // A step of its own (never from the cache): it says the limit it runs within.
    let dockerfile = format!(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo {}; /bin/busybox cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null; true\"]\n",
        unique("step")
    );
    let repo = repo_with(&standalone.git, "limited-build", vec![("Dockerfile", Entry::Text(&dockerfile))]);
    let body = json!({ "repo": repo, "image": image("limited-build"), "run": { "command": ["/bin/busybox", "true"] } });
    let id = submit(&standalone.api(), &body).await["id"].as_str().unwrap().to_string();
    let job = wait_finished(&standalone.api(), &id, LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let lines = all_logs(&standalone.api(), &id).await;
    let limit = (256u64 << 20).to_string();
    let texts: Vec<&str> = lines.iter().filter_map(|l| l["line"].as_str()).collect();
    assert!(texts.contains(&limit.as_str()), "the build step had no 256 MiB limit: {texts:?}");
}
