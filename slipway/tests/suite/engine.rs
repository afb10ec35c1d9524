//! A wedged engine is noticed, not retried into: a BuildKit that never starts a
//! build is left for the classic builder, and a worker whose engine answers
//! nothing takes no job (its ping, `/metrics` and gRPC health say so) while the
//! orchestrator sends work elsewhere. Two networks of the jobs' name (an engine
//! before API 1.44 lets workers racing to make it make two) stop no job.

use std::time::Duration;

use serde_json::json;
use slipway_proto::tls::{Server, TlsIdentity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(120);

fn image(name: &str) -> String {
    format!("{}/engine/{name}:{}", open_registry(), unique("t"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wedged_buildkit_is_left_for_the_classic_builder_and_the_job_still_builds() {
    let engine = EngineDouble::wedged_buildkit();
    let standalone = Standalone::start(&[
        ("DOCKER_HOST", &engine.docker_host()),
        ("SLIPWAY_BUILD_START_TIMEOUT", "2s"),
        ("SLIPWAY_WORKER_SLOTS", "1"),
    ])
    .await;
    let api = standalone.api();
    let body = json!({ "repo": standalone.repo, "image": image("first") });
    let id = submit(&api, &body).await["id"].as_str().unwrap().to_string();
    let job = wait_finished(&api, &id, LIMIT).await;
    assert_eq!((job["state"].as_str(), job["attempt"].as_i64()), (Some("succeeded"), Some(1)), "{job}");
    let lines: Vec<String> =
        all_logs(&api, &id).await.iter().filter_map(|l| l["line"].as_str().map(String::from)).collect();
    let said = lines.iter().find(|l| l.contains("SLIPWAY_BUILD_START_TIMEOUT"));
    let said = said.unwrap_or_else(|| panic!("the log does not say why: {lines:?}"));
    assert!(said.contains("classic builder"), "{said}");

    // The next job goes to the classic builder at once.
    let body = json!({ "repo": standalone.repo, "image": image("second") });
    let id = submit(&api, &body).await["id"].as_str().unwrap().to_string();
    let job = wait_finished(&api, &id, LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let lines: Vec<String> =
        all_logs(&api, &id).await.iter().filter_map(|l| l["line"].as_str().map(String::from)).collect();
    assert!(lines.iter().any(|l| l == "sending a build context to the classic builder"), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("SLIPWAY_BUILD_START_TIMEOUT")), "{lines:?}");
}

/// The value of `slipway_worker_healthy` for `worker` on a `/metrics` page.
async fn healthy_metric(metrics: &str, worker: &str) -> Option<f64> {
    let text = http().get(format!("http://{metrics}/metrics")).send().await.ok()?.text().await.ok()?;
    let series = format!("slipway_worker_healthy{{worker=\"{worker}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_whose_engine_answers_nothing_takes_no_job_and_says_so() {
    let engine = EngineDouble::wedged();
    let db = TestDb::new().await;
    let git = GitServer::start();
    let work = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let healthy_port = free_port();
    let metrics = format!("127.0.0.1:{}", free_port());
    let wedged_env = settings(&[("DOCKER_HOST", &engine.docker_host()), ("SLIPWAY_WORKER_METRICS_ADDR", &metrics)]);
    let _wedged = spawn_worker("worker-wedged", ports.worker, work.path(), wedged_env);
    let _server = spawn_server("orchestrator", &db.url, &ports, &[ports.worker, healthy_port], []);
    let api = ports.api();
    wait_healthy(&api, Duration::from_secs(30)).await;

    // Its watch finds the engine silent: /metrics and the gRPC health service say so.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while healthy_metric(&metrics, "worker-wedged").await != Some(0.0) {
        assert!(std::time::Instant::now() < deadline, "the wedged worker never said it is unhealthy");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let files = tls_env(TlsRole::Orchestrator);
    let path = |name| std::path::PathBuf::from(&files[name]);
    let tls = TlsIdentity::read(&path("SLIPWAY_TLS_CA"), &path("SLIPWAY_TLS_CERT"), &path("SLIPWAY_TLS_KEY")).unwrap();
    let channel = tls.endpoint(&format!("https://127.0.0.1:{}", ports.worker), Server::Worker).unwrap().connect_lazy();
    let request = HealthCheckRequest { service: "slipway.v1.JobService".into() };
    let status = HealthClient::new(channel).check(request).await.unwrap().into_inner().status;
    assert_eq!(status, ServingStatus::NotServing as i32);

    // The orchestrator sends it nothing: the job waits.
    let body = json!({ "repo": app_repo(&git, "app"), "image": image("waits") });
    let id = submit(&api, &body).await["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let job = get_job(&api, &id).await;
    assert_eq!((job["state"].as_str(), job["attempt"].as_i64()), (Some("queued"), Some(1)), "{job}");

    // A healthy worker takes it.
    let _healthy = spawn_worker("worker-healthy", healthy_port, work.path(), []);
    let job = wait_finished(&api, &id, LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(job["steps"].as_array().unwrap().iter().all(|s| s["worker"] == "worker-healthy"), "{job}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_network_of_the_jobs_name_stops_no_job_and_is_removed() {
    let standalone = Standalone::start(&[]).await;
    let api = standalone.api();
    // The network, then another of the same name, as two workers racing make them
    // (the engine's API without CheckDuplicate; a newer engine refuses the second).
    let body = json!({ "repo": standalone.repo, "image": image("network") });
    let first = submit(&api, &body).await["id"].as_str().unwrap().to_string();
    assert_eq!(wait_finished(&api, &first, LIMIT).await["state"], "succeeded");
    let made = std::process::Command::new("curl")
        .args(["-s", "--unix-socket", "/var/run/docker.sock", "-H", "Content-Type: application/json"])
        .args(["-d", r#"{"Name": "slipway-jobs", "Labels": {"slipway.network": "jobs"}}"#])
        .arg("http://localhost/networks/create")
        .output()
        .unwrap();
    println!("second network: {}", String::from_utf8_lossy(&made.stdout));
    let second = submit(&api, &body).await["id"].as_str().unwrap().to_string();
    let job = wait_finished(&api, &second, LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let named = docker_cli(&["network", "ls", "--filter", "name=slipway-jobs", "--format", "{{.Name}}"]);
    assert_eq!(named.lines().filter(|n| *n == "slipway-jobs").count(), 1, "{named}");
}
