//! The `ReportService`: workers' reports turned into fenced commits.
//!
//! A report whose lease token is not the job's current one changes nothing; the
//! worker is told (`accepted: false`) and stops.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use slipway_proto::convert::{step_from_wire, stream_name};
use slipway_proto::v1::{self, report_service_server::ReportService, step_report::Event};
use slipway_steps::{ErrorCode, Step};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use crate::job::JobState;
use crate::store::{Finish, Lease, NewLogLine, Outputs, Store, StoreError};

pub struct ReportHandler {
    store: Store,
    lease_ttl: Duration,
    /// Woken when a job ends, since its slot is free again.
    wake: Arc<Notify>,
}

impl ReportHandler {
    pub fn new(store: Store, lease_ttl: Duration, wake: Arc<Notify>) -> Self {
        ReportHandler { store, lease_ttl, wake }
    }

    async fn apply(&self, lease: &Lease, step: Step, event: Event, exit_code: Option<i64>) -> Result<bool, StoreError> {
        match event {
            Event::Started(_) => self
                .store
                .mark_step_started(lease, step, self.lease_ttl)
                .await
                .map(|()| false),
            Event::Progress(o) => self
                .store
                .record_outputs(lease, &outputs(o), self.lease_ttl)
                .await
                .map(|()| false),
            Event::Succeeded(o) if step == Step::Run => {
                let finish = Finish {
                    state: JobState::Succeeded,
                    exit_code,
                    error_code: None,
                    error: None,
                };
                self.store
                    .mark_finished(lease, step, &outputs(o), &finish)
                    .await
                    .map(|()| true)
            }
            Event::Succeeded(o) => self
                .store
                .mark_step_succeeded(lease, step, &outputs(o), self.lease_ttl)
                .await
                .map(|()| false),
            Event::Failed(failure) => {
                let state = if failure.code == ErrorCode::Cancelled.as_str() {
                    JobState::Cancelled
                } else {
                    JobState::Failed
                };
                let finish = Finish {
                    state,
                    exit_code,
                    error_code: Some(failure.code),
                    error: Some(failure.message),
                };
                self.store
                    .mark_finished(lease, step, &Outputs::default(), &finish)
                    .await
                    .map(|()| true)
            }
        }
    }
}

#[tonic::async_trait]
impl ReportService for ReportHandler {
    async fn report_step(&self, request: Request<v1::StepReport>) -> Result<Response<v1::ReportAck>, Status> {
        let report = request.into_inner();
        let lease = lease_of(report.lease)?;
        let step = step_from_wire(report.step).ok_or_else(|| Status::invalid_argument("step is not a step"))?;
        let event = report
            .event
            .ok_or_else(|| Status::invalid_argument("event is required"))?;
        match self.apply(&lease, step, event, report.exit_code).await {
            Ok(finished) => {
                if finished {
                    self.wake.notify_one();
                }
                Ok(Response::new(v1::ReportAck { accepted: true }))
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
        job_id: lease
            .job_id
            .parse()
            .map_err(|_| Status::invalid_argument("lease.job_id is not a job id"))?,
        attempt: lease.attempt as i32,
        token: lease
            .lease_token
            .parse()
            .map_err(|_| Status::invalid_argument("lease.lease_token is not a token"))?,
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
