//! The worker: a gRPC `JobService` that admits jobs up to its free slots, runs their
//! steps and reports every step to the orchestrator that leased the job.
//!
//! A worker holds no database credentials: it runs untrusted builds, so everything
//! it learns reaches the database only through an orchestrator's fenced commits.

mod assignment;
mod build_step;
mod cache_keys;
mod config;
mod engine_health;
mod job_run;
mod reporter;
mod run_step;
mod service;
mod state;
mod step_context;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use slipway_proto::v1::job_service_server::JobServiceServer;
use slipway_steps::docker::build::cache_keys_on_engine;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

pub use config::WorkerConfig;
use service::Worker;
use state::WorkerState;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare the work folder {path}: {source}")]
    WorkDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Docker(#[from] slipway_steps::StepError),
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("the gRPC server task failed: {0}")]
    Join(String),
}

/// A worker bound to its address, not yet serving.
pub struct BoundWorker {
    listener: tokio::net::TcpListener,
    state: Arc<WorkerState>,
}

impl BoundWorker {
    /// Binds the listen address and prepares the work folder, removing what a killed
    /// worker of the same id left in it.
    pub async fn bind(config: WorkerConfig) -> Result<Self, WorkerError> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| WorkerError::Listen { addr: config.listen, source })?;
        prepare_jobs_dir(&config.jobs_dir()).await?;
        let docker = slipway_steps::docker::connect()?;
        let state = Arc::new(WorkerState::new(config, docker));
        Ok(BoundWorker { listener, state })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// What builds this worker's images, as a person reads it: BuildKit, the
    /// classic builder, or why the engine does not answer.
    pub async fn builder_description(&self) -> String {
        match self.state.builder().await {
            Ok(slipway_steps::docker::build::Builder::BuildKit) => "BuildKit".to_string(),
            Ok(slipway_steps::docker::build::Builder::Classic) => "the classic builder".to_string(),
            Err(e) => format!("none yet ({})", e.message),
        }
    }

    /// Serves until `shutdown` is cancelled. Then it admits no new job, lets running
    /// jobs finish for the grace period, hands back those still running, and closes
    /// once they have reported (the service keeps answering pings meanwhile, so their
    /// leases stay alive).
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<JobServiceServer<Worker>>().await;
        let state = self.state.clone();
        tracing::info!(
            worker.id = %state.config.worker_id,
            addr = %self.local_addr(),
            slots = state.config.slots,
            "worker listening"
        );
        // The layers the engine holds from before this start, for the first ping on;
        // an engine that does not answer soon holds none we could use.
        let found = cache_keys_on_engine(&state.docker, cache_keys::MAX_CACHE_KEYS);
        match tokio::time::timeout(Duration::from_secs(2), found).await {
            Ok(Ok(keys)) => state.cache_keys.found(keys),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the cache keys of the engine's images"),
            Err(_) => tracing::warn!("the engine did not list its images within 2 s: no cache keys from before"),
        }
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(self.listener);
        let close = CancellationToken::new();
        let server = {
            let close = close.clone();
            let jobs = JobServiceServer::new(Worker::new(state.clone(), shutdown.clone()))
                .max_decoding_message_size(slipway_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(slipway_proto::MAX_MESSAGE_BYTES);
            // Only a client with a certificate of the installation's CA gets through
            // the handshake; only an orchestrator's gets past the interceptor.
            let mut server = tonic::transport::Server::builder().tls_config(state.config.tls.server_config())?;
            tokio::spawn(
                server
                    .add_service(health_service)
                    .add_service(InterceptedService::new(jobs, slipway_proto::tls::orchestrators_only))
                    .serve_with_incoming_shutdown(incoming, async move { close.cancelled().await }),
            )
        };
        if let Some(addr) = state.config.metrics_addr {
            serve_metrics(addr, close.clone()).await?;
        }
        state.record_slots(0);
        // The engine is watched; the gRPC health service says what the watch finds.
        let watch = {
            let (state, close) = (state.clone(), close.clone());
            tokio::spawn(async move { state.engine.watch(&state.docker, close).await })
        };
        let health = {
            let mut changes = state.engine.subscribe();
            tokio::spawn(async move {
                while changes.changed().await.is_ok() {
                    let unhealthy = changes.borrow_and_update().is_some();
                    if unhealthy {
                        health_reporter.set_not_serving::<JobServiceServer<Worker>>().await;
                    } else {
                        health_reporter.set_serving::<JobServiceServer<Worker>>().await;
                    }
                }
            })
        };
        shutdown.cancelled().await;
        tracing::info!(grace = ?state.config.shutdown_grace, "worker stopping: running jobs may finish");
        state.wait_idle(state.config.shutdown_grace).await;
        state.hand_back_all();
        state.wait_idle(Duration::from_secs(30)).await;
        close.cancel();
        let _ = watch.await;
        health.abort();
        server.await.map_err(|e| WorkerError::Join(e.to_string()))??;
        Ok(())
    }
}

/// Serves `GET /metrics` on `addr` until `close`.
async fn serve_metrics(addr: std::net::SocketAddr, close: CancellationToken) -> Result<(), WorkerError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| WorkerError::Listen { addr, source })?;
    tracing::info!(%addr, "worker metrics listening");
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            ([("content-type", "text/plain; version=0.0.4")], slipway_observability::metrics::render())
        }),
    );
    tokio::spawn(async move {
        let served = axum::serve(listener, router).with_graceful_shutdown(async move { close.cancelled().await });
        if let Err(e) = served.await {
            tracing::warn!(error = %e, "the metrics server failed");
        }
    });
    Ok(())
}

/// Empties (or creates) the worker's jobs folder.
async fn prepare_jobs_dir(dir: &std::path::Path) -> Result<(), WorkerError> {
    let fail = |source| WorkerError::WorkDir { path: dir.to_path_buf(), source };
    match tokio::fs::read_dir(dir).await {
        Ok(mut entries) => {
            let mut removed = 0;
            while let Some(entry) = entries.next_entry().await.map_err(fail)? {
                let path = entry.path();
                let result = if entry.file_type().await.map_err(fail)?.is_dir() {
                    tokio::fs::remove_dir_all(&path).await
                } else {
                    tokio::fs::remove_file(&path).await
                };
                result.map_err(fail)?;
                removed += 1;
            }
            if removed > 0 {
                tracing::info!(path = %dir.display(), removed, "removed folders left by an earlier run");
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => tokio::fs::create_dir_all(dir).await.map_err(fail),
        Err(e) => Err(fail(e)),
    }
}
