//! The dispatch loop. Every heartbeat: ping each worker, extend the leases it holds,
//! cancel what must stop, claim as many jobs as it has free slots and start them
//! there, then end expired leases. On a wake-up between heartbeats (a job queued, a
//! slot freed): claim against the free slots the last ping reported, less the jobs
//! started since, so that a new job starts without a round trip to the workers.

use slipway_observability::trace;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::workers::{CALL_TIMEOUT, WorkerLink, WorkerPing};
use super::{OrchestratorConfig, Wake};
use crate::job::JobId;
use crate::job::transitions::{CANCELLED_BY_REQUEST, EngineCode, first_step_of};
use crate::secrets::for_job::{OpenRefusal, open_for_attempt};
use crate::secrets::vault::Vault;
use crate::store::{
    CacheElsewhere, ClaimedJob, HeldLease, LeaseStatus, Store, StoreError, WorkerAnswer, WorkerOffer, WorkerSeen,
};

/// A worker as the dispatch loop last saw it.
struct WorkerClient {
    link: WorkerLink,
    /// Whether the last ping failed, so that a dead worker is logged once, not every round.
    unreachable: bool,
    /// Whether the worker said it takes no job (its engine is wedged): no claim is
    /// made for it until it says otherwise.
    unhealthy: bool,
    /// The worker's id, from its last answer.
    id: Option<String>,
    /// Free slots as of the last ping, less the jobs started since, plus the
    /// attempts that ended since: a wake-up claims against this without asking the
    /// worker again.
    free: u32,
    /// The worker's slots, from its last answer.
    slots: u32,
    /// The labels and runtimes it offers, from its last answer.
    offer: WorkerOffer,
}

impl WorkerClient {
    /// Whether jobs may be sent to it: it answered and said it is healthy.
    fn takes_jobs(&self) -> bool {
        self.id.is_some() && !self.unreachable && !self.unhealthy
    }
}

pub struct Dispatcher {
    store: Store,
    /// Opens the secrets a job names when an attempt starts.
    vault: Vault,
    config: OrchestratorConfig,
    wake: Wake,
    /// Jobs asked to cancel, as their notifications arrive.
    cancelled: mpsc::Receiver<JobId>,
    workers: Vec<WorkerClient>,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        vault: Vault,
        config: OrchestratorConfig,
        workers: Vec<WorkerLink>,
        wake: Wake,
        cancelled: mpsc::Receiver<JobId>,
    ) -> Self {
        let workers = workers
            .into_iter()
            .map(|link| WorkerClient {
                link,
                unreachable: false,
                unhealthy: false,
                id: None,
                free: 0,
                slots: 0,
                offer: WorkerOffer::default(),
            })
            .collect();
        Dispatcher { store, vault, config, wake, cancelled, workers }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let urls: Vec<&str> = self.workers.iter().map(|w| w.link.url.as_str()).collect();
        tracing::info!(owner = %self.config.owner, workers = ?urls, "orchestrator dispatching");
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let result = tokio::select! {
                // Shutdown: stop claiming.
                _ = shutdown.cancelled() => break,
                // A cancel was requested: tell the job's worker now.
                Some(id) = self.cancelled.recv() => self.cancel_now(id).await,
                // A job was queued, a cancel requested, or a slot freed.
                _ = self.wake.notified() => self.dispatch().await,
                // Heartbeat: leases are extended and expired ones ended even when
                // nothing else happens.
                _ = heartbeat.tick() => self.heartbeat().await,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "dispatch round failed");
            }
        }
    }

    /// Tells the workers holding `first` and any other job asked to cancel since
    /// to stop them. A worker this orchestrator does not know hears it from its
    /// own orchestrator; any that misses it hears at the next heartbeat.
    async fn cancel_now(&mut self, first: JobId) -> Result<(), StoreError> {
        let mut ids = vec![first];
        while let Ok(id) = self.cancelled.try_recv() {
            ids.push(id);
        }
        for (job_id, worker_id, token) in self.store.leases_to_cancel(&ids).await? {
            if let Some(worker) = self.workers.iter_mut().find(|w| w.id.as_deref() == Some(worker_id.as_str())) {
                worker.link.cancel(HeldLease { job_id, token }, CANCELLED_BY_REQUEST).await;
            }
        }
        Ok(())
    }

    /// On a wake-up: claim for the free slots known from the last ping, asking the
    /// workers again only when none is known to be free.
    async fn dispatch(&mut self) -> Result<(), StoreError> {
        for (id, freed) in self.wake.take_freed() {
            if let Some(worker) = self.workers.iter_mut().find(|w| w.id.as_deref() == Some(id.as_str())) {
                worker.free = (worker.free + freed).min(worker.slots);
            }
        }
        if self.workers.iter().all(|w| w.free == 0) {
            self.ping_all().await;
        }
        self.claim_and_start().await
    }

    /// Every heartbeat: ping all workers, keep their leases, claim, end expired leases.
    async fn heartbeat(&mut self) -> Result<(), StoreError> {
        let pings = self.ping_all().await;
        self.record_workers(&pings).await;
        for (i, ping) in pings.into_iter().enumerate() {
            if let Some(ping) = ping {
                self.keep_leases(i, &ping).await?;
            }
        }
        self.claim_and_start().await?;
        let ended = self.store.expire_leases(&self.config.default_policy).await?;
        for lease in &ended {
            slipway_observability::metrics::LEASE_EXPIRIES.inc(&[lease.to_state.as_str()]);
            if lease.to_state.is_terminal() {
                slipway_observability::metrics::JOBS_FINISHED.inc(&[lease.to_state.as_str()]);
            }
            tracing::warn!(
                job.id = %lease.id, job.attempt = lease.attempt, worker.id = ?lease.worker,
                from = lease.from_state.as_str(), to = lease.to_state.as_str(),
                "lease expired"
            );
        }
        if !ended.is_empty() {
            // Their jobs may be runnable now.
            self.wake.notify();
        }
        Ok(())
    }

    async fn claim_and_start(&mut self) -> Result<(), StoreError> {
        for i in 0..self.workers.len() {
            let (Some(worker_id), free) = (self.workers[i].id.clone(), self.workers[i].free) else { continue };
            if free == 0 || !self.workers[i].takes_jobs() {
                continue;
            }
            let elsewhere = self.cache_elsewhere(i);
            let offer = &self.workers[i].offer;
            let (owner, ttl) = (&self.config.owner, self.config.worker_timeout);
            let claimed = self.store.claim(owner, &worker_id, offer, free, ttl, &elsewhere).await?;
            for job in claimed {
                self.start(i, job).await?;
            }
        }
        Ok(())
    }

    /// The cache keys the workers other than `worker` hold, those that take jobs:
    /// a job of one of these keys waits for them before `worker` may take it.
    fn cache_elsewhere(&self, worker: usize) -> CacheElsewhere {
        let others = self.workers.iter().enumerate().filter(|(j, w)| *j != worker && w.takes_jobs());
        let mut keys: Vec<String> = others.flat_map(|(_, w)| w.offer.cache_keys.iter().cloned()).collect();
        keys.sort_unstable();
        keys.dedup();
        CacheElsewhere { keys, wait: self.config.cache_affinity_wait }
    }

    /// Pings every worker; `None` for those that did not answer within half the
    /// worker timeout.
    async fn ping_all(&mut self) -> Vec<Option<WorkerPing>> {
        let limit = (self.config.worker_timeout / 2).min(CALL_TIMEOUT);
        let report_to = &self.config.report_url;
        let calls = self.workers.iter().map(|w| w.link.ping(report_to, limit));
        let answers = futures_util::future::join_all(calls).await;
        answers
            .into_iter()
            .zip(self.workers.iter_mut())
            .map(|(answer, worker)| match answer {
                Ok(ping) => {
                    if worker.unreachable {
                        tracing::info!(worker.url = %worker.link.url, "worker reachable again");
                    }
                    worker.unreachable = false;
                    match (&ping.unhealthy, worker.unhealthy) {
                        (Some(why), false) => {
                            tracing::warn!(worker.url = %worker.link.url, reason = %why, "worker unhealthy: no job is sent to it")
                        }
                        (None, true) => tracing::info!(worker.url = %worker.link.url, "worker healthy again"),
                        _ => {}
                    }
                    worker.unhealthy = ping.unhealthy.is_some();
                    worker.id = Some(ping.worker_id.clone());
                    worker.free = ping.slots_total.saturating_sub(ping.slots_busy);
                    worker.slots = ping.slots_total;
                    worker.offer = ping.offer.clone();
                    Some(ping)
                }
                Err(error) => {
                    worker.free = 0;
                    if !worker.unreachable {
                        tracing::warn!(worker.url = %worker.link.url, %error, "worker unreachable");
                    }
                    worker.unreachable = true;
                    None
                }
            })
            .collect()
    }

    /// Writes what the pings said, for `GET /v1/workers`; a failure is logged (the
    /// jobs do not depend on it).
    async fn record_workers(&self, pings: &[Option<WorkerPing>]) {
        let seen: Vec<WorkerSeen> = self
            .workers
            .iter()
            .zip(pings)
            .map(|(worker, ping)| WorkerSeen {
                url: worker.link.url.clone(),
                answer: ping.as_ref().map(|p| WorkerAnswer {
                    worker_id: p.worker_id.clone(),
                    offer: p.offer.clone(),
                    slots_total: p.slots_total,
                    slots_busy: p.slots_busy,
                    unhealthy: p.unhealthy.clone(),
                }),
            })
            .collect();
        if let Err(error) = self.store.record_workers(&self.config.owner, &seen).await {
            tracing::warn!(%error, "cannot record what the workers said");
        }
    }

    /// Extends the leases the worker holds; cancels those to cancel or no longer current.
    async fn keep_leases(&mut self, worker: usize, ping: &WorkerPing) -> Result<(), StoreError> {
        let statuses = self.store.heartbeat(&self.config.owner, &ping.held, self.config.worker_timeout).await?;
        let worker = &mut self.workers[worker];
        for (lease, status) in statuses {
            let reason = match status {
                LeaseStatus::Current => continue,
                LeaseStatus::CancelRequested => CANCELLED_BY_REQUEST,
                LeaseStatus::Stale => "the lease of this attempt is lost",
            };
            worker.link.cancel(lease, reason).await;
        }
        Ok(())
    }

    async fn start(&mut self, worker: usize, job: ClaimedJob) -> Result<(), StoreError> {
        let first_step = first_step_of(job.state, job.pushed_ref.is_some());
        let span = tracing::info_span!(
            "orchestrator.dispatch",
            job.id = %job.id, job.attempt = job.attempt, job.step = first_step.as_str()
        );
        let traceparent = job.traceparent.clone().unwrap_or_default();
        trace::set_parent(&span, &traceparent);
        // The worker's spans are children of this one.
        let traceparent = trace::traceparent_of(&span).unwrap_or(traceparent);
        let secrets = match open_for_attempt(&self.vault, job.project_id, &job.spec.0).await {
            Ok(secrets) => secrets,
            Err(OpenRefusal::Missing(why)) => {
                // Nothing was sent to a worker: the job fails for good, its slot stays free.
                tracing::warn!(job.id = %job.id, reason = %why, "job cannot have its secrets");
                return self.store.fail_claimed(&job, first_step, EngineCode::SecretMissing, &why).await.or_else(|e| {
                    match e {
                        StoreError::LeaseLost => Ok(()),
                        e => Err(e),
                    }
                });
            }
            Err(OpenRefusal::Store(e)) => {
                self.store.release(job.id, job.lease_token).await.ok();
                return Err(e);
            }
        };
        let worker = &mut self.workers[worker];
        worker.free = worker.free.saturating_sub(1);
        match worker.link.start(&job, first_step, &secrets, &self.config, &traceparent).instrument(span).await {
            Ok(()) => {
                tracing::info!(job.id = %job.id, job.attempt = job.attempt, worker.url = %worker.link.url, job.step = first_step.as_str(), "job started");
                Ok(())
            }
            Err(error) => {
                // Whatever the reason, ask the worker again before the next claim for it.
                worker.free = 0;
                tracing::warn!(job.id = %job.id, worker.url = %worker.link.url, %error, "worker refused the job; releasing it");
                match self.store.release(job.id, job.lease_token).await {
                    // Ended meanwhile (cancelled): nothing to give back.
                    Err(StoreError::LeaseLost) => Ok(()),
                    other => other,
                }
            }
        }
    }
}
