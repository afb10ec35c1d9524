//! `slipway` processes with clean environments, their ports, and a `standalone` with a repository to build.

use super::*;

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
    // The CLI's token; and no credentials file of the developer's is read or written.
    command.env("SLIPWAY_TOKEN", &test_token().secret);
    command.env("XDG_CONFIG_HOME", std::env::temp_dir().join("slipway-test-no-config"));
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
        Self::spawn_in(tempfile::tempdir().unwrap(), name, args, envs)
    }

    /// Spawns with its output (and whatever else the caller put there) in `log_dir`,
    /// removed when the process is dropped.
    fn spawn_in(log_dir: tempfile::TempDir, name: &str, args: &[&str], envs: &BTreeMap<&str, String>) -> Self {
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

    /// The most memory the process has held so far (`VmHWM`), in bytes.
    pub fn peak_memory(&self) -> u64 {
        self.memory_field("VmHWM:")
    }

    /// The memory the process holds now (`VmRSS`), in bytes.
    pub fn memory(&self) -> u64 {
        self.memory_field("VmRSS:")
    }

    fn memory_field(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib = status.lines().find_map(|l| l.strip_prefix(field)).expect(field);
        kib.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
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

/// The ports of one server (HTTP API, report service) and of its worker.
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

    /// A server's settings: its ports, and a heartbeat and worker timeout short
    /// enough for tests to see failures handled within seconds.
    fn server_env(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("SLIPWAY_HTTP_ADDR", format!("127.0.0.1:{}", self.http)),
            ("SLIPWAY_GRPC_ADDR", format!("127.0.0.1:{}", self.grpc)),
            ("SLIPWAY_HEARTBEAT_INTERVAL", "200ms".to_string()),
            ("SLIPWAY_WORKER_TIMEOUT", "2s".to_string()),
            // Every test's client is 127.0.0.1, polling as fast as it likes: the
            // per-client limits are tried by tests of their own.
            ("SLIPWAY_HTTP_RATE", "100000".to_string()),
            ("SLIPWAY_HTTP_BURST", "1000000".to_string()),
            ("SLIPWAY_MAX_FOLLOWERS_PER_CLIENT", "1000".to_string()),
        ])
        .into_iter()
        .chain(repo_policy_env())
        .collect()
    }
}

/// Settings given as pairs of string slices, as tests write them.
pub fn settings(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// The tests' repositories are served by `git daemon` on 127.0.0.1: servers and
/// workers are told to allow exactly that (the default would refuse both the
/// scheme and the address).
fn repo_policy_env() -> [(&'static str, String); 2] {
    [("SLIPWAY_REPO_ALLOW_INSECURE", "true".into()), ("SLIPWAY_REPO_ALLOW_HOSTS", "127.0.0.1".into())]
}

/// The submission rules of an in-process API: those `repo_policy_env` gives servers.
pub fn test_submit_defaults() -> slipway_engine::job::SubmitDefaults {
    let repo = slipway_steps::repo_url::RepoPolicy {
        allow_insecure: true,
        allow_hosts: vec!["127.0.0.1".into()],
        ..Default::default()
    };
    slipway_engine::job::SubmitDefaults { repo, ..Default::default() }
}

/// A worker's settings: its port and work folder.
fn worker_env(port: u16, work_dir: &Path) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("SLIPWAY_WORKER_ADDR", format!("127.0.0.1:{port}")),
        ("SLIPWAY_WORK_DIR", work_dir.display().to_string()),
        ("SLIPWAY_WORKER_METRICS_ADDR", format!("127.0.0.1:{}", free_port())),
    ])
    .into_iter()
    .chain(repo_policy_env())
    .collect()
}

/// A `slipway worker` with id `id`, serving on `port`, working in `work_dir`;
/// `extra` settings are added (or replace the defaults).
pub fn spawn_worker(
    id: &str,
    port: u16,
    work_dir: &Path,
    extra: impl IntoIterator<Item = (&'static str, String)>,
) -> Slipway {
    let mut env = worker_env(port, work_dir);
    env.insert("SLIPWAY_WORKER_ID", id.to_string());
    env.extend(tls_env(TlsRole::Worker(id)));
    env.extend(extra);
    Slipway::spawn(id, &["worker"], &env)
}

/// A `slipway server` named `name` (its orchestrator id) on `ports`, on the
/// database at `db_url`, dispatching to the workers serving on `workers`.
pub fn spawn_server(
    name: &str,
    db_url: &str,
    ports: &Ports,
    workers: &[u16],
    extra: impl IntoIterator<Item = (&'static str, String)>,
) -> Slipway {
    let mut env = ports.server_env();
    env.insert("DATABASE_URL", db_url.to_string());
    env.extend(tls_env(TlsRole::Orchestrator));
    let urls: Vec<String> = workers.iter().map(|p| format!("https://127.0.0.1:{p}")).collect();
    env.insert("SLIPWAY_WORKERS", urls.join(","));
    env.insert("SLIPWAY_ORCHESTRATOR_ID", name.to_string());
    env.extend(extra);
    Slipway::spawn(name, &["server"], &env)
}

/// A `slipway standalone` named `name` on `ports` (its worker on `ports.worker`),
/// on the database at `db_url` (none: its own private Postgres), working in `work_dir`.
pub fn spawn_standalone(
    name: &str,
    db_url: Option<&str>,
    ports: &Ports,
    work_dir: &Path,
    extra: impl IntoIterator<Item = (&'static str, String)>,
) -> Slipway {
    let mut env = ports.server_env();
    env.extend(worker_env(ports.worker, work_dir));
    // Its data folder (its CA, at least) is the process's own, not the machine's.
    let dir = tempfile::tempdir().unwrap();
    env.insert("SLIPWAY_DATA_DIR", dir.path().join("data").display().to_string());
    env.insert("XDG_CONFIG_HOME", dir.path().join("config").display().to_string());
    if let Some(url) = db_url {
        env.insert("DATABASE_URL", url.to_string());
    }
    env.extend(extra);
    Slipway::spawn_in(dir, name, &["standalone"], &env)
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
        let process = spawn_standalone("standalone", Some(&db.url), &ports, work.path(), settings(extra));
        wait_healthy(&ports.api(), Duration::from_secs(30)).await;
        Standalone { db, git, repo, work, ports, process }
    }

    pub fn api(&self) -> String {
        self.ports.api()
    }
}
