//! Configuration of the processes: defaults, then `SLIPWAY_*` (and `DATABASE_URL`)
//! environment variables, then flags; then one `validate()`. The doc comment of each
//! flag is its `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

mod aws;
mod secrets;
pub use aws::AwsArgs;
pub use secrets::SecretsKeyArgs;

fn duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw).map_err(|e| format!("`{raw}` is not a duration such as 500ms or 2s: {e}"))
}

/// Where the database is.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Database")]
pub struct DatabaseArgs {
    /// Postgres URL, such as postgres://user:pass@host/db.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// The orchestrator and HTTP API (`slipway server`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP")]
pub struct ServerArgs {
    /// Address of the HTTP API.
    #[arg(long, env = "SLIPWAY_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// HTTP connections open at once; one over the cap is closed at once.
    #[arg(long, env = "SLIPWAY_HTTP_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub http_max_connections: u32,
    /// How long an HTTP connection may take to send a request's head, or stay idle
    /// between requests, before it is closed.
    #[arg(long, env = "SLIPWAY_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub http_header_timeout: Duration,
    /// Requests a second one client (an IPv4 address, an IPv6 /64) may make on
    /// average; past it `429` with `Retry-After` (`/healthz`, `/metrics` exempt).
    #[arg(long, env = "SLIPWAY_HTTP_RATE", default_value_t = 20.0, value_parser = rate)]
    pub http_rate: f64,
    /// Requests one client may make at once after a quiet spell.
    #[arg(long, env = "SLIPWAY_HTTP_BURST", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub http_burst: u32,
    /// Live-log streams open at once, in all; past it `503` with `Retry-After`.
    #[arg(long, env = "SLIPWAY_MAX_FOLLOWERS", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_followers: u32,
    /// Live-log streams open at once from one client.
    #[arg(long, env = "SLIPWAY_MAX_FOLLOWERS_PER_CLIENT", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_followers_per_client: u32,
    /// A bearer token `/metrics` then needs (Prometheus: `authorization` in its
    /// scrape config) [default: `/metrics` is open; it carries no job data].
    #[arg(long, env = "SLIPWAY_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    #[command(flatten)]
    pub secrets: SecretsKeyArgs,
    /// Address of the gRPC report service that workers report to.
    #[arg(help_heading = "Orchestrator", long, env = "SLIPWAY_GRPC_ADDR", default_value = "127.0.0.1:50052")]
    pub grpc_addr: SocketAddr,
    /// URL by which workers reach the report service [default: https://<grpc addr>,
    /// with 127.0.0.1 for an unspecified address].
    #[arg(help_heading = "Orchestrator", long, env = "SLIPWAY_REPORT_URL")]
    pub report_url: Option<String>,
    /// Comma-separated gRPC URLs of the workers to dispatch to, such as
    /// https://10.0.0.5:50051 (`standalone` adds its own worker).
    #[arg(help_heading = "Orchestrator", long, env = "SLIPWAY_WORKERS", value_delimiter = ',')]
    pub workers: Vec<String>,
    /// Names this orchestrator in leases [default: orchestrator-<host>-<pid>].
    #[arg(help_heading = "Orchestrator", long, env = "SLIPWAY_ORCHESTRATOR_ID")]
    pub orchestrator_id: Option<String>,
    /// How often each worker is pinged (its leases extended) and expired leases
    /// looked for.
    #[arg(help_heading = "Orchestrator", long, env = "SLIPWAY_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = duration)]
    pub heartbeat_interval: Duration,
    /// How long a worker may stay silent before its jobs' leases expire and the jobs
    /// run again elsewhere.
    #[arg(help_heading = "Orchestrator", long, env = "SLIPWAY_WORKER_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub worker_timeout: Duration,
    /// How long a queued job waits for a free slot on a worker that holds its build
    /// cache (it built the same repository, Dockerfile and context lately) before
    /// any worker may take it (0s: any worker at once).
    #[arg(help_heading = "Orchestrator", long, env = "SLIPWAY_CACHE_AFFINITY_WAIT", default_value = "2s", value_parser = duration)]
    pub cache_affinity_wait: Duration,
    /// Attempts a job gets unless it says otherwise.
    #[arg(help_heading = "Orchestrator", long, env = "SLIPWAY_RETRY_MAX_ATTEMPTS", default_value_t = 3)]
    pub retry_max_attempts: u32,
    /// The most attempts a job may ask for (`retry.max_attempts`), so that a job
    /// that crashes workers cannot be made into a long crash loop.
    #[arg(help_heading = "Orchestrator", long, env = "SLIPWAY_MAX_ATTEMPTS", default_value_t = slipway_engine::job::DEFAULT_ATTEMPTS_CAP)]
    pub max_attempts: u32,
    /// Wait before a job's second attempt unless it says otherwise.
    #[arg(help_heading = "Orchestrator", long, env = "SLIPWAY_RETRY_INITIAL_BACKOFF", default_value = "1s", value_parser = duration)]
    pub retry_initial_backoff: Duration,
    /// Longest wait between attempts unless a job says otherwise.
    #[arg(help_heading = "Orchestrator", long, env = "SLIPWAY_RETRY_MAX_BACKOFF", default_value = "60s", value_parser = duration)]
    pub retry_max_backoff: Duration,
    /// The runtime of jobs that name none in `run.runtime`: `docker` or `ecs`.
    #[arg(help_heading = "Orchestrator", long, env = "SLIPWAY_DEFAULT_RUNTIME", default_value = "docker")]
    pub default_runtime: slipway_steps::runtime::RuntimeKind,
    /// Longest a container may run; the deadline of jobs that give none.
    #[arg(help_heading = "Orchestrator", long, env = "SLIPWAY_MAX_RUN_TIME", default_value = "24h", value_parser = duration)]
    pub max_run_time: Duration,
    /// Bytes of log lines kept per job; past it, one marker line and nothing more.
    #[arg(help_heading = "Orchestrator", long, env = "SLIPWAY_MAX_LOG_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_log_bytes: u64,
    /// Most workers' reports committed in one transaction (1: a transaction each).
    #[arg(help_heading = "Orchestrator", long, env = "SLIPWAY_COMMIT_BATCH", default_value_t = 256,
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub commit_batch: u16,
    /// How long finished jobs are kept (with their events, logs and pushed images).
    #[arg(help_heading = "Orchestrator", long, env = "SLIPWAY_RETENTION", default_value = "30days", value_parser = duration)]
    pub retention: Duration,
    /// How often the sweep looks for expired jobs and leftovers.
    #[arg(help_heading = "Orchestrator", long, env = "SLIPWAY_SWEEP_INTERVAL", default_value = "1m", value_parser = duration)]
    pub sweep_interval: Duration,
}

/// The worker (`slipway worker`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Worker")]
pub struct WorkerArgs {
    /// Address of the worker's gRPC JobService (mutual TLS: only orchestrators
    /// with a certificate of the same CA may call it). Loopback by default.
    #[arg(long, env = "SLIPWAY_WORKER_ADDR", default_value = "127.0.0.1:50051")]
    pub worker_addr: SocketAddr,
    /// Names this worker; must be the name in its certificate [default: that name;
    /// in `standalone`, worker-<host>-<port>].
    #[arg(long, env = "SLIPWAY_WORKER_ID")]
    pub worker_id: Option<String>,
    /// How many jobs the worker runs at once.
    #[arg(long, env = "SLIPWAY_WORKER_SLOTS", default_value_t = 2)]
    pub slots: u32,
    /// Folder for clones, one folder per job attempt [default: <tmp>/slipway].
    #[arg(long, env = "SLIPWAY_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Address of the worker's `/metrics` [default for `slipway worker`:
    /// 127.0.0.1:9464; `standalone` serves metrics on its HTTP API instead].
    #[arg(long, env = "SLIPWAY_WORKER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// How long a stopping worker lets running jobs finish before it hands them back.
    #[arg(long, env = "SLIPWAY_SHUTDOWN_GRACE", default_value = "10s", value_parser = duration)]
    pub shutdown_grace: Duration,
    /// Builder for images: buildkit or classic [default: BuildKit when the engine
    /// offers it].
    #[arg(help_heading = "Docker", long, env = "SLIPWAY_BUILDER")]
    pub builder: Option<slipway_steps::docker::build::Builder>,
    /// The most bytes of build context a job may send to the engine; past it the
    /// build fails `context_too_large`.
    #[arg(help_heading = "Docker", long, env = "SLIPWAY_MAX_CONTEXT_BYTES", default_value_t = 1 << 30)]
    pub max_context_bytes: u64,
    /// The most bytes a clone may download, and the most bytes its checked-out
    /// files may take; past either the job fails `clone_too_large`.
    #[arg(long, env = "SLIPWAY_MAX_CLONE_BYTES", default_value_t = 2 << 30)]
    pub max_clone_bytes: u64,
    /// The longest a clone may take (libgit2 also gives up on a remote silent for
    /// 2 minutes).
    #[arg(long, env = "SLIPWAY_CLONE_TIMEOUT", default_value = "10m", value_parser = duration)]
    pub clone_timeout: Duration,
    /// How long the engine may take to say anything about a build; past it the
    /// worker probes its engine (and leaves BuildKit for the classic builder, or
    /// takes no job until the engine answers).
    #[arg(help_heading = "Docker", long, env = "SLIPWAY_BUILD_START_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub build_start_timeout: Duration,
    /// The longest log line kept (at most 1 MiB); a longer one keeps its start and
    /// says how many bytes were cut.
    #[arg(long, env = "SLIPWAY_MAX_LINE_BYTES", default_value_t = slipway_steps::logs::DEFAULT_MAX_LINE_BYTES)]
    pub max_line_bytes: usize,
    /// The most memory a job's container may use (`512m`, `2g`, or bytes); no swap beyond it.
    #[arg(help_heading = "Docker", long, env = "SLIPWAY_RUN_MEMORY", default_value = "2g", value_parser = memory_size)]
    pub run_memory: i64,
    /// The most CPUs a job's container may use (`0.5`, `2`).
    #[arg(help_heading = "Docker", long, env = "SLIPWAY_RUN_CPUS", default_value = "2", value_parser = cpus)]
    pub run_cpus: i64,
    /// The most processes and threads a job's container may run at once.
    #[arg(help_heading = "Docker", long, env = "SLIPWAY_RUN_PIDS", default_value_t = 4096, value_parser = clap::value_parser!(i64).range(16..))]
    pub run_pids: i64,
    /// The most memory a job may ask for in `run.memory`.
    #[arg(help_heading = "Docker", long, env = "SLIPWAY_RUN_MAX_MEMORY", default_value = "8g", value_parser = memory_size)]
    pub run_max_memory: i64,
    /// The most CPUs a job may ask for in `run.cpu`.
    #[arg(help_heading = "Docker", long, env = "SLIPWAY_RUN_MAX_CPUS", default_value = "4", value_parser = cpus)]
    pub run_max_cpus: i64,
    /// Labels this worker offers (`region=eu-west-1,arch=arm64`): jobs that require
    /// labels run only on workers offering all of them.
    #[arg(long, env = "SLIPWAY_WORKER_LABELS", value_delimiter = ',', value_parser = aws::label)]
    pub labels: Vec<(String, String)>,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// Registry credentials, each for one registry host and sent to that host only:
/// workers push with them, servers delete swept images with them.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Registry")]
pub struct RegistryArgs {
    /// The registry host (`host` or `host:port`, as image references name it) the
    /// user name and password below belong to.
    #[arg(long, env = "SLIPWAY_REGISTRY_HOST")]
    pub registry_host: Option<String>,
    /// User name for that registry.
    #[arg(long, env = "SLIPWAY_REGISTRY_USERNAME")]
    pub registry_username: Option<String>,
    /// Password or token for that registry.
    #[arg(long, env = "SLIPWAY_REGISTRY_PASSWORD", hide_env_values = true)]
    pub registry_password: Option<String>,
    /// A file of credentials for several registries:
    /// `{"<host>": {"username": "…", "password": "…"}}`.
    #[arg(long, env = "SLIPWAY_REGISTRY_CREDENTIALS")]
    pub registry_credentials: Option<std::path::PathBuf>,
    /// Hosts of token services a registry's credentials may also be sent to, over
    /// https, when the registry's bearer challenge names them (`auth.docker.io` for
    /// Docker Hub); by default only a realm on the registry's own host gets them.
    #[arg(long, env = "SLIPWAY_REGISTRY_REALM_HOSTS", value_delimiter = ',')]
    pub registry_realm_hosts: Vec<String>,
}

impl RegistryArgs {
    /// The credentials by host; refused when a user name or password names no host,
    /// since they would otherwise go to whatever registry a job names.
    pub fn logins(&self) -> Result<slipway_steps::registry_logins::RegistryLogins, ConfigError> {
        let mut logins = match &self.registry_credentials {
            Some(path) => slipway_steps::registry_logins::RegistryLogins::read(path)
                .map_err(|e| bad("SLIPWAY_REGISTRY_CREDENTIALS", e))?,
            None => Default::default(),
        };
        match (&self.registry_host, &self.registry_username, &self.registry_password) {
            (_, None, None) => {}
            (Some(host), Some(username), Some(password)) => logins.insert(
                host,
                slipway_steps::docker::push::RegistryCredentials {
                    username: username.clone(),
                    password: password.clone(),
                },
            ),
            (None, _, _) => {
                return Err(bad(
                    "SLIPWAY_REGISTRY_HOST",
                    "name the registry host SLIPWAY_REGISTRY_USERNAME and SLIPWAY_REGISTRY_PASSWORD belong to \
                     (they are sent to that host only)",
                ));
            }
            _ => {
                return Err(bad(
                    "SLIPWAY_REGISTRY_USERNAME",
                    "set both SLIPWAY_REGISTRY_USERNAME and SLIPWAY_REGISTRY_PASSWORD, or neither",
                ));
            }
        }
        logins.allow_realm_hosts(self.registry_realm_hosts.iter().cloned());
        Ok(logins)
    }
}

/// Where repositories may be fetched from: checked by the API at submission and by
/// the worker again when it clones.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Repositories")]
pub struct RepoArgs {
    /// Allow `http://` and `git://` repositories: code fetched without TLS, which
    /// anyone on the path can change.
    #[arg(long, env = "SLIPWAY_REPO_ALLOW_INSECURE", default_value_t = false, action = clap::ArgAction::Set)]
    pub repo_allow_insecure: bool,
    /// Hosts (names or addresses, comma-separated) a repository may be on although
    /// they are loopback, private, link-local or otherwise internal.
    #[arg(long, env = "SLIPWAY_REPO_ALLOW_HOSTS", value_delimiter = ',')]
    pub repo_allow_hosts: Vec<String>,
    /// Build repositories on this machine, named as file:// URLs (`slipway submit
    /// --repo .`) [default: true for `standalone`, false otherwise].
    #[arg(long, env = "SLIPWAY_ALLOW_LOCAL_REPOS", action = clap::ArgAction::Set)]
    pub allow_local_repos: Option<bool>,
    /// Folders (comma-separated) local repositories must be in [default: the home
    /// folder and the folder Slipway was started in].
    #[arg(long, env = "SLIPWAY_LOCAL_REPO_ROOTS", value_delimiter = ',')]
    pub local_repo_roots: Vec<PathBuf>,
}

impl RepoArgs {
    /// The policy of a process; `standalone` builds local repositories unless told not to.
    pub fn policy(&self, standalone: bool) -> slipway_steps::repo_url::RepoPolicy {
        let local_roots = if self.allow_local_repos.unwrap_or(standalone) {
            match self.local_repo_roots.is_empty() {
                false => self.local_repo_roots.clone(),
                true => std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .into_iter()
                    .chain(std::env::current_dir().ok())
                    .collect(),
            }
        } else {
            Vec::new()
        };
        slipway_steps::repo_url::RepoPolicy {
            allow_insecure: self.repo_allow_insecure,
            allow_hosts: self.repo_allow_hosts.iter().map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect(),
            local_roots,
        }
    }
}

/// The certificate of this process and the CA it trusts (`slipway certs`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
    /// The installation's CA certificate (`ca.pem` of `slipway certs init`).
    #[arg(long, env = "SLIPWAY_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate (`slipway certs issue --worker|--orchestrator NAME`).
    #[arg(long, env = "SLIPWAY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This process's private key.
    #[arg(long, env = "SLIPWAY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The identity the three files make; each is required, since orchestrators and
    /// workers speak TLS only.
    pub fn identity(&self) -> Result<slipway_proto::tls::TlsIdentity, ConfigError> {
        let required = |setting: &'static str, path: &Option<PathBuf>| {
            path.clone().ok_or_else(|| {
                bad(
                    setting,
                    "is required: orchestrators and workers speak mutual TLS only. Make a CA with \
                     `slipway certs init DIR` and a certificate with `slipway certs issue --dir DIR \
                     --worker NAME` (or `--orchestrator NAME`)",
                )
            })
        };
        let ca = required("SLIPWAY_TLS_CA", &self.tls_ca)?;
        let cert = required("SLIPWAY_TLS_CERT", &self.tls_cert)?;
        let key = required("SLIPWAY_TLS_KEY", &self.tls_key)?;
        slipway_proto::tls::TlsIdentity::read(&ca, &cert, &key).map_err(tls_error)
    }
}

/// A TLS error as a configuration error naming its setting.
pub fn tls_error(e: slipway_proto::tls::TlsError) -> ConfigError {
    match e {
        slipway_proto::tls::TlsError::Read { setting, .. } | slipway_proto::tls::TlsError::Invalid { setting, .. } => {
            let message = e.to_string();
            let message = message.strip_prefix(&format!("{setting}: ")).unwrap_or(&message).to_string();
            ConfigError { setting, message }
        }
        other => bad("SLIPWAY_TLS_CERT", other.to_string()),
    }
}

/// A configuration error, naming the setting at fault.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub message: String,
}

fn bad(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { setting, message: message.into() }
}

fn check_url(setting: &'static str, url: &str) -> Result<(), ConfigError> {
    match url.split_once("://") {
        Some(("https", rest)) if !rest.is_empty() => Ok(()),
        Some(("http", _)) => {
            Err(bad(setting, format!("`{url}`: orchestrators and workers speak TLS only; write https://")))
        }
        _ => Err(bad(setting, format!("`{url}` is not an https:// URL"))),
    }
}

impl ServerArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval < Duration::from_millis(10) {
            return Err(bad("SLIPWAY_HEARTBEAT_INTERVAL", "must be at least 10ms"));
        }
        if self.worker_timeout <= self.heartbeat_interval {
            return Err(bad("SLIPWAY_WORKER_TIMEOUT", "must be longer than SLIPWAY_HEARTBEAT_INTERVAL"));
        }
        if !(1..=slipway_engine::job::MAX_ATTEMPTS).contains(&self.retry_max_attempts) {
            return Err(bad(
                "SLIPWAY_RETRY_MAX_ATTEMPTS",
                format!("must be from 1 to {}", slipway_engine::job::MAX_ATTEMPTS),
            ));
        }
        if !(self.retry_max_attempts..=slipway_engine::job::MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(bad(
                "SLIPWAY_MAX_ATTEMPTS",
                format!(
                    "must be from SLIPWAY_RETRY_MAX_ATTEMPTS ({}) to {}",
                    self.retry_max_attempts,
                    slipway_engine::job::MAX_ATTEMPTS
                ),
            ));
        }
        if self.retry_initial_backoff > self.retry_max_backoff {
            return Err(bad("SLIPWAY_RETRY_INITIAL_BACKOFF", "must not exceed SLIPWAY_RETRY_MAX_BACKOFF"));
        }
        if self.retry_max_backoff.as_millis() > u128::from(slipway_engine::job::MAX_BACKOFF_MS) {
            return Err(bad("SLIPWAY_RETRY_MAX_BACKOFF", "must be at most 1h"));
        }
        if self.sweep_interval < Duration::from_millis(100) {
            return Err(bad("SLIPWAY_SWEEP_INTERVAL", "must be at least 100ms"));
        }
        if self.max_run_time < Duration::from_secs(1) {
            return Err(bad("SLIPWAY_MAX_RUN_TIME", "must be at least 1s"));
        }
        for url in &self.workers {
            check_url("SLIPWAY_WORKERS", url)?;
        }
        if let Some(url) = &self.report_url {
            check_url("SLIPWAY_REPORT_URL", url)?;
        }
        Ok(())
    }

    /// What submissions get unless they say otherwise, and the limits they must keep.
    pub fn http_limits(&self) -> slipway_engine::api::HttpLimits {
        slipway_engine::api::HttpLimits {
            max_connections: self.http_max_connections as usize,
            header_timeout: self.http_header_timeout,
            clients: slipway_engine::api::ClientLimits {
                rate: self.http_rate,
                burst: self.http_burst,
                max_followers: self.max_followers as usize,
                max_followers_per_client: self.max_followers_per_client as usize,
            },
        }
    }

    pub fn submit_defaults(&self, repo: slipway_steps::repo_url::RepoPolicy) -> slipway_engine::job::SubmitDefaults {
        slipway_engine::job::SubmitDefaults {
            retry: slipway_engine::job::RetryPolicy {
                max_attempts: self.retry_max_attempts,
                initial_backoff_ms: self.retry_initial_backoff.as_millis() as u64,
                max_backoff_ms: self.retry_max_backoff.as_millis() as u64,
            },
            max_timeout_seconds: self.max_run_time.as_secs(),
            runtime: self.default_runtime,
            repo,
            max_attempts: self.max_attempts,
        }
    }

    pub fn orchestrator_id(&self) -> String {
        self.orchestrator_id.clone().unwrap_or_else(|| format!("orchestrator-{}-{}", hostname(), std::process::id()))
    }
}

impl WorkerArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.slots == 0 {
            return Err(bad("SLIPWAY_WORKER_SLOTS", "must be at least 1"));
        }
        if self.run_memory > self.run_max_memory {
            return Err(bad("SLIPWAY_RUN_MEMORY", "must not exceed SLIPWAY_RUN_MAX_MEMORY"));
        }
        if self.run_cpus > self.run_max_cpus {
            return Err(bad("SLIPWAY_RUN_CPUS", "must not exceed SLIPWAY_RUN_MAX_CPUS"));
        }
        let most = slipway_steps::logs::MAX_LINE_BYTES_LIMIT;
        if self.max_line_bytes == 0 || self.max_line_bytes > most {
            return Err(bad("SLIPWAY_MAX_LINE_BYTES", format!("must be between 1 and {most}")));
        }
        self.aws.validate()
    }

    /// The worker's name in `standalone`, whose certificate is made for it: the
    /// configured one, or `worker-<host>-<port>`.
    pub fn standalone_worker_id(&self, listen: SocketAddr) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let name: String = format!("worker-{}-{}", hostname(), listen.port())
                .to_ascii_lowercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            name.trim_matches('-').chars().take(63).collect::<String>().trim_end_matches('-').to_string()
        })
    }

    /// The worker's settings; its name is the one its certificate holds, which
    /// `SLIPWAY_WORKER_ID`, if set, must repeat.
    pub fn worker_config(
        &self,
        listen: SocketAddr,
        registry_logins: slipway_steps::registry_logins::RegistryLogins,
        tls: slipway_proto::tls::TlsIdentity,
        repo_policy: slipway_steps::repo_url::RepoPolicy,
    ) -> Result<slipway_worker::WorkerConfig, ConfigError> {
        let worker_id = tls.expect_worker().map_err(tls_error)?.to_string();
        if let Some(configured) = self.worker_id.as_deref().filter(|id| *id != worker_id) {
            return Err(bad(
                "SLIPWAY_WORKER_ID",
                format!(
                    "`{configured}` is not the name in SLIPWAY_TLS_CERT (`{worker_id}`); leave it unset or issue a certificate for it"
                ),
            ));
        }
        Ok(slipway_worker::WorkerConfig {
            listen,
            worker_id,
            tls,
            repo_policy,
            slots: self.slots,
            work_dir: self.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("slipway")),
            registry_logins,
            builder: self.builder,
            max_context_bytes: self.max_context_bytes,
            max_clone_bytes: self.max_clone_bytes,
            clone_timeout: self.clone_timeout,
            build_start_timeout: self.build_start_timeout,
            max_line_bytes: self.max_line_bytes,
            run_limits: slipway_steps::docker::run::RunLimits {
                memory_bytes: self.run_memory,
                nano_cpus: self.run_cpus,
                pids: self.run_pids,
                max_memory_bytes: self.run_max_memory,
                max_nano_cpus: self.run_max_cpus,
            },
            shutdown_grace: self.shutdown_grace,
            metrics_addr: self.metrics_addr,
            labels: self.labels.iter().cloned().collect(),
            ecs: self.aws.ecs(),
            ecr: self.aws.ecr(),
        })
    }
}

/// A request rate: a positive number of requests a second (`0.5`, `20`).
fn rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1e6 => Ok(r),
        _ => Err(format!("`{text}` is not a rate: give requests a second, such as 0.5 or 20")),
    }
}

/// A memory size as Docker writes it: bytes, or a number with `k`, `m` or `g`; at
/// least 6 MiB (Docker's own floor).
fn memory_size(text: &str) -> Result<i64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (digits, unit) = match lower.strip_suffix(['k', 'm', 'g']) {
        Some(digits) => (digits, &lower[digits.len()..]),
        None => (lower.as_str(), ""),
    };
    let n: i64 = digits.parse().map_err(|_| format!("`{text}` is not a size like 512m or 2g"))?;
    let bytes = n.saturating_mul(match unit {
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => 1,
    });
    if bytes < 6 << 20 { Err(format!("`{text}` is less than 6m")) } else { Ok(bytes) }
}

/// CPUs as a decimal (`0.5`), in billionths.
fn cpus(text: &str) -> Result<i64, String> {
    let n: f64 = text.trim().parse().map_err(|_| format!("`{text}` is not a number of CPUs"))?;
    if !(0.01..=1024.0).contains(&n) {
        return Err(format!("`{text}` CPUs is out of 0.01–1024"));
    }
    Ok((n * 1e9).round() as i64)
}

/// `http://addr`, with an unspecified address replaced by loopback.
pub fn local_url(addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() { "127.0.0.1".parse().expect("loopback") } else { addr.ip() };
    format!("https://{}", SocketAddr::new(host, addr.port()))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
