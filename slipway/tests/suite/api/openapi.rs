//! The OpenAPI document is the API's own: the committed `openapi.json` is what the
//! code generates, the server serves the same, every route of the router is in it
//! and everything in it is a route the router answers.

use std::collections::BTreeSet;

use slipway_engine::api::openapi::{OPENAPI_PATH, document_json};
use slipway_engine::api::{OPEN_ROUTES, ROUTES};

use super::start;

fn committed() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi.json");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every operation of the document, as (method, path).
fn documented() -> BTreeSet<(String, String)> {
    let document: serde_json::Value = serde_json::from_str(&document_json()).unwrap();
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.insert((method.to_uppercase(), path.clone()));
        }
    }
    operations
}

#[test]
fn the_committed_document_is_the_one_the_code_generates() {
    // A failure here means the API changed: `cargo run -p slipway -- openapi > openapi.json`.
    assert!(
        committed() == document_json(),
        "openapi.json is stale: regenerate it with `slipway openapi > openapi.json`"
    );
}

#[test]
fn every_route_is_documented_and_every_documented_operation_is_a_route() {
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method, r.path))
        .chain(OPEN_ROUTES)
        .map(|(method, path)| (method.to_string(), path.to_string()))
        .collect();
    let documented = documented();
    let missing: Vec<_> = routes.difference(&documented).collect();
    let phantom: Vec<_> = documented.difference(&routes).collect();
    assert!(missing.is_empty(), "routes missing from the document: {missing:?}");
    assert!(phantom.is_empty(), "documented operations the router lacks: {phantom:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_serves_the_document_and_answers_each_documented_operation() {
    let api = start().await;
    let served = reqwest::get(format!("{}{OPENAPI_PATH}", api.base)).await.unwrap();
    assert_eq!(served.status(), 200, "the document needs no token");
    assert_eq!(served.text().await.unwrap(), document_json());
    // Without a token, a route's authentication refuses (an open route answers
    // anything but the router's own 404 and 405): the router knows every documented
    // operation, and none of them is open by mistake.
    let anonymous = reqwest::Client::new();
    for (method, path) in documented() {
        let concrete = path
            .replace("{id}", "01a2c3d4-0000-7000-8000-000000000000")
            .replace("{project}", "default")
            .replace("{name}", "a_secret")
            .replace("{host}", "git.example.com");
        let request = anonymous.request(method.parse().unwrap(), format!("{}{concrete}", api.base));
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        let open = OPEN_ROUTES.contains(&(method.as_str(), path.as_str()));
        if open {
            assert!(status != 404 && status != 405, "{method} {path}: {status} {body}");
        } else {
            assert_eq!(status, 401, "{method} {path} answers without a token: {body}");
        }
    }
}

/// Schemathesis, from PyPI (installed by `scripts/test`), over every operation of a
/// live `standalone` with an owner token: generated requests, valid and not, one
/// after another as a stateful client would send them. No answer may be a 5xx, or
/// a status, content type, header or body the document does not describe; a
/// request that breaks the document must be refused. Bounded by examples and time.
/// (Valid-looking requests refused for what a schema cannot say — a repository
/// the server may not fetch — are not counted against it.)
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let standalone = crate::common::Standalone::start(&[
        // One client sends every request: the per-client rate is not under test.
        ("SLIPWAY_HTTP_RATE", "100000"),
        ("SLIPWAY_HTTP_BURST", "100000"),
    ])
    .await;
    let seed = std::env::var("SLIPWAY_TEST_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261202".into());
    let checks = [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "unsupported_method",
        "ignored_auth",
        "missing_required_header",
    ];
    let output = tokio::process::Command::new(crate::common::env("SLIPWAY_TEST_SCHEMATHESIS"))
        .args(["run", &format!("{}{OPENAPI_PATH}", standalone.api())])
        .args(["--header", &format!("Authorization: Bearer {}", crate::common::test_token().secret)])
        .args(["--checks", &checks.join(",")])
        .args(["--max-examples", "30", "--max-time", "60", "--seed", &seed])
        .args(["--request-timeout", "10", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    let tail: String =
        printed.lines().rev().take(200).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    assert!(
        output.status.success(),
        "schemathesis (seed {seed}) found failures:\n{tail}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every operation it found in the document was tried.
    let number_after = |label: &str| {
        let line = printed.lines().find_map(|l| l.trim().strip_prefix(label)).unwrap_or_default();
        line.trim().split('/').map(|n| n.trim().parse::<usize>().unwrap_or(0)).collect::<Vec<_>>()
    };
    let (selected, tested) = (number_after("Selected:"), number_after("Tested:"));
    assert!(
        selected.len() == 2
            && selected[0] == selected[1]
            && tested == [selected[0]]
            && selected[0] + 1 >= documented().len(),
        "schemathesis left operations untried (selected {selected:?}, tested {tested:?}, documented {}):\n{tail}",
        documented().len()
    );
}
