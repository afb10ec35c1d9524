//! The `JobService` a worker serves: admission by free slots, status, cancel, ping.

use std::sync::{Arc, Mutex};

use slipway_proto::convert::step_to_wire;
use slipway_proto::v1::leftover::Kind;
use slipway_proto::v1::{self, job_service_server::JobService};
#[cfg(feature = "aws")]
use slipway_steps::aws::ecs::{PAST_DEADLINE, STOP_REASON_PREFIX};
use slipway_steps::docker::leftovers::{self, Leftover};
#[cfg(not(feature = "aws"))]
use slipway_steps::{ErrorCode, aws::without_aws};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::assignment::JobRun;
use crate::state::{RunningJob, WorkerState};
use crate::{job_run, wire};

pub(crate) struct Worker {
    state: Arc<WorkerState>,
    shutdown: CancellationToken,
}

impl Worker {
    pub fn new(state: Arc<WorkerState>, shutdown: CancellationToken) -> Self {
        Worker { state, shutdown }
    }

    /// This instance's ECS tasks, when the worker runs `ecs` jobs.
    #[cfg(feature = "aws")]
    async fn leftover_tasks(&self, instance_id: &str) -> Result<Vec<Leftover>, slipway_steps::StepError> {
        if self.state.config.ecs.is_none() {
            return Ok(Vec::new());
        }
        self.state.ecs().await?.leftover_tasks(instance_id).await
    }

    /// A build without AWS launches no task.
    #[cfg(not(feature = "aws"))]
    async fn leftover_tasks(&self, _instance_id: &str) -> Result<Vec<Leftover>, slipway_steps::StepError> {
        Ok(Vec::new())
    }
}

#[tonic::async_trait]
impl JobService for Worker {
    async fn start_job(&self, request: Request<v1::StartJobRequest>) -> Result<Response<v1::StartJobResponse>, Status> {
        let traceparent = request.metadata().get("traceparent").and_then(|v| v.to_str().ok()).map(String::from);
        let assignment = wire::assignment(
            request.into_inner(),
            &self.state.config.worker_id,
            &self.state.config.repo_policy,
            traceparent,
        )?;
        let (lease, first_step) = (assignment.lease.clone(), assignment.first_step);
        if self.shutdown.is_cancelled() {
            return Err(Status::unavailable("the worker is shutting down"));
        }
        if let Some(why) = self.state.engine.unhealthy() {
            return Err(Status::unavailable(format!("the worker takes no job: {why}")));
        }
        let step = Arc::new(Mutex::new(first_step));
        let cancel = CancellationToken::new();
        let hand_back = CancellationToken::new();
        {
            let mut running = self.state.running();
            if let Some(existing) = running.get(&lease.job_id) {
                if existing.lease.token == lease.token {
                    // The same attempt offered twice (a retried call): it already runs.
                    return Ok(Response::new(v1::StartJobResponse { worker_id: self.state.config.worker_id.clone() }));
                }
                return Err(Status::already_exists("this worker already runs another attempt of the job"));
            }
            if running.len() >= self.state.config.slots as usize {
                return Err(Status::resource_exhausted("no free slot"));
            }
            let job = RunningJob {
                lease: lease.clone(),
                step: step.clone(),
                cancel: cancel.clone(),
                hand_back: hand_back.clone(),
            };
            running.insert(lease.job_id.clone(), job);
            self.state.record_slots(running.len());
        }
        tracing::info!(job.id = %lease.job_id, job.attempt = lease.attempt, job.step = first_step.as_str(), "job admitted");
        tokio::spawn(job_run::run(self.state.clone(), JobRun { assignment, current_step: step, cancel, hand_back }));
        Ok(Response::new(v1::StartJobResponse { worker_id: self.state.config.worker_id.clone() }))
    }

    async fn get_status(
        &self,
        request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::GetStatusResponse>, Status> {
        let job_id = request.into_inner().job_id;
        let running = self.state.running();
        let response = match running.get(&job_id) {
            Some(job) => v1::GetStatusResponse {
                running: true,
                step: step_to_wire(*job.step.lock().unwrap_or_else(|p| p.into_inner())) as i32,
                // The attempt, never its token: the service has no authentication yet,
                // and a token lets its holder report for the attempt.
                lease: Some(v1::Lease { lease_token: String::new(), ..wire::lease(&job.lease) }),
            },
            None => v1::GetStatusResponse::default(),
        };
        Ok(Response::new(response))
    }

    async fn cancel(&self, request: Request<v1::CancelRequest>) -> Result<Response<v1::CancelResponse>, Status> {
        let request = request.into_inner();
        let running = self.state.running();
        let was_running = match running.get(&request.job_id) {
            Some(job) if request.lease_token.is_empty() || job.lease.token == request.lease_token => {
                tracing::info!(job.id = %request.job_id, reason = %request.reason, "cancelling job");
                job.cancel.cancel();
                true
            }
            _ => false,
        };
        Ok(Response::new(v1::CancelResponse { was_running }))
    }

    async fn ping(&self, request: Request<v1::PingRequest>) -> Result<Response<v1::PingResponse>, Status> {
        self.state.saw_orchestrator(request.into_inner().report_to);
        let running = self.state.running();
        Ok(Response::new(v1::PingResponse {
            worker_id: self.state.config.worker_id.clone(),
            slots_total: self.state.config.slots,
            slots_busy: running.len() as u32,
            running: running.values().map(|j| wire::lease(&j.lease)).collect(),
            labels: self.state.config.labels.clone().into_iter().collect(),
            runtimes: self.state.runtimes(),
            unhealthy: self.state.engine.unhealthy().unwrap_or_default(),
            cache_keys: self.state.cache_keys.newest_first(),
        }))
    }

    async fn list_leftovers(
        &self,
        request: Request<v1::ListLeftoversRequest>,
    ) -> Result<Response<v1::ListLeftoversResponse>, Status> {
        let instance_id = request.into_inner().instance_id;
        if instance_id.is_empty() {
            return Err(Status::invalid_argument("instance_id is required"));
        }
        let unavailable = |e: slipway_steps::StepError| Status::unavailable(e.to_string());
        let mut found = leftovers::list(&self.state.docker, &instance_id).await.map_err(unavailable)?;
        found.extend(self.leftover_tasks(&instance_id).await.map_err(unavailable)?);
        let running: Vec<String> = self.state.running().keys().cloned().collect();
        let leftovers = found
            .into_iter()
            .map(|l| match l {
                Leftover::Container { id, job_id } => {
                    v1::Leftover { kind: Kind::Container as i32, id, job_id, past_deadline: false }
                }
                Leftover::Image { id, job_id } => {
                    v1::Leftover { kind: Kind::Image as i32, id, job_id, past_deadline: false }
                }
                Leftover::Task { id, job_id, past_deadline } => {
                    v1::Leftover { kind: Kind::Task as i32, id, job_id, past_deadline }
                }
            })
            // A task past its deadline goes even when its job runs here (after a
            // re-attach, the watch's own timer started late).
            .filter(|l| !running.contains(&l.job_id) || l.past_deadline)
            .collect();
        Ok(Response::new(v1::ListLeftoversResponse { leftovers }))
    }

    async fn remove_leftovers(
        &self,
        request: Request<v1::RemoveLeftoversRequest>,
    ) -> Result<Response<v1::RemoveLeftoversResponse>, Status> {
        let mut removed = 0;
        for l in request.into_inner().leftovers {
            if self.state.running().contains_key(&l.job_id) && !l.past_deadline {
                continue;
            }
            let leftover = match Kind::try_from(l.kind) {
                Ok(Kind::Container) => Leftover::Container { id: l.id, job_id: l.job_id },
                Ok(Kind::Image) => Leftover::Image { id: l.id, job_id: l.job_id },
                Ok(Kind::Task) => Leftover::Task { id: l.id, job_id: l.job_id, past_deadline: l.past_deadline },
                _ => continue,
            };
            let result = match &leftover {
                #[cfg(feature = "aws")]
                Leftover::Task { id, job_id, past_deadline } => match self.state.ecs().await {
                    Ok(ecs) => {
                        let why = if *past_deadline { PAST_DEADLINE } else { "is finished or gone" };
                        ecs.stop(id, &format!("{STOP_REASON_PREFIX}job {job_id} {why}")).await
                    }
                    Err(e) => Err(e),
                },
                #[cfg(not(feature = "aws"))]
                Leftover::Task { .. } => Err(without_aws(ErrorCode::RuntimeUnavailable, "stopping an ECS task")),
                other => leftovers::remove(&self.state.docker, other).await,
            };
            match result {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(?leftover, error = %e, "cannot remove a leftover"),
            }
        }
        Ok(Response::new(v1::RemoveLeftoversResponse { removed }))
    }
}
