//! The HTTP API as a client sees it: submitting, reading, waiting for and cancelling jobs.

use super::*;

/// One client for the test process (each test runs in a process of its own, on one
/// runtime): building a client loads the system's certificates, tens of ms each time.
pub fn http() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| client_with(reqwest::Client::builder().timeout(Duration::from_secs(30)))).clone()
}

/// A client that sends the test process's token ([`test_token`]) with every request.
pub fn client_with(builder: reqwest::ClientBuilder) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = format!("Bearer {}", test_token().secret);
    headers.insert(reqwest::header::AUTHORIZATION, value.parse().unwrap());
    builder.default_headers(headers).build().unwrap()
}

pub async fn wait_healthy(api: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(r) = http().get(format!("{api}/healthz")).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{api} is not healthy after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn submit(api: &str, body: &Value) -> Value {
    let response = http().post(format!("{api}/v1/jobs")).json(body).send().await.unwrap();
    let status = response.status();
    let job: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "submit answered {status}: {job}");
    job
}

pub async fn get_job(api: &str, id: &str) -> Value {
    http().get(format!("{api}/v1/jobs/{id}")).send().await.unwrap().json().await.unwrap()
}

/// Polls until the job is succeeded, failed or cancelled.
pub async fn wait_finished(api: &str, id: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let job = get_job(api, id).await;
        if matches!(job["state"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} not finished after {limit:?}: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every log line of a job.
pub async fn all_logs(api: &str, id: &str) -> Vec<Value> {
    let page: Value =
        http().get(format!("{api}/v1/jobs/{id}/logs?limit=10000")).send().await.unwrap().json().await.unwrap();
    page["lines"].as_array().cloned().unwrap_or_default()
}

/// A container command that runs `seconds` and stops at once on SIGTERM.
pub fn sleeping_command(seconds: u32) -> Value {
    serde_json::json!([
        "/bin/busybox",
        "sh",
        "-c",
        format!("trap 'exit 143' TERM; echo started; /bin/busybox sleep {seconds} & wait; echo finished")
    ])
}

/// Polls until the job is in `state`.
pub async fn wait_state(api: &str, id: &str, state: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let job = get_job(api, id).await;
        if job["state"] == state {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} not {state} after {limit:?}: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn cancel(api: &str, id: &str) -> (u16, Value) {
    let response = http().post(format!("{api}/v1/jobs/{id}/cancel")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}
