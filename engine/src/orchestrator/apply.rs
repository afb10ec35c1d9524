//! A worker's report applied to the store: the state machine's rules
//! ([`crate::job::transitions`]) decide what happens next, the store's guarded
//! statements write it. Runs inside a committer's transaction ([`super::commit`]).

use std::time::Duration;

use slipway_steps::{ErrorCode, Step, StepOutputs};
use sqlx::PgConnection;

use crate::job::transitions::{self as rules, AfterFailure, CANCELLED_BY_REQUEST};
use crate::job::{JobId, JobState, RetryPolicy};
use crate::store::{Finish, Lease, NewLogLine, Retry, StoreError, leases, logs, read, reports};

/// A report to apply, as the report service parsed it from the wire.
pub(super) enum Report {
    Step { lease: Lease, step: Step, event: StepEvent, exit_code: Option<i64>, then_start: Option<Step> },
    Logs { lease: Lease, lines: Vec<NewLogLine>, cursor: Option<String> },
}

/// What a worker says happened to a step.
#[derive(Debug, Clone)]
pub(super) enum StepEvent {
    /// The step began.
    Started,
    /// The step produced outputs to store before it goes on (the run's handle).
    Progress(StepOutputs),
    /// The step ended well with these outputs.
    Succeeded(StepOutputs),
    /// The step ended badly; the job ends or is retried.
    Failed(StepFailure),
    /// The worker is shutting down and gives the job back unfinished.
    Released,
}

/// Why a step failed, as its worker classified it.
#[derive(Debug, Clone)]
pub(super) struct StepFailure {
    /// A stable error code, such as `ref_not_found`.
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

/// What a report did.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Applied {
    /// Committed; the job goes on. `queue_wait`: the job's first step just started
    /// after waiting this many seconds.
    Continue { queue_wait: Option<f64> },
    /// Committed; the job ended in this state.
    Finished(JobState),
    /// Committed; the attempt failed with this code and the job will run again.
    Retried(String),
    /// Committed; the worker gave the job back.
    HandedBack,
    /// Committed; the job was to be cancelled and ended so: nothing more may run.
    Stopped,
}

impl Applied {
    pub(super) const GOES_ON: Applied = Applied::Continue { queue_wait: None };

    /// Whether the worker may go on with the job.
    pub fn accepted(&self) -> bool {
        !matches!(self, Applied::Stopped)
    }

    /// Whether the attempt is over, its worker slot free.
    pub(super) fn frees_slot(&self) -> bool {
        !matches!(self, Applied::Continue { .. })
    }

    /// Counts what was committed.
    pub(super) fn record(&self) {
        use slipway_observability::metrics as m;
        match self {
            Applied::Continue { queue_wait: Some(waited) } => m::QUEUE_WAIT.observe(&[], *waited),
            Applied::Continue { queue_wait: None } | Applied::HandedBack => {}
            Applied::Finished(state) => m::JOBS_FINISHED.inc(&[state.as_str()]),
            Applied::Stopped => m::JOBS_FINISHED.inc(&[JobState::Cancelled.as_str()]),
            Applied::Retried(code) => m::RETRIES.inc(&[code]),
        }
    }
}

/// What applying a report needs besides the connection.
#[derive(Debug, Clone)]
pub(super) struct Rules {
    pub lease_ttl: Duration,
    pub default_policy: RetryPolicy,
    pub max_log_bytes: i64,
}

impl Report {
    pub(super) fn job_id(&self) -> JobId {
        self.lease().job_id
    }

    /// The worker that sent the report, when it said.
    pub(super) fn worker(&self) -> Option<&str> {
        self.lease().worker.as_deref()
    }

    pub(super) fn lease(&self) -> &Lease {
        match self {
            Report::Step { lease, .. } | Report::Logs { lease, .. } => lease,
        }
    }

    /// Counts what a committed report says: a build's steps from cache or not.
    pub(super) fn record(&self) {
        if let Report::Step { step: Step::Build, event: StepEvent::Succeeded(outputs), .. } = self
            && let Some(cache) = outputs.cache
        {
            use slipway_observability::metrics::BUILD_CACHE_STEPS;
            BUILD_CACHE_STEPS.add(&["hit"], f64::from(cache.hits));
            BUILD_CACHE_STEPS.add(&["miss"], f64::from(cache.misses()));
        }
    }

    /// The step a step report speaks of.
    pub(super) fn step(&self) -> Option<Step> {
        match self {
            Report::Step { step, .. } => Some(*step),
            Report::Logs { .. } => None,
        }
    }
}

pub(super) async fn apply(conn: &mut PgConnection, report: &Report, rules: &Rules) -> Result<Applied, StoreError> {
    match report {
        Report::Logs { lease, lines, cursor } => {
            logs::append_logs(conn, lease, lines, cursor.as_deref(), rules.max_log_bytes)
                .await
                .map(|()| Applied::GOES_ON)
        }
        Report::Step { lease, step, event, exit_code, then_start } => {
            let applied = apply_step(conn, lease, *step, event, *exit_code, rules).await?;
            match then_start {
                Some(next) if applied == Applied::GOES_ON => start(conn, lease, *next, rules).await,
                _ => Ok(applied),
            }
        }
    }
}

async fn apply_step(
    conn: &mut PgConnection,
    lease: &Lease,
    step: Step,
    event: &StepEvent,
    exit_code: Option<i64>,
    rules: &Rules,
) -> Result<Applied, StoreError> {
    match event {
        StepEvent::Started => start(conn, lease, step, rules).await,
        StepEvent::Progress(o) => {
            reports::record_outputs(conn, lease, step, o, rules.lease_ttl).await.map(|()| Applied::GOES_ON)
        }
        StepEvent::Succeeded(o) if step == Step::Run => {
            let finish = Finish { state: JobState::Succeeded, exit_code, error_code: None, error: None };
            reports::mark_finished(conn, lease, step, o, &finish).await.map(|()| Applied::Finished(JobState::Succeeded))
        }
        StepEvent::Succeeded(o) => {
            reports::mark_step_succeeded(conn, lease, step, o, rules.lease_ttl).await.map(|()| Applied::GOES_ON)
        }
        StepEvent::Failed(failure) => failed(conn, lease, step, failure, exit_code).await,
        StepEvent::Released => {
            leases::hand_back(conn, lease.job_id, lease.token, &rules.default_policy).await?;
            Ok(Applied::HandedBack)
        }
    }
}

/// The job enters `step`, unless it is to be cancelled: then it ends `cancelled` and
/// the worker is told to stop.
async fn start(conn: &mut PgConnection, lease: &Lease, step: Step, rules: &Rules) -> Result<Applied, StoreError> {
    match reports::mark_step_started(conn, lease, step, rules.lease_ttl).await {
        Ok(queue_wait) => Ok(Applied::Continue { queue_wait }),
        Err(StoreError::LeaseLost) if leases::cancel_requested(conn, lease.job_id, lease.token).await? => {
            let error = format!("{CANCELLED_BY_REQUEST} before the {} step", step.as_str());
            finish(conn, lease, step, JobState::Cancelled, None, ErrorCode::Cancelled.as_str(), &error).await?;
            Ok(Applied::Stopped)
        }
        Err(e) => Err(e),
    }
}

/// Retries the attempt when the job's policy allows, else ends the job.
async fn failed(
    conn: &mut PgConnection,
    lease: &Lease,
    step: Step,
    failure: &StepFailure,
    exit_code: Option<i64>,
) -> Result<Applied, StoreError> {
    let job = read::job(conn, lease.job_id).await?;
    let spec = &job.spec.0;
    let said = rules::Failure { code: &failure.code, retryable: failure.retryable };
    let attempt = u32::try_from(lease.attempt).unwrap_or(1);
    let pushed = job.pushed_ref.is_some();
    match rules::after_failure(step, said, attempt, &spec.retry, spec.run.retry_on_failure, pushed, jitter()) {
        AfterFailure::Cancelled => {
            finish(conn, lease, step, JobState::Cancelled, exit_code, &failure.code, &failure.message).await?;
            Ok(Applied::Finished(JobState::Cancelled))
        }
        AfterFailure::Retry { resume_at, after } => {
            tracing::info!(job.id = %lease.job_id, job.attempt = lease.attempt, error.code = %failure.code, ?after, "retrying");
            let retry =
                Retry { resume_at, after, exit_code, error_code: failure.code.clone(), error: failure.message.clone() };
            reports::mark_retry(conn, lease, step, &retry).await?;
            Ok(Applied::Retried(failure.code.clone()))
        }
        AfterFailure::Failed => {
            finish(conn, lease, step, JobState::Failed, exit_code, &failure.code, &failure.message).await?;
            Ok(Applied::Finished(JobState::Failed))
        }
    }
}

async fn finish(
    conn: &mut PgConnection,
    lease: &Lease,
    step: Step,
    state: JobState,
    exit_code: Option<i64>,
    code: &str,
    message: &str,
) -> Result<(), StoreError> {
    let finish = Finish { state, exit_code, error_code: Some(code.to_string()), error: Some(message.to_string()) };
    reports::mark_finished(conn, lease, step, &StepOutputs::default(), &finish).await
}

/// A number in `[0, 1)` to spread retries.
fn jitter() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}
