//! What a worker needs to know: where to listen, who it is, how much it may run at
//! once, where to put clones, the registry credentials for pushes, the labels it
//! offers, and where its `ecs` runs go.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use slipway_steps::aws::ecr::RepositorySettings;
use slipway_steps::aws::ecs::EcsSettings;
use slipway_steps::docker::build::Builder;
use slipway_steps::registry_logins::RegistryLogins;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub listen: SocketAddr,
    /// Names this worker in leases, events and logs: the name its certificate holds.
    pub worker_id: String,
    /// Its certificate, with which it serves and reports.
    pub tls: slipway_proto::tls::TlsIdentity,
    /// How many jobs may run at once.
    pub slots: u32,
    /// Where clones go: a folder per worker, in it a folder per job attempt,
    /// removed when the attempt ends.
    pub work_dir: PathBuf,
    /// Registry credentials by host, each sent to its own host only.
    pub registry_logins: RegistryLogins,
    /// The builder to use; `None`: BuildKit when the engine offers it.
    pub builder: Option<Builder>,
    /// The most bytes of build context a job may send.
    pub max_context_bytes: u64,
    /// The most bytes a clone may download, and the most its files may take.
    pub max_clone_bytes: u64,
    /// The longest a clone may take.
    pub clone_timeout: Duration,
    /// How long the engine may take to say anything about a build.
    pub build_start_timeout: Duration,
    /// The longest log line kept; longer ones are cut with a marker.
    pub max_line_bytes: usize,
    /// Where repositories may be fetched from, checked again at each clone.
    pub repo_policy: slipway_steps::repo_url::RepoPolicy,
    /// What a job's container may use at most.
    pub run_limits: slipway_steps::docker::run::RunLimits,
    /// How long a stopping worker lets running jobs finish before handing them back.
    pub shutdown_grace: Duration,
    /// Where to serve `/metrics` over HTTP; `None`: not served (in `standalone` the
    /// server's `/metrics` covers the process).
    pub metrics_addr: Option<SocketAddr>,
    /// What the worker offers to jobs that require labels.
    pub labels: BTreeMap<String, String>,
    /// Where `ecs` runs go; `None`: the worker takes no `ecs` jobs.
    pub ecs: Option<EcsSettings>,
    /// How ECR repositories the worker creates are set up.
    pub ecr: RepositorySettings,
}

impl WorkerConfig {
    /// This worker's own folder under `work_dir`. It holds nothing but the clones of
    /// jobs this worker runs, so whatever is in it at start-up was left by a worker
    /// that was killed, and is removed.
    pub fn jobs_dir(&self) -> PathBuf {
        let name: String = self
            .worker_id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
            .collect();
        self.work_dir.join(name)
    }
}
