//! The orchestrator's side of the wire: workers' reports parsed into the engine's
//! types (a malformed one is `INVALID_ARGUMENT`, naming the field), a claimed job
//! written as the `StartJob` a worker gets, and the other calls to workers
//! ([`super::workers`]) written and read. Past this file the orchestrator speaks the
//! engine's types, not prost's.

use chrono::{DateTime, Utc};
use slipway_proto::convert::{step_from_wire, step_to_wire, stream_name};
use slipway_proto::v1::{self, step_report::Event};
use slipway_steps::Step;
use tonic::Status;

use super::OrchestratorConfig;
use super::commit::{Report, StepEvent, StepFailure};
use super::workers::{Leftover, LeftoverKind, WorkerPing};
use crate::store::{ClaimedJob, HeldLease, Lease, NewLogLine, Outputs, WorkerOffer};
use slipway_proto::v1::leftover::Kind;
use slipway_steps::runtime::RuntimeKind;

/// A step report, parsed.
pub(super) fn step_report(report: v1::StepReport) -> Result<Report, Status> {
    let lease = lease_of(report.lease)?;
    let step = step_from_wire(report.step).ok_or_else(|| Status::invalid_argument("step is not a step"))?;
    let event = match report.event.ok_or_else(|| Status::invalid_argument("event is required"))? {
        Event::Started(_) => StepEvent::Started,
        Event::Progress(o) => StepEvent::Progress(outputs(&o)),
        Event::Succeeded(o) => StepEvent::Succeeded(outputs(&o)),
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

fn outputs(o: &v1::StepOutputs) -> Outputs {
    let some = |s: &String| (!s.is_empty()).then(|| s.clone());
    Outputs {
        commit_sha: some(&o.commit_sha),
        image_id: some(&o.image_id),
        pushed_ref: some(&o.pushed_ref),
        container_id: some(&o.container_id),
        task_arn: some(&o.task_arn),
        stop_code: some(&o.stop_code),
        stopped_reason: some(&o.stopped_reason),
    }
}

/// The `StartJob` for a claimed job, starting at `first_step`.
pub(super) fn start_request(
    job: &ClaimedJob,
    first_step: Step,
    config: &OrchestratorConfig,
    traceparent: &str,
) -> v1::StartJobRequest {
    let spec = &job.spec.0;
    v1::StartJobRequest {
        lease: Some(v1::Lease {
            job_id: job.id.to_string(),
            attempt: job.attempt as u32,
            lease_token: job.lease_token.to_string(),
            worker_id: String::new(),
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
            runtime: spec.run.runtime.as_str().to_string(),
            cpu: spec.run.cpu.unwrap_or_default(),
            memory: spec.run.memory.unwrap_or_default(),
        }),
        outputs: Some(v1::StepOutputs {
            commit_sha: job.commit_sha.clone().unwrap_or_default(),
            image_id: job.image_id.clone().unwrap_or_default(),
            pushed_ref: job.pushed_ref.clone().unwrap_or_default(),
            container_id: job.container_id.clone().unwrap_or_default(),
            task_arn: job.task_arn.clone().unwrap_or_default(),
            log_cursor: job.log_cursor.clone().unwrap_or_default(),
            ..Default::default()
        }),
        first_step: step_to_wire(first_step) as i32,
        report_to: config.report_url.clone(),
        traceparent: traceparent.to_string(),
        instance_id: config.instance_id.clone(),
        fresh_run: job.fresh_run,
    }
}

pub(super) fn ping_request(report_to: &str) -> v1::PingRequest {
    v1::PingRequest { report_to: report_to.to_string() }
}

pub(super) fn ping(ping: v1::PingResponse) -> WorkerPing {
    WorkerPing {
        held: ping
            .running
            .iter()
            .filter_map(|l| Some(HeldLease { job_id: l.job_id.parse().ok()?, token: l.lease_token.parse().ok()? }))
            .collect(),
        offer: WorkerOffer {
            labels: ping.labels.into_iter().collect(),
            // A worker from before runtimes were announced runs Docker only.
            runtimes: if ping.runtimes.is_empty() {
                vec![RuntimeKind::Docker.as_str().to_string()]
            } else {
                ping.runtimes
            },
        },
        worker_id: ping.worker_id,
        slots_total: ping.slots_total,
        slots_busy: ping.slots_busy,
    }
}

pub(super) fn cancel_request(lease: HeldLease, reason: &str) -> v1::CancelRequest {
    v1::CancelRequest {
        job_id: lease.job_id.to_string(),
        reason: reason.to_string(),
        lease_token: lease.token.to_string(),
    }
}

pub(super) fn list_leftovers_request(instance_id: &str) -> v1::ListLeftoversRequest {
    v1::ListLeftoversRequest { instance_id: instance_id.to_string() }
}

/// The leftovers a worker listed, of the kinds this orchestrator knows.
pub(super) fn leftovers(answer: v1::ListLeftoversResponse) -> Vec<Leftover> {
    answer
        .leftovers
        .into_iter()
        .filter_map(|l| {
            let kind = match Kind::try_from(l.kind).ok()? {
                Kind::Container => LeftoverKind::Container,
                Kind::Task => LeftoverKind::Task,
                Kind::Image => LeftoverKind::Image,
                Kind::Unspecified => return None,
            };
            Some(Leftover { kind, job_id: l.job_id.parse().ok(), id: l.id, past_deadline: l.past_deadline })
        })
        .collect()
}

pub(super) fn remove_leftovers_request(leftovers: &[Leftover]) -> v1::RemoveLeftoversRequest {
    let leftovers = leftovers
        .iter()
        .map(|l| v1::Leftover {
            kind: match l.kind {
                LeftoverKind::Container => Kind::Container,
                LeftoverKind::Task => Kind::Task,
                LeftoverKind::Image => Kind::Image,
            } as i32,
            id: l.id.clone(),
            job_id: l.job_id.map(|id| id.to_string()).unwrap_or_default(),
            past_deadline: l.past_deadline,
        })
        .collect();
    v1::RemoveLeftoversRequest { leftovers }
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
