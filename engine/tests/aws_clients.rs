//! Slipway's AWS clients against moto (ECR tokens, repositories, image deletion)
//! and against recorded ECS answers for what moto cannot produce (exit codes, stop
//! codes, a task ECS no longer knows).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::moto::{ACCOUNT, Moto, REGION};
use slipway_steps::ErrorCode;
use slipway_steps::aws::AwsConfig;
use slipway_steps::aws::ecr::{Ecr, EcrRegistry, RepositorySettings};
use slipway_steps::aws::ecs::task::task_end;
use slipway_steps::aws::ecs::{Ecs, EcsSettings};
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

/// A loopback server that answers every call with the next recorded body, and
/// counts the calls.
struct Recorded {
    endpoint: String,
    calls: Arc<AtomicUsize>,
}

impl Recorded {
    async fn serve(bodies: Vec<String>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let calls = Arc::new(AtomicUsize::new(0));
        let (bodies, counter) = (Arc::new(bodies), calls.clone());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let (bodies, counter) = (bodies.clone(), counter.clone());
                tokio::spawn(async move {
                    while read_request(&mut socket).await {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        let body = &bodies[n.min(bodies.len() - 1)];
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n",
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
        Recorded { endpoint, calls }
    }

    async fn sdk(&self) -> aws_config::SdkConfig {
        common::moto::sdk_at(&self.endpoint, "eu-west-1").await
    }
}

/// Reads one HTTP request (headers and a Content-Length body); false at the end.
async fn read_request(socket: &mut tokio::net::TcpStream) -> bool {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            while buffer.len() < end + 4 + length {
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            }
            return true;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
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

#[tokio::test(flavor = "multi_thread")]
async fn stopped_tasks_are_classified_from_what_ecs_answers() {
    // (recorded DescribeTasks answer, the outcome: exit code, or error code and whether retryable)
    type Outcome = Result<i64, (ErrorCode, bool)>;
    let cases: [(&str, Outcome); 9] = [
        ("describe_tasks_exit_0", Ok(0)),
        ("describe_tasks_exit_3", Err((ErrorCode::ExitNonZero, false))),
        ("describe_tasks_cannot_pull", Err((ErrorCode::InfrastructureStop, true))),
        ("describe_tasks_resource_init", Err((ErrorCode::InfrastructureStop, true))),
        ("describe_tasks_spot", Err((ErrorCode::InfrastructureStop, true))),
        ("describe_tasks_scheduler", Err((ErrorCode::InfrastructureStop, true))),
        ("describe_tasks_user_stopped", Err((ErrorCode::TaskStopped, false))),
        ("describe_tasks_past_deadline", Err((ErrorCode::TimedOut, false))),
        ("describe_tasks_out_of_memory", Err((ErrorCode::RunFailed, false))),
    ];
    for (name, expected) in cases {
        let server = Recorded::serve(vec![recorded(name)]).await;
        let ecs = Ecs::new(&AwsConfig::from_sdk(server.sdk().await), settings());
        let task = ecs.describe("arn:aws:ecs:eu-west-1:123456789012:task/prod/x").await.unwrap().expect(name);
        let end = task_end(&task);
        match (end.outcome(), expected) {
            (Ok(code), Ok(want)) => assert_eq!(code, want, "{name}"),
            (Err(e), Err((code, retryable))) => {
                assert_eq!((e.code, e.retryable()), (code, retryable), "{name}: {}", e.message);
            }
            (got, want) => panic!("{name}: got {got:?}, expected {want:?}"),
        }
    }
    let end = task_end(
        &Ecs::new(
            &AwsConfig::from_sdk(Recorded::serve(vec![recorded("describe_tasks_exit_3")]).await.sdk().await),
            settings(),
        )
        .describe("arn")
        .await
        .unwrap()
        .unwrap(),
    );
    assert_eq!(end.exit_code, Some(3));
    assert_eq!(end.stop_code.as_deref(), Some("EssentialContainerExited"));
    let message = end.outcome().unwrap_err().message;
    assert!(
        message.contains("exited with code 3") && message.contains("Essential container in task exited"),
        "{message}"
    );

    // A task ECS no longer knows (AWS answers MISSING) is not there to re-attach to.
    let server = Recorded::serve(vec![recorded("describe_tasks_missing")]).await;
    let ecs = Ecs::new(&AwsConfig::from_sdk(server.sdk().await), settings());
    assert!(ecs.describe("arn:aws:ecs:eu-west-1:123456789012:task/prod/gone").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ecr_token_is_cached_until_shortly_before_it_expires() {
    let expires = |secs_from_now: u64| {
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + secs_from_now;
        format!(
            r#"{{"authorizationData":[{{"authorizationToken":"QVdTOnNlY3JldA==","expiresAt":{at},"proxyEndpoint":"https://{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com"}}]}}"#
        )
    };
    // Twelve hours: fetched once, then served from the cache.
    let server = Recorded::serve(vec![expires(12 * 3600)]).await;
    let ecr = Ecr::new(AwsConfig::from_sdk(server.sdk().await), RepositorySettings::default());
    let registry = EcrRegistry::parse(&format!("{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com")).unwrap();
    for _ in 0..3 {
        assert_eq!(ecr.credentials(&registry).await.unwrap().password, "secret");
    }
    assert_eq!(server.calls.load(Ordering::SeqCst), 1);
    // Five minutes, within the refresh margin: fetched every time.
    let server = Recorded::serve(vec![expires(300)]).await;
    let ecr = Ecr::new(AwsConfig::from_sdk(server.sdk().await), RepositorySettings::default());
    for _ in 0..2 {
        ecr.credentials(&registry).await.unwrap();
    }
    assert_eq!(server.calls.load(Ordering::SeqCst), 2);
}
