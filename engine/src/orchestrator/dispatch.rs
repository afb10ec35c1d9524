//! The dispatch loop: ping each worker, claim as many jobs as it has free slots,
//! start them there.

use std::sync::Arc;
use std::time::Duration;

use slipway_proto::convert::step_to_wire;
use slipway_proto::v1::{self, job_service_client::JobServiceClient};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use super::OrchestratorConfig;
use crate::job::first_step_of;
use crate::store::{ClaimedJob, Store, StoreError};

/// How long a ping or a start may take before the worker counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

struct WorkerClient {
    url: String,
    client: JobServiceClient<Channel>,
    /// Whether the last ping failed, so that a dead worker is logged once, not every round.
    unreachable: bool,
}

pub struct Dispatcher {
    store: Store,
    config: OrchestratorConfig,
    wake: Arc<Notify>,
    workers: Vec<WorkerClient>,
}

impl Dispatcher {
    pub fn new(store: Store, config: OrchestratorConfig, wake: Arc<Notify>) -> Self {
        let workers = config
            .workers
            .iter()
            .filter_map(|url| match Endpoint::from_shared(url.clone()) {
                Ok(endpoint) => {
                    let channel = endpoint
                        .connect_timeout(CALL_TIMEOUT)
                        .timeout(CALL_TIMEOUT)
                        .connect_lazy();
                    Some(WorkerClient {
                        url: url.clone(),
                        client: JobServiceClient::new(channel),
                        unreachable: false,
                    })
                }
                Err(e) => {
                    tracing::error!(worker.url = %url, error = %e, "not a worker URL; ignored");
                    None
                }
            })
            .collect();
        Dispatcher {
            store,
            config,
            wake,
            workers,
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(owner = %self.config.owner, workers = ?self.config.workers, "orchestrator dispatching");
        loop {
            match self.round().await {
                Ok(()) => {}
                Err(e) => tracing::warn!(error = %e, "dispatch round failed"),
            }
            tokio::select! {
                // Shutdown: stop claiming.
                _ = shutdown.cancelled() => break,
                // A job was queued or a slot freed.
                _ = self.wake.notified() => {}
                // Fallback poll for anything a notification missed.
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    /// One pass over the workers.
    async fn round(&mut self) -> Result<(), StoreError> {
        for i in 0..self.workers.len() {
            let ping = {
                let worker = &mut self.workers[i];
                match worker.client.ping(v1::PingRequest {}).await {
                    Ok(r) => {
                        if worker.unreachable {
                            tracing::info!(worker.url = %worker.url, "worker reachable again");
                        }
                        worker.unreachable = false;
                        r.into_inner()
                    }
                    Err(status) => {
                        if !worker.unreachable {
                            tracing::warn!(worker.url = %worker.url, error = %status.message(), "worker unreachable");
                        }
                        worker.unreachable = true;
                        continue;
                    }
                }
            };
            let free = ping.slots_total.saturating_sub(ping.slots_busy);
            if free == 0 {
                continue;
            }
            let claimed = self
                .store
                .claim(&self.config.owner, &ping.worker_id, free, self.config.lease_ttl)
                .await?;
            for job in claimed {
                self.start(i, job).await?;
            }
        }
        Ok(())
    }

    async fn start(&mut self, worker: usize, job: ClaimedJob) -> Result<(), StoreError> {
        let first_step = first_step_of(job.state, job.pushed_ref.as_deref());
        let request = start_request(&job, first_step, &self.config.report_url);
        let worker = &mut self.workers[worker];
        match worker.client.start_job(request).await {
            Ok(_) => {
                tracing::info!(job.id = %job.id, job.attempt = job.attempt, worker.url = %worker.url, job.step = first_step.as_str(), "job started");
                Ok(())
            }
            Err(status) => {
                tracing::warn!(job.id = %job.id, worker.url = %worker.url, error = %status.message(), "worker refused the job; releasing it");
                self.store.release(job.id, job.lease_token).await
            }
        }
    }
}

fn start_request(job: &ClaimedJob, first_step: slipway_steps::Step, report_to: &str) -> v1::StartJobRequest {
    let spec = &job.spec.0;
    v1::StartJobRequest {
        lease: Some(v1::Lease {
            job_id: job.id.to_string(),
            attempt: job.attempt as u32,
            lease_token: job.lease_token.to_string(),
        }),
        spec: Some(v1::JobSpec {
            repo: spec.repo.clone(),
            git_ref: spec.git_ref.clone().unwrap_or_default(),
            dockerfile: spec.dockerfile.clone(),
            context: spec.context.clone(),
            image: spec.image.clone(),
            build_args: spec.build_args.clone().into_iter().collect(),
            env: spec.env.clone().into_iter().collect(),
            command: spec.run.command.clone().unwrap_or_default(),
            timeout_seconds: spec.run.timeout_seconds.unwrap_or_default(),
        }),
        outputs: Some(v1::StepOutputs {
            commit_sha: job.commit_sha.clone().unwrap_or_default(),
            image_id: job.image_id.clone().unwrap_or_default(),
            pushed_ref: job.pushed_ref.clone().unwrap_or_default(),
            container_id: job.container_id.clone().unwrap_or_default(),
        }),
        first_step: step_to_wire(first_step) as i32,
        report_to: report_to.to_string(),
        traceparent: job.traceparent.clone().unwrap_or_default(),
    }
}
