//! Nobody gets past the API without a token of the right role and project: every
//! route of the router's own table, with no token, a malformed one, an unknown one,
//! a revoked one, an expired one, one of too small a role, and one of another
//! project, is refused — and a job of another project is as missing as one that
//! never was.

use serde_json::{Value, json};
use slipway_engine::api::ROUTES;
use slipway_engine::auth::Role;
use slipway_engine::auth::token::NewToken;
use slipway_engine::store::TokenGrant;

use super::{Api, job_count, start, valid};

/// A token of `role` in `project` (by name; `None`: owner), valid for `ttl` if given.
pub(super) async fn token(api: &Api, role: Role, project: Option<&str>, ttl: Option<chrono::Duration>) -> String {
    let store = &api.db.store;
    let project = match project {
        Some(name) => Some(match store.project_named(name).await.unwrap() {
            Some(p) => p.id,
            None => store.create_project(name).await.unwrap().unwrap().id,
        }),
        None => None,
    };
    let expires_at = ttl.map(|t| chrono::Utc::now() + t);
    let token = NewToken::generate().unwrap();
    let grant = TokenGrant { name: "t", role, project, expires_at, created_by: None };
    store.create_token(&token, &grant).await.unwrap();
    token.secret
}

pub(super) async fn call(
    api: &Api,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value, bool) {
    call_from(api, "127.0.0.1", method, path, bearer, body).await
}

/// A call from loopback address `from`: failed authentications are limited per client.
async fn call_from(
    api: &Api,
    from: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value, bool) {
    let client = reqwest::Client::builder().local_address(from.parse::<std::net::IpAddr>().unwrap()).build().unwrap();
    let mut request =
        client.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), format!("{}{path}", api.base));
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenged = response.headers().get("www-authenticate").is_some_and(|v| v == "Bearer");
    (status, response.json().await.unwrap_or(Value::Null), challenged)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_refuses_a_missing_bad_revoked_expired_weak_or_foreign_token() {
    let api = start().await;
    // A job of project `alpha`, made with an alpha token.
    let alpha = token(&api, Role::Submit, Some("alpha"), None).await;
    let (status, job, _) = call(&api, "POST", "/v1/jobs", Some(&alpha), Some(&valid())).await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["project"], "alpha");
    let id = job["id"].as_str().unwrap().to_string();
    let jobs_before = job_count(&api).await;

    let revoked = token(&api, Role::Owner, None, None).await;
    let prefix = &revoked[..12];
    sqlx::query("update api_tokens set revoked_at = now() where prefix = $1")
        .bind(prefix)
        .execute(api.db.store.pool())
        .await
        .unwrap();
    let expired = token(&api, Role::Owner, None, Some(chrono::Duration::seconds(-1))).await;
    let unknown = NewToken::generate().unwrap().secret;
    let reader = token(&api, Role::Read, Some("alpha"), None).await;
    let foreign = token(&api, Role::Admin, Some("beta"), None).await;

    for (i, route) in ROUTES.iter().enumerate() {
        let from = format!("127.0.3.{}", i + 1);
        let path = route.path.replace("{id}", &id);
        let body = (route.method == "POST" && route.path == "/v1/jobs").then(valid);
        let what = format!("{} {}", route.method, route.path);
        for (bearer, code) in [
            (None, "unauthenticated"),
            (Some("not-a-token"), "unauthenticated"),
            (Some(unknown.as_str()), "unauthenticated"),
            (Some(revoked.as_str()), "token_revoked"),
            (Some(expired.as_str()), "token_expired"),
        ] {
            let (status, answer, challenged) = call_from(&api, &from, route.method, &path, bearer, body.as_ref()).await;
            assert_eq!(
                (status, answer["error"]["code"].as_str()),
                (401, Some(code)),
                "{what} with {bearer:?}: {answer}"
            );
            assert!(challenged, "{what}: a 401 without WWW-Authenticate: Bearer");
            assert!(!answer.to_string().contains(bearer.unwrap_or("slp_")), "{what}: the token is echoed");
        }
        if !Role::Read.allows(route.role) {
            let (status, answer, _) = call(&api, route.method, &path, Some(&reader), body.as_ref()).await;
            assert_eq!((status, answer["error"]["code"].as_str()), (403, Some("forbidden")), "{what}: {answer}");
            assert!(answer["error"]["message"].as_str().unwrap().contains(route.role.as_str()), "{answer}");
        }
        // Another project's token: the job is not there for it.
        if route.path.contains("{id}") {
            let (status, answer, _) = call(&api, route.method, &path, Some(&foreign), body.as_ref()).await;
            assert_eq!((status, answer["error"]["code"].as_str()), (404, Some("not_found")), "{what}: {answer}");
        }
    }
    let (_, listed, _) = call(&api, "GET", "/v1/jobs", Some(&foreign), None).await;
    assert_eq!(listed["jobs"], json!([]), "another project lists none of alpha's jobs");
    let (_, listed, _) = call(&api, "GET", "/v1/jobs", Some(&reader), None).await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1, "alpha's reader lists alpha's job");
    let (status, answer, _) = call(
        &api,
        "POST",
        "/v1/jobs",
        Some(&foreign),
        Some(&json!({ "project": "alpha", "repo": valid()["repo"], "image": valid()["image"] })),
    )
    .await;
    assert_eq!((status, answer["error"]["code"].as_str()), (403, Some("forbidden")), "{answer}");
    assert_eq!(job_count(&api).await, jobs_before, "a refused call wrote a job");
    let failures = slipway_observability::metrics::render();
    assert!(failures.contains("slipway_auth_failures_total"), "failed authentications are counted");

    // Guessing is slow: past a burst of failures, a client waits.
    // (A burst of 20, then one a second: a slow machine earns a few more in between.)
    let mut statuses = Vec::new();
    let started = std::time::Instant::now();
    for _ in 0..25 {
        statuses.push(call_from(&api, "127.0.4.1", "GET", "/v1/jobs", Some(&unknown), None).await.0);
    }
    let earned = started.elapsed().as_secs() as usize + 1;
    let refused = statuses.iter().filter(|s| **s == 401).count();
    assert!(statuses.contains(&429) && refused <= 20 + earned, "{statuses:?} in {:?}", started.elapsed());
    assert_eq!(
        call_from(&api, "127.0.4.1", "GET", "/v1/jobs", Some(&reader), None).await.0,
        200,
        "a good token still works"
    );
    // A request with no token at all guesses nothing: it is refused, never slowed.
    for _ in 0..30 {
        assert_eq!(call_from(&api, "127.0.4.2", "GET", "/v1/jobs", None, None).await.0, 401);
    }

    // The history says who submitted.
    let actor: Option<String> = sqlx::query_scalar("select actor from job_events where job_id = $1::uuid")
        .bind(&id)
        .fetch_one(api.db.store.pool())
        .await
        .unwrap();
    assert!(actor.is_some_and(|a| a.starts_with(&alpha[..12])), "the submitter is named by its prefix");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_makes_tokens_from_the_database_and_keeps_one_per_profile() {
    let api = start().await;
    let config = tempfile::tempdir().unwrap();
    let cli = |args: &[&str], token: Option<&str>| {
        let mut command = crate::common::slipway_command();
        command.args(args).env("DATABASE_URL", &api.db.url).env("XDG_CONFIG_HOME", config.path());
        command.env_remove("SLIPWAY_TOKEN");
        if let Some(token) = token {
            command.env("SLIPWAY_TOKEN", token);
        }
        let out = command.output().unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    // Without credentials, the CLI says how to get them.
    let (code, _, err) = cli(&["list", "--api", &api.base], None);
    assert_eq!(code, Some(1));
    assert!(err.contains("slipway login"), "{err}");

    let (code, out, err) = cli(&["project", "create", "team"], None);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "team");
    let (code, out, err) = cli(&["token", "create", "--name", "viewer", "--project", "team", "--role", "read"], None);
    assert_eq!(code, Some(0), "{err}");
    let token = out.trim().to_string();
    assert!(token.starts_with("slp_") && err.contains(&token[..12]) && !err.contains(&token), "{err}");

    let (code, _, err) = cli(&["login", "--api", &api.base, "--token", &token], None);
    assert_eq!(code, Some(0), "{err}");
    let saved = config.path().join("slipway/credentials.toml");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&saved).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // The saved profile is used: the reader lists, and may not submit.
    let (code, out, err) = cli(&["list", "--output", "json"], None);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["jobs"], json!([]));
    let (code, _, err) =
        cli(&["submit", "--repo", "git://127.0.0.1:9418/app.git", "--image", "127.0.0.1:5000/a/b:1"], None);
    assert_eq!(code, Some(1));
    assert!(err.contains("forbidden") && err.contains("submit"), "{err}");

    // Listed without its secret, revoked by its prefix, refused from then on.
    let (code, out, _) = cli(&["token", "list", "--project", "team"], None);
    assert_eq!(code, Some(0));
    assert!(out.contains(&token[..12]) && out.contains("viewer") && !out.contains(&token), "{out}");
    let (code, _, err) = cli(&["token", "revoke", &token[..12]], None);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = cli(&["list"], None);
    assert_eq!(code, Some(1));
    assert!(err.contains("revoked"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn owners_make_projects_admins_make_and_revoke_their_tokens_and_everything_is_audited() {
    let api = start().await;
    let owner = crate::common::test_token().secret.clone();
    let (status, project, _) =
        call(&api, "POST", "/v1/projects", Some(&owner), Some(&json!({ "name": "gamma" }))).await;
    assert_eq!(status, 201, "{project}");
    let (status, again, _) = call(&api, "POST", "/v1/projects", Some(&owner), Some(&json!({ "name": "gamma" }))).await;
    assert_eq!((status, again["error"]["code"].as_str()), (409, Some("conflict")));
    let (status, bad, _) = call(&api, "POST", "/v1/projects", Some(&owner), Some(&json!({ "name": "Bad Name" }))).await;
    assert_eq!((status, bad["error"]["field"].as_str()), (400, Some("name")));

    // The owner makes gamma's first admin; the token is shown this once.
    let body = json!({ "name": "lead", "role": "admin", "expires_in": "30days" });
    let (status, made, _) = call(&api, "POST", "/v1/projects/gamma/tokens", Some(&owner), Some(&body)).await;
    assert_eq!(status, 201, "{made}");
    let admin = made["token"].as_str().unwrap().to_string();
    assert!(made["expires_at"].is_string());
    // The admin makes a submitter, but nothing above its own role, and nothing elsewhere.
    let body = json!({ "name": "ci", "role": "submit" });
    let (status, made, _) = call(&api, "POST", "/v1/projects/gamma/tokens", Some(&admin), Some(&body)).await;
    assert_eq!(status, 201, "{made}");
    let ci = made["token"].as_str().unwrap().to_string();
    let ci_id = made["id"].as_str().unwrap().to_string();
    let body = json!({ "name": "root", "role": "owner" });
    let (status, refused, _) = call(&api, "POST", "/v1/projects/gamma/tokens", Some(&admin), Some(&body)).await;
    assert_eq!((status, refused["error"]["field"].as_str()), (403, Some("role")), "{refused}");
    let body = json!({ "name": "x", "role": "read" });
    let (status, _, _) = call(&api, "POST", "/v1/projects/default/tokens", Some(&admin), Some(&body)).await;
    assert_eq!(status, 404, "another project's tokens are not there for gamma's admin");
    let (status, _, _) = call(&api, "GET", "/v1/projects/gamma/tokens", Some(&ci), None).await;
    assert_eq!(status, 403, "a submitter does not manage tokens");
    let (_, listed, _) = call(&api, "GET", "/v1/projects/gamma/tokens", Some(&admin), None).await;
    let tokens = listed["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    assert!(tokens.iter().all(|t| t.get("token").is_none() && !t.to_string().contains(&ci)), "a list shows no secret");
    let (_, projects, _) = call(&api, "GET", "/v1/projects", Some(&ci), None).await;
    assert_eq!(projects["projects"].as_array().unwrap().len(), 1, "a project token sees its own project");

    // The submitter submits and cancels; then it is revoked, and refused at once.
    let (status, job, _) = call(&api, "POST", "/v1/jobs", Some(&ci), Some(&valid())).await;
    assert_eq!((status, job["project"].as_str()), (201, Some("gamma")), "{job}");
    let id = job["id"].as_str().unwrap();
    let (status, _, _) = call(&api, "POST", &format!("/v1/jobs/{id}/cancel"), Some(&ci), None).await;
    assert_eq!(status, 200);
    let cancelled_by: Option<String> =
        sqlx::query_scalar("select actor from job_events where job_id = $1::uuid and to_state = 'cancelled'")
            .bind(id)
            .fetch_one(api.db.store.pool())
            .await
            .unwrap();
    assert!(cancelled_by.is_some_and(|a| a.starts_with(&ci[..12])), "the history names who cancelled");
    let (status, again, _) = call(&api, "POST", &format!("/v1/jobs/{id}/rerun"), Some(&ci), None).await;
    assert_eq!(
        (status, again["project"].as_str(), again["state"].as_str()),
        (201, Some("gamma"), Some("queued")),
        "{again}"
    );
    assert_eq!(again["spec"], job["spec"], "a re-run runs the same specification");
    let reason: Option<String> = sqlx::query_scalar("select reason from job_events where job_id = $1::uuid")
        .bind(again["id"].as_str().unwrap())
        .fetch_one(api.db.store.pool())
        .await
        .unwrap();
    assert_eq!(reason, Some(format!("re-run of {id}")));
    let (status, _, _) = call(&api, "DELETE", &format!("/v1/projects/gamma/tokens/{ci_id}"), Some(&admin), None).await;
    assert_eq!(status, 204);
    let (status, answer, _) = call(&api, "GET", "/v1/jobs", Some(&ci), None).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (401, Some("token_revoked")));

    let actions: Vec<String> =
        sqlx::query_scalar("select action from audit_log order by id").fetch_all(api.db.store.pool()).await.unwrap();
    assert_eq!(
        actions,
        ["project.create", "token.create", "token.create", "job.submit", "job.cancel", "job.rerun", "token.revoke"]
    );
    let leaked: i64 = sqlx::query_scalar("select count(*) from audit_log where target like '%' || $1 || '%'")
        .bind(&ci[13..])
        .fetch_one(api.db.store.pool())
        .await
        .unwrap();
    assert_eq!(leaked, 0, "a token's secret is in the audit log");

    // Admins read their project's audit log; owners every project's, by action too.
    let (status, log, _) = call(&api, "GET", "/v1/audit", Some(&admin), None).await;
    assert_eq!(status, 200, "{log}");
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 7);
    assert!(entries.iter().all(|e| e["project"] == "gamma" && e["actor"].as_str().unwrap().starts_with("slp_")));
    let (_, log, _) = call(&api, "GET", "/v1/audit?action=token.create", Some(&owner), None).await;
    assert_eq!(log["entries"].as_array().unwrap().len(), 2);
    let (status, _, _) = call(&api, "GET", "/v1/audit?project=default", Some(&admin), None).await;
    assert_eq!(status, 404, "another project's log is not there for gamma's admin");
}

/// Reads a live-log stream until it ends; whether it said the token stopped working.
async fn closes_for_its_token(mut response: reqwest::Response, limit: std::time::Duration) -> bool {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, response.chunk()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text.contains("event: error") && text.contains("revoked or expired")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_log_stream_closes_when_its_token_is_revoked_or_expires() {
    let api = start().await;
    let owner = crate::common::test_token().secret.clone();
    let (_, job, _) = call(&api, "POST", "/v1/jobs", Some(&owner), Some(&valid())).await;
    let follow = format!("{}/v1/jobs/{}/logs?follow=true", api.base, job["id"].as_str().unwrap());
    let make = |body: Value| {
        let owner = owner.clone();
        let api = &api;
        async move { call(api, "POST", "/v1/projects/default/tokens", Some(&owner), Some(&body)).await.1 }
    };

    let reader = make(json!({ "name": "watcher", "role": "read" })).await;
    let stream =
        reqwest::Client::new().get(&follow).bearer_auth(reader["token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let revoke = format!("/v1/projects/default/tokens/{}", reader["id"].as_str().unwrap());
    let (status, _, _) = call(&api, "DELETE", &revoke, Some(&owner), None).await;
    assert_eq!(status, 204);
    assert!(
        closes_for_its_token(stream, std::time::Duration::from_secs(5)).await,
        "the stream outlived its revoked token"
    );

    let brief = make(json!({ "name": "brief", "role": "read", "expires_in": "2s" })).await;
    let stream =
        reqwest::Client::new().get(&follow).bearer_auth(brief["token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    assert!(
        closes_for_its_token(stream, std::time::Duration::from_secs(8)).await,
        "the stream outlived its token's expiry"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_open_by_default_and_need_their_own_token_when_given_one() {
    let open = start().await;
    assert_eq!(call(&open, "GET", "/metrics", None, None).await.0, 200);
    assert_eq!(call(&open, "GET", "/healthz", None, None).await.0, 200);
    let generous = slipway_engine::api::ClientLimits { rate: 1e5, burst: 1_000_000, ..Default::default() };
    let guarded = super::start_custom(generous, Some("scrape-secret")).await;
    let (status, answer, challenged) = call(&guarded, "GET", "/metrics", None, None).await;
    assert_eq!((status, answer["error"]["code"].as_str(), challenged), (401, Some("unauthenticated"), true));
    assert_eq!(call(&guarded, "GET", "/metrics", Some("wrong"), None).await.0, 401);
    assert_eq!(call(&guarded, "GET", "/metrics", Some("scrape-secret"), None).await.0, 200);
    let owner = crate::common::test_token().secret.clone();
    assert_eq!(
        call(&guarded, "GET", "/metrics", Some(&owner), None).await.0,
        401,
        "an API token is not the metrics token"
    );
}
