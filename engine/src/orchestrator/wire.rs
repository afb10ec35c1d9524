//! The report service's side of the wire: workers' reports parsed into the
//! engine's types (a malformed one is `INVALID_ARGUMENT`, naming the field). The
//! calls the orchestrator makes to workers are written and read in
//! [`super::workers`]; past these two files the orchestrator speaks the engine's
//! types, not prost's.

use chrono::{DateTime, Utc};
use slipway_proto::convert::{outputs_from_wire, step_from_wire, stream_name};
use slipway_proto::v1::{self, step_report::Event};
use slipway_steps::Step;
use tonic::Status;

use super::apply::{Report, StepEvent, StepFailure};
use crate::store::{Lease, NewLogLine};

/// A step report, parsed.
pub(super) fn step_report(report: v1::StepReport) -> Result<Report, Status> {
    let lease = lease_of(report.lease)?;
    let step = step_from_wire(report.step).ok_or_else(|| Status::invalid_argument("step is not a step"))?;
    let event = match report.event.ok_or_else(|| Status::invalid_argument("event is required"))? {
        Event::Started(_) => StepEvent::Started,
        Event::Progress(o) => StepEvent::Progress(outputs_from_wire(&o)),
        Event::Succeeded(o) => StepEvent::Succeeded(outputs_from_wire(&o)),
        Event::Failed(f) => StepEvent::Failed(StepFailure { code: f.code, message: f.message, retryable: f.retryable }),
        Event::Released(_) => StepEvent::Released,
    };
    let then_start = step_from_wire(report.then_start);
    Ok(Report::Step { lease, step, event, exit_code: report.exit_code, then_start })
}

/// A batch of log lines, parsed; the last position given covers every line before it.
pub(super) fn log_batch(batch: v1::LogBatch) -> Result<Report, Status> {
    let lease = lease_of(batch.lease)?;
    let cursor = batch.lines.iter().rev().find(|l| !l.cursor.is_empty()).map(|l| l.cursor.clone());
    let lines = batch
        .lines
        .into_iter()
        .map(|l| NewLogLine {
            step: step_from_wire(l.step).unwrap_or(Step::Clone),
            stream: stream_name(l.stream),
            at: DateTime::<Utc>::from_timestamp_micros(l.at_micros).unwrap_or_else(Utc::now),
            line: l.text,
        })
        .collect();
    Ok(Report::Logs { lease, lines, cursor })
}

/// The longest worker id a report may name (it is stored with every history row).
const MAX_WORKER_ID: usize = 255;

fn lease_of(lease: Option<v1::Lease>) -> Result<Lease, Status> {
    let lease = lease.ok_or_else(|| Status::invalid_argument("lease is required"))?;
    if lease.worker_id.len() > MAX_WORKER_ID {
        return Err(Status::invalid_argument(format!("lease.worker_id is longer than {MAX_WORKER_ID} bytes")));
    }
    Ok(Lease {
        job_id: lease.job_id.parse().map_err(|_| Status::invalid_argument("lease.job_id is not a job id"))?,
        attempt: lease.attempt as i32,
        token: lease.lease_token.parse().map_err(|_| Status::invalid_argument("lease.lease_token is not a token"))?,
        worker: (!lease.worker_id.is_empty()).then_some(lease.worker_id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(worker_id: String) -> v1::Lease {
        v1::Lease {
            job_id: "01a22ee5-2edf-73b7-8e61-c91417b10ac9".into(),
            attempt: 1,
            lease_token: "5f0c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f".into(),
            worker_id,
        }
    }

    #[test]
    fn a_report_naming_an_overlong_worker_or_a_bad_lease_is_refused_naming_the_field() {
        assert_eq!(lease_of(Some(lease("worker-a".into()))).unwrap().worker.as_deref(), Some("worker-a"));
        assert_eq!(lease_of(Some(lease(String::new()))).unwrap().worker, None);
        let e = lease_of(Some(lease("w".repeat(MAX_WORKER_ID + 1)))).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("lease.worker_id"), "{}", e.message());
        let e = lease_of(Some(v1::Lease { job_id: "../../victim".into(), ..lease(String::new()) })).unwrap_err();
        assert!(e.message().contains("lease.job_id"), "{}", e.message());
        assert!(lease_of(None).unwrap_err().message().contains("lease"));
    }
}
