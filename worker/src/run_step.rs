//! The run step on the worker: the job's runtime chosen, the run launched or found
//! again, its handle reported before the wait, its end reported and classified.

use std::collections::HashMap;

use slipway_observability::trace;
#[cfg(not(feature = "aws"))]
use slipway_steps::aws::without_aws;
use slipway_steps::docker::run::DockerRuntime;
use slipway_steps::runtime::{LaunchRequest, Runtime, RuntimeKind, Watch};
use slipway_steps::{ErrorCode, LogSink, Step, StepError, StepOutputs};
use tracing::Instrument;

use crate::assignment::{Assignment, StepEvent};
use crate::reporter::send;
use crate::state::WorkerState;
use crate::step_context::StepContext;

/// Runs the pushed image on the job's runtime; the run's handle goes into `outputs`
/// as soon as it is known.
pub(crate) async fn run_container(
    ctx: &StepContext<'_>,
    outputs: &mut StepOutputs,
    logs: &LogSink,
) -> Result<(), StepError> {
    let state = ctx.state;
    match ctx.job.spec.runtime {
        RuntimeKind::Docker => {
            let docker = DockerRuntime { docker: state.docker.clone(), limits: state.config.run_limits };
            run_on(&docker, ctx, outputs, "", logs).await
        }
        #[cfg(feature = "aws")]
        RuntimeKind::Ecs => {
            // Images are built on this worker's engine, for its architecture.
            let architecture = state.engine_architecture().await;
            run_on(state.ecs().await?, ctx, outputs, &architecture, logs).await
        }
        #[cfg(not(feature = "aws"))]
        RuntimeKind::Ecs => Err(without_aws(ErrorCode::RuntimeUnavailable, "an `ecs` run")),
    }
}

/// Launches the run (or re-attaches to the one an earlier attempt left), reports
/// its handle before waiting on it, waits, reports how it stopped. A run stopped
/// before its end (cancel, deadline, hand-back, ECS) is cleaned up here; one whose
/// program ran to its end, well or not, stays until that end is committed
/// ([`clean_up`]): were this worker to die first, the next attempt re-attaches to it
/// and reads its end, instead of finding nothing and running the program again.
async fn run_on<R: Runtime>(
    runtime: &R,
    ctx: &StepContext<'_>,
    outputs: &mut StepOutputs,
    architecture: &str,
    logs: &LogSink,
) -> Result<(), StepError> {
    let (job, reporter, stop) = (ctx.job, ctx.reporter, ctx.stop);
    let mut env: HashMap<String, String> = job.spec.env.clone();
    // An instrumented application continues the job's trace.
    if let Some(traceparent) = trace::traceparent_of(&tracing::Span::current()) {
        env.insert("TRACEPARENT".into(), traceparent);
    }
    env.insert("SLIPWAY_JOB_ID".into(), job.lease.job_id.clone());
    env.insert("SLIPWAY_ATTEMPT".into(), job.lease.attempt.to_string());
    let request = LaunchRequest {
        job_id: job.lease.job_id.clone(),
        instance_id: job.instance_id.clone(),
        attempt: job.lease.attempt,
        // A pushed image by its digest; a local one by the id its build gave.
        image: outputs
            .pushed_ref
            .clone()
            .or_else(|| outputs.image_id.clone())
            .unwrap_or_else(|| job.spec.image.clone()),
        env,
        secrets: job.secrets.env.clone(),
        command: job.spec.command.clone(),
        cpu: job.spec.cpu,
        memory: job.spec.memory,
        timeout: job.spec.timeout,
        architecture: architecture.to_string(),
    };
    // A run that resumes finds what an earlier attempt started, if it is still
    // there, instead of starting a second one; a retried run starts its own. A job
    // of a local image starts over from its clone, but its earlier attempt's run may
    // still be alive on this engine: it is found the same way.
    let local = outputs.pushed_ref.is_none();
    let resumes = job.first_step == Step::Run || (local && job.lease.attempt > 1);
    let (existing, log_cursor) = if resumes && !job.fresh_run {
        let stored = outputs.run_handle(job.spec.runtime);
        let found = runtime.find(&request.job_id, stored, logs).await?;
        // The stored position belongs to the stored run only.
        let cursor = (found.is_some() && found.as_deref() == stored).then(|| job.log_cursor.clone()).flatten();
        (found, cursor)
    } else {
        (None, None)
    };
    let handle = match existing {
        Some(handle) => handle,
        None => runtime.launch(&request, logs).instrument(tracing::info_span!("container.create")).await?,
    };
    outputs.set_run_handle(job.spec.runtime, &handle);
    let started = StepOutputs::of_run(job.spec.runtime, &handle);
    if !send(reporter, &job.lease, Step::Run, StepEvent::Progress(started), None, None).await {
        runtime.clean_up(&handle).await?;
        return Err(StepError::new(ErrorCode::Cancelled, "the lease was lost before the run started"));
    }
    let watch = Watch { job_id: &job.lease.job_id, timeout: request.timeout, log_cursor, logs, cancel: stop };
    let wait = tracing::info_span!("container.wait", container.id = %handle);
    let ended = runtime.wait(&handle, &watch).instrument(wait).await;
    if let Ok(ended) = &ended
        && (ended.stop_code.is_some() || ended.stopped_reason.is_some())
    {
        let stopped = StepOutputs {
            stop_code: ended.stop_code.clone(),
            stopped_reason: ended.stopped_reason.clone(),
            ..Default::default()
        };
        send(reporter, &job.lease, Step::Run, StepEvent::Progress(stopped), None, None).await;
    }
    match ended.and_then(|ended| runtime.outcome(&ended)) {
        Ok(_) => Ok(()),
        Err(e) if e.code == ErrorCode::ExitNonZero => Err(e),
        Err(e) => {
            clean_up_on(runtime, job, &handle).await;
            Err(e)
        }
    }
}

/// Frees what a run left, once its end is committed (a second time is harmless).
pub(crate) async fn clean_up(state: &WorkerState, job: &Assignment, outputs: &StepOutputs) {
    let Some(handle) = outputs.run_handle(job.spec.runtime) else { return };
    match job.spec.runtime {
        RuntimeKind::Docker => {
            let docker = DockerRuntime { docker: state.docker.clone(), limits: state.config.run_limits };
            clean_up_on(&docker, job, handle).await
        }
        #[cfg(feature = "aws")]
        RuntimeKind::Ecs => match state.ecs().await {
            Ok(ecs) => clean_up_on(ecs, job, handle).await,
            Err(e) => {
                tracing::warn!(job.id = %job.lease.job_id, error = %e, "cannot clean up after the run")
            }
        },
        // A build without AWS launched no task.
        #[cfg(not(feature = "aws"))]
        RuntimeKind::Ecs => {}
    }
}

async fn clean_up_on<R: Runtime>(runtime: &R, job: &Assignment, handle: &str) {
    if let Err(e) = runtime.clean_up(handle).await {
        tracing::warn!(job.id = %job.lease.job_id, error = %e, "cannot clean up after the run");
    }
}
