//! Group commit of workers' reports.
//!
//! Every report (a step's start, outputs or end, a batch of log lines) is queued here.
//! A few committer tasks each take whatever is queued (up to `SLIPWAY_COMMIT_BATCH`) and apply
//! it in one transaction: one commit, so one wait for the disk, for many reports. A
//! report is answered only after its transaction committed. When one statement of a
//! batch fails for a reason other than a lost lease, the batch is rolled back and its
//! reports are applied one transaction each, so that one bad report costs no other.

use std::sync::Arc;
use std::time::Duration;

use slipway_steps::{ErrorCode, Step, StepOutputs};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::job::transitions::{self as rules, AfterFailure, CANCELLED_BY_REQUEST};
use crate::job::{JobId, JobState, RetryPolicy};
use crate::store::{Finish, Lease, NewLogLine, Retry, StoreError, leases, logs, read, reports};

/// Reports waiting for a committer, at most.
const QUEUED: usize = 1024;
/// Committer tasks, each with its own connection and transaction.
const COMMITTERS: usize = 4;

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
    const GOES_ON: Applied = Applied::Continue { queue_wait: None };

    /// Whether the worker may go on with the job.
    pub fn accepted(&self) -> bool {
        !matches!(self, Applied::Stopped)
    }

    /// Whether the attempt is over, its worker slot free.
    fn frees_slot(&self) -> bool {
        !matches!(self, Applied::Continue { .. })
    }

    /// Counts what was committed.
    fn record(&self) {
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

type Work = (Report, oneshot::Sender<Result<Applied, StoreError>>);

#[derive(Clone)]
pub(super) struct Committer {
    queue: mpsc::Sender<Work>,
}

/// What applying a report needs besides the connection.
#[derive(Debug, Clone)]
struct Rules {
    lease_ttl: Duration,
    default_policy: RetryPolicy,
    max_log_bytes: i64,
    /// Reports applied in one transaction at most.
    max_batch: usize,
}

impl Committer {
    /// Starts the committer tasks; they stop when the last `Committer` is dropped.
    pub fn start(pool: PgPool, config: super::CommitConfig, wake: super::Wake) -> Self {
        let (queue, receiver) = mpsc::channel::<Work>(QUEUED);
        let receiver = Arc::new(Mutex::new(receiver));
        let rules = Rules {
            lease_ttl: config.lease_ttl,
            default_policy: config.default_policy,
            max_log_bytes: i64::try_from(config.max_log_bytes).unwrap_or(i64::MAX),
            max_batch: config.batch.max(1),
        };
        for _ in 0..COMMITTERS {
            tokio::spawn(run(pool.clone(), receiver.clone(), rules.clone(), wake.clone()));
        }
        Committer { queue }
    }

    /// Applies a report; answers once it is committed.
    pub async fn apply(&self, report: Report) -> Result<Applied, StoreError> {
        let (reply, answer) = oneshot::channel();
        if self.queue.send((report, reply)).await.is_err() {
            return Err(StoreError::CommitterStopped);
        }
        answer.await.unwrap_or(Err(StoreError::CommitterStopped))
    }
}

async fn run(pool: PgPool, receiver: Arc<Mutex<mpsc::Receiver<Work>>>, rules: Rules, wake: super::Wake) {
    loop {
        // Take whatever is queued, waiting only for the first.
        let batch = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else { return };
            let mut batch = vec![first];
            while batch.len() < rules.max_batch {
                match receiver.try_recv() {
                    Ok(work) => batch.push(work),
                    Err(_) => break,
                }
            }
            batch
        };
        let (reports, replies): (Vec<Report>, Vec<_>) = batch.into_iter().unzip();
        let results = match commit_together(&pool, &reports, &rules).await {
            Ok(results) => results,
            Err(StoreError::Unavailable(e)) => {
                tracing::warn!(error = %e, reports = reports.len(), "cannot commit reports: the database is unavailable");
                reports.iter().map(|_| Err(StoreError::Unavailable(sqlx::Error::PoolClosed))).collect()
            }
            Err(e) => {
                tracing::warn!(error = ?e, reports = reports.len(), "a batch of reports failed; committing them one by one");
                let mut results = Vec::with_capacity(reports.len());
                for report in &reports {
                    results.push(commit_alone(&pool, report, &rules).await);
                }
                results
            }
        };
        for applied in results.iter().flatten() {
            applied.record();
        }
        for (report, result) in reports.iter().zip(&results) {
            if result.as_ref().is_ok_and(Applied::frees_slot) {
                wake.slot_freed(report.worker());
            }
        }
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

/// Applies all reports in one transaction. A lost lease is a result, not a failure.
async fn commit_together(
    pool: &PgPool,
    reports: &[Report],
    rules: &Rules,
) -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
    let mut tx = pool.begin().await?;
    // Rows are locked in job id order, as the heartbeat locks them, so that two
    // transactions never wait on each other in a circle.
    let mut order: Vec<usize> = (0..reports.len()).collect();
    order.sort_by_key(|&i| reports[i].job_id());
    let mut results: Vec<Result<Applied, StoreError>> = reports.iter().map(|_| Ok(Applied::GOES_ON)).collect();
    for i in order {
        match apply(&mut tx, &reports[i], rules).await {
            Err(StoreError::LeaseLost) => results[i] = Err(StoreError::LeaseLost),
            Err(e) => return Err(e),
            Ok(applied) => results[i] = Ok(applied),
        }
    }
    let changed: Vec<JobId> = reports
        .iter()
        .zip(&results)
        .filter(|(report, result)| followers_care(report, result))
        .map(|(report, _)| report.job_id())
        .collect();
    notify_changed(&mut tx, &changed).await?;
    tx.commit().await?;
    Ok(results)
}

async fn commit_alone(pool: &PgPool, report: &Report, rules: &Rules) -> Result<Applied, StoreError> {
    let mut tx = pool.begin().await?;
    let applied = apply(&mut tx, report, rules).await;
    match applied {
        Ok(_) => {
            if followers_care(report, &applied) {
                notify_changed(&mut tx, &[report.job_id()]).await?;
            }
            tx.commit().await?
        }
        Err(StoreError::LeaseLost) => tx.commit().await?,
        Err(_) => tx.rollback().await?,
    }
    applied
}

/// Whether live log followers need to hear of this report: new lines, or the end of
/// the job (their stream ends then). Other reports are not announced, since every
/// notification costs the database work at commit.
fn followers_care(report: &Report, result: &Result<Applied, StoreError>) -> bool {
    matches!(report, Report::Logs { .. }) || matches!(result, Ok(Applied::Finished(_) | Applied::Stopped))
}

/// Tells followers (live logs) that these jobs have news, when the transaction commits.
async fn notify_changed(conn: &mut PgConnection, jobs: &[JobId]) -> Result<(), StoreError> {
    if jobs.is_empty() {
        return Ok(());
    }
    sqlx::query("select pg_notify($2, id::text) from (select distinct unnest($1::uuid[]) as id) as changed")
        .bind(jobs)
        .bind(crate::store::CHANGED_CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl Report {
    fn job_id(&self) -> JobId {
        self.lease().job_id
    }

    /// The worker that sent the report, when it said.
    fn worker(&self) -> Option<&str> {
        self.lease().worker.as_deref()
    }

    pub(super) fn lease(&self) -> &Lease {
        match self {
            Report::Step { lease, .. } | Report::Logs { lease, .. } => lease,
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

async fn apply(conn: &mut PgConnection, report: &Report, rules: &Rules) -> Result<Applied, StoreError> {
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
