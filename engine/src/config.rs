//! Configuration of the processes: defaults, then `SLIPWAY_*` (and `DATABASE_URL`)
//! environment variables, then flags; then one `validate()`. The doc comment of each
//! flag is its `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

fn duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw).map_err(|e| format!("`{raw}` is not a duration such as 500ms or 2s: {e}"))
}

/// Where the database is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Postgres URL, such as postgres://user:pass@host/db.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// The orchestrator and HTTP API (`slipway server`).
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address of the HTTP API.
    #[arg(long, env = "SLIPWAY_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Address of the gRPC report service that workers report to.
    #[arg(long, env = "SLIPWAY_GRPC_ADDR", default_value = "127.0.0.1:50052")]
    pub grpc_addr: SocketAddr,
    /// URL by which workers reach the report service [default: http://<grpc addr>,
    /// with 127.0.0.1 for an unspecified address].
    #[arg(long, env = "SLIPWAY_REPORT_URL")]
    pub report_url: Option<String>,
    /// Comma-separated gRPC URLs of the workers to dispatch to, such as
    /// http://10.0.0.5:50051 (`standalone` adds its own worker).
    #[arg(long, env = "SLIPWAY_WORKERS", value_delimiter = ',')]
    pub workers: Vec<String>,
    /// Names this orchestrator in leases [default: orchestrator-<host>-<pid>].
    #[arg(long, env = "SLIPWAY_ORCHESTRATOR_ID")]
    pub orchestrator_id: Option<String>,
    /// How long a lease lasts without news from its worker.
    #[arg(long, env = "SLIPWAY_LEASE_TTL", default_value = "30s", value_parser = duration)]
    pub lease_ttl: Duration,
    /// How often to look for runnable jobs when no notification comes.
    #[arg(long, env = "SLIPWAY_POLL_INTERVAL", default_value = "1s", value_parser = duration)]
    pub poll_interval: Duration,
}

/// The worker (`slipway worker`).
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Address of the worker's gRPC JobService.
    #[arg(long, env = "SLIPWAY_WORKER_ADDR", default_value = "0.0.0.0:50051")]
    pub worker_addr: SocketAddr,
    /// Names this worker [default: worker-<host>-<port>].
    #[arg(long, env = "SLIPWAY_WORKER_ID")]
    pub worker_id: Option<String>,
    /// How many jobs the worker runs at once.
    #[arg(long, env = "SLIPWAY_WORKER_SLOTS", default_value_t = 2)]
    pub slots: u32,
    /// Folder for clones, one folder per job attempt [default: <tmp>/slipway].
    #[arg(long, env = "SLIPWAY_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Builder for images: buildkit or classic [default: BuildKit when the engine
    /// offers it].
    #[arg(long, env = "SLIPWAY_BUILDER")]
    pub builder: Option<slipway_steps::build::Builder>,
    /// User name for registry pushes.
    #[arg(long, env = "SLIPWAY_REGISTRY_USERNAME")]
    pub registry_username: Option<String>,
    /// Password or token for registry pushes.
    #[arg(long, env = "SLIPWAY_REGISTRY_PASSWORD", hide_env_values = true)]
    pub registry_password: Option<String>,
}

/// A configuration error, naming the setting at fault.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub message: String,
}

fn bad(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        message: message.into(),
    }
}

fn check_url(setting: &'static str, url: &str) -> Result<(), ConfigError> {
    match url.split_once("://") {
        Some(("http" | "https", rest)) if !rest.is_empty() => Ok(()),
        _ => Err(bad(setting, format!("`{url}` is not an http:// or https:// URL"))),
    }
}

impl ServerArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.lease_ttl < Duration::from_millis(100) {
            return Err(bad("SLIPWAY_LEASE_TTL", "must be at least 100ms"));
        }
        if self.poll_interval.is_zero() {
            return Err(bad("SLIPWAY_POLL_INTERVAL", "must be more than zero"));
        }
        for url in &self.workers {
            check_url("SLIPWAY_WORKERS", url)?;
        }
        if let Some(url) = &self.report_url {
            check_url("SLIPWAY_REPORT_URL", url)?;
        }
        Ok(())
    }

    pub fn report_url(&self) -> String {
        self.report_url.clone().unwrap_or_else(|| local_url(self.grpc_addr))
    }

    pub fn orchestrator_id(&self) -> String {
        self.orchestrator_id
            .clone()
            .unwrap_or_else(|| format!("orchestrator-{}-{}", hostname(), std::process::id()))
    }
}

impl WorkerArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.slots == 0 {
            return Err(bad("SLIPWAY_WORKER_SLOTS", "must be at least 1"));
        }
        if self.registry_username.is_some() != self.registry_password.is_some() {
            return Err(bad(
                "SLIPWAY_REGISTRY_USERNAME",
                "set both SLIPWAY_REGISTRY_USERNAME and SLIPWAY_REGISTRY_PASSWORD, or neither",
            ));
        }
        Ok(())
    }

    pub fn worker_config(&self, listen: SocketAddr) -> slipway_worker::WorkerConfig {
        let credentials = match (&self.registry_username, &self.registry_password) {
            (Some(username), Some(password)) => Some(slipway_steps::push::RegistryCredentials {
                username: username.clone(),
                password: password.clone(),
            }),
            _ => None,
        };
        slipway_worker::WorkerConfig {
            listen,
            worker_id: self
                .worker_id
                .clone()
                .unwrap_or_else(|| format!("worker-{}-{}", hostname(), listen.port())),
            slots: self.slots,
            work_dir: self
                .work_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("slipway")),
            registry_credentials: credentials,
            builder: self.builder,
        }
    }
}

/// `http://addr`, with an unspecified address replaced by loopback.
pub fn local_url(addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".parse().expect("loopback")
    } else {
        addr.ip()
    };
    format!("http://{}", SocketAddr::new(host, addr.port()))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
