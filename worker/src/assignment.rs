//! One job as this worker was given it by `StartJob`, typed once at the gRPC edge
//! ([`crate::wire::assignment`]): the lease it runs under, what to build and run, what
//! earlier attempts left, where to report, and the tokens that stop it; and what
//! its step reports say.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway_steps::image_ref::PullRef;
use slipway_steps::runtime::RuntimeKind;
use slipway_steps::secrets::JobSecrets;
use slipway_steps::{Step, StepOutputs};
use tokio_util::sync::CancellationToken;

/// The lease a job's attempt runs under; every report carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobLease {
    /// The job's id, a UUID (checked at the edge: it names folders and containers).
    pub job_id: String,
    pub attempt: u32,
    pub token: String,
    /// This worker, named in every report so that the history shows who wrote it.
    pub worker_id: String,
}

/// What to build and run.
#[derive(Debug, Clone)]
pub(crate) struct JobSpec {
    pub repo: String,
    pub git_ref: Option<String>,
    pub dockerfile: String,
    pub context: String,
    pub image: String,
    pub build_args: HashMap<String, String>,
    pub env: HashMap<String, String>,
    pub command: Vec<String>,
    pub runtime: RuntimeKind,
    /// ECS task size; 0 leaves the runtime's default.
    pub cpu: u32,
    pub memory: u32,
    pub timeout: Option<Duration>,
    /// Fetch the repository's submodules, recursively.
    pub submodules: bool,
    /// Where the build's cache comes from.
    pub cache: BuildCache,
}

/// Where a build takes its cache from, as the orchestrator said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BuildCache {
    /// Images the job named (`cache_from`).
    pub named: Vec<PullRef>,
    /// The last image pushed for the job's cache key, when the job named none.
    pub last_pushed: Option<PullRef>,
    /// Build every step afresh (`"cache": false`).
    pub off: bool,
    /// The job's cache key, remembered once its build succeeded here.
    pub key: Option<String>,
}

/// What a step report says happened.
#[derive(Debug, Clone)]
pub(crate) enum StepEvent {
    Started,
    /// StepOutputs known before the step ends (the run's handle before the wait).
    Progress(StepOutputs),
    Succeeded(StepOutputs),
    Failed {
        code: &'static str,
        message: String,
        retryable: bool,
    },
    /// The worker is stopping: the job is given back unfinished.
    Released,
}

/// What `StartJob` says.
#[derive(Debug, Clone)]
pub(crate) struct Assignment {
    pub lease: JobLease,
    pub spec: JobSpec,
    /// What earlier attempts produced.
    pub outputs: StepOutputs,
    /// How far an earlier attempt read its run's log.
    pub log_cursor: Option<String>,
    pub first_step: Step,
    pub report_to: String,
    pub instance_id: String,
    /// The run starts afresh: the last attempt's run ended and was recorded.
    pub fresh_run: bool,
    /// The orchestrator's dispatch span, parent of this run's spans.
    pub traceparent: String,
    /// The values of the secrets the job names, for this attempt only.
    pub secrets: JobSecrets,
}

/// A job this worker runs: its assignment, and what stops it.
pub(crate) struct JobRun {
    pub assignment: Assignment,
    pub current_step: Arc<Mutex<Step>>,
    /// Cancelled when the job is to end `cancelled`.
    pub cancel: CancellationToken,
    /// Cancelled when the worker stops before the job ends: the job is handed back.
    pub hand_back: CancellationToken,
}
