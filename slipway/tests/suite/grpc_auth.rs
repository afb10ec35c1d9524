//! Who may call the gRPC services: the worker's `JobService` only orchestrators of
//! the installation's CA, the `ReportService` only its workers, each on its own
//! leases. Everything else is refused before it does anything.

use std::time::Duration;

use serde_json::json;
use slipway_proto::tls::{Server, TlsIdentity, WORKER_NAME};
use slipway_proto::v1::{self, job_service_client::JobServiceClient, report_service_client::ReportServiceClient};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(60);

/// The identity `tls_env` issued for `role`.
fn identity(role: TlsRole) -> TlsIdentity {
    let files = tls_env(role);
    let path = |name| std::path::PathBuf::from(&files[name]);
    TlsIdentity::read(&path("SLIPWAY_TLS_CA"), &path("SLIPWAY_TLS_CERT"), &path("SLIPWAY_TLS_KEY")).unwrap()
}

/// An orchestrator's identity from a CA of another installation.
fn foreign_orchestrator(dir: &std::path::Path) -> TlsIdentity {
    let run = |args: &[&str]| {
        let out = slipway_command().arg("certs").args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let dir_text = dir.display().to_string();
    run(&["init", &dir_text]);
    run(&["issue", "--dir", &dir_text, "--orchestrator", "elsewhere"]);
    TlsIdentity::read(&dir.join("ca.pem"), &dir.join("elsewhere.pem"), &dir.join("elsewhere.key")).unwrap()
}

fn channel(endpoint: Endpoint) -> Channel {
    endpoint.connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(10)).connect_lazy()
}

fn worker_client(tls: &TlsIdentity, port: u16) -> JobServiceClient<Channel> {
    JobServiceClient::new(channel(tls.endpoint(&format!("https://127.0.0.1:{port}"), Server::Worker).unwrap()))
}

fn report_client(tls: &TlsIdentity, port: u16) -> ReportServiceClient<Channel> {
    ReportServiceClient::new(channel(tls.endpoint(&format!("https://127.0.0.1:{port}"), Server::Orchestrator).unwrap()))
}

fn ping() -> v1::PingRequest {
    v1::PingRequest { report_to: "https://127.0.0.1:1".into() }
}

/// A "succeeded, exit 0" report of `lease`'s run.
fn forged_success(lease: v1::Lease) -> v1::StepReport {
    v1::StepReport {
        lease: Some(lease),
        step: v1::Step::Run as i32,
        event: Some(v1::step_report::Event::Succeeded(v1::StepOutputs::default())),
        exit_code: Some(0),
        then_start: 0,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_grpc_services_admit_only_the_other_role_and_reports_only_on_a_worker_s_own_leases() {
    let db = TestDb::new().await;
    let git = GitServer::start();
    let work = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let _worker = spawn_worker("worker-a", ports.worker, work.path(), []);
    let _server = spawn_server("orchestrator", &db.url, &ports, &[ports.worker], []);
    let api = ports.api();
    wait_healthy(&api, Duration::from_secs(30)).await;

    // The worker: an orchestrator of this installation gets in.
    let orchestrator = identity(TlsRole::Orchestrator);
    worker_client(&orchestrator, ports.worker).ping(ping()).await.expect("an orchestrator may ping");

    // No client certificate: the handshake fails.
    let ca = Certificate::from_pem(std::fs::read(test_ca().join("ca.pem")).unwrap());
    let anonymous = Endpoint::from_shared(format!("https://127.0.0.1:{}", ports.worker))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(ca).domain_name(WORKER_NAME))
        .unwrap();
    let refused = JobServiceClient::new(channel(anonymous)).ping(ping()).await.unwrap_err();
    assert_ne!(refused.code(), tonic::Code::Ok, "{refused:?}");
    // Plaintext: no answer either.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{}", ports.worker)).unwrap();
    assert!(JobServiceClient::new(channel(plain)).ping(ping()).await.is_err(), "a plaintext call was answered");
    // Another installation's orchestrator: its certificate is not from this CA.
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = foreign_orchestrator(&foreign_dir.path().join("ca"));
    assert!(worker_client(&foreign, ports.worker).ping(ping()).await.is_err(), "a foreign CA's certificate got in");
    // A worker's certificate, valid here, may not call a worker.
    let other_worker = identity(TlsRole::Worker("worker-b"));
    let denied = worker_client(&other_worker, ports.worker).ping(ping()).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let leftovers = v1::RemoveLeftoversRequest::default();
    let denied = worker_client(&other_worker, ports.worker).remove_leftovers(leftovers).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    // An orchestrator's StartJob is still checked: a path for a job id is refused.
    let start = v1::StartJobRequest {
        lease: Some(v1::Lease {
            job_id: "../../../../victim".into(),
            attempt: 1,
            lease_token: "t".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let invalid = worker_client(&orchestrator, ports.worker).start_job(start).await.unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument, "{invalid:?}");

    // The report service: a job running on worker-a, with its real lease token.
    let body = json!({
        "repo": app_repo(&git, "app"),
        "image": format!("{}/grpc-auth/app:{}", open_registry(), unique("t")),
        "run": { "command": sleeping_command(30) },
    });
    let id = submit(&api, &body).await["id"].as_str().unwrap().to_string();
    wait_state(&api, &id, "running", LIMIT).await;
    let token: String = sqlx::query_scalar("select lease_token::text from jobs where id = $1::uuid")
        .bind(&id)
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    let lease = |worker: &str| v1::Lease {
        job_id: id.clone(),
        attempt: 1,
        lease_token: token.clone(),
        worker_id: worker.into(),
    };

    // An orchestrator may not report.
    let denied =
        report_client(&orchestrator, ports.grpc).report_step(forged_success(lease("worker-a"))).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    // Another worker naming worker-a: refused for the certificate it presents.
    let mut as_b = report_client(&other_worker, ports.grpc);
    let denied = as_b.report_step(forged_success(lease("worker-a"))).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("worker-b"), "{}", denied.message());
    // Another worker naming itself, with worker-a's token: the lease is not its own.
    let answer = as_b.report_step(forged_success(lease("worker-b"))).await.unwrap().into_inner();
    assert!(!answer.accepted, "a report on another worker's lease was accepted");
    let line = v1::LogLine {
        step: v1::Step::Run as i32,
        stream: v1::Stream::Stdout as i32,
        text: "forged".into(),
        at_micros: 0,
        cursor: String::new(),
    };
    let logs = v1::LogBatch { lease: Some(lease("worker-b")), lines: vec![line] };
    assert!(!as_b.append_logs(logs).await.unwrap().into_inner().accepted, "forged log lines were accepted");

    let job = get_job(&api, &id).await;
    assert_eq!(job["state"], "running", "a forged report changed the job: {job}");
    cancel(&api, &id).await;
    let job = wait_finished(&api, &id, LIMIT).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(!all_logs(&api, &id).await.iter().any(|l| l["line"] == "forged"), "a forged log line was kept");
}
