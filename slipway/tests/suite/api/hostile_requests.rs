//! Hundreds of requests a stranger might send (malformed, oversized,
//! injection-shaped, unicode tricks, wrong types, every route with every method):
//! each is answered 4xx with the JSON error body, writes no row, and leaves the
//! server answering.

use serde_json::{Value, json};

use super::{Api, job_count, start, valid};
use crate::common::http;

/// One request: method, path (with query), content type, body.
struct Case {
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

fn get(path: impl Into<String>) -> Case {
    Case { method: "GET", path: path.into(), content_type: None, body: Vec::new() }
}

fn post(path: impl Into<String>, content_type: &'static str, body: impl Into<Vec<u8>>) -> Case {
    Case { method: "POST", path: path.into(), content_type: Some(content_type), body: body.into() }
}

fn post_json(body: &Value) -> Case {
    post("/v1/jobs", "application/json", serde_json::to_vec(body).unwrap())
}

/// Ids no job has: malformed ones, injection-shaped ones, and a well-formed one.
fn hostile_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e",
        "'%20or%201=1--",
        "null",
        "0",
        "-1",
        "00000000-0000-0000-0000-00000000000g",
        "%F0%9D%94%B2%F0%9D%94%B2%F0%9D%94%A6%F0%9D%94%A1",
        "%00",
        "%E2%80%AE1234",
        "01a22ee5-2edf-73b7-8e61-c91417b10ac9",
        "{{7*7}}",
        "%24%7Bjndi%3Aldap%3A%2F%2Fx%7D",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ids.push("a".repeat(4000));
    ids
}

/// Values of every wrong type and shape, for any field.
fn hostile_values() -> Vec<Value> {
    vec![
        json!(null),
        json!(true),
        json!(1),
        json!(-1),
        json!(1e308),
        json!([]),
        json!({}),
        json!(["a"]),
        json!(""),
        json!("\u{0000}"),
        json!("../../etc/passwd"),
        json!("'; drop table jobs; --"),
        json!("\u{202e}gpj.exe"),
        json!("a".repeat(70_000)),
        json!(0.5),
        json!(i64::MIN),
        json!("\u{1F600}".repeat(20_000)),
        json!({ "a": { "b": { "c": [] } } }),
        json!("\u{2028}"),
        json!("%00\n%0a"),
    ]
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    // Every route with methods it does not take, and routes that do not exist.
    let routes = ["/v1/jobs", "/v1/jobs/x", "/v1/jobs/x/cancel", "/v1/jobs/x/events", "/v1/jobs/x/logs"];
    for route in routes {
        for method in ["PUT", "DELETE", "PATCH"] {
            cases.push(Case { method, path: route.to_string(), content_type: None, body: Vec::new() });
        }
    }
    for path in ["/v1/jobz", "/v1/jobs/x/y/z", "/v2/jobs", "/v1/jobs/x/logs/y", "/admin", "/.env", "/v1/%00"] {
        cases.push(get(path));
        cases.push(post(path, "application/json", "{}"));
    }
    // Hostile ids on every route that takes one.
    for id in hostile_ids() {
        for suffix in ["", "/events", "/logs", "/logs?follow=false"] {
            cases.push(get(format!("/v1/jobs/{id}{suffix}")));
        }
        cases.push(post(format!("/v1/jobs/{id}/cancel"), "application/json", ""));
    }
    // Hostile query strings.
    for query in [
        "state=nope",
        "state=queued%27%20or%201=1",
        "state=",
        "limit=-1",
        "limit=0",
        "limit=100000000000000000000",
        "limit=abc",
        "limit=1e3",
        "cursor=garbage",
        "cursor=..%2F..",
        "unknown=1",
        "state=queued&state=running&bogus",
        "%00=%00",
    ] {
        cases.push(get(format!("/v1/jobs?{query}")));
    }
    let job = "01a22ee5-2edf-73b7-8e61-c91417b10ac9";
    for query in
        ["after=abc", "after=-", "after=99999999999999999999", "limit=0", "limit=100001", "follow=maybe", "x=1"]
    {
        cases.push(get(format!("/v1/jobs/{job}/logs?{query}")));
    }
    // Bodies that are not JSON, or not the JSON expected.
    let raw: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"{\"repo\":".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        b"\"text\"".to_vec(),
        b"42".to_vec(),
        b"{\"repo\": NaN}".to_vec(),
        b"{} trailing".to_vec(),
        b"\xef\xbb\xbf{}".to_vec(),
        b"\xff\xfe{\x00}\x00".to_vec(),
        b"{\"repo\": \"\xc3\x28\"}".to_vec(),
        "[".repeat(100_000).into_bytes(),
        format!("{}1{}", "[".repeat(200), "]".repeat(200)).into_bytes(),
        format!("{{\"repo\": \"{}\"}}", "a".repeat(70 * 1024)).into_bytes(),
    ];
    for body in raw {
        cases.push(post("/v1/jobs", "application/json", body));
    }
    // Content types other than JSON.
    for content_type in ["text/plain", "application/jsonp", "application/json-patch+json", "multipart/form-data", ""] {
        cases.push(post("/v1/jobs", content_type, serde_json::to_vec(&valid()).unwrap()));
    }
    // Every field with every wrong value, and unknown fields.
    let fields = ["repo", "image", "ref", "dockerfile", "context", "env", "build_args", "run", "retry", "requires"];
    for field in fields {
        for value in hostile_values() {
            let mut body = valid();
            body[field] = value;
            // A value that is valid for this field is not hostile to it: every field
            // but `repo` and `image` may be null (its default), and a file may be
            // named like an SQL injection, harmlessly.
            let sql = body[field].as_str().is_some_and(|v| v.starts_with("';"));
            if (body[field].is_null() && !matches!(field, "repo" | "image"))
                || (sql && matches!(field, "dockerfile" | "context"))
                || matches!((field, &body[field]), ("env" | "build_args" | "requires" | "run" | "retry", Value::Object(o)) if o.is_empty())
            {
                continue;
            }
            cases.push(post_json(&body));
        }
    }
    for (field, value) in [
        ("run", json!({ "command": "sh -c id" })),
        ("run", json!({ "command": [1, 2] })),
        ("run", json!({ "timeout_seconds": -5 })),
        ("run", json!({ "runtime": "kubernetes" })),
        ("run", json!({ "privileged": true })),
        ("retry", json!({ "max_attempts": 1000000 })),
        ("retry", json!({ "initial_backoff_ms": -1 })),
        ("env", json!({ "A=B": "x" })),
        ("env", json!({ "": "x" })),
        ("env", json!({ "PATH": 1 })),
        ("build_args", json!({ "--network=host": "1" })),
        ("requires", json!({ "region": ["a"] })),
        ("image", json!("UPPER/case:tag")),
        ("image", json!("registry:99999/app:1")),
        ("image", json!("app@sha256:short")),
        ("repo", json!("ext::sh -c touch% /tmp/pwned")),
        ("repo", json!("file:///etc/passwd")),
        ("repo", json!("https://169.254.169.254/latest/meta-data/")),
        ("repo", json!("https://user:pass@example.com/a.git")),
        ("dockerfile", json!("/etc/passwd")),
        ("context", json!("../..")),
        ("ref", json!("--upload-pack=touch /tmp/x")),
        ("ref", json!("main\nrefs/heads/evil")),
        ("unknown", json!(1)),
        ("__proto__", json!({ "admin": true })),
        // A NUL cannot be stored by Postgres: the request's fault, never a 500.
        ("env", json!({ "A": "x\0y" })),
        ("build_args", json!({ "A\0": "x" })),
        ("project", json!("de\0fault")),
    ] {
        let mut body = valid();
        body[field] = value;
        cases.push(post_json(&body));
    }
    // NULs in the other routes' text.
    cases.push(get("/v1/audit?action=job%00submit"));
    cases.push(post("/v1/jobs/cancel", "application/json", r#"{"repo": "git://x\u0000"}"#));
    cases.push(post("/v1/projects", "application/json", r#"{"name": "a\u0000b"}"#));
    cases
}

async fn send(client: &reqwest::Client, api: &Api, case: &Case) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
    let mut request = client.request(method, format!("{}{}", api.base, case.path)).body(case.body.clone());
    if let Some(content_type) = case.content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn hundreds_of_hostile_requests_each_get_a_json_4xx_and_write_nothing() {
    let api = start().await;
    let client = http();
    let cases = cases();
    assert!(cases.len() >= 300, "only {} requests", cases.len());
    for (i, case) in cases.iter().enumerate() {
        let (status, body) = send(&client, &api, case).await;
        let shown: String = case.path.chars().take(80).collect();
        let what = format!("#{i} {} {shown} ({} body bytes) → {status} {body}", case.method, case.body.len());
        assert!((400..500).contains(&status), "{what}");
        assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string(), "{what}");
        assert_eq!(job_count(&api).await, 0, "a row was written: {what}");
        let health = client.get(format!("{}/healthz", api.base)).send().await.unwrap();
        assert_eq!(health.status().as_u16(), 200, "the server stopped answering after {what}");
    }
    eprintln!("{} hostile requests: each 4xx with a JSON error, nothing written", cases.len());
}
