//! Real parts for the engine's tests: a fresh Postgres database per test, git
//! repositories served by `git daemon`, registries, and `slipway` processes whose
//! output is shown when a test fails.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use slipway_engine::store::Store;

pub mod moto;

pub const BUSYBOX_DOCKERFILE: &str = "FROM scratch\nCOPY busybox /bin/busybox\nCMD [\"/bin/busybox\", \"sh\", \"-c\", \"echo hello $GREETING; echo done >&2\"]\n";
/// `s3cret`, hashed for the registry's htpasswd.
pub const REGISTRY_USER: &str = "slipway";
pub const REGISTRY_PASSWORD: &str = "s3cret";
const REGISTRY_HTPASSWD: &str = "slipway:$2b$12$cyOMsDjcyhjEc/A.uk9VsuUEf3vzCueXlyxtCtnuu4.0Q1lCpI5ye";

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the tests through scripts/test"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_for_port(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port} after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh database with the migrations applied.
pub struct TestDb {
    pub url: String,
    pub store: Store,
}

impl TestDb {
    pub async fn new() -> Self {
        use sqlx::Connection;
        let base = env("DATABASE_URL");
        let name = format!("slipway_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&base).await.expect("connect to DATABASE_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}"))).execute(&mut admin).await.unwrap();
        let (prefix, _) = base.rsplit_once('/').expect("DATABASE_URL has a database name");
        let url = format!("{prefix}/{name}");
        let store = slipway_engine::store::Store::open(&url, std::time::Duration::from_secs(30))
            .await
            .expect("open the test database");
        TestDb { url, store }
    }
}

/// A folder of repositories served by `git daemon` on loopback.
pub struct GitServer {
    root: tempfile::TempDir,
    port: u16,
    child: Child,
}

/// What a repository file is.
pub enum Entry<'a> {
    Text(&'a str),
    Busybox,
    Symlink(&'a str),
}

impl GitServer {
    pub fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("git")
            .args(["daemon", "--export-all", "--reuseaddr", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", root.path().display()))
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts");
        wait_for_port(port, Duration::from_secs(10));
        GitServer { root, port, child }
    }

    /// Makes a repository with one commit on `main` and returns its URL.
    pub fn repo(&self, name: &str, files: &[(&str, Entry)]) -> String {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        for (path, entry) in files {
            let target = dir.join(path);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            match entry {
                Entry::Text(text) => std::fs::write(&target, text).unwrap(),
                Entry::Busybox => {
                    std::fs::copy(env("SLIPWAY_TEST_BUSYBOX"), &target).unwrap();
                }
                Entry::Symlink(to) => std::os::unix::fs::symlink(to, &target).unwrap(),
            }
        }
        git(&dir, &["add", "-A"]);
        git(&dir, &["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "init"]);
        self.url(name)
    }

    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    pub fn head(&self, name: &str) -> String {
        let out =
            Command::new("git").args(["rev-parse", "HEAD"]).current_dir(self.root.path().join(name)).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git").args(args).current_dir(dir).status().unwrap();
    assert!(status.success(), "git {args:?} failed");
}

/// A repository whose image prints `hello $GREETING`.
pub fn app_repo(git: &GitServer, name: &str) -> String {
    git.repo(name, &[("Dockerfile", Entry::Text(BUSYBOX_DOCKERFILE)), ("busybox", Entry::Busybox)])
}

/// A `docker-registry` of the test's own that demands a password.
pub struct AuthRegistry {
    dir: tempfile::TempDir,
    pub addr: String,
    child: Child,
}

impl AuthRegistry {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        std::fs::write(dir.path().join("htpasswd"), REGISTRY_HTPASSWD).unwrap();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\nhttp:\n  addr: {addr}\n\
             auth:\n  htpasswd:\n    realm: slipway-test\n    path: {root}/htpasswd\n",
            root = dir.path().display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry starts");
        wait_for_port(port, Duration::from_secs(10));
        AuthRegistry { dir, addr, child }
    }
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The open registry the test script started.
pub fn open_registry() -> String {
    env("SLIPWAY_TEST_REGISTRY")
}

/// The `slipway` binary with a clean environment: nothing leaks in from the
/// test's own (or the developer's) but what a process needs to find its tools and
/// the Docker engine.
pub fn slipway_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_slipway"));
    command.env_clear();
    for var in ["PATH", "HOME", "DOCKER_HOST", "TMPDIR"] {
        if let Ok(value) = std::env::var(var) {
            command.env(var, value);
        }
    }
    command
}

/// A running `slipway` process; killed when dropped, its output shown if the test failed.
pub struct Slipway {
    pub name: String,
    child: Child,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Slipway {
    pub fn spawn(name: &str, args: &[&str], envs: &BTreeMap<&str, String>) -> Self {
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("out.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut command = slipway_command();
        command.args(args).stdout(file.try_clone().unwrap()).stderr(file).env("RUST_LOG", "info,sqlx=warn");
        command.envs(envs);
        let child = command.spawn().expect("slipway starts");
        Slipway { name: name.to_string(), child, log, _log_dir: log_dir }
    }

    pub fn output(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`KILL`, `STOP`, `CONT`, …).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success(), "kill -{signal} failed");
        if signal == "KILL" {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGTERM and waits for the exit, at most `limit`.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Slipway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- output of {} -----\n{}\n----- end of {} -----", self.name, self.output(), self.name);
        }
    }
}

/// Ports and folders of one server + worker pair.
pub struct Ports {
    pub http: u16,
    pub grpc: u16,
    pub worker: u16,
}

impl Ports {
    pub fn new() -> Self {
        Ports { http: free_port(), grpc: free_port(), worker: free_port() }
    }

    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    pub fn server_env(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("SLIPWAY_HTTP_ADDR", format!("127.0.0.1:{}", self.http)),
            ("SLIPWAY_GRPC_ADDR", format!("127.0.0.1:{}", self.grpc)),
            ("SLIPWAY_HEARTBEAT_INTERVAL", "200ms".to_string()),
            ("SLIPWAY_WORKER_TIMEOUT", "2s".to_string()),
        ])
    }

    pub fn worker_env(&self, work_dir: &Path) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("SLIPWAY_WORKER_ADDR", format!("127.0.0.1:{}", self.worker)),
            ("SLIPWAY_WORK_DIR", work_dir.display().to_string()),
            ("SLIPWAY_WORKER_METRICS_ADDR", format!("127.0.0.1:{}", free_port())),
        ])
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
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

/// The states the job went through, from its event history.
pub async fn state_history(db: &TestDb, id: &str) -> Vec<String> {
    let id: uuid::Uuid = id.parse().unwrap();
    sqlx::query_scalar("select to_state::text from job_events where job_id = $1 order by id")
        .bind(id)
        .fetch_all(db.store.pool())
        .await
        .unwrap()
}

/// Containers the engine still has for a job, running or not.
pub fn containers_of(job_id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-a", "-q", "--filter", &format!("label=slipway.job_id={job_id}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker ps failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().split_whitespace().map(String::from).collect()
}

/// Waits until the engine has no container of the job left (a run that went well
/// is removed just after its end is committed).
pub async fn wait_containers_gone(job_id: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let left = containers_of(job_id);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "containers of job {job_id} left after {limit:?}: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Job folders under a work folder (`<work>/<worker>/job-*`).
pub fn job_folders(work_dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for worker in std::fs::read_dir(work_dir).unwrap().flatten() {
        if let Ok(jobs) = std::fs::read_dir(worker.path()) {
            found.extend(jobs.flatten().map(|j| j.path()));
        }
    }
    found
}

/// A repository whose build takes `seconds` (a `RUN sleep`), then runs `hello`.
/// The `RUN` step is unique to the repository, so that no build cache skips it.
pub fn slow_build_repo(git: &GitServer, name: &str, seconds: u32) -> String {
    let dockerfile = format!(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo {}; /bin/busybox sleep {seconds}\"]\n\
         CMD [\"/bin/busybox\", \"echo\", \"hello\"]\n",
        unique("build-")
    );
    git.repo(name, &[("Dockerfile", Entry::Text(&dockerfile)), ("busybox", Entry::Busybox)])
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

/// The job's events as (to_state, attempt, worker, reason).
pub async fn events(db: &TestDb, id: &str) -> Vec<(String, i32, Option<String>, Option<String>)> {
    let id: uuid::Uuid = id.parse().unwrap();
    sqlx::query_as("select to_state::text, attempt, worker, reason from job_events where job_id = $1 order by id")
        .bind(id)
        .fetch_all(db.store.pool())
        .await
        .unwrap()
}

/// How many containers the engine ever created for a job since `since` (unix seconds).
pub fn containers_created(job_id: &str, since: u64) -> usize {
    let until = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1;
    let out = Command::new("docker")
        .args(["events", "--since", &since.to_string(), "--until", &until.to_string()])
        .args(["--filter", "type=container", "--filter", "event=create"])
        .args(["--filter", &format!("label=slipway.job_id={job_id}"), "--format", "{{.ID}}"])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker events failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().filter(|l| !l.trim().is_empty()).count()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

pub async fn cancel(api: &str, id: &str) -> (u16, Value) {
    let response = http().post(format!("{api}/v1/jobs/{id}/cancel")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A Postgres server of the test's own, on a fixed port, that the test can restart.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .unwrap()
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("pg_ctl").exists())
            .expect("postgres server binaries");
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let pg = PrivatePostgres { dir, bin, port: free_port() };
        pg.run("initdb", &["-D", &pg.data(), "-U", "slipway", "--auth=trust", "--no-instructions"]);
        pg.up();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    pub fn url(&self) -> String {
        format!("postgres://slipway@127.0.0.1:{}/postgres", self.port)
    }

    pub fn up(&self) {
        let options = format!("-p {} -h 127.0.0.1 -k ''", self.port);
        let log = self.dir.path().join("log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-o", &options, "-w", "start"]);
    }

    pub fn down(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let root =
            std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false);
        let status = if root {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(args)
                .stdout(Stdio::null())
                .status()
        } else {
            Command::new(&program).args(args).stdout(Stdio::null()).status()
        }
        .unwrap();
        assert!(status.success(), "{} {args:?} failed", program.display());
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let options = ["-D", &self.data(), "-m", "immediate", "stop"].map(String::from);
        let program = self.bin.join("pg_ctl");
        let _ = Command::new("runuser").args(["-u", "postgres", "--"]).arg(&program).args(&options).output();
        let _ = Command::new(&program).args(&options).output();
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// Reads Server-Sent Events from a response, chunk by chunk.
pub struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    pub async fn open(url: &str, last_event_id: Option<&str>) -> Self {
        let mut request = reqwest::Client::new().get(url).header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        SseReader { response, buffer: String::new() }
    }

    /// The next event, or `None` when the stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent { event: "message".into(), ..Default::default() };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if block.trim().starts_with(':') {
                    continue; // a keep-alive comment
                }
                return Some(event);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(60), self.response.chunk()).await.ok()?.ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// A `standalone` process on a fresh database, with an app repository to build.
pub struct Standalone {
    pub db: TestDb,
    pub git: GitServer,
    /// The URL of a repository whose image prints `hello $GREETING`.
    pub repo: String,
    pub work: tempfile::TempDir,
    pub ports: Ports,
    pub process: Slipway,
}

impl Standalone {
    /// Starts one with these extra settings and waits until its API answers.
    pub async fn start(extra: &[(&'static str, &str)]) -> Self {
        let db = TestDb::new().await;
        let git = GitServer::start();
        let repo = app_repo(&git, "app");
        let work = tempfile::tempdir().unwrap();
        let ports = Ports::new();
        let mut env = ports.server_env();
        env.extend(ports.worker_env(work.path()));
        env.insert("DATABASE_URL", db.url.clone());
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let process = Slipway::spawn("standalone", &["standalone"], &env);
        wait_healthy(&ports.api(), Duration::from_secs(30)).await;
        Standalone { db, git, repo, work, ports, process }
    }

    pub fn api(&self) -> String {
        self.ports.api()
    }
}
