//! Project secrets through the API: admins set and delete them, anyone in the
//! project lists their names, values never come back; a job naming secrets is
//! checked against its own project, and a secret in a plain field is refused — each
//! refusal a JSON error naming the field, with nothing written. Values are sealed
//! at rest, and a key rotation loses none.

use std::time::Duration;

use serde_json::{Value, json};
use slipway_engine::auth::Role;
use slipway_engine::secrets::keyring::{Keyring, SecretKey};

use super::auth::{call, token};
use super::{Api, job_count, start_on};
use crate::common::*;

fn key(text: &str) -> SecretKey {
    SecretKey::from_base64(text).unwrap()
}

async fn start_sealing(keys: Option<Keyring>) -> Api {
    let generous = slipway_engine::api::ClientLimits { rate: 1e5, burst: 1_000_000, ..Default::default() };
    start_on(TestDb::new().await, generous, None, keys).await
}

async fn put(api: &Api, bearer: &str, project: &str, name: &str, value: &str) -> (u16, Value) {
    let path = format!("/v1/projects/{project}/secrets/{name}");
    let (status, body, _) = call(api, "PUT", &path, Some(bearer), Some(&json!({ "value": value }))).await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_set_by_admins_listed_by_name_never_shown_and_audited() {
    let keys = Keyring::new(key(&SecretKey::generate_base64()), vec![]);
    let key_id = keys.current_id().to_string();
    let api = start_sealing(Some(keys)).await;
    let admin = token(&api, Role::Admin, Some("team"), None).await;
    let reader = token(&api, Role::Read, Some("team"), None).await;
    let stranger = token(&api, Role::Admin, Some("other"), None).await;
    let value = unique("value-never-shown-");

    let (status, set) = put(&api, &admin, "team", "db-password", &value).await;
    assert_eq!(status, 201, "{set}");
    assert_eq!(set["name"], "db-password");
    assert!(set["updated_by"].as_str().unwrap().starts_with("slp_"), "{set}");
    assert!(set.get("value").is_none() && !set.to_string().contains(&value), "{set}");
    let (status, _) = put(&api, &admin, "team", "db-password", &format!("{value}-2")).await;
    assert_eq!(status, 200, "a second set replaces the value");

    // Readers list names; they cannot set; another project cannot even see them.
    let (status, listed, _) = call(&api, "GET", "/v1/projects/team/secrets", Some(&reader), None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["secrets"][0]["name"], "db-password", "{listed}");
    assert!(!listed.to_string().contains(&value));
    assert_eq!(put(&api, &reader, "team", "x", "v").await.0, 403);
    assert_eq!(put(&api, &stranger, "team", "x", "v").await.0, 404);

    // Bad names and values, each naming the field; nothing stored for them.
    for (name, value, field) in [
        ("1abc", "v".to_string(), "name"),
        ("a%20b", "v".to_string(), "name"),
        (&"n".repeat(129), "v".to_string(), "name"),
        ("ok", String::new(), "value"),
        ("ok", "x".repeat(64 * 1024 + 1), "value"),
        ("ok", "a\u{0}b".to_string(), "value"),
    ] {
        let (status, refused) = put(&api, &admin, "team", name, &value).await;
        assert_eq!((status, refused["error"]["field"].as_str()), (400, Some(field)), "{name}: {refused}");
    }
    let (status, _) = put(&api, &admin, "team", "largest", &"x".repeat(64 * 1024)).await;
    assert_eq!(status, 201, "a value of exactly 64 KiB is taken");

    // At rest: sealed under the server's key, the value nowhere in clear.
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("select key_id, ciphertext from project_secrets where name = 'db-password'")
            .fetch_all(api.db.store.pool())
            .await
            .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, key_id);
    assert!(!rows[0].1.windows(value.len()).any(|w| w == value.as_bytes()));

    let (status, _, _) = call(&api, "DELETE", "/v1/projects/team/secrets/db-password", Some(&admin), None).await;
    assert_eq!(status, 204);
    let (status, gone, _) = call(&api, "DELETE", "/v1/projects/team/secrets/db-password", Some(&admin), None).await;
    assert_eq!((status, gone["error"]["code"].as_str()), (404, Some("not_found")));

    let (_, audit, _) = call(&api, "GET", "/v1/audit?action=secret.set", Some(&admin), None).await;
    let targets: Vec<&str> =
        audit["entries"].as_array().unwrap().iter().map(|e| e["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["db-password", "db-password", "largest"], "{audit}");
    let (_, audit, _) = call(&api, "GET", "/v1/audit?action=secret.delete", Some(&admin), None).await;
    assert_eq!(audit["entries"].as_array().unwrap().len(), 1, "{audit}");
    assert!(!audit.to_string().contains(&value));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_a_key_refuses_to_store_secrets_and_says_how_to_make_one() {
    let api = start_sealing(None).await;
    let admin = token(&api, Role::Admin, Some("team"), None).await;
    let (status, refused) = put(&api, &admin, "team", "db", "v").await;
    assert_eq!((status, refused["error"]["code"].as_str()), (503, Some("no_secrets_key")), "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("SLIPWAY_SECRETS_KEY") && message.contains("/dev/urandom"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_naming_secrets_are_checked_against_their_own_project_and_refusals_write_nothing() {
    let api = start_sealing(Some(Keyring::new(key(&SecretKey::generate_base64()), vec![]))).await;
    let admin = token(&api, Role::Admin, Some("team"), None).await;
    let submitter = token(&api, Role::Submit, Some("team"), None).await;
    let other_admin = token(&api, Role::Admin, Some("other"), None).await;
    let plain_value = unique("plain-secret-");
    for (name, value) in [
        ("db", plain_value.as_str()),
        ("deploy-key", r#"{"kind": "ssh_key", "private_key": "-----BEGIN KEY-----\nabc\n-----END KEY-----"}"#),
        ("git-token", r#"{"kind": "https_token", "username": "ci", "token": "tok-123456"}"#),
        ("registry-login", r#"{"username": "ci", "password": "pw-123456"}"#),
    ] {
        assert_eq!(put(&api, &admin, "team", name, value).await.0, 201);
    }
    assert_eq!(put(&api, &other_admin, "other", "theirs", "their-value").await.0, 201);
    // Seventeen values of 64 KiB: more than a job's secrets may hold together.
    for i in 0..17 {
        assert_eq!(put(&api, &admin, "team", &format!("big{i}"), &"x".repeat(64 * 1024)).await.0, 201);
    }
    let too_many: serde_json::Map<String, Value> = (0..65).map(|i| (format!("V{i}"), json!("db"))).collect();
    let too_large: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("V{i}"), json!(format!("big{i}")))).collect();

    let https = "https://127.0.0.1/team/app.git";
    let job = |extra: Value| {
        let mut body = json!({ "repo": https, "image": "127.0.0.1:5000/team/app:v1" });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let before = job_count(&api).await;
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (job(json!({ "secrets": { "DB": "missing" } })), 400, "invalid_field", "secrets.DB"),
        (job(json!({ "secrets": { "DB": "theirs" } })), 400, "invalid_field", "secrets.DB"),
        (job(json!({ "secrets": { "DB": "not a name" } })), 400, "invalid_field", "secrets.DB"),
        (job(json!({ "secrets": { "1DB": "db" } })), 400, "invalid_field", "secrets.1DB"),
        (job(json!({ "secrets": { "DB": "db" }, "env": { "DB": "x" } })), 400, "invalid_field", "secrets.DB"),
        (job(json!({ "build_secrets": { "a/b": "db" } })), 400, "invalid_field", "build_secrets.a/b"),
        (job(json!({ "build_secrets": { "npm": "missing" } })), 400, "invalid_field", "build_secrets.npm"),
        (job(json!({ "secrets": too_many })), 400, "invalid_field", "secrets"),
        (job(json!({ "secrets": too_large })), 400, "invalid_field", "secrets"),
        (job(json!({ "env": { "X": plain_value } })), 400, "secret_in_plain_field", "env.X"),
        (job(json!({ "build_args": { "X": plain_value } })), 400, "secret_in_plain_field", "build_args.X"),
        // Credentials must be credentials, of the kind the URL's scheme takes.
        (job(json!({ "git": { "credentials": "deploy-key" } })), 400, "invalid_field", "git.credentials"),
        (job(json!({ "git": { "credentials": "db" } })), 400, "invalid_field", "git.credentials"),
        (job(json!({ "git": { "credentials": "git-token", "depth": 1 } })), 400, "invalid_field", "git.depth"),
        (job(json!({ "registry": { "credentials": "db" } })), 400, "invalid_field", "registry.credentials"),
        (
            json!({ "repo": https, "image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/app:v1",
                    "registry": { "credentials": "registry-login" } }),
            400,
            "invalid_field",
            "registry.credentials",
        ),
        // An ARN is for ECS tasks, and must be one of a secret or a parameter.
        (
            job(json!({ "secrets": { "DB": "arn:aws:ssm:eu-west-1:123456789012:parameter/db" } })),
            400,
            "invalid_field",
            "secrets.DB",
        ),
        (
            job(json!({ "secrets": { "DB": "arn:aws:s3:::bucket/db" }, "run": { "runtime": "ecs" } })),
            400,
            "invalid_field",
            "secrets.DB",
        ),
    ];
    for (body, status, code, field) in cases {
        let (got, answer, _) = call(&api, "POST", "/v1/jobs", Some(&submitter), Some(&body)).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str(), answer["error"]["field"].as_str()),
            (status, Some(code), Some(field)),
            "{body}: {answer}"
        );
        for value in [plain_value.as_str(), "tok-123456", "pw-123456", "their-value"] {
            assert!(!answer.to_string().contains(value), "a refusal shows a secret: {answer}");
        }
    }
    assert_eq!(job_count(&api).await, before, "no refused job is written");

    let body = job(json!({
        "secrets": { "DB": "db" }, "build_secrets": { "npm": "db" },
        "git": { "credentials": "git-token", "submodules": true },
        "registry": { "credentials": "registry-login" },
    }));
    let (status, made, _) = call(&api, "POST", "/v1/jobs", Some(&submitter), Some(&body)).await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["spec"]["git"], json!({ "credentials": "git-token", "submodules": true }));
    assert_eq!(made["spec"]["registry"], json!({ "credentials": "registry-login" }));
    let stored: String = sqlx::query_scalar("select spec::text from jobs where id = $1::uuid")
        .bind(made["id"].as_str().unwrap())
        .fetch_one(api.db.store.pool())
        .await
        .unwrap();
    assert!(stored.contains("git-token") && !stored.contains("tok-123456"), "{stored}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rotating_the_key_while_secrets_change_and_jobs_run_loses_none() {
    let (old, new) = (SecretKey::generate_base64(), SecretKey::generate_base64());
    let db = TestDb::new().await;
    let project = default_project(&db).await;
    let before = slipway_engine::secrets::vault::Vault::new(db.store.clone(), Some(Keyring::new(key(&old), vec![])));
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..300 {
        let (name, value) = (format!("s{i}"), format!("value-{i}-{}", unique("")));
        before.put(project, &name, &value, "test").await.unwrap();
        expected.insert(name, value);
    }
    // Servers now hold the new key and the old; the rotation runs while they set
    // values and jobs naming secrets are submitted and run.
    let during =
        slipway_engine::secrets::vault::Vault::new(db.store.clone(), Some(Keyring::new(key(&new), vec![key(&old)])));
    let git = GitServer::start();
    let repo = app_repo(&git, "app");
    let work = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let _worker = spawn_worker("worker", ports.worker, work.path(), settings(&[]));
    let keys = settings(&[("SLIPWAY_SECRETS_KEY", &new), ("SLIPWAY_SECRETS_PREVIOUS_KEY", &old)]);
    let server = spawn_server("server", &db.url, &ports, &[ports.worker], keys);
    let api = ports.api();
    wait_healthy(&api, Duration::from_secs(30)).await;
    let mut rotate = slipway_command();
    rotate
        .args(["secret", "rotate-key"])
        .env("DATABASE_URL", &db.url)
        .env("SLIPWAY_SECRETS_KEY", &new)
        .env("SLIPWAY_SECRETS_PREVIOUS_KEY", &old);
    let rotation = tokio::task::spawn_blocking(move || rotate.output().unwrap());
    let mut jobs = Vec::new();
    for i in (0..300).step_by(7) {
        let (name, value) = (format!("s{i}"), format!("changed-{i}"));
        during.put(project, &name, &value, "test").await.unwrap();
        expected.insert(name.clone(), value);
        if i % 70 == 0 {
            let command = json!(["/bin/busybox", "sh", "-c", "echo got $S; echo also $T"]);
            let secrets = json!({ "S": name, "T": format!("s{}", i + 1) });
            let body = json!({ "repo": repo, "image": format!("{}/rotation/app:{}", open_registry(), unique("t")), "secrets": secrets, "run": { "command": command } });
            jobs.push(submit(&api, &body).await["id"].as_str().unwrap().to_string());
        }
    }
    let out = rotation.await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("re-sealed"), "{}", String::from_utf8_lossy(&out.stderr));

    // The old key can go: every value opens with the new one alone, as last set.
    let after = slipway_engine::secrets::vault::Vault::new(db.store.clone(), Some(Keyring::new(key(&new), vec![])));
    let names: Vec<String> = expected.keys().cloned().collect();
    let opened = after.open(project, &names).await.unwrap();
    assert_eq!(opened.0, expected);
    // Every job had its secrets: none failed, each printed both (masked).
    for id in &jobs {
        let job = wait_finished(&api, id, Duration::from_secs(180)).await;
        assert_eq!(job["state"], "succeeded", "{job}: {}", server.output());
        let lines: Vec<String> =
            all_logs(&api, id).await.iter().map(|l| l["line"].as_str().unwrap().to_string()).collect();
        assert!(lines.contains(&"got ***".to_string()) && lines.contains(&"also ***".to_string()), "{lines:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_sets_secrets_from_standard_input_lists_deletes_them_and_submits_jobs_naming_them() {
    let api = start_sealing(Some(Keyring::new(key(&SecretKey::generate_base64()), vec![]))).await;
    let value = unique("cli-secret-value-");
    let cli = |args: &[&str], input: Option<&str>| {
        use std::io::Write;
        let mut child = slipway_command()
            .args(args)
            .env("SLIPWAY_API", &api.base)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.unwrap_or_default().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let (code, out, err) = cli(&["secret", "set", "db", "--project", "default"], Some(&format!("{value}\n")));
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains(&value) && !err.contains(&value));
    let (code, _, err) = cli(&["secret", "set", "empty", "--project", "default"], Some(""));
    assert_eq!(code, Some(1));
    assert!(err.contains("no value"), "{err}");
    let (_, out, _) = cli(&["secret", "list", "--project", "default"], None);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["secrets"][0]["name"], "db", "{listed}");

    // The value was stored without its final newline: a job's env equal to it is refused.
    let (code, _, err) = cli(
        &[
            "submit",
            "--repo",
            "git://127.0.0.1:9418/app.git",
            "--image",
            "127.0.0.1:5000/cli/app:1",
            "-e",
            &format!("X={value}"),
        ],
        None,
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("secret_in_plain_field") && err.contains("env.X") && !err.contains(&value), "{err}");
    let (code, out, err) = cli(
        &[
            "submit",
            "--repo",
            "git://127.0.0.1:9418/app.git",
            "--image",
            "127.0.0.1:5000/cli/app:1",
            "--secret",
            "DB=db",
            "--build-secret",
            "npm=db",
            "--submodules",
        ],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    let job: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["spec"]["secrets"], json!({ "DB": "db" }));
    assert_eq!(job["spec"]["build_secrets"], json!({ "npm": "db" }));
    assert_eq!(job["spec"]["git"]["submodules"], true);

    let (code, _, err) = cli(&["secret", "delete", "db", "--project", "default"], None);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = cli(&["secret", "delete", "db", "--project", "default"], None);
    assert_eq!(code, Some(1));
    assert!(err.contains("not_found"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_project_s_default_credentials_for_a_git_host_go_into_jobs_that_name_none() {
    let api = start_sealing(Some(Keyring::new(key(&SecretKey::generate_base64()), vec![]))).await;
    let admin = token(&api, Role::Admin, Some("team"), None).await;
    let submitter = token(&api, Role::Submit, Some("team"), None).await;
    let token_login = r#"{"kind": "https_token", "username": "ci", "token": "tok-123456"}"#;
    assert_eq!(put(&api, &admin, "team", "git-token", token_login).await.0, 201);
    assert_eq!(put(&api, &admin, "team", "plain", "not credentials").await.0, 201);
    let set = |host: &str, secret: &str| {
        let path = format!("/v1/projects/team/git-credentials/{host}");
        let body = json!({ "secret": secret });
        let admin = admin.clone();
        let api = &api;
        async move {
            let (status, answer, _) = call(api, "PUT", &path, Some(&admin), Some(&body)).await;
            (status, answer)
        }
    };
    for (host, secret, field) in [
        ("Git.Example", "git-token", "host"),
        ("h:22", "git-token", "host"),
        ("127.0.0.1", "plain", "secret"),
        ("127.0.0.1", "missing", "secret"),
    ] {
        let (status, refused) = set(host, secret).await;
        assert_eq!((status, refused["error"]["field"].as_str()), (400, Some(field)), "{host} {secret}: {refused}");
    }
    assert_eq!(set("127.0.0.1", "git-token").await.0, 201);
    let (_, listed, _) = call(&api, "GET", "/v1/projects/team/git-credentials", Some(&submitter), None).await;
    assert_eq!(listed["git_credentials"][0]["secret"], "git-token", "{listed}");

    let body = json!({ "repo": "https://127.0.0.1/team/app.git", "image": "127.0.0.1:5000/team/app:v1" });
    let (status, job, _) = call(&api, "POST", "/v1/jobs", Some(&submitter), Some(&body)).await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["spec"]["git"]["credentials"], "git-token", "{job}");
    // Over git://, the token does not fit: the default is refused like a named one.
    let body = json!({ "repo": "git://127.0.0.1/team/app.git", "image": "127.0.0.1:5000/team/app:v1" });
    let (status, refused, _) = call(&api, "POST", "/v1/jobs", Some(&submitter), Some(&body)).await;
    assert_eq!((status, refused["error"]["field"].as_str()), (400, Some("git.credentials")), "{refused}");

    let (status, _, _) = call(&api, "DELETE", "/v1/projects/team/git-credentials/127.0.0.1", Some(&admin), None).await;
    assert_eq!(status, 204);
    let (status, job, _) = call(&api, "POST", "/v1/jobs", Some(&submitter), Some(&body)).await;
    assert_eq!(status, 201, "{job}");
    assert!(job["spec"].get("git").is_none(), "{job}");
}
