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
    assert!(committed() == document_json(), "openapi.json is stale: regenerate it with `slipway openapi > openapi.json`");
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
            // Past 20 failures a client is slowed, by the same layer that refused it.
            let refused = status == 401 || (status == 429 && body.contains("failed authentications"));
            assert!(refused, "{method} {path} answers without a token: {status} {body}");
        }
    }
}
