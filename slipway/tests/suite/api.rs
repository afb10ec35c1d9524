//! The HTTP API against a real Postgres: bad input is refused with a JSON error that
//! names the field and writes nothing; jobs read back, page and filter.

mod auth;
mod dashboard;
mod hostile_requests;
mod openapi;
mod operations;
mod secrets;

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

struct Api {
    db: TestDb,
    base: String,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn start() -> Api {
    // Tests poll from one address as fast as they like.
    let generous = slipway_engine::api::ClientLimits { rate: 1e5, burst: 1_000_000, ..Default::default() };
    start_with(generous).await
}

async fn start_with(clients: slipway_engine::api::ClientLimits) -> Api {
    start_custom(clients, None).await
}

async fn start_custom(clients: slipway_engine::api::ClientLimits, metrics_token: Option<&str>) -> Api {
    start_on(TestDb::new().await, clients, metrics_token, None).await
}

/// An API on `db`, sealing secrets with `keys` if given.
async fn start_on(
    db: TestDb,
    clients: slipway_engine::api::ClientLimits,
    metrics_token: Option<&str>,
    keys: Option<slipway_engine::secrets::keyring::Keyring>,
) -> Api {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut state = slipway_engine::api::AppState::new(db.store.clone(), test_submit_defaults(), shutdown.clone());
    state.metrics_token = metrics_token.map(std::sync::Arc::from);
    state.vault = slipway_engine::secrets::vault::Vault::new(db.store.clone(), keys);
    let limits = slipway_engine::api::HttpLimits { clients, ..Default::default() };
    tokio::spawn(slipway_engine::api::serve(listener, state, shutdown.clone(), limits));
    Api { db, base, _shutdown: shutdown.drop_guard() }
}

fn valid() -> Value {
    json!({ "repo": "git://127.0.0.1:9418/app.git", "image": "127.0.0.1:5000/team/app:v1" })
}

async fn post_raw(api: &Api, body: Vec<u8>, content_type: &str) -> (u16, Value) {
    let response = http()
        .post(format!("{}/v1/jobs", api.base))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn job_count(api: &Api) -> i64 {
    sqlx::query_scalar("select count(*) from jobs").fetch_one(api.db.store.pool()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_a_json_error_naming_the_field_and_write_nothing() {
    let api = start().await;
    let with = |key: &str, value: Value| {
        let mut body = valid();
        body[key] = value;
        body
    };
    let without = |key: &str| {
        let mut body = valid();
        body.as_object_mut().unwrap().remove(key);
        body
    };
    let cases: Vec<(Value, u16, &str, Option<&str>)> = vec![
        (with("colour", json!("blue")), 400, "invalid_field", Some("colour")),
        (without("repo"), 400, "invalid_field", Some("repo")),
        (without("image"), 400, "invalid_field", Some("image")),
        (with("repo", json!("file:///etc")), 400, "invalid_field", Some("repo")),
        (with("repo", json!("ftp://example.com/r.git")), 400, "invalid_field", Some("repo")),
        // Internal addresses and option-shaped hosts (the server allows 127.0.0.1 only).
        (with("repo", json!("https://169.254.169.254/latest/meta-data")), 400, "invalid_field", Some("repo")),
        (with("repo", json!("https://10.0.0.1/a.git")), 400, "invalid_field", Some("repo")),
        (with("repo", json!("https://[::1]/a.git")), 400, "invalid_field", Some("repo")),
        (with("repo", json!("ssh://-oProxyCommand=touch%20x/repo")), 400, "invalid_field", Some("repo")),
        (with("repo", json!("git@-oProxyCommand=x:repo")), 400, "invalid_field", Some("repo")),
        (with("dockerfile", json!("../Dockerfile")), 400, "invalid_field", Some("dockerfile")),
        (with("context", json!("/etc")), 400, "invalid_field", Some("context")),
        (with("image", json!("127.0.0.1:5000/Team/App:v1")), 400, "invalid_field", Some("image")),
        (with("image", json!("app@sha256:abc")), 400, "invalid_field", Some("image")),
        (with("ref", json!("bad ref")), 400, "invalid_field", Some("ref")),
        (with("env", json!({ "A": 1 })), 400, "invalid_field", Some("env.A")),
        (with("run", json!({ "timeout_seconds": 0 })), 400, "invalid_field", Some("run.timeout_seconds")),
        (with("run", json!({ "cmd": ["x"] })), 400, "invalid_field", Some("run.cmd")),
        (with("run", json!({ "runtime": "lambda" })), 400, "invalid_field", Some("run.runtime")),
        (
            with("run", json!({ "runtime": "ecs", "cpu": 256, "memory": 4096 })),
            400,
            "invalid_field",
            Some("run.memory"),
        ),
        (with("run", json!({ "runtime": "ecs", "cpu": 100 })), 400, "invalid_field", Some("run.cpu")),
        (with("run", json!({ "memory": 4 })), 400, "invalid_field", Some("run.memory")),
        // A local image (no registry host) stays on the worker's engine: ECS cannot pull it.
        (
            json!({ "repo": valid()["repo"], "image": "hello:dev", "run": { "runtime": "ecs" } }),
            400,
            "invalid_field",
            Some("image"),
        ),
        (with("requires", json!({ "region": "" })), 400, "invalid_field", Some("requires.region")),
        (with("retry", json!({ "max_attempts": 11 })), 400, "invalid_field", Some("retry.max_attempts")),
        (with("repo", json!("https://s3cr3t-token@example.com/a.git")), 400, "credentials_in_url", Some("repo")),
        (with("repo", json!("ssh://git:s3cr3t@example.com/a.git")), 400, "credentials_in_url", Some("repo")),
        (with("dockerfile", json!(".git/config")), 400, "invalid_field", Some("dockerfile")),
        (with("context", json!("src/../.git")), 400, "invalid_field", Some("context")),
        (with("build_args", json!({ "--squash": "1" })), 400, "invalid_field", Some("build_args.--squash")),
        (with("build_args", json!({ "A\nB": "1" })), 400, "invalid_field", Some("build_args.A\nB")),
        (with("build_args", json!({ "A\u{2028}B": "1" })), 400, "invalid_field", Some("build_args.A\u{2028}B")),
        // Cache images come from a registry, pinned by a whole digest or a tag, a few at most.
        (with("cache_from", json!("127.0.0.1:5000/app")), 400, "invalid_field", Some("cache_from")),
        (with("cache_from", json!(["app:cache"])), 400, "invalid_field", Some("cache_from[0]")),
        (with("cache_from", json!(["127.0.0.1:5000/a", "--pull"])), 400, "invalid_field", Some("cache_from[1]")),
        (with("cache_from", json!(["127.0.0.1:5000/a@sha256:0"])), 400, "invalid_field", Some("cache_from[0]")),
        (with("cache_from", json!(["127.0.0.1:5000/a\u{0}"])), 400, "invalid_field", Some("cache_from[0]")),
        (with("cache_from", json!(vec!["127.0.0.1:5000/a"; 9])), 400, "invalid_field", Some("cache_from")),
        (
            json!({ "repo": valid()["repo"], "image": valid()["image"], "cache": false, "cache_from": ["127.0.0.1:5000/a"] }),
            400,
            "invalid_field",
            Some("cache_from"),
        ),
        (with("cache", json!("no")), 400, "invalid_field", Some("cache")),
    ];
    for (body, status, code, field) in cases {
        let (got, error) = post_raw(&api, serde_json::to_vec(&body).unwrap(), "application/json").await;
        assert_eq!(got, status, "{body} → {error}");
        assert_eq!(error["error"]["code"], code, "{body} → {error}");
        assert_eq!(error["error"]["field"].as_str(), field, "{body} → {error}");
        assert!(!error["error"]["message"].as_str().unwrap().is_empty());
        assert!(!error.to_string().contains("s3cr3t"), "the refusal shows the credential: {error}");
    }

    let (status, error) = post_raw(&api, b"{\"repo\": ".to_vec(), "application/json").await;
    assert_eq!((status, error["error"]["code"].as_str()), (400, Some("invalid_json")));

    let mut huge = valid();
    huge["env"] = json!({ "BIG": "x".repeat(70 * 1024) });
    let (status, error) = post_raw(&api, serde_json::to_vec(&huge).unwrap(), "application/json").await;
    assert_eq!((status, error["error"]["code"].as_str()), (413, Some("body_too_large")));

    for content_type in ["text/plain", "application/jsonp", "application/json-patch+json"] {
        let (status, error) = post_raw(&api, serde_json::to_vec(&valid()).unwrap(), content_type).await;
        assert_eq!((status, error["error"]["code"].as_str()), (415, Some("unsupported_media_type")), "{content_type}");
    }

    // Wrong methods and unknown routes answer with the JSON error body too.
    for (method, path, status, code) in [
        (reqwest::Method::DELETE, "/v1/jobs", 405, "method_not_allowed"),
        (reqwest::Method::PUT, "/v1/jobs/x/cancel", 405, "method_not_allowed"),
        (reqwest::Method::GET, "/v1/nothing", 404, "not_found"),
    ] {
        let response = http().request(method.clone(), format!("{}{path}", api.base)).send().await.unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
    }

    assert_eq!(job_count(&api).await, 0, "a refused request writes no row");

    let body = serde_json::to_vec(&valid()).unwrap();
    let (status, _) = post_raw(&api, body, "Application/JSON; charset=utf-8").await;
    assert_eq!(status, 201, "JSON with a parameter, in any case, is JSON");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_submitted_job_reads_back_with_its_defaults_and_history() {
    let api = start().await;
    let response = http().post(format!("{}/v1/jobs", api.base)).json(&valid()).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let job: Value = response.json().await.unwrap();
    assert_eq!(location, format!("/v1/jobs/{}", job["id"].as_str().unwrap()));
    assert_eq!(job["state"], "queued");
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["spec"]["dockerfile"], "Dockerfile");
    assert_eq!(job["spec"]["context"], ".");
    assert!(job["spec"]["ref"].is_null());

    let read: Value = http().get(format!("{}{location}", api.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(read["id"], job["id"]);
    assert_eq!(read["steps"], json!([]));
    let history = state_history(&api.db, job["id"].as_str().unwrap()).await;
    assert_eq!(history, ["queued"]);

    let missing = http().get(format!("{}/v1/jobs/{}", api.base, uuid::Uuid::now_v7())).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let bad = http().get(format!("{}/v1/jobs/not-an-id", api.base)).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let logs: Value = http().get(format!("{}{location}/logs", api.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!((logs["lines"].clone(), logs["finished"].clone()), (json!([]), json!(false)));
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_newest_first_with_cursor_paging_and_a_state_filter() {
    let api = start().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(submit(&api.base, &valid()).await["id"].as_str().unwrap().to_string());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut url = format!("{}/v1/jobs?limit=2", api.base);
    loop {
        let page: Value = http().get(&url).send().await.unwrap().json().await.unwrap();
        seen.extend(page["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(cursor) => url = format!("{}/v1/jobs?limit=2&cursor={cursor}", api.base),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every job once, newest first");

    let queued: Value =
        http().get(format!("{}/v1/jobs?state=queued", api.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(queued["jobs"].as_array().unwrap().len(), 5);
    let failed: Value =
        http().get(format!("{}/v1/jobs?state=failed", api.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(failed["jobs"], json!([]));
    for (query, field) in [
        ("state=done", "state"),
        ("limit=0", "limit"),
        ("cursor=x", "cursor"),
        ("colour=1", "colour"),
        ("id_prefix=zz'--", "id_prefix"),
        ("id_prefix=", "id_prefix"),
        ("id_prefix=0123456789abcdef0123456789abcdef0", "id_prefix"),
    ] {
        let response = http().get(format!("{}/v1/jobs?{query}", api.base)).send().await.unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["field"], field, "{query}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_returns_the_same_job_and_refuses_another_body() {
    let api = start().await;
    let post = |body: Value, key: &'static str| {
        let url = format!("{}/v1/jobs", api.base);
        async move { http().post(url).header("Idempotency-Key", key).json(&body).send().await.unwrap() }
    };
    let first = post(valid(), "deploy-42").await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = post(valid(), "deploy-42").await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);

    let mut other = valid();
    other["ref"] = json!("v2");
    let conflict = post(other, "deploy-42").await;
    assert_eq!(conflict.status(), 409);
    let body: Value = conflict.json().await.unwrap();
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    assert_eq!(job_count(&api).await, 1);

    let bad = post(valid(), "").await;
    assert_eq!(bad.status(), 400);
    assert_eq!(post(valid(), "another-key").await.status(), 201);
    assert_eq!(job_count(&api).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_submits_lists_gets_and_cancels() {
    let api = start().await;
    let cli = |args: &[&str]| {
        let out = slipway_command().args(args).env("SLIPWAY_API", &api.base).output().unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let (code, out, err) =
        cli(&["submit", "--repo", "git://127.0.0.1:9418/app.git", "--image", "127.0.0.1:5000/cli/app:1", "-e", "A=b"]);
    assert_eq!(code, Some(0), "{err}");
    let job: Value = serde_json::from_str(&out).unwrap();
    let id = job["id"].as_str().unwrap();
    assert_eq!(job["spec"]["env"]["A"], "b");

    let (_, out, _) = cli(&["list", "--state", "queued", "--output", "json"]);
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["jobs"][0]["id"], id);
    // People get tables, without colour in a pipe.
    let (_, out, _) = cli(&["list"]);
    let header = out.lines().next().unwrap_or_default();
    assert!(header.starts_with("ID") && header.contains("STATE") && header.contains("IMAGE"), "{out}");
    assert!(out.lines().nth(1).is_some_and(|row| row.starts_with(id) && row.contains("queued")), "{out}");
    let (_, out, _) = cli(&["get", &id[..13]]);
    assert!(out.lines().any(|l| l.starts_with("state") && l.ends_with("queued")), "{out}");
    assert!(out.contains("127.0.0.1:5000/cli/app:1") && !out.contains('\u{1b}'), "{out}");
    let (_, out, _) = cli(&["events", id]);
    assert!(out.starts_with("AT") && out.lines().nth(1).is_some_and(|l| l.contains("queued")), "{out}");
    let (code, out, _) = cli(&["cancel", id, "--wait"]);
    assert_eq!(code, Some(0));
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["state"], "cancelled");

    // Bad input is reported with the field, and the exit code says so.
    let (code, _, err) = cli(&["submit", "--repo", "file:///etc", "--image", "x"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("field `repo`"), "{err}");

    // An ECS job for a region's pool; a size Fargate does not offer is named.
    let ecs = ["submit", "--repo", "git://127.0.0.1:9418/app.git", "--image", "127.0.0.1:5000/cli/app:1"];
    let (code, out, err) =
        cli(&[&ecs[..], &["--runtime", "ecs", "--cpu", "1024", "--require", "region=eu-west-1"]].concat());
    assert_eq!(code, Some(0), "{err}");
    let job: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["spec"]["run"]["runtime"], "ecs");
    assert_eq!((job["spec"]["run"]["cpu"].as_u64(), job["spec"]["run"]["memory"].as_u64()), (Some(1024), Some(2048)));
    assert_eq!(job["spec"]["requires"]["region"], "eu-west-1");
    let (code, _, err) = cli(&[&ecs[..], &["--runtime", "ecs", "--cpu", "256", "--memory", "4096"]].concat());
    assert_eq!(code, Some(1));
    assert!(err.contains("field `run.memory`") && err.contains("512, 1024 or 2048 MiB"), "{err}");
}

/// A client on loopback address `from` (the server is on 127.0.0.1): each address
/// is a client of its own.
fn client_at(from: &str) -> reqwest::Client {
    client_with(reqwest::Client::builder().local_address(from.parse::<std::net::IpAddr>().unwrap()))
}

async fn get_status(client: &reqwest::Client, url: &str) -> (u16, Option<u64>, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let retry = response.headers().get("retry-after").map(|v| v.to_str().unwrap().parse().unwrap());
    (status, retry, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_over_its_rate_gets_429_with_retry_after_and_others_are_served() {
    let limits = slipway_engine::api::ClientLimits { rate: 1.0, burst: 5, ..Default::default() };
    let api = start_with(limits).await;
    let list = format!("{}/v1/jobs", api.base);
    let first = client_at("127.0.0.1");
    for i in 0..5 {
        assert_eq!(get_status(&first, &list).await.0, 200, "request {i} is within the burst");
    }
    let (status, retry, body) = get_status(&first, &list).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")), "{body}");
    assert_eq!(retry, Some(1), "Retry-After says when one more request is allowed");
    // Health checks are not counted; another client has a bucket of its own.
    assert_eq!(get_status(&first, &format!("{}/healthz", api.base)).await.0, 200);
    assert_eq!(get_status(&client_at("127.0.0.2"), &list).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get_status(&first, &list).await.0, 200, "the bucket refilled");
}

#[tokio::test(flavor = "multi_thread")]
async fn live_log_streams_are_capped_per_client_and_in_all_with_503_and_retry_after() {
    let limits = slipway_engine::api::ClientLimits {
        rate: 1e5,
        burst: 1_000_000,
        max_followers: 3,
        max_followers_per_client: 2,
    };
    let api = start_with(limits).await;
    // A queued job (no worker here): its stream stays open.
    let (status, job) = post_raw(&api, serde_json::to_vec(&valid()).unwrap(), "application/json").await;
    assert_eq!(status, 201, "{job}");
    let follow = format!("{}/v1/jobs/{}/logs?follow=true", api.base, job["id"].as_str().unwrap());
    let open = |from: &'static str| {
        let follow = follow.clone();
        async move { client_at(from).get(&follow).send().await.unwrap() }
    };
    let a1 = open("127.0.0.1").await;
    let a2 = open("127.0.0.1").await;
    assert_eq!((a1.status().as_u16(), a2.status().as_u16()), (200, 200));
    let a3 = open("127.0.0.1").await;
    assert_eq!(a3.status().as_u16(), 503);
    assert!(a3.headers().contains_key("retry-after"));
    let body: Value = a3.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_followers", "{body}");
    let b1 = open("127.0.0.2").await;
    assert_eq!(b1.status().as_u16(), 200, "another client has room");
    assert_eq!(open("127.0.0.3").await.status().as_u16(), 503, "but the total is reached");
    drop(a1);
    // The server sees the stream closed at its next write (a keep-alive comes every 15 s):
    // wait until the slot is given back.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c1 = open("127.0.0.3").await;
        if c1.status().as_u16() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "a closed stream never gave its slot back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop((a2, b1));
}
