//! Project secrets with real parts: stored sealed, named by jobs, served to the
//! build through BuildKit's session and to the run's environment, and never shown
//! again — not in the stored logs, the live stream, the processes' own logs, the
//! image, its history or a dump of the database.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

const JOB_LIMIT: Duration = Duration::from_secs(180);

pub(crate) async fn put_secret(api: &str, project: &str, name: &str, value: &str) -> (u16, Value) {
    let response = http()
        .put(format!("{api}/v1/projects/{project}/secrets/{name}"))
        .json(&json!({ "value": value }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// What `pg_dump` writes of the whole database.
fn pg_dump(url: &str) -> String {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path().join("bin/pg_dump")))
        .find(|p| p.exists())
        .expect("pg_dump is installed with postgres");
    let out = std::process::Command::new(bin).arg(url).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn docker_text(args: &[&str]) -> String {
    let out = std::process::Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_reach_the_build_and_the_run_and_every_output_shows_them_masked() {
    let sa = Standalone::start(&[]).await;
    let api = sa.api();
    let password = unique("pw-one-line-");
    let key_lines = [unique("KEYLINE-A-"), unique("KEYLINE-B-")];
    let multi = format!("-----BEGIN TEST KEY-----\n{}\n{}\n-----END TEST KEY-----\n", key_lines[0], key_lines[1]);
    let npm = unique("npm-token-");
    for (name, value) in [("db-password", password.as_str()), ("deploy-key", &multi), ("npm-token", &npm)] {
        assert_eq!(put_secret(&api, "default", name, value).await.0, 201, "{name}");
    }
    // The build reads its secret from the mount, the run from its environment; each
    // prints what it got. (BuildKit caches a RUN whatever its secrets hold: the
    // command is made unique so that it runs.)
    let dockerfile = format!(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN --mount=type=secret,id=npm [\"/bin/busybox\", \"sh\", \"-c\", \"echo build sees $(/bin/busybox cat /run/secrets/npm) {}\"]\n\
         CMD [\"/bin/busybox\", \"sh\", \"-c\", \"echo run sees $DB_PASSWORD; echo \\\"$KEY\\\"\"]\n",
        unique("run-")
    );
    let repo = sa.git.repo("secret-app", &[("Dockerfile", Entry::Text(&dockerfile)), ("busybox", Entry::Busybox)]);
    let image = format!("{}/secrets/app:{}", open_registry(), unique("t"));
    let job = submit(
        &api,
        &json!({
            "repo": repo, "image": image,
            "secrets": { "DB_PASSWORD": "db-password", "KEY": "deploy-key" },
            "build_secrets": { "npm": "npm-token" },
        }),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    // The job shows names, never values.
    assert_eq!(job["spec"]["secrets"], json!({ "DB_PASSWORD": "db-password", "KEY": "deploy-key" }), "{job}");
    assert_eq!(job["spec"]["build_secrets"], json!({ "npm": "npm-token" }));
    let live = tokio::spawn({
        let url = format!("{api}/v1/jobs/{id}/logs?follow=true");
        async move {
            let mut reader = SseReader::open(&url, None).await;
            let mut seen = String::new();
            while let Some(event) = reader.next().await {
                seen.push_str(&event.data);
                seen.push('\n');
                if event.event == "end" {
                    break;
                }
            }
            seen
        }
    });
    let job = wait_finished(&api, &id, JOB_LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");

    let stored: Vec<String> =
        all_logs(&api, &id).await.iter().map(|l| l["line"].as_str().unwrap().to_string()).collect();
    let stored = stored.join("\n");
    assert!(stored.contains("build sees ***"), "{stored}");
    assert!(stored.contains("run sees ***"), "{stored}");
    let live = tokio::time::timeout(Duration::from_secs(30), live).await.unwrap().unwrap();
    assert!(live.contains("run sees ***"), "{live}");

    let image_id = job["image_id"].as_str().unwrap();
    let history = docker_text(&["history", "--no-trunc", image_id]);
    let inspect = docker_text(&["image", "inspect", image_id]);
    let dump = pg_dump(&sa.db.url);
    let job_view = get_job(&api, &id).await.to_string();
    let process = sa.process.output();
    let values = [password.as_str(), npm.as_str(), key_lines[0].as_str(), key_lines[1].as_str()];
    for (what, text) in [
        ("stored logs", &stored),
        ("live logs", &live),
        ("image history", &history),
        ("image inspect", &inspect),
        ("pg_dump", &dump),
        ("job view", &job_view),
        ("process logs", &process),
    ] {
        for value in values {
            assert!(!text.contains(value), "{what} shows a secret value");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_secret_is_deleted_before_it_starts_fails_secret_missing_for_good() {
    let sa = Standalone::start(&[("SLIPWAY_WORKER_SLOTS", "1")]).await;
    let api = sa.api();
    assert_eq!(put_secret(&api, "default", "db-password", "will-be-deleted").await.0, 201);
    let image = format!("{}/secrets/app:{}", open_registry(), unique("t"));
    // The only slot is held while the second job waits in the queue.
    let blocker =
        submit(&api, &json!({ "repo": sa.repo, "image": image, "run": { "command": sleeping_command(60) } })).await;
    let blocker = blocker["id"].as_str().unwrap().to_string();
    wait_state(&api, &blocker, "running", JOB_LIMIT).await;
    let waiting = submit(&api, &json!({ "repo": sa.repo, "image": image, "secrets": { "DB": "db-password" } })).await;
    let waiting = waiting["id"].as_str().unwrap().to_string();
    let deleted = http().delete(format!("{api}/v1/projects/default/secrets/db-password")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    cancel(&api, &blocker).await;

    let job = wait_finished(&api, &waiting, JOB_LIMIT).await;
    assert_eq!(
        (job["state"].as_str(), job["error"]["code"].as_str()),
        (Some("failed"), Some("secret_missing")),
        "{job}"
    );
    assert_eq!(job["attempt"], 1, "not retried");
    assert!(job["error"]["message"].as_str().unwrap().contains("secrets.DB"), "{job}");
    let history = state_history(&sa.db, &waiting).await;
    assert_eq!(history, ["queued", "failed"], "no step ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_project_s_registry_login_pushes_its_jobs_and_deletes_their_images_and_no_other_project_can_name_it() {
    let registry = AuthRegistry::start();
    // Jobs are kept a few seconds: the sweep then deletes the image with the job's login.
    let sa = Standalone::start(&[("SLIPWAY_RETENTION", "4s"), ("SLIPWAY_SWEEP_INTERVAL", "300ms")]).await;
    let api = sa.api();
    let login = json!({ "username": REGISTRY_USER, "password": REGISTRY_PASSWORD }).to_string();
    assert_eq!(put_secret(&api, "default", "registry-login", &login).await.0, 201);
    let image = format!("{}/private/app:{}", registry.addr, unique("t"));

    // Without the login the registry refuses the push; with it the job succeeds.
    let refused = submit(&api, &json!({ "repo": sa.repo, "image": image })).await;
    let refused = wait_finished(&api, refused["id"].as_str().unwrap(), JOB_LIMIT).await;
    assert_eq!(refused["error"]["code"], "push_refused", "{refused}");
    let job =
        submit(&api, &json!({ "repo": sa.repo, "image": image, "registry": { "credentials": "registry-login" } }))
            .await;
    let job = wait_finished(&api, job["id"].as_str().unwrap(), JOB_LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(job["pushed_ref"].as_str().unwrap().starts_with(&format!("{}/private/app@sha256:", registry.addr)));

    // Another project's job cannot name it.
    let made = http().post(format!("{api}/v1/projects")).json(&json!({ "name": "other" })).send().await.unwrap();
    assert_eq!(made.status(), 201);
    let body =
        json!({ "project": "other", "repo": sa.repo, "image": image, "registry": { "credentials": "registry-login" } });
    let answer = http().post(format!("{api}/v1/jobs")).json(&body).send().await.unwrap();
    assert_eq!(answer.status(), 400);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["error"]["field"], "registry.credentials", "{answer}");

    // Past the retention the image goes, deleted with the job's login (the server
    // has none for this registry).
    let pushed = job["pushed_ref"].as_str().unwrap();
    let (_, digest) = pushed.split_once('@').unwrap();
    let manifest = format!("http://{}/v2/private/app/manifests/{digest}", registry.addr);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = http()
            .head(&manifest)
            .basic_auth(REGISTRY_USER, Some(REGISTRY_PASSWORD))
            .header(
                "accept",
                "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
            )
            .send()
            .await
            .unwrap()
            .status();
        if status == 404 {
            break;
        }
        assert_eq!(status, 200, "{manifest}");
        assert!(std::time::Instant::now() < deadline, "the sweep left {pushed}: {}", sa.process.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gone = http().get(format!("{api}/v1/jobs/{}", job["id"].as_str().unwrap())).send().await.unwrap();
    assert_eq!(gone.status(), 404, "the job is swept with its image");
    assert!(!sa.process.output().contains(REGISTRY_PASSWORD), "the process log shows the password");
}

#[tokio::test(flavor = "multi_thread")]
async fn private_repositories_and_their_submodules_clone_with_the_project_s_credentials_and_without_them_fail_auth_refused()
 {
    let git = GitServer::start();
    // The app takes a file from a submodule that needs the same credentials.
    git.repo("lib", &[("message.txt", Entry::Text("from the submodule\n"))]);
    let dockerfile = "FROM scratch\nCOPY busybox /bin/busybox\nCOPY vendor/lib/message.txt /message.txt\n\
                      CMD [\"/bin/busybox\", \"cat\", \"/message.txt\"]\n";
    git.repo("app", &[("Dockerfile", Entry::Text(dockerfile)), ("busybox", Entry::Busybox)]);
    git.add_submodule("app", "lib", "vendor/lib");
    let token = unique("git-token-");
    let https = HttpsGit::start(git.root(), "ci", &token);
    let ssh = SshGit::start(git.root());
    let sa = Standalone::start(&[("SSL_CERT_FILE", &https.ca_file()), ("HOME", &ssh.home())]).await;
    let api = sa.api();
    let https_login = json!({ "kind": "https_token", "username": "ci", "token": token }).to_string();
    let ssh_login = json!({ "kind": "ssh_key", "private_key": ssh.deploy_key() }).to_string();
    assert_eq!(put_secret(&api, "default", "git-token", &https_login).await.0, 201);
    assert_eq!(put_secret(&api, "default", "deploy-key", &ssh_login).await.0, 201);
    let image = format!("{}/private/app:{}", open_registry(), unique("t"));

    for (repo, credentials) in [(https.url("app"), "git-token"), (ssh.url("app"), "deploy-key")] {
        let body = json!({ "repo": repo, "image": image, "git": { "credentials": credentials, "submodules": true } });
        let job = submit(&api, &body).await;
        let id = job["id"].as_str().unwrap().to_string();
        let job = wait_finished(&api, &id, JOB_LIMIT).await;
        assert_eq!(job["state"], "succeeded", "{repo}: {job}");
        let lines: Vec<String> = all_logs(&api, &id).await.iter().map(|l| l["line"].as_str().unwrap().into()).collect();
        assert!(lines.iter().any(|l| l == "from the submodule"), "{repo}: {lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("submodule vendor/lib: ")), "{repo}: {lines:?}");

        let job = submit(&api, &json!({ "repo": repo, "image": image })).await;
        let job = wait_finished(&api, job["id"].as_str().unwrap(), JOB_LIMIT).await;
        assert_eq!(
            (job["state"].as_str(), job["error"]["code"].as_str()),
            (Some("failed"), Some("auth_refused")),
            "{repo}: {job}"
        );
    }
    let process = sa.process.output();
    assert!(!process.contains(&token), "the process log shows the token");
    assert!(!process.contains("PRIVATE KEY-----\n"), "the process log shows the key");
}
