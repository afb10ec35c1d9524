//! The orchestrator: claims runnable jobs for workers with free slots, hands each to
//! its worker over gRPC, and commits what workers report.
//!
//! Workers are known from configuration (`SLIPWAY_WORKERS`, plus the local worker in
//! `standalone`). Every heartbeat the orchestrator pings each worker: the answer
//! names the leases the worker holds, which are extended (so a worker that stops
//! answering loses them after `SLIPWAY_WORKER_TIMEOUT`), and its free slots, so a
//! claim never takes more jobs than can start at once. Leases of jobs asked to
//! cancel, or no longer current, are cancelled on the worker. Expired leases are
//! ended in the same loop. New work and cancel requests wake the loop through
//! Postgres `LISTEN`; a freed slot wakes it through the report service ([`Wake`]).

mod apply;
mod commit;
mod dispatch;
mod report_service;
mod sweep;
mod wake;
mod wire;
mod workers;

use std::time::Duration;

pub use dispatch::Dispatcher;
pub use report_service::ReportHandler;
pub use sweep::{SweepConfig, SweepCounts, Sweeper};
use tokio_util::sync::CancellationToken;
pub use wake::Wake;
pub use workers::WorkerLink;

use crate::store::Store;

#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// Names this orchestrator in leases.
    pub owner: String,
    /// gRPC URL of this orchestrator's report service, as workers reach it.
    pub report_url: String,
    /// How long a lease lasts without news from its worker.
    pub worker_timeout: Duration,
    /// How often workers are pinged and expired leases looked for.
    pub heartbeat_interval: Duration,
    /// The attempt limit of jobs whose spec predates retry policies.
    pub default_policy: crate::job::RetryPolicy,
    /// This installation's id, from the database.
    pub instance_id: String,
    /// How long a queued job waits for a worker holding its build cache before any
    /// worker may take it (`SLIPWAY_CACHE_AFFINITY_WAIT`).
    pub cache_affinity_wait: Duration,
}

/// Cancel requests noted between two turns of the dispatch loop, at most; past
/// that, the next heartbeat tells the workers.
const PENDING_CANCELS: usize = 1024;

/// Runs the dispatch loop and the `LISTEN` loop until `shutdown`, dispatching to
/// `workers` (made once with [`WorkerLink::connect_all`], shared with the sweep).
pub async fn run(
    store: Store,
    vault: crate::secrets::vault::Vault,
    config: OrchestratorConfig,
    workers: Vec<WorkerLink>,
    wake: Wake,
    shutdown: CancellationToken,
) {
    let (cancels, cancelled) = tokio::sync::mpsc::channel(PENDING_CANCELS);
    let listener = {
        let (store, wake, shutdown) = (store.clone(), wake.clone(), shutdown.clone());
        tokio::spawn(async move {
            let channels = [crate::store::QUEUED_CHANNEL, crate::store::CANCEL_CHANNEL];
            let on_notification = |channel: &str, payload: &str| {
                // A cancel request goes to the job's worker now, not at the next heartbeat.
                if channel == crate::store::CANCEL_CHANNEL
                    && let Ok(id) = payload.parse()
                {
                    let _ = cancels.try_send(id);
                }
                wake.notify();
            };
            crate::store::listen(store, &channels, on_notification, shutdown).await
        })
    };
    Dispatcher::new(store, vault, config, workers, wake, cancelled).run(shutdown).await;
    let _ = listener.await;
}

/// How reports are committed.
#[derive(Debug, Clone)]
pub struct CommitConfig {
    /// How long a lease lasts from a report of its worker.
    pub lease_ttl: Duration,
    /// The attempt limit of jobs whose spec predates retry policies.
    pub default_policy: crate::job::RetryPolicy,
    /// Bytes of log lines kept per job.
    pub max_log_bytes: u64,
    /// Most reports committed in one transaction.
    pub batch: usize,
}

/// The report service, committing reports in groups through its own tasks.
pub fn report_handler(store: &Store, config: CommitConfig, wake: Wake) -> ReportHandler {
    ReportHandler::new(commit::Committer::start(store.pool().clone(), config, wake))
}
