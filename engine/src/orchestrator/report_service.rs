//! The `ReportService`: workers' reports, parsed and handed to the group committer.
//!
//! A report whose lease token is not the job's current one changes nothing; the
//! worker is told (`accepted: false`) and stops. A failed step is retried by the
//! job's policy or ends the job; a job asked to cancel starts no further step.

use chrono::{DateTime, Utc};
use slipway_observability::trace;
use slipway_proto::convert::{step_from_wire, stream_name};
use slipway_proto::v1::{self, report_service_server::ReportService};
use slipway_steps::Step;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::commit::{Committer, Report};
use crate::store::{Lease, NewLogLine, StoreError};

pub struct ReportHandler {
    committer: Committer,
}

impl ReportHandler {
    pub(super) fn new(committer: Committer) -> Self {
        ReportHandler { committer }
    }

    async fn answer(&self, lease: Lease, report: Report) -> Result<Response<v1::ReportAck>, Status> {
        let job_id = lease.job_id;
        let attempt = lease.attempt;
        match self.committer.apply(report).await {
            Ok(applied) => Ok(Response::new(v1::ReportAck { accepted: applied.accepted() })),
            // A lost lease is an answer; an unreachable database asks the worker to try
            // again; anything else is an internal error, logged here once.
            Err(StoreError::LeaseLost) => {
                tracing::warn!(job.id = %job_id, job.attempt = attempt, "stale report refused: the lease is not current");
                Ok(Response::new(v1::ReportAck { accepted: false }))
            }
            Err(StoreError::Unavailable(_)) => Err(Status::unavailable("the database is unavailable")),
            Err(StoreError::CommitterStopped) => Err(Status::unavailable("the orchestrator is stopping")),
            Err(e) => {
                tracing::error!(job.id = %job_id, error = ?e, "cannot commit a report");
                Err(Status::internal("cannot commit the report"))
            }
        }
    }
}

#[tonic::async_trait]
impl ReportService for ReportHandler {
    async fn report_step(&self, request: Request<v1::StepReport>) -> Result<Response<v1::ReportAck>, Status> {
        let traceparent = traceparent_in(&request);
        let report = request.into_inner();
        let lease = lease_of(report.lease)?;
        let step = step_from_wire(report.step).ok_or_else(|| Status::invalid_argument("step is not a step"))?;
        let event = report.event.ok_or_else(|| Status::invalid_argument("event is required"))?;
        let then_start = step_from_wire(report.then_start);
        let span = tracing::info_span!("orchestrator.commit", job.id = %lease.job_id, job.step = step.as_str());
        trace::set_parent(&span, &traceparent);
        let work = Report::Step { lease: lease.clone(), step, event, exit_code: report.exit_code, then_start };
        self.answer(lease, work).instrument(span).await
    }

    async fn append_logs(&self, request: Request<v1::LogBatch>) -> Result<Response<v1::ReportAck>, Status> {
        let batch = request.into_inner();
        let lease = lease_of(batch.lease)?;
        // The last position given covers every line before it.
        let cursor = batch.lines.iter().rev().find(|l| !l.cursor.is_empty()).map(|l| l.cursor.clone());
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
        self.answer(lease.clone(), Report::Logs { lease, lines, cursor }).await
    }
}

/// The `traceparent` a worker sent in the call's metadata.
fn traceparent_in<T>(request: &Request<T>) -> String {
    request.metadata().get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

fn lease_of(lease: Option<v1::Lease>) -> Result<Lease, Status> {
    let lease = lease.ok_or_else(|| Status::invalid_argument("lease is required"))?;
    Ok(Lease {
        job_id: lease.job_id.parse().map_err(|_| Status::invalid_argument("lease.job_id is not a job id"))?,
        attempt: lease.attempt as i32,
        token: lease.lease_token.parse().map_err(|_| Status::invalid_argument("lease.lease_token is not a token"))?,
        worker: (!lease.worker_id.is_empty()).then_some(lease.worker_id),
    })
}
