//! The `ReportService`: workers' reports, parsed and handed to the group committer.
//!
//! A report whose lease token is not the job's current one changes nothing; the
//! worker is told (`accepted: false`) and stops. A failed step is retried by the
//! job's policy or ends the job; a job asked to cancel starts no further step.

use slipway_observability::trace;
use slipway_proto::tls::CallingWorker;
use slipway_proto::v1::{self, report_service_server::ReportService};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::apply::Report;
use super::commit::Committer;
use super::wire;
use crate::store::{Lease, StoreError};

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
            Err(e) => {
                let (code, message) = crate::error::Code::of_store(&e);
                Err(Status::new(code.grpc(), message))
            }
        }
    }
}

#[tonic::async_trait]
impl ReportService for ReportHandler {
    async fn report_step(&self, request: Request<v1::StepReport>) -> Result<Response<v1::ReportAck>, Status> {
        let traceparent = traceparent_in(&request);
        let caller = calling_worker(&request)?;
        let work = wire::step_report(request.into_inner())?;
        let lease = work.lease().clone();
        own_lease(&caller, &lease)?;
        let step = work.step().map(|s| s.as_str()).unwrap_or_default();
        let span = tracing::info_span!("orchestrator.commit", job.id = %lease.job_id, job.step = step);
        trace::set_parent(&span, &traceparent);
        self.answer(lease, work).instrument(span).await
    }

    async fn append_logs(&self, request: Request<v1::LogBatch>) -> Result<Response<v1::ReportAck>, Status> {
        let caller = calling_worker(&request)?;
        let work = wire::log_batch(request.into_inner())?;
        own_lease(&caller, work.lease())?;
        self.answer(work.lease().clone(), work).await
    }
}

/// The worker whose certificate made the call (marked by the service's interceptor).
#[allow(clippy::result_large_err)]
fn calling_worker<T>(request: &Request<T>) -> Result<CallingWorker, Status> {
    request
        .extensions()
        .get::<CallingWorker>()
        .cloned()
        .ok_or_else(|| Status::permission_denied("only a worker may report"))
}

/// A worker reports on its own leases only: the lease must name the worker whose
/// certificate made the call (and its token, checked by every write, must be current).
#[allow(clippy::result_large_err)]
fn own_lease(caller: &CallingWorker, lease: &Lease) -> Result<(), Status> {
    match lease.worker.as_deref() {
        Some(worker) if worker == caller.0 => Ok(()),
        named => Err(Status::permission_denied(format!(
            "lease.worker_id `{}` is not `{}`, the worker whose certificate made this call",
            named.unwrap_or_default(),
            caller.0
        ))),
    }
}

/// The `traceparent` a worker sent in the call's metadata.
fn traceparent_in<T>(request: &Request<T>) -> String {
    request.metadata().get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}
