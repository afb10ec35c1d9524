//! Slipway's AWS clients against moto (ECR tokens, repositories, image deletion)
//! and against recorded ECS answers for what moto cannot produce (exit codes, stop
//! codes, a task ECS no longer knows).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::moto::{ACCOUNT, Moto, REGION};
use aws_config::retry::RetryConfig;
use aws_sdk_ecs::types::CpuArchitecture;
use serde_json::{Value, json};
use slipway_steps::ErrorCode;
use slipway_steps::aws::AwsConfig;
use slipway_steps::aws::ecr::{Ecr, EcrRegistry, RepositorySettings};
use slipway_steps::aws::ecs::definition::{DefinitionInput, family_of};
use slipway_steps::aws::ecs::task::task_end;
use slipway_steps::aws::ecs::{Ecs, EcsSettings};
use slipway_steps::runtime::{LaunchRequest, Runtime};
use slipway_steps::{LogSink, Step};
use std::collections::HashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ecr_registry() -> EcrRegistry {
    EcrRegistry::parse(&format!("{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn ecr_gives_push_credentials_and_repositories_are_made_once_as_configured() {
    let moto = Moto::start();
    let settings = RepositorySettings { immutable_tags: true, scan_on_push: true };
    let ecr = Ecr::new(AwsConfig::from_sdk(moto.sdk().await), settings);
    let registry = ecr_registry();

    let credentials = ecr.credentials(&registry).await.unwrap();
    assert_eq!(credentials.username, "AWS");
    assert_eq!(credentials.password, format!("{ACCOUNT}-auth-token"));
    // moto's tokens expire in 2015: one already expired is never served from the cache.
    ecr.credentials(&registry).await.unwrap();
    assert_eq!(ecr.tokens_fetched(), 2);

    assert!(ecr.ensure_repository(&registry, "team/app").await.unwrap(), "made the first time");
    assert!(!ecr.ensure_repository(&registry, "team/app").await.unwrap(), "known the second time");
    // A repository deleted behind Slipway's back is made again once a push to it failed.
    let client = aws_sdk_ecr::Client::new(&moto.sdk().await);
    client.delete_repository().repository_name("team/app").send().await.unwrap();
    ecr.forget_repository(&registry, "team/app").await;
    assert!(ecr.ensure_repository(&registry, "team/app").await.unwrap(), "made again");
    let described = client.describe_repositories().repository_names("team/app").send().await.unwrap();
    let repository = &described.repositories()[0];
    assert_eq!(repository.image_tag_mutability().map(|m| m.as_str()), Some("IMMUTABLE"));
    assert_eq!(repository.image_scanning_configuration().map(|c| c.scan_on_push()), Some(true));

    // An image Slipway pushed is deleted by digest; a second delete finds it gone.
    let manifest = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},"layers":[]}"#;
    let put = client.put_image().repository_name("team/app").image_manifest(manifest).image_tag("v1").send().await;
    let digest = put.unwrap().image().unwrap().image_id().unwrap().image_digest().unwrap().to_string();
    assert!(ecr.delete_image(&registry, "team/app", &digest).await.unwrap());
    let left = client.list_images().repository_name("team/app").send().await.unwrap();
    assert!(left.image_ids().is_empty(), "{left:?}");
    assert!(!ecr.delete_image(&registry, "team/app", &digest).await.unwrap());
    assert!(!ecr.delete_image(&registry, "no/such/repo", &digest).await.unwrap());
}

/// One call the recorded server expects and how it answers: the operation (the end
/// of `X-Amz-Target`), fields the request must carry (a JSON subset), and the
/// recorded answer.
struct Exchange {
    operation: &'static str,
    expect: Value,
    status: u16,
    body: String,
}

impl Exchange {
    fn ok(operation: &'static str, expect: Value, body: String) -> Self {
        Exchange { operation, expect, status: 200, body }
    }
}

/// A loopback server that answers the n-th call with the n-th exchange (the last
/// one again past the end), checking that each call is the one expected. A wrong
/// call is answered `400 ClientException` and noted, so that the test fails.
struct Recorded {
    endpoint: String,
    calls: Arc<AtomicUsize>,
    /// Every request body, in order.
    requests: Arc<Mutex<Vec<Value>>>,
    wrong: Arc<Mutex<Vec<String>>>,
}

impl Recorded {
    async fn serve(exchanges: Vec<Exchange>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = Recorded {
            endpoint,
            calls: Arc::new(AtomicUsize::new(0)),
            requests: Arc::new(Mutex::new(Vec::new())),
            wrong: Arc::new(Mutex::new(Vec::new())),
        };
        let exchanges = Arc::new(exchanges);
        let (calls, requests, wrong) = (server.calls.clone(), server.requests.clone(), server.wrong.clone());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let (exchanges, calls, requests, wrong) =
                    (exchanges.clone(), calls.clone(), requests.clone(), wrong.clone());
                tokio::spawn(async move {
                    while let Some((target, body)) = read_request(&mut socket).await {
                        let n = calls.fetch_add(1, Ordering::SeqCst);
                        let exchange = &exchanges[n.min(exchanges.len() - 1)];
                        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        requests.lock().unwrap().push(request.clone());
                        let (status, body) = match check(exchange, &target, &request) {
                            Ok(()) => (exchange.status, exchange.body.clone()),
                            Err(why) => {
                                wrong.lock().unwrap().push(format!("call {n}: {why}"));
                                let message = json!({ "__type": "ClientException", "message": why }).to_string();
                                (400, message)
                            }
                        };
                        let head = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        if socket.write_all(head.as_bytes()).await.is_err()
                            || socket.write_all(body.as_bytes()).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        server
    }

    /// The SDK's configuration for this server, with no retries.
    async fn sdk(&self) -> aws_config::SdkConfig {
        crate::common::moto::sdk_at(&self.endpoint, "eu-west-1").await
    }

    /// Fails the test if any call was not the one expected.
    fn assert_asked_rightly(&self) {
        let wrong = self.wrong.lock().unwrap();
        assert!(wrong.is_empty(), "the recorded server was asked wrongly: {wrong:#?}");
    }

    fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }
}

/// Whether `request` is the call `exchange` expects.
fn check(exchange: &Exchange, target: &str, request: &Value) -> Result<(), String> {
    if !target.ends_with(&format!(".{}", exchange.operation)) {
        return Err(format!("expected {}, got {target}", exchange.operation));
    }
    if !contains(request, &exchange.expect) {
        return Err(format!("{} without {} in {request}", exchange.operation, exchange.expect));
    }
    Ok(())
}

/// Whether `have` carries everything in `want` (objects by key; anything else equal).
fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(have), Value::Object(want)) => {
            want.iter().all(|(k, w)| have.get(k).is_some_and(|h| contains(h, w)))
        }
        (have, want) => have == want,
    }
}

/// Reads one HTTP request: its `X-Amz-Target` and body; `None` at the end.
async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_string();
            let header = |name: &str| {
                head.lines()
                    .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)))
                    .map(|(_, v)| v.trim().to_string())
                    .unwrap_or_default()
            };
            let length: usize = header("content-length").parse().unwrap_or(0);
            let target = header("x-amz-target");
            while buffer.len() < end + 4 + length {
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            }
            return Some((target, buffer[end + 4..end + 4 + length].to_vec()));
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

fn recorded(name: &str) -> String {
    let path = format!("{}/tests/recorded/{name}.json", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn settings() -> EcsSettings {
    EcsSettings {
        cluster: "prod".into(),
        subnets: vec!["subnet-1".into()],
        security_groups: vec![],
        assign_public_ip: false,
        execution_role_arn: None,
        task_role_arn: None,
        log_group: "/slipway/jobs".into(),
        log_stream_prefix: "slipway".into(),
        region: Some("eu-west-1".into()),
        poll_min: Duration::from_millis(10),
        poll_max: Duration::from_millis(10),
    }
}

/// The recorded `DescribeTasks` answer `name`, and the ARN it answers for.
fn recorded_task(name: &str) -> (String, String) {
    let body = recorded(name);
    let answer: Value = serde_json::from_str(&body).unwrap();
    let arn = answer["tasks"][0]["taskArn"].as_str().or(answer["failures"][0]["arn"].as_str()).unwrap().to_string();
    (arn, body)
}

/// A server that expects one `DescribeTasks` of `arn` on the `prod` cluster.
async fn describing(arn: &str, body: String) -> Recorded {
    let expect = json!({ "cluster": "prod", "tasks": [arn], "include": ["TAGS"] });
    Recorded::serve(vec![Exchange::ok("DescribeTasks", expect, body)]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_tasks_are_classified_from_what_ecs_answers() {
    // (recorded DescribeTasks answer, the outcome: exit code, or error code, whether
    // retryable, and the exit code kept)
    type Outcome = Result<i64, (ErrorCode, bool, Option<i64>)>;
    let cases: [(&str, Outcome); 9] = [
        ("describe_tasks_exit_0", Ok(0)),
        ("describe_tasks_exit_3", Err((ErrorCode::ExitNonZero, false, Some(3)))),
        ("describe_tasks_cannot_pull", Err((ErrorCode::InfrastructureStop, true, None))),
        ("describe_tasks_resource_init", Err((ErrorCode::InfrastructureStop, true, None))),
        ("describe_tasks_spot", Err((ErrorCode::InfrastructureStop, true, None))),
        ("describe_tasks_scheduler", Err((ErrorCode::InfrastructureStop, true, None))),
        ("describe_tasks_user_stopped", Err((ErrorCode::TaskStopped, false, None))),
        ("describe_tasks_past_deadline", Err((ErrorCode::TimedOut, false, None))),
        // ECS reports an out-of-memory kill as exit 137 with its reason: the job's
        // own failure, not a plain non-zero exit, and not worth the same size again.
        ("describe_tasks_out_of_memory", Err((ErrorCode::RunFailed, false, Some(137)))),
    ];
    for (name, expected) in cases {
        let (arn, body) = recorded_task(name);
        let server = describing(&arn, body).await;
        let ecs = Ecs::new(&AwsConfig::from_sdk(server.sdk().await), settings());
        let task = ecs.describe(&arn).await.unwrap().expect(name);
        server.assert_asked_rightly();
        assert_eq!(task.task_arn(), Some(arn.as_str()), "{name}");
        let end = task_end(&task);
        match (ecs.outcome(&end), expected) {
            (Ok(code), Ok(want)) => assert_eq!(code, want, "{name}"),
            (Err(e), Err((code, retryable, exit_code))) => {
                assert_eq!((e.code, e.retryable(), e.exit_code), (code, retryable, exit_code), "{name}: {}", e.message);
            }
            (got, want) => panic!("{name}: got {got:?}, expected {want:?}"),
        }
    }
    let (arn, body) = recorded_task("describe_tasks_exit_3");
    let server = describing(&arn, body).await;
    let ecs = Ecs::new(&AwsConfig::from_sdk(server.sdk().await), settings());
    let end = task_end(&ecs.describe(&arn).await.unwrap().unwrap());
    assert_eq!(end.exit_code, Some(3));
    assert_eq!(end.stop_code.as_deref(), Some("EssentialContainerExited"));
    let message = ecs.outcome(&end).unwrap_err().message;
    assert!(
        message.contains("exited with code 3") && message.contains("Essential container in task exited"),
        "{message}"
    );
    let (arn, body) = recorded_task("describe_tasks_out_of_memory");
    let server = describing(&arn, body).await;
    let ecs = Ecs::new(&AwsConfig::from_sdk(server.sdk().await), settings());
    let message = ecs.outcome(&task_end(&ecs.describe(&arn).await.unwrap().unwrap())).unwrap_err().message;
    assert!(message.contains("ran out of memory") && message.contains("OutOfMemoryError"), "{message}");

    // A task ECS no longer knows (AWS answers MISSING) is not there to re-attach to.
    let (arn, body) = recorded_task("describe_tasks_missing");
    let server = describing(&arn, body).await;
    let ecs = Ecs::new(&AwsConfig::from_sdk(server.sdk().await), settings());
    assert!(ecs.describe(&arn).await.unwrap().is_none());
    server.assert_asked_rightly();

    // The fake fails a wrong request: asking for another task is refused, not answered.
    let (arn, body) = recorded_task("describe_tasks_exit_0");
    let server = describing(&arn, body).await;
    let ecs = Ecs::new(&AwsConfig::from_sdk(server.sdk().await), settings());
    assert!(ecs.describe("arn:aws:ecs:eu-west-1:123456789012:task/prod/0000").await.is_err());
    assert_eq!(server.wrong.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ecr_token_is_cached_until_shortly_before_it_expires() {
    let expires = |secs_from_now: u64| {
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + secs_from_now;
        format!(
            r#"{{"authorizationData":[{{"authorizationToken":"QVdTOnNlY3JldA==","expiresAt":{at},"proxyEndpoint":"https://{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com"}}]}}"#
        )
    };
    let token = |body: String| vec![Exchange::ok("GetAuthorizationToken", json!({}), body)];
    // Twelve hours: fetched once, then served from the cache.
    let server = Recorded::serve(token(expires(12 * 3600))).await;
    let ecr = Ecr::new(AwsConfig::from_sdk(server.sdk().await), RepositorySettings::default());
    let registry = EcrRegistry::parse(&format!("{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com")).unwrap();
    for _ in 0..3 {
        assert_eq!(ecr.credentials(&registry).await.unwrap().password, "secret");
    }
    assert_eq!(server.calls.load(Ordering::SeqCst), 1);
    server.assert_asked_rightly();
    // Five minutes, within the refresh margin: fetched every time.
    let server = Recorded::serve(token(expires(300))).await;
    let ecr = Ecr::new(AwsConfig::from_sdk(server.sdk().await), RepositorySettings::default());
    for _ in 0..2 {
        ecr.credentials(&registry).await.unwrap();
    }
    assert_eq!(server.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_run_task_asks_ecs_with_the_same_client_token() {
    let job_id = "0193a1b2-7c1d-7e2f-8a3b-4c5d6e7f8091";
    let definition: Value = serde_json::from_str(&recorded("describe_task_definition")).unwrap();
    let image = definition["taskDefinition"]["containerDefinitions"][0]["image"].as_str().unwrap().to_string();
    let request = LaunchRequest {
        job_id: job_id.into(),
        instance_id: "5f0c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f".into(),
        attempt: 2,
        image: image.clone(),
        env: HashMap::from([("GREETING".to_string(), "hi".to_string())]),
        secrets: Default::default(),
        command: vec!["/bin/busybox".into(), "echo".into(), "hi".into()],
        cpu: 512,
        memory: 1024,
        timeout: None,
        architecture: "x86_64".into(),
    };
    // The family is named by the definition's content, as the worker computes it.
    let probe = Ecs::new(
        &AwsConfig::from_sdk(crate::common::moto::sdk_at("http://127.0.0.1:9", "eu-west-1").await),
        settings(),
    );
    let input =
        DefinitionInput { image, cpu: 512, memory: 1024, architecture: CpuArchitecture::X8664, secrets: Vec::new() };
    let family = family_of(&input, &probe);
    let definition_arn = format!("arn:aws:ecs:eu-west-1:123456789012:task-definition/{family}:1");
    let run_task = json!({
        "cluster": "prod",
        "taskDefinition": definition_arn,
        "launchType": "FARGATE",
        "count": 1,
        "clientToken": format!("{job_id}-2"),
        "startedBy": job_id,
        "networkConfiguration": { "awsvpcConfiguration": { "subnets": ["subnet-1"], "assignPublicIp": "DISABLED" } },
        "overrides": { "containerOverrides": [{
            "name": "app",
            "command": ["/bin/busybox", "echo", "hi"],
            "environment": [{ "name": "GREETING", "value": "hi" }],
        }] },
        "tags": [
            { "key": "slipway.job_id", "value": job_id },
            { "key": "slipway.attempt", "value": "2" },
            { "key": "slipway.instance", "value": "5f0c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f" },
        ],
    });
    let started = recorded("run_task").replace("FAMILY", &family).replace("JOB_ID", job_id);
    let unavailable = json!({ "__type": "ServerException", "message": "Service Unavailable. Please try again later." });
    let server = Recorded::serve(vec![
        Exchange::ok(
            "DescribeTaskDefinition",
            json!({ "taskDefinition": family }),
            recorded("describe_task_definition").replace("FAMILY", &family),
        ),
        // ECS fails the first call; the SDK asks again.
        Exchange { operation: "RunTask", expect: run_task.clone(), status: 500, body: unavailable.to_string() },
        Exchange::ok("RunTask", run_task.clone(), started.clone()),
        // A second launch of the same attempt (a worker retrying the step).
        Exchange::ok("RunTask", run_task, started.clone()),
    ])
    .await;
    let retrying = RetryConfig::standard().with_max_attempts(2).with_initial_backoff(Duration::from_millis(10));
    let sdk = crate::common::moto::sdk_retrying(&server.endpoint, "eu-west-1", retrying).await;
    let ecs = Ecs::new(&AwsConfig::from_sdk(sdk), settings());
    let (tx, _rx) = tokio::sync::mpsc::channel(64);
    let logs = LogSink::new(tx, Step::Run, slipway_steps::logs::DEFAULT_MAX_LINE_BYTES);

    let first = ecs.launch(&request, &logs).await.unwrap();
    let again = ecs.launch(&request, &logs).await.unwrap();
    server.assert_asked_rightly();
    let answered: Value = serde_json::from_str(&started).unwrap();
    assert_eq!(first, answered["tasks"][0]["taskArn"].as_str().unwrap());
    assert_eq!(again, first, "the same attempt launched twice is the same task");
    let tokens: Vec<Value> = server.requests()[1..].iter().map(|r| r["clientToken"].clone()).collect();
    assert_eq!(tokens, vec![json!(format!("{job_id}-2")); 3], "every RunTask of the attempt carries its token");
}
