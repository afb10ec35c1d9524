//! Why a task stopped, and what that means for the job.
//!
//! ECS says it in three places: the task's `stopCode`, its `stoppedReason`, and the
//! essential container's exit code and reason. A stop caused by the infrastructure
//! (the task never started, the image could not be pulled, the network could not be
//! set up, a Spot interruption, the scheduler's own stop) says nothing about the
//! job and is retryable; an exit of the essential container is the job's outcome.

use crate::{ErrorCode, StepError};

/// The parts of a stopped task that decide its outcome.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoppedTask<'a> {
    pub exit_code: Option<i64>,
    pub stop_code: Option<&'a str>,
    pub stopped_reason: Option<&'a str>,
    pub container_reason: Option<&'a str>,
}

/// Stop codes of stops the job had no part in.
const INFRASTRUCTURE_STOP_CODES: [&str; 4] =
    ["TaskFailedToStart", "SpotInterruption", "ServiceSchedulerInitiated", "TerminationNotice"];

/// How the essential container's reason begins when it was killed for its memory.
const OUT_OF_MEMORY: &str = "OutOfMemoryError";

/// Reasons (task's or container's) that name an infrastructure failure.
const INFRASTRUCTURE_REASONS: [&str; 6] = [
    "CannotPullContainerError",
    "ResourceInitializationError",
    "CannotStartContainerError",
    "CannotCreateVolumeError",
    "Spot interruption",
    "Host EC2",
];

/// The exit code of a task that ran to its end, or the error that ends the attempt.
pub fn classify(task: &StoppedTask<'_>) -> Result<i64, StepError> {
    let reasons: Vec<&str> =
        [task.stop_code, task.stopped_reason, task.container_reason].into_iter().flatten().collect();
    let said = reasons.join(": ");
    let infrastructure = task.stop_code.is_some_and(|c| INFRASTRUCTURE_STOP_CODES.contains(&c))
        || reasons.iter().any(|r| INFRASTRUCTURE_REASONS.iter().any(|known| r.contains(known)));
    if infrastructure {
        return Err(StepError::new(ErrorCode::InfrastructureStop, format!("the task was stopped by ECS: {said}")));
    }
    // Slipway's own stops: a sweeper stopped a task past its deadline.
    if let Some(ours) = task.stopped_reason.and_then(|r| r.strip_prefix(super::STOP_REASON_PREFIX))
        && ours.contains(super::PAST_DEADLINE)
    {
        return Err(StepError::new(ErrorCode::TimedOut, format!("the task was stopped: {ours}")));
    }
    // Killed for using more memory than the task has (ECS reports exit 137 and an
    // `OutOfMemoryError` reason): the job's own doing, and the same size would fail
    // again, so not retried; the exit code is kept.
    if task.container_reason.is_some_and(|r| r.starts_with(OUT_OF_MEMORY)) {
        return Err(StepError {
            exit_code: task.exit_code,
            ..StepError::new(ErrorCode::RunFailed, format!("the container ran out of memory and was killed ({said})"))
        });
    }
    match (task.exit_code, task.stop_code) {
        // Stopped from outside (the console, another tool): not the job's own end.
        (_, Some("UserInitiated")) => {
            Err(StepError::new(ErrorCode::TaskStopped, format!("the task was stopped outside Slipway: {said}")))
        }
        (Some(code), _) => crate::runtime::exit_outcome(code, &said),
        // Stopped with no exit code and no known cause.
        (None, _) => {
            Err(StepError::new(ErrorCode::RunFailed, format!("the run stopped without an exit code{}", detail(&said))))
        }
    }
}

fn detail(said: &str) -> String {
    if said.is_empty() { String::new() } else { format!(" ({said})") }
}
