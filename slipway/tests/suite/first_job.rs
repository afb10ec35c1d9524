//! A first job on one machine with nothing else installed: an image that names no
//! registry stays on the engine, a repository on the same machine is built from its
//! commits.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(120);

fn image_exists(image: &str) -> bool {
    std::process::Command::new("docker").args(["image", "inspect", image]).output().unwrap().status.success()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_image_is_built_and_run_on_the_engine_pushed_nowhere_and_swept_with_its_job() {
    let standalone = Standalone::start(&[("SLIPWAY_RETENTION", "5s"), ("SLIPWAY_SWEEP_INTERVAL", "300ms")]).await;
    let api = standalone.api();
    // Content of its own, so that no other job shares the image.
    let dockerfile = format!("{BUSYBOX_DOCKERFILE}LABEL test.unique={}\n", unique("u"));
    let repo = standalone.git.repo("local", &[("Dockerfile", Entry::Text(&dockerfile)), ("busybox", Entry::Busybox)]);
    let image = format!("slipway-test/{}:dev", unique("local"));
    let body = json!({ "repo": repo, "image": image, "env": { "GREETING": "from a local image" } });
    let id = submit(&api, &body).await["id"].as_str().unwrap().to_string();
    let job = wait_finished(&api, &id, LIMIT).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!((job["pushed_ref"].clone(), job["local"].clone()), (json!(null), json!(true)), "{job}");
    let steps: Vec<&str> = job["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["clone", "build", "push", "run"], "the push step is passed through");
    // Its orchestrator recorded the worker that ran it.
    let workers: serde_json::Value =
        http().get(format!("{api}/v1/workers")).send().await.unwrap().json().await.unwrap();
    let worker = &workers["workers"][0];
    assert_eq!((&worker["reachable"], &worker["runtimes"]), (&json!(true), &json!(["docker"])), "{workers}");
    assert!(worker["slots_total"].as_i64() > Some(0) && worker["id"].is_string(), "{workers}");

    let events: serde_json::Value =
        http().get(format!("{api}/v1/jobs/{id}/events")).send().await.unwrap().json().await.unwrap();
    let into_run = events["events"].as_array().unwrap().iter().find(|e| e["to_state"] == "running").unwrap();
    assert_eq!(
        (into_run["from_state"].as_str(), into_run["reason"].as_str()),
        (Some("pushing"), Some("push skipped: local image"))
    );
    let lines: Vec<String> =
        all_logs(&api, &id).await.iter().map(|l| l["line"].as_str().unwrap_or_default().to_string()).collect();
    assert!(lines.iter().any(|l| l.starts_with("push skipped: local image")), "{lines:?}");
    assert!(lines.iter().any(|l| l == "hello from a local image"), "{lines:?}");

    // The image is on the engine under its name, as `docker build -t` leaves it.
    let image_id = job["image_id"].as_str().unwrap();
    let inspected = std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &image])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&inspected.stdout).trim(), image_id);

    // Past the retention, the job and its image go.
    let deadline = Instant::now() + Duration::from_secs(60);
    while image_exists(image_id) || http().get(format!("{api}/v1/jobs/{id}")).send().await.unwrap().status() != 404 {
        assert!(Instant::now() < deadline, "the expired job's local image stays on the engine");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!image_exists(&image), "its name went with it");
}

/// A repository in `dir` whose image prints `said`, committed; its working tree
/// then changed to print something else, uncommitted.
fn local_repository(dir: &std::path::Path, said: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(env("SLIPWAY_TEST_BUSYBOX"), dir.join("busybox")).unwrap();
    let dockerfile =
        |word: &str| format!("FROM scratch\nCOPY busybox /bin/busybox\nCMD [\"/bin/busybox\", \"echo\", \"{word}\"]\n");
    std::fs::write(dir.join("Dockerfile"), dockerfile(said)).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "-A"]);
    git(dir, &["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "init"]);
    std::fs::write(dir.join("Dockerfile"), dockerfile("uncommitted")).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_repo_dot_builds_the_commits_of_a_local_repository_inside_the_allowed_folders_only() {
    let (roots, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let standalone = Standalone::start(&[("SLIPWAY_LOCAL_REPO_ROOTS", &roots.path().display().to_string())]).await;
    let api = standalone.api();
    let said = unique("committed");
    let app = roots.path().join("app");
    local_repository(&app, &said);

    let image = format!("slipway-test/{}:dev", unique("repo"));
    let out = slipway_command()
        .args(["submit", "--repo", ".", "--image", &image, "--follow"])
        .env("SLIPWAY_API", &api)
        .current_dir(&app)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(&said) && !stdout.contains("uncommitted"), "only committed content is built:\n{stdout}");
    let jobs: Vec<serde_json::Value> =
        sqlx::query_scalar("select spec from jobs").fetch_all(standalone.db.store.pool()).await.unwrap();
    let url = format!("file://{}", app.canonicalize().unwrap().display());
    assert_eq!(jobs[0]["repo"], url.as_str(), "the CLI names the folder by its absolute URL");

    // A repository outside the allowed folders, also through a link inside them.
    let outside = elsewhere.path().join("app");
    local_repository(&outside, "outside");
    std::os::unix::fs::symlink(&outside, roots.path().join("link")).unwrap();
    for repo in [outside.clone(), roots.path().join("link")] {
        let out = slipway_command()
            .args(["submit", "--repo", &repo.display().to_string(), "--image", "slipway-test/outside:dev"])
            .env("SLIPWAY_API", &api)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("outside the folders local repositories may be in"),
            "{stderr}"
        );
    }
    let count: i64 =
        sqlx::query_scalar("select count(*) from jobs").fetch_one(standalone.db.store.pool()).await.unwrap();
    assert_eq!(count, 1, "nothing written for the refusals");
}

/// The lines of the README's code block tagged `tag` (```` ```sh tag ````).
fn readme_block(tag: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let opening = format!("```sh {tag}\n");
    let start = readme.find(&opening).unwrap_or_else(|| panic!("the README has no `{opening}` block")) + opening.len();
    let length = readme[start..].find("```").unwrap();
    readme[start..start + length].to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_s_first_job_runs_as_written_against_a_fresh_data_folder() {
    use std::os::unix::fs::PermissionsExt;
    // A new user: a home of their own (where the CLI's credentials go), git set up,
    // `slipway` on the PATH; nothing else.
    let home = tempfile::tempdir().unwrap();
    // Postgres runs as the postgres user under root: it must be able to enter the folders.
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_slipway"));
    let path = format!("{}:{}", binary.parent().unwrap().display(), std::env::var("PATH").unwrap());
    let shell = |block: &str| {
        let mut command = std::process::Command::new("bash");
        command.args(["-euc", block]).env_clear().current_dir(home.path());
        command.env("PATH", &path).env("HOME", home.path()).env("SLIPWAY_DATA_DIR", home.path().join("data"));
        for (name, value) in [("GIT_AUTHOR_NAME", "New User"), ("GIT_COMMITTER_NAME", "New User")] {
            command.env(name, value);
        }
        for name in ["GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"] {
            command.env(name, "new.user@example.com");
        }
        if let Ok(docker) = std::env::var("DOCKER_HOST") {
            command.env("DOCKER_HOST", docker);
        }
        command
    };

    let server_block = readme_block("first-job-server");
    assert_eq!(server_block.trim().lines().count(), 1, "one command, which SIGTERM stops: {server_block}");
    let log = home.path().join("standalone.log");
    let mut server = shell(&server_block)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(home.path().join("standalone.err")).unwrap())
        .spawn()
        .unwrap();
    let said = || {
        let err = std::fs::read_to_string(home.path().join("standalone.err")).unwrap_or_default();
        format!("{}{err}", std::fs::read_to_string(&log).unwrap_or_default())
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !said().contains("slipway is ready") {
        assert!(server.try_wait().unwrap().is_none(), "standalone ended: {}", said());
        assert!(Instant::now() < deadline, "standalone never said it was ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = said();
    assert!(ready.contains("http://127.0.0.1:8080") && ready.contains("(loopback only)"), "{ready}");
    assert!(ready.contains("building with BuildKit"), "{ready}");

    let first_job = shell(&readme_block("first-job")).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&first_job.stdout), String::from_utf8_lossy(&first_job.stderr));
    // The job, with the token the first start saved for the CLI.
    let saved = std::fs::read_to_string(home.path().join(".config/slipway/credentials.toml")).unwrap();
    let token = saved.lines().find_map(|l| l.strip_prefix("token = \"")?.strip_suffix('"')).unwrap().to_string();
    let jobs: serde_json::Value = reqwest::Client::new()
        .get("http://127.0.0.1:8080/v1/jobs")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // `bash -c` runs the block's one command in its own place: the signal reaches it.
    let stop = std::process::Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    let stopped = server.wait().unwrap();
    let image_id = jobs["jobs"][0]["image_id"].as_str().unwrap_or_default().to_string();
    if !image_id.is_empty() {
        let _ = std::process::Command::new("docker").args(["rmi", "-f", &image_id]).output();
    }
    assert!(first_job.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("hello from slipway"), "{stdout}\n{stderr}");
    assert!(stdout.contains("push skipped: local image"), "{stdout}\n{stderr}");
    assert_eq!(jobs["jobs"][0]["local"], true, "{jobs}");
    assert!(stop.success() && stopped.success(), "standalone stops on SIGTERM: {stopped:?}");
}
