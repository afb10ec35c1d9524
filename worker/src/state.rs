//! What a worker holds while it runs: its settings, its engine and cloud clients
//! (made at first use), the jobs it runs with their cancel and hand-back tokens, and
//! the orchestrators that pinged it lately. The gRPC service and every job's run
//! share it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway_observability::metrics;
#[cfg(feature = "aws")]
use slipway_steps::aws::{AwsConfig, ecr::Ecr, ecs::Ecs};
use slipway_steps::docker::Docker;
use slipway_steps::docker::build::{Builder, detect_builder};
use slipway_steps::runtime::RuntimeKind;
use slipway_steps::{ErrorCode, Step, StepError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::assignment::JobLease;
use crate::cache_keys::CacheKeys;
use crate::config::WorkerConfig;
use crate::engine_health::EngineHealth;

/// A job this worker holds.
pub(crate) struct RunningJob {
    pub lease: JobLease,
    pub step: Arc<Mutex<Step>>,
    /// Cancelled when the job is to stop and end `cancelled` (a user's request, or
    /// the orchestrator saying the lease is lost).
    pub cancel: CancellationToken,
    /// Cancelled when the worker stops before the job ends: the job is handed back.
    pub hand_back: CancellationToken,
}

/// The AWS configuration and the clients made from it.
#[cfg(feature = "aws")]
#[derive(Default)]
struct AwsClients {
    config: tokio::sync::OnceCell<AwsConfig>,
    ecs: tokio::sync::OnceCell<Ecs>,
    ecr: tokio::sync::OnceCell<Ecr>,
}

pub(crate) struct WorkerState {
    pub config: WorkerConfig,
    pub docker: Docker,
    /// The builder, decided at the first build (the engine may be down at start).
    builder: tokio::sync::OnceCell<Builder>,
    /// Whether the engine answers and builds.
    pub engine: EngineHealth,
    /// AWS clients, made at the first job that needs them.
    #[cfg(feature = "aws")]
    aws: AwsClients,
    /// The engine's CPU architecture, asked once (for ECS task definitions).
    #[cfg(feature = "aws")]
    architecture: tokio::sync::OnceCell<String>,
    running: Mutex<HashMap<String, RunningJob>>,
    idle: Notify,
    /// ReportService URLs of the orchestrators that pinged lately, newest first:
    /// where reports go when the orchestrator that started a job is gone.
    orchestrators: Arc<Mutex<Vec<String>>>,
    /// The cache keys of the builds finished here.
    pub cache_keys: CacheKeys,
}

impl WorkerState {
    pub fn new(config: WorkerConfig, docker: Docker) -> Self {
        WorkerState {
            engine: EngineHealth::new(&config.worker_id),
            config,
            docker,
            builder: tokio::sync::OnceCell::new(),
            #[cfg(feature = "aws")]
            aws: AwsClients::default(),
            #[cfg(feature = "aws")]
            architecture: tokio::sync::OnceCell::new(),
            running: Mutex::new(HashMap::new()),
            idle: Notify::new(),
            orchestrators: Arc::new(Mutex::new(Vec::new())),
            cache_keys: CacheKeys::default(),
        }
    }

    /// The configured builder, or BuildKit when the engine offers it; the classic
    /// builder once BuildKit was found wedged.
    pub async fn builder(&self) -> Result<Builder, StepError> {
        if self.engine.classic_only() {
            return Ok(Builder::Classic);
        }
        let builder = self
            .builder
            .get_or_try_init(|| async {
                let builder = match self.config.builder {
                    Some(b) => b,
                    None => tokio::time::timeout(Duration::from_secs(10), detect_builder(&self.docker))
                        .await
                        .map_err(|_| {
                            StepError::new(
                                ErrorCode::EngineUnavailable,
                                "the Docker engine did not say its version within 10s",
                            )
                        })??,
                };
                tracing::info!(builder = ?builder, "builds use this builder");
                Ok::<_, StepError>(builder)
            })
            .await?;
        Ok(*builder)
    }

    /// ECS, when the worker is configured for it.
    #[cfg(feature = "aws")]
    pub async fn ecs(&self) -> Result<&Ecs, StepError> {
        let Some(settings) = &self.config.ecs else {
            return Err(StepError::new(ErrorCode::RuntimeUnavailable, "this worker has no ECS cluster configured"));
        };
        let aws = self.aws.config.get_or_init(AwsConfig::load).await;
        Ok(self.aws.ecs.get_or_init(|| async { Ecs::new(aws, settings.clone()) }).await)
    }

    #[cfg(feature = "aws")]
    pub async fn ecr(&self) -> &Ecr {
        let aws = self.aws.config.get_or_init(AwsConfig::load).await;
        self.aws.ecr.get_or_init(|| async { Ecr::new(aws.clone(), self.config.ecr.clone()) }).await
    }

    /// The CPU architecture of the engine's images (`amd64`, `arm64`, …); this
    /// process's when the engine does not say.
    #[cfg(feature = "aws")]
    pub async fn engine_architecture(&self) -> String {
        if let Some(known) = self.architecture.get() {
            return known.clone();
        }
        match self.docker.version().await {
            Ok(version) => {
                let arch = version.arch.unwrap_or_else(|| std::env::consts::ARCH.to_string());
                self.architecture.get_or_init(|| async { arch }).await.clone()
            }
            Err(e) => {
                tracing::warn!(error = %e, "the engine's architecture is unknown; assuming this machine's");
                std::env::consts::ARCH.to_string()
            }
        }
    }

    /// The runtimes this worker can run jobs on.
    pub fn runtimes(&self) -> Vec<String> {
        let mut runtimes = vec![RuntimeKind::Docker.as_str().to_string()];
        if cfg!(feature = "aws") && self.config.ecs.is_some() {
            runtimes.push(RuntimeKind::Ecs.as_str().to_string());
        }
        runtimes
    }

    pub(crate) fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunningJob>> {
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes the slot gauges.
    pub fn record_slots(&self, busy: usize) {
        let id = self.config.worker_id.as_str();
        metrics::WORKER_SLOTS.set(&[id, "total"], f64::from(self.config.slots));
        metrics::WORKER_SLOTS.set(&[id, "busy"], busy as f64);
    }

    /// Forgets a job whose run ended.
    pub fn finished(&self, job_id: &str, lease_token: &str) {
        let mut running = self.running();
        if running.get(job_id).is_some_and(|j| j.lease.token == lease_token) {
            running.remove(job_id);
        }
        self.record_slots(running.len());
        if running.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// Hands every running job back (on shutdown, once the grace period is over).
    pub fn hand_back_all(&self) {
        for job in self.running().values() {
            job.hand_back.cancel();
        }
    }

    pub fn orchestrators(&self) -> Arc<Mutex<Vec<String>>> {
        self.orchestrators.clone()
    }

    pub(crate) fn saw_orchestrator(&self, url: String) {
        if url.is_empty() {
            return;
        }
        let mut known = self.orchestrators.lock().unwrap_or_else(|p| p.into_inner());
        known.retain(|u| *u != url);
        known.insert(0, url);
        known.truncate(8);
    }

    /// Waits, at most `limit`, until no job runs.
    pub async fn wait_idle(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let notified = self.idle.notified();
                if self.running().is_empty() {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }
}
