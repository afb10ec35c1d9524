//! One job is one trace: separate server and worker processes export their spans
//! over OTLP to a receiver in this test, which checks one trace id, the parent links
//! across processes and the step spans with their attributes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use serde_json::json;

/// A received span: its service, name, ids and string attributes.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: BTreeMap<String, String>,
    error: bool,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref().and_then(|v| v.value.clone()) {
                    Some(AnyValue::StringValue(s)) => Some(s),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let attributes = span
                        .attributes
                        .iter()
                        .filter_map(|kv| match kv.value.as_ref().and_then(|v| v.value.clone()) {
                            Some(AnyValue::StringValue(s)) => Some((kv.key.clone(), s)),
                            Some(AnyValue::IntValue(i)) => Some((kv.key.clone(), i.to_string())),
                            _ => None,
                        })
                        .collect();
                    spans.push(Received {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes,
                        error: span.status.is_some_and(|s| s.code == 2),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_is_one_trace_across_the_server_and_the_worker() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let otel = |service: &str| {
        BTreeMap::from([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            ("OTEL_SERVICE_NAME", service.to_string()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ])
    };

    let db = TestDb::new().await;
    let git = GitServer::start();
    let repo = app_repo(&git, "app");
    let work_dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let _worker = spawn_worker("worker", ports.worker, work_dir.path(), otel("test-worker"));
    let _server = spawn_server("server", &db.url, &ports, &[ports.worker], otel("test-server"));
    wait_healthy(&ports.api(), Duration::from_secs(30)).await;

    // A container that prints the trace context it was given.
    let body = json!({
        "repo": repo,
        "image": format!("{}/traces/app:{}", open_registry(), unique("t")),
        "run": { "command": ["/bin/busybox", "sh", "-c", "echo traceparent=$TRACEPARENT"] },
    });
    let id = submit(&ports.api(), &body).await["id"].as_str().unwrap().to_string();
    let job = wait_finished(&ports.api(), &id, Duration::from_secs(120)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let stored: String = sqlx::query_scalar("select traceparent from jobs where id = $1::uuid")
        .bind(&id)
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    let trace_id = stored.split('-').nth(1).unwrap().to_string();

    // Wait for the worker's run span and the server's final commit to arrive.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans: Vec<Received> =
            receiver.spans.lock().unwrap().iter().filter(|s| s.trace_id == trace_id).cloned().collect();
        let has = |service: &str, name: &str| spans.iter().any(|s| s.service == service && s.name == name);
        if has("test-worker", "worker.job")
            && has("test-server", "job.submit")
            && spans.iter().filter(|s| s.name == "orchestrator.commit").count() >= 5
        {
            break spans;
        }
        assert!(Instant::now() < deadline, "spans missing: {spans:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let by_name = |name: &str| spans.iter().filter(|s| s.name == name).collect::<Vec<_>>();
    let submit_span = by_name("job.submit")[0];
    let dispatch = by_name("orchestrator.dispatch")[0];
    let run = by_name("worker.job")[0];
    assert_eq!(submit_span.service, "test-server");
    assert_eq!(dispatch.parent_span_id, submit_span.span_id, "the dispatch continues the submission");
    assert_eq!(dispatch.service, "test-server");
    assert_eq!(run.service, "test-worker");
    assert_eq!(run.parent_span_id, dispatch.span_id, "the worker's run is a child of the server's dispatch");
    assert_eq!(run.attributes.get("job.id"), Some(&id));

    let steps = by_name("step");
    let mut names: Vec<&str> = steps.iter().map(|s| s.attributes["job.step"].as_str()).collect();
    names.sort();
    assert_eq!(names, ["build", "clone", "push", "run"]);
    assert!(steps.iter().all(|s| s.parent_span_id == run.span_id && !s.error));
    for child in ["git.fetch", "docker.build", "docker.push", "container.create", "container.wait"] {
        let child_span = by_name(child);
        assert_eq!(child_span.len(), 1, "{child}");
        assert!(steps.iter().any(|s| s.span_id == child_span[0].parent_span_id), "{child} is inside a step");
    }
    let digest = job["pushed_ref"].as_str().unwrap().split_once('@').unwrap().1;
    assert_eq!(by_name("docker.push")[0].attributes.get("image.digest").map(String::as_str), Some(digest));
    assert!(by_name("orchestrator.commit").iter().all(|s| s.service == "test-server"));

    // A failed step marks its span as an error.
    let body = json!({
        "repo": repo,
        "image": format!("{}/traces/app:{}", open_registry(), unique("t")),
        "run": { "command": ["/bin/busybox", "sh", "-c", "exit 3"] },
    });
    let failed = submit(&ports.api(), &body).await["id"].as_str().unwrap().to_string();
    assert_eq!(wait_finished(&ports.api(), &failed, Duration::from_secs(120)).await["state"], "failed");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans = receiver.spans.lock().unwrap().clone();
        let failed_run = spans.iter().find(|s| {
            s.name == "step"
                && s.attributes.get("job.id") == Some(&failed)
                && s.attributes.get("job.step").map(String::as_str) == Some("run")
        });
        if let Some(span) = failed_run {
            assert!(span.error, "{span:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the failed run's span never arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The container got the trace context of its step.
    let lines = all_logs(&ports.api(), &id).await;
    let printed = lines.iter().find_map(|l| l["line"].as_str()?.strip_prefix("traceparent=")).unwrap().to_string();
    assert_eq!(printed.split('-').nth(1), Some(trace_id.as_str()));
}
