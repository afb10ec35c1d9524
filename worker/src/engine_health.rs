//! Whether this worker's engine can run jobs, so that a wedged engine is noticed
//! rather than retried into.
//!
//! A build the engine says nothing about within `SLIPWAY_BUILD_START_TIMEOUT` fails
//! `engine_unavailable`, and the worker probes: an engine that does not answer a
//! ping makes the worker *unhealthy*; a BuildKit that does not start builds while
//! the classic builder does makes the worker build with the classic builder from
//! then on (the job is built again that way at once, and its log says why); neither
//! builder working makes it unhealthy too. An unhealthy worker admits no job, says
//! why in its ping (the orchestrator then claims nothing for it), its gRPC health
//! service answers `NOT_SERVING`, and `slipway_worker_healthy` is 0. A watch probes
//! the engine at start and every [`WATCH_EVERY`], and makes the worker healthy again
//! once the probe that failed passes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use slipway_observability::metrics;
use slipway_steps::docker::Docker;
use slipway_steps::docker::build::Builder;
use slipway_steps::docker::probe;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the watch probes.
const WATCH_EVERY: Duration = Duration::from_secs(10);

/// What a worker does after a build found its engine unavailable.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AfterFailedBuild {
    /// BuildKit is wedged and the classic builder works: build with it.
    UseClassic,
    /// The engine (or every builder) is wedged: the worker is now unhealthy.
    Unhealthy,
    /// The engine answers and builds again: the failure passed.
    Passed,
}

pub(crate) struct EngineHealth {
    worker_id: String,
    /// Why the worker is unhealthy; `None` while it is healthy.
    unhealthy: watch::Sender<Option<String>>,
    /// Set when builds failed and not only pings: recovery needs a build to pass.
    builds_failed: AtomicBool,
    /// BuildKit was found wedged: every build uses the classic builder.
    classic_only: AtomicBool,
}

impl EngineHealth {
    pub fn new(worker_id: &str) -> Self {
        metrics::WORKER_HEALTHY.set(&[worker_id], 1.0);
        EngineHealth {
            worker_id: worker_id.to_string(),
            unhealthy: watch::channel(None).0,
            builds_failed: AtomicBool::new(false),
            classic_only: AtomicBool::new(false),
        }
    }

    /// Why the worker is unhealthy, if it is.
    pub fn unhealthy(&self) -> Option<String> {
        self.unhealthy.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.unhealthy.subscribe()
    }

    pub fn classic_only(&self) -> bool {
        self.classic_only.load(Ordering::Relaxed)
    }

    fn set(&self, reason: Option<String>) {
        let was = self.unhealthy();
        match (&was, &reason) {
            (None, Some(why)) => {
                tracing::error!(worker.id = %self.worker_id, reason = %why, "worker unhealthy: it takes no job until its engine answers")
            }
            (Some(_), None) => tracing::info!(worker.id = %self.worker_id, "worker healthy again: its engine answers"),
            _ => {}
        }
        metrics::WORKER_HEALTHY.set(&[&self.worker_id], if reason.is_none() { 1.0 } else { 0.0 });
        self.unhealthy.send_replace(reason);
    }

    /// Probes after a build with `builder` found the engine unavailable.
    pub async fn after_failed_build(&self, docker: &Docker, builder: Builder) -> AfterFailedBuild {
        if let Err(why) = probe::ping(docker, PROBE_TIMEOUT).await {
            self.set(Some(why));
            return AfterFailedBuild::Unhealthy;
        }
        match (builder, probe::classic_build(docker, PROBE_TIMEOUT).await) {
            (Builder::BuildKit, Ok(())) => {
                if !self.classic_only.swap(true, Ordering::Relaxed) {
                    tracing::warn!(worker.id = %self.worker_id, "BuildKit does not start builds; the classic builder does: using it from now on");
                }
                AfterFailedBuild::UseClassic
            }
            (Builder::Classic, Ok(())) => AfterFailedBuild::Passed,
            (_, Err(why)) => {
                self.builds_failed.store(true, Ordering::Relaxed);
                self.set(Some(format!("the engine answers but builds nothing: {why}")));
                AfterFailedBuild::Unhealthy
            }
        }
    }

    /// Probes now, then every [`WATCH_EVERY`], until `shutdown`.
    pub async fn watch(&self, docker: &Docker, shutdown: CancellationToken) {
        loop {
            let probed = match probe::ping(docker, PROBE_TIMEOUT).await {
                Err(why) => Err(why),
                Ok(()) if self.builds_failed.load(Ordering::Relaxed) => {
                    probe::classic_build(docker, PROBE_TIMEOUT).await
                }
                Ok(()) => Ok(()),
            };
            match probed {
                Ok(()) => {
                    self.builds_failed.store(false, Ordering::Relaxed);
                    self.set(None);
                }
                Err(why) => {
                    let builds = self.builds_failed.load(Ordering::Relaxed);
                    self.set(Some(if builds { format!("the engine answers but builds nothing: {why}") } else { why }));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(WATCH_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
