//! Where a job's run happens, behind one trait: the local Docker engine
//! ([`crate::docker::run::DockerRuntime`]) or ECS Fargate ([`crate::aws::ecs::Ecs`]).
//!
//! Every runtime does the same four things: launch the attempt's run so that a
//! repeated launch finds the first instead of starting a second, find a run an
//! earlier attempt left so that a recovered job re-attaches to it, wait for its end
//! while its output streams to the job's log, and clean up after it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{ErrorCode, LogSink, StepError};

/// What to run, for one attempt of one job.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    pub job_id: String,
    /// The installation, for the `slipway.instance` label.
    pub instance_id: String,
    pub attempt: u32,
    /// The image to run, best as `name@sha256:…`.
    pub image: String,
    /// Plain environment variables (the job's `env` and Slipway's own).
    pub env: HashMap<String, String>,
    /// Environment variables that hold secrets, by where each value comes from.
    pub secrets: BTreeMap<String, SecretEnv>,
    /// Empty: the image's own command.
    pub command: Vec<String>,
    /// Fargate CPU units and memory in MiB (ECS only).
    pub cpu: u32,
    pub memory: u32,
    /// The run's deadline, from its start.
    pub timeout: Option<Duration>,
    /// The CPU architecture the image was built for, as the engine names it
    /// (`x86_64`, `aarch64`); ECS tasks must ask Fargate for the same.
    pub architecture: String,
}

/// Where a secret environment variable of a run comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretEnv {
    /// A project secret's value. An ECS task reads it from the SSM parameter
    /// `parameter` (written by the worker before the launch); a Docker run gets it
    /// in its environment.
    Value { value: String, parameter: String },
    /// A Secrets Manager or SSM Parameter Store ARN the job gave: the ECS task's
    /// execution role reads it; Slipway never does.
    Reference(String),
}

impl std::fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretEnv::Value { parameter, .. } => {
                f.debug_struct("Value").field("parameter", parameter).finish_non_exhaustive()
            }
            SecretEnv::Reference(arn) => f.debug_tuple("Reference").field(arn).finish(),
        }
    }
}

/// What waiting on a run is given.
#[derive(Debug, Clone)]
pub struct Watch<'a> {
    pub job_id: &'a str,
    /// Past this the run is stopped and the step fails `timed_out`.
    pub timeout: Option<Duration>,
    /// Where an earlier attempt stopped reading the run's output, when the runtime
    /// can resume there.
    pub log_cursor: Option<String>,
    pub logs: &'a LogSink,
    pub cancel: &'a CancellationToken,
}

/// How a run ended, as its runtime tells it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunEnd {
    /// The (essential) container's exit code, when it has one.
    pub exit_code: Option<i64>,
    /// ECS's `stopCode` and `stoppedReason`.
    pub stop_code: Option<String>,
    pub stopped_reason: Option<String>,
    /// The container's own reason, such as `OutOfMemoryError: …`.
    pub container_reason: Option<String>,
}

impl RunEnd {
    pub fn exited(code: i64) -> Self {
        RunEnd { exit_code: Some(code), ..Default::default() }
    }
}

/// A run whose program went to its end with `code`: 0 succeeds, anything else is
/// `exit_nonzero` with the code kept; `detail` (may be empty) says more.
pub fn exit_outcome(code: i64, detail: &str) -> Result<i64, StepError> {
    if code == 0 {
        return Ok(0);
    }
    let detail = if detail.is_empty() { String::new() } else { format!(" ({detail})") };
    Err(StepError {
        exit_code: Some(code),
        ..StepError::new(ErrorCode::ExitNonZero, format!("the container exited with code {code}{detail}"))
    })
}

pub trait Runtime: Send + Sync {
    /// `docker` or `ecs`, as a job's `run.runtime` names it.
    fn name(&self) -> &'static str;

    /// Starts the attempt's run, or finds the one this attempt already started;
    /// returns its handle (container id, task ARN).
    fn launch(&self, request: &LaunchRequest, logs: &LogSink)
    -> impl Future<Output = Result<String, StepError>> + Send;

    /// The run an earlier attempt of the job left, if it is there to re-attach to;
    /// `stored` is the handle stored with the job.
    fn find(
        &self,
        job_id: &str,
        stored: Option<&str>,
        logs: &LogSink,
    ) -> impl Future<Output = Result<Option<String>, StepError>> + Send;

    /// Waits for the run to end, following its output; stops it past the timeout or
    /// on cancel.
    fn wait(&self, handle: &str, watch: &Watch<'_>) -> impl Future<Output = Result<RunEnd, StepError>> + Send;

    /// The exit code of a run that went to its end, or why it did not: each
    /// runtime reads its own kind of end.
    fn outcome(&self, end: &RunEnd) -> Result<i64, StepError>;

    /// Frees what the run left behind.
    fn clean_up(&self, handle: &str) -> impl Future<Output = Result<(), StepError>> + Send;
}

/// The runtimes a job may name in `run.runtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    #[default]
    Docker,
    Ecs,
}

impl RuntimeKind {
    pub const ALL: [RuntimeKind; 2] = [RuntimeKind::Docker, RuntimeKind::Ecs];

    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Ecs => "ecs",
        }
    }
}

impl std::str::FromStr for RuntimeKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RuntimeKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown runtime `{s}`; use `docker` or `ecs`"))
    }
}
