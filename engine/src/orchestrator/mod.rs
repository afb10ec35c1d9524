//! The orchestrator: claims runnable jobs for workers with free slots, hands each to
//! its worker over gRPC, and commits what workers report.
//!
//! Workers are known from configuration (`SLIPWAY_WORKERS`, plus the local worker in
//! `standalone`). Before claiming for a worker the orchestrator pings it: the answer
//! gives the worker's id and free slots, so a claim never takes more jobs than can
//! start at once. New work wakes the loop through Postgres `LISTEN`; a finished job
//! wakes it through the report service; a slow poll covers anything missed.

mod dispatch;
mod listen;
mod report_service;

use std::sync::Arc;
use std::time::Duration;

pub use dispatch::Dispatcher;
pub use report_service::ReportHandler;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// Names this orchestrator in leases.
    pub owner: String,
    /// gRPC URLs of the workers this orchestrator dispatches to.
    pub workers: Vec<String>,
    /// gRPC URL of this orchestrator's report service, as workers reach it.
    pub report_url: String,
    /// How long a lease lasts without news from its worker.
    pub lease_ttl: Duration,
    /// The fallback poll when no notification arrives.
    pub poll_interval: Duration,
}

/// Runs the dispatch loop and the `LISTEN` loop until `shutdown`.
pub async fn run(store: Store, config: OrchestratorConfig, wake: Arc<Notify>, shutdown: CancellationToken) {
    let listener = tokio::spawn(listen::run(store.clone(), wake.clone(), shutdown.clone()));
    Dispatcher::new(store, config, wake).run(shutdown).await;
    let _ = listener.await;
}
