//! The dispatch loop. Each round, for each worker: ping it, extend the leases it
//! holds, cancel what must stop, claim as many jobs as it has free slots and start
//! them there; then end expired leases.

use std::sync::Arc;
use std::time::Duration;

use slipway_proto::convert::step_to_wire;
use slipway_proto::v1::{self, job_service_client::JobServiceClient};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use super::OrchestratorConfig;
use crate::job::first_step_of;
use crate::store::{ClaimedJob, HeldLease, LeaseStatus, Store, StoreError};

/// How long a call to a worker may take before the worker counts as unreachable.
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
                    let channel = endpoint.connect_timeout(CALL_TIMEOUT).timeout(CALL_TIMEOUT).connect_lazy();
                    Some(WorkerClient { url: url.clone(), client: JobServiceClient::new(channel), unreachable: false })
                }
                Err(e) => {
                    tracing::error!(worker.url = %url, error = %e, "not a worker URL; ignored");
                    None
                }
            })
            .collect();
        Dispatcher { store, config, wake, workers }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(owner = %self.config.owner, workers = ?self.config.workers, "orchestrator dispatching");
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Shutdown: stop claiming.
                _ = shutdown.cancelled() => break,
                // A job was queued, a cancel requested, or a slot freed.
                _ = self.wake.notified() => {}
                // Heartbeat: leases are extended and expired ones ended even when
                // nothing else happens.
                _ = heartbeat.tick() => {}
            }
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "dispatch round failed");
            }
        }
    }

    /// One pass over the workers, then over expired leases. Workers are pinged all at
    /// once, so that a hung worker delays no other.
    async fn round(&mut self) -> Result<(), StoreError> {
        let pings = self.ping_all().await;
        for (i, ping) in pings.into_iter().enumerate() {
            let Some(ping) = ping else { continue };
            self.keep_leases(i, &ping).await?;
            let free = ping.slots_total.saturating_sub(ping.slots_busy);
            if free == 0 {
                continue;
            }
            let claimed =
                self.store.claim(&self.config.owner, &ping.worker_id, free, self.config.worker_timeout).await?;
            for job in claimed {
                self.start(i, job).await?;
            }
        }
        let ended = self.store.expire_leases(&self.config.default_policy).await?;
        for lease in &ended {
            tracing::warn!(
                job.id = %lease.id, job.attempt = lease.attempt, worker.id = ?lease.worker,
                from = lease.from_state.as_str(), to = lease.to_state.as_str(),
                "lease expired"
            );
        }
        if !ended.is_empty() {
            // Their jobs may be runnable now.
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Pings every worker; `None` for those that did not answer within half the
    /// worker timeout.
    async fn ping_all(&mut self) -> Vec<Option<v1::PingResponse>> {
        let limit = (self.config.worker_timeout / 2).min(CALL_TIMEOUT);
        let calls = self.workers.iter().map(|w| {
            let mut client = w.client.clone();
            let request = v1::PingRequest { report_to: self.config.report_url.clone() };
            async move {
                match tokio::time::timeout(limit, client.ping(request)).await {
                    Ok(Ok(r)) => Ok(r.into_inner()),
                    Ok(Err(status)) => Err(status.message().to_string()),
                    Err(_) => Err(format!("no answer within {limit:?}")),
                }
            }
        });
        let answers = futures_util::future::join_all(calls).await;
        answers
            .into_iter()
            .zip(self.workers.iter_mut())
            .map(|(answer, worker)| match answer {
                Ok(ping) => {
                    if worker.unreachable {
                        tracing::info!(worker.url = %worker.url, "worker reachable again");
                    }
                    worker.unreachable = false;
                    Some(ping)
                }
                Err(error) => {
                    if !worker.unreachable {
                        tracing::warn!(worker.url = %worker.url, %error, "worker unreachable");
                    }
                    worker.unreachable = true;
                    None
                }
            })
            .collect()
    }

    /// Extends the leases the worker holds; cancels those to cancel or no longer current.
    async fn keep_leases(&mut self, worker: usize, ping: &v1::PingResponse) -> Result<(), StoreError> {
        let held: Vec<HeldLease> = ping
            .running
            .iter()
            .filter_map(|l| Some(HeldLease { job_id: l.job_id.parse().ok()?, token: l.lease_token.parse().ok()? }))
            .collect();
        let statuses = self.store.heartbeat(&self.config.owner, &held, self.config.worker_timeout).await?;
        let worker = &mut self.workers[worker];
        for (lease, status) in statuses {
            let reason = match status {
                LeaseStatus::Current => continue,
                LeaseStatus::CancelRequested => "cancelled by request",
                LeaseStatus::Stale => "the lease of this attempt is lost",
            };
            let request = v1::CancelRequest {
                job_id: lease.job_id.to_string(),
                reason: reason.to_string(),
                lease_token: lease.token.to_string(),
            };
            if let Err(status) = worker.client.cancel(request).await {
                tracing::warn!(job.id = %lease.job_id, worker.url = %worker.url, error = %status.message(), "cannot cancel on the worker");
            }
        }
        Ok(())
    }

    async fn start(&mut self, worker: usize, job: ClaimedJob) -> Result<(), StoreError> {
        let first_step = first_step_of(job.state, job.pushed_ref.as_deref());
        let request = start_request(&job, first_step, &self.config);
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

fn start_request(
    job: &ClaimedJob,
    first_step: slipway_steps::Step,
    config: &OrchestratorConfig,
) -> v1::StartJobRequest {
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
        report_to: config.report_url.clone(),
        traceparent: job.traceparent.clone().unwrap_or_default(),
        instance_id: config.instance_id.clone(),
    }
}
