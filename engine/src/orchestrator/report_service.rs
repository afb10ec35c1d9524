//! The `ReportService`: workers' reports turned into fenced commits.
//!
//! A report whose lease token is not the job's current one changes nothing; the
//! worker is told (`accepted: false`) and stops. A failed step is retried by the
//! job's policy or ends the job; a job asked to cancel starts no further step.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use slipway_proto::convert::{step_from_wire, stream_name};
use slipway_proto::v1::{self, report_service_server::ReportService, step_report::Event};
use slipway_steps::{ErrorCode, Step};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use crate::job::{JobState, RetryDecision, RetryPolicy};
use crate::store::{Finish, Lease, NewLogLine, Outputs, Retry, Store, StoreError};

pub struct ReportHandler {
    store: Store,
    lease_ttl: Duration,
    default_policy: RetryPolicy,
    /// Woken when a job gives up its slot.
    wake: Arc<Notify>,
}

/// What a report did.
enum Applied {
    /// Committed; the job goes on.
    Continue,
    /// Committed; the attempt is over (the job ended or will be retried), its slot free.
    SlotFreed,
    /// Nothing more may run for this attempt.
    Stop,
}

impl ReportHandler {
    pub fn new(store: Store, lease_ttl: Duration, default_policy: RetryPolicy, wake: Arc<Notify>) -> Self {
        ReportHandler { store, lease_ttl, default_policy, wake }
    }

    async fn apply(
        &self,
        lease: &Lease,
        step: Step,
        event: Event,
        exit_code: Option<i64>,
    ) -> Result<Applied, StoreError> {
        match event {
            Event::Started(_) => match self.store.mark_step_started(lease, step, self.lease_ttl).await {
                Ok(()) => Ok(Applied::Continue),
                Err(StoreError::LeaseLost) if self.store.cancel_requested(lease.job_id, lease.token).await? => {
                    let error = format!("cancelled by request before the {} step", step.as_str());
                    self.finish(lease, step, JobState::Cancelled, None, ErrorCode::Cancelled.as_str(), &error).await?;
                    Ok(Applied::Stop)
                }
                Err(e) => Err(e),
            },
            Event::Progress(o) => {
                self.store.record_outputs(lease, &outputs(o), self.lease_ttl).await.map(|()| Applied::Continue)
            }
            Event::Succeeded(o) if step == Step::Run => {
                let finish = Finish { state: JobState::Succeeded, exit_code, error_code: None, error: None };
                self.store.mark_finished(lease, step, &outputs(o), &finish).await.map(|()| Applied::SlotFreed)
            }
            Event::Succeeded(o) => self
                .store
                .mark_step_succeeded(lease, step, &outputs(o), self.lease_ttl)
                .await
                .map(|()| Applied::Continue),
            Event::Failed(failure) => self.failed(lease, step, failure, exit_code).await.map(|()| Applied::SlotFreed),
            Event::Released(_) => {
                self.store.hand_back(lease.job_id, lease.token, &self.default_policy).await?;
                Ok(Applied::SlotFreed)
            }
        }
    }

    /// Retries the attempt when the job's policy allows, else ends the job.
    async fn failed(
        &self,
        lease: &Lease,
        step: Step,
        failure: v1::StepFailure,
        exit_code: Option<i64>,
    ) -> Result<(), StoreError> {
        if failure.code == ErrorCode::Cancelled.as_str() {
            return self.finish(lease, step, JobState::Cancelled, exit_code, &failure.code, &failure.message).await;
        }
        let job = self.store.job(lease.job_id).await?;
        let spec = &job.spec.0;
        let retryable =
            failure.retryable || (failure.code == ErrorCode::ExitNonZero.as_str() && spec.run.retry_on_failure);
        match spec.retry.decide(lease.attempt.max(1) as u32, retryable, jitter()) {
            RetryDecision::RetryAfter(after) => {
                // A pushed image runs again without a rebuild; anything earlier starts over.
                let resume_at =
                    if step == Step::Run && job.pushed_ref.is_some() { JobState::Running } else { JobState::Queued };
                tracing::info!(job.id = %lease.job_id, job.attempt = lease.attempt, error.code = %failure.code, ?after, "retrying");
                let retry = Retry { resume_at, after, exit_code, error_code: failure.code, error: failure.message };
                self.store.mark_retry(lease, step, &retry).await
            }
            RetryDecision::GiveUp => {
                self.finish(lease, step, JobState::Failed, exit_code, &failure.code, &failure.message).await
            }
        }
    }

    async fn finish(
        &self,
        lease: &Lease,
        step: Step,
        state: JobState,
        exit_code: Option<i64>,
        code: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        let finish = Finish { state, exit_code, error_code: Some(code.to_string()), error: Some(message.to_string()) };
        self.store.mark_finished(lease, step, &Outputs::default(), &finish).await
    }
}

/// A number in `[0, 1)` to spread retries.
fn jitter() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

#[tonic::async_trait]
impl ReportService for ReportHandler {
    async fn report_step(&self, request: Request<v1::StepReport>) -> Result<Response<v1::ReportAck>, Status> {
        let report = request.into_inner();
        let lease = lease_of(report.lease)?;
        let step = step_from_wire(report.step).ok_or_else(|| Status::invalid_argument("step is not a step"))?;
        let event = report.event.ok_or_else(|| Status::invalid_argument("event is required"))?;
        match self.apply(&lease, step, event, report.exit_code).await {
            Ok(Applied::Continue) => Ok(Response::new(v1::ReportAck { accepted: true })),
            Ok(Applied::SlotFreed) => {
                self.wake.notify_one();
                Ok(Response::new(v1::ReportAck { accepted: true }))
            }
            Ok(Applied::Stop) => {
                self.wake.notify_one();
                Ok(Response::new(v1::ReportAck { accepted: false }))
            }
            Err(e) => refused(&lease, e),
        }
    }

    async fn append_logs(&self, request: Request<v1::LogBatch>) -> Result<Response<v1::ReportAck>, Status> {
        let batch = request.into_inner();
        let lease = lease_of(batch.lease)?;
        let lines: Vec<NewLogLine> = batch
            .lines
            .into_iter()
            .map(|l| NewLogLine {
                step: step_from_wire(l.step).unwrap_or(Step::Clone),
                stream: stream_name(l.stream),
                at: DateTime::<Utc>::from_timestamp_micros(l.at_micros).unwrap_or_else(Utc::now),
                line: l.text,
            })
            .collect();
        match self.store.append_logs(&lease, &lines).await {
            Ok(()) => Ok(Response::new(v1::ReportAck { accepted: true })),
            Err(e) => refused(&lease, e),
        }
    }
}

/// A lost lease is an answer (`accepted: false`); an unreachable database asks the
/// worker to try again; anything else is an internal error, logged here once.
fn refused(lease: &Lease, e: StoreError) -> Result<Response<v1::ReportAck>, Status> {
    match e {
        StoreError::LeaseLost => {
            tracing::warn!(job.id = %lease.job_id, job.attempt = lease.attempt, "stale report refused: the lease is not current");
            Ok(Response::new(v1::ReportAck { accepted: false }))
        }
        StoreError::Unavailable(_) => Err(Status::unavailable("the database is unavailable")),
        e => {
            tracing::error!(job.id = %lease.job_id, error = ?e, "cannot commit a report");
            Err(Status::internal("cannot commit the report"))
        }
    }
}

fn lease_of(lease: Option<v1::Lease>) -> Result<Lease, Status> {
    let lease = lease.ok_or_else(|| Status::invalid_argument("lease is required"))?;
    Ok(Lease {
        job_id: lease.job_id.parse().map_err(|_| Status::invalid_argument("lease.job_id is not a job id"))?,
        attempt: lease.attempt as i32,
        token: lease.lease_token.parse().map_err(|_| Status::invalid_argument("lease.lease_token is not a token"))?,
    })
}

fn outputs(o: v1::StepOutputs) -> Outputs {
    let some = |s: String| (!s.is_empty()).then_some(s);
    Outputs {
        commit_sha: some(o.commit_sha),
        image_id: some(o.image_id),
        pushed_ref: some(o.pushed_ref),
        container_id: some(o.container_id),
    }
}
