//! moto, the AWS emulator, for the ECS, ECR and CloudWatch tests: one server per
//! test on a loopback port of its own (its state, such as how tasks move between
//! states, is global to the server), with the network, cluster and log group a
//! Slipway worker needs.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_sdk_ecs::config::{Credentials, Region};

use super::{env, free_port};

pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";
pub const CLUSTER: &str = "slipway-test";
pub const LOG_GROUP: &str = "/slipway/test";
pub const LOG_PREFIX: &str = "slipway";

pub struct Moto {
    pub endpoint: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// Starts one on a free port. The port is free when it is picked, not always when
    /// moto binds it (another test's process may take it first): a moto that could
    /// not bind ends, and another port is tried, until this moto answers on it.
    pub fn start() -> Self {
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().unwrap();
            let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
            let mut child = Command::new(env("SLIPWAY_TEST_MOTO_SERVER"))
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("moto_server starts");
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
                if answers_as_moto(port) {
                    return Moto { endpoint: format!("http://127.0.0.1:{port}"), child, _dir: dir };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("moto_server did not start on any of five ports");
    }

    /// The SDK's configuration for this server: fixed credentials, no retries (a
    /// failure shows at once).
    pub async fn sdk(&self) -> aws_config::SdkConfig {
        sdk_at(&self.endpoint, REGION).await
    }

    /// The environment a `slipway` process needs to reach this server.
    pub fn process_env(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_MAX_ATTEMPTS", "1".to_string()),
        ])
    }

    /// A VPC with DNS host names, a subnet and a security group in it (moto's
    /// RunTask needs all three); the subnet's and the group's ids.
    pub async fn network(&self) -> (String, String) {
        let vpc = self.ec2(&[("Action", "CreateVpc"), ("CidrBlock", "10.0.0.0/16")]).await;
        let vpc_id = between(&vpc, "<vpcId>", "</vpcId>");
        self.ec2(&[("Action", "ModifyVpcAttribute"), ("VpcId", &vpc_id), ("EnableDnsHostnames.Value", "true")]).await;
        let subnet = self.ec2(&[("Action", "CreateSubnet"), ("VpcId", &vpc_id), ("CidrBlock", "10.0.1.0/24")]).await;
        let group = self
            .ec2(&[
                ("Action", "CreateSecurityGroup"),
                ("VpcId", &vpc_id),
                ("GroupName", "slipway-tasks"),
                ("GroupDescription", "Slipway tasks"),
            ])
            .await;
        (between(&subnet, "<subnetId>", "</subnetId>"), between(&group, "<groupId>", "</groupId>"))
    }

    /// EC2's query API, which the tests need only to make a network.
    async fn ec2(&self, params: &[(&str, &str)]) -> String {
        let mut form: Vec<(&str, &str)> = params.to_vec();
        form.push(("Version", "2016-11-15"));
        // Every value here is URL-safe but `/`, which a form body may carry escaped.
        let body: Vec<String> = form.iter().map(|(k, v)| format!("{k}={}", v.replace('/', "%2F"))).collect();
        let response = reqwest::Client::new()
            .post(&self.endpoint)
            .header("Authorization", format!("AWS4-HMAC-SHA256 Credential=testing/20261127/{REGION}/ec2/aws4_request"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body.join("&"))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "EC2 {params:?}: {}", response.status());
        response.text().await.unwrap()
    }

    /// The cluster and log group a worker's settings name, and the network.
    pub async fn ecs_ready(&self) -> (String, String) {
        let sdk = self.sdk().await;
        aws_sdk_ecs::Client::new(&sdk).create_cluster().cluster_name(CLUSTER).send().await.unwrap();
        aws_sdk_cloudwatchlogs::Client::new(&sdk).create_log_group().log_group_name(LOG_GROUP).send().await.unwrap();
        self.network().await
    }

    /// A worker's settings for runs on this server's ECS.
    pub fn worker_env(&self, (subnet, group): &(String, String)) -> BTreeMap<&'static str, String> {
        let mut env = self.process_env();
        env.extend([
            ("SLIPWAY_ECS_CLUSTER", CLUSTER.to_string()),
            ("SLIPWAY_ECS_SUBNETS", subnet.to_string()),
            ("SLIPWAY_ECS_SECURITY_GROUPS", group.to_string()),
            ("SLIPWAY_ECS_LOG_GROUP", LOG_GROUP.to_string()),
            ("SLIPWAY_ECS_LOG_STREAM_PREFIX", LOG_PREFIX.to_string()),
            ("SLIPWAY_ECS_EXECUTION_ROLE_ARN", format!("arn:aws:iam::{ACCOUNT}:role/slipway-task-execution")),
            ("SLIPWAY_ECS_POLL_MIN", "100ms".to_string()),
            ("SLIPWAY_ECS_POLL_MAX", "400ms".to_string()),
        ]);
        env
    }

    /// Tasks stay RUNNING until stopped (`manual`), or move one state towards
    /// STOPPED on each DescribeTasks (moto's default).
    pub async fn tasks_stay_running(&self, stay: bool) {
        let progression = if stay { "manual" } else { "immediate" };
        let body = serde_json::json!({
            "model_name": "ecs::task",
            "transition": { "progression": progression, "times": 1000 }
        });
        let response = reqwest::Client::new()
            .post(format!("{}/moto-api/state-manager/set-transition", self.endpoint))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "set-transition: {}", response.status());
    }

    /// Writes lines to a task's log stream as the awslogs driver would.
    pub async fn write_task_log(&self, task_arn: &str, lines: &[&str]) {
        let logs = aws_sdk_cloudwatchlogs::Client::new(&self.sdk().await);
        let task_id = task_arn.rsplit('/').next().unwrap();
        let stream = format!("{LOG_PREFIX}/app/{task_id}");
        let _ = logs.create_log_stream().log_group_name(LOG_GROUP).log_stream_name(&stream).send().await;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let mut put = logs.put_log_events().log_group_name(LOG_GROUP).log_stream_name(&stream);
        for (i, line) in lines.iter().enumerate() {
            put = put.log_events(
                aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                    .timestamp(now + i as i64)
                    .message(*line)
                    .build()
                    .unwrap(),
            );
        }
        put.send().await.unwrap();
    }
}

/// The SDK's configuration for an endpoint on loopback: fixed credentials, no
/// retries (a failure shows at once).
pub async fn sdk_at(endpoint: &str, region: &str) -> aws_config::SdkConfig {
    sdk_retrying(endpoint, region, RetryConfig::disabled()).await
}

/// The same, with the SDK's retries as given.
pub async fn sdk_retrying(endpoint: &str, region: &str, retry: RetryConfig) -> aws_config::SdkConfig {
    slipway_steps::aws::loader()
        .endpoint_url(endpoint)
        .region(Region::new(region.to_string()))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .retry_config(retry)
        .load()
        .await
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn between(text: &str, start: &str, end: &str) -> String {
    let from = text.find(start).unwrap_or_else(|| panic!("no {start} in {text}")) + start.len();
    let to = text[from..].find(end).unwrap() + from;
    text[from..to].to_string()
}

/// Whether the server on `port` is a moto: it serves its own API's data.
fn answers_as_moto(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /moto-api/data.json HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}
