//! The transitions a worker's reports cause, each one guarded statement fenced by
//! the lease token.

use std::time::Duration;

use slipway_steps::Step;
use uuid::Uuid;

use sqlx::PgConnection;

use super::StoreError;
use crate::job::{JobId, JobState, state_of_step};

/// The attempt a report speaks for. The history rows a report writes record its
/// `attempt` and `worker`, not the job row's: a write that slipped past a fence
/// would show in the history as the stale attempt it came from.
#[derive(Debug, Clone)]
pub struct Lease {
    pub job_id: JobId,
    pub attempt: i32,
    pub token: Uuid,
    /// The worker that sent the report; `None` from a worker that does not say,
    /// whose rows then name the lease's worker.
    pub worker: Option<String>,
}

/// Step outputs; `None` leaves a stored value as it is.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    pub commit_sha: Option<String>,
    pub image_id: Option<String>,
    pub pushed_ref: Option<String>,
    pub container_id: Option<String>,
    pub task_arn: Option<String>,
    pub stop_code: Option<String>,
    pub stopped_reason: Option<String>,
}

/// A failed attempt to be tried again.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Where the next attempt starts: `Queued`, or `Running` to run a pushed image again.
    pub resume_at: JobState,
    pub after: Duration,
    pub exit_code: Option<i64>,
    pub error_code: String,
    pub error: String,
}

/// How a job ends.
#[derive(Debug, Clone)]
pub struct Finish {
    pub state: JobState,
    pub exit_code: Option<i64>,
    pub error_code: Option<String>,
    pub error: Option<String>,
}

fn fenced(rows: i64) -> Result<(), StoreError> {
    if rows == 0 { Err(StoreError::LeaseLost) } else { Ok(()) }
}

/// The job enters the state of `step`; the step's row for this attempt opens.
/// A job asked to cancel starts no step: that is [`StoreError::LeaseLost`] too.
pub async fn mark_step_started(
    conn: &mut PgConnection,
    lease: &Lease,
    step: Step,
    lease_ttl: Duration,
) -> Result<Option<f64>, StoreError> {
    let to = state_of_step(step);
    let (rows, waited): (i64, Option<f64>) = sqlx::query_as(
        "with prev as (
             select state, lease_worker from jobs
             where id = $1 and lease_token = $2 and state not in ('succeeded', 'failed', 'cancelled')
               and cancel_requested_at is null
             for update
         ), upd as (
             update jobs j set state = $3, updated_at = now(),
                 lease_expires_at = now() + make_interval(secs => $5)
             from prev where j.id = $1
             returning prev.state as from_state, coalesce($7, prev.lease_worker) as worker,
                       extract(epoch from now() - j.created_at)::double precision as waited
         ), ev as (
             insert into job_events (job_id, from_state, to_state, attempt, worker)
             select $1, from_state, $3, $6, worker from upd
         ), st as (
             insert into job_steps (job_id, attempt, step, worker)
             select $1, $6, $4::job_step, worker from upd
             on conflict (job_id, attempt, step) do update
             set started_at = now(), finished_at = null, outcome = null,
                 error_code = null, error = null, worker = excluded.worker
         )
         select count(*), max(waited) filter (where from_state = 'queued' and $6 = 1) from upd",
    )
    .bind(lease.job_id)
    .bind(lease.token)
    .bind(to)
    .bind(step.as_str())
    .bind(lease_ttl.as_secs_f64())
    .bind(lease.attempt)
    .bind(&lease.worker)
    .fetch_one(&mut *conn)
    .await?;
    fenced(rows).map(|()| waited)
}

/// Stores outputs a step produced before it ends (the container id before the
/// wait), so that a recovery can find what the step started.
pub async fn record_outputs(
    conn: &mut PgConnection,
    lease: &Lease,
    outputs: &Outputs,
    lease_ttl: Duration,
) -> Result<(), StoreError> {
    store_outputs(conn, lease, None, outputs, lease_ttl).await
}

/// A step that is not the last ended well: its outputs are stored and its row closed.
pub async fn mark_step_succeeded(
    conn: &mut PgConnection,
    lease: &Lease,
    step: Step,
    outputs: &Outputs,
    lease_ttl: Duration,
) -> Result<(), StoreError> {
    store_outputs(conn, lease, Some(step), outputs, lease_ttl).await
}

/// Stores outputs and extends the lease; closes `ended`'s step row when given.
async fn store_outputs(
    conn: &mut PgConnection,
    lease: &Lease,
    ended: Option<Step>,
    outputs: &Outputs,
    lease_ttl: Duration,
) -> Result<(), StoreError> {
    let rows: i64 = sqlx::query_scalar(
        "with upd as (
             update jobs set
                 commit_sha = coalesce($3, commit_sha), image_id = coalesce($4, image_id),
                 pushed_ref = coalesce($5, pushed_ref), container_id = coalesce($6, container_id),
                 task_arn = coalesce($9, task_arn), stop_code = coalesce($10, stop_code),
                 stopped_reason = coalesce($11, stopped_reason),
                 updated_at = now(), lease_expires_at = now() + make_interval(secs => $8)
             where id = $1 and lease_token = $2 and state not in ('succeeded', 'failed', 'cancelled')
             returning id
         ), st as (
             update job_steps s set finished_at = now(), outcome = 'succeeded'
             from upd where s.job_id = $1 and s.attempt = $12 and s.step = $7::job_step
         )
         select count(*) from upd",
    )
    .bind(lease.job_id)
    .bind(lease.token)
    .bind(&outputs.commit_sha)
    .bind(&outputs.image_id)
    .bind(&outputs.pushed_ref)
    .bind(&outputs.container_id)
    .bind(ended.map(Step::as_str))
    .bind(lease_ttl.as_secs_f64())
    .bind(&outputs.task_arn)
    .bind(&outputs.stop_code)
    .bind(&outputs.stopped_reason)
    .bind(lease.attempt)
    .fetch_one(&mut *conn)
    .await?;
    fenced(rows)
}

/// The job ends (succeeded, failed or cancelled) while `step` ran: the job row
/// takes its final state and gives up its lease, the event is appended and the
/// step's row closed, all in one statement.
pub async fn mark_finished(
    conn: &mut PgConnection,
    lease: &Lease,
    step: Step,
    outputs: &Outputs,
    finish: &Finish,
) -> Result<(), StoreError> {
    if !finish.state.is_terminal() {
        return Err(StoreError::InvalidTransition(finish.state));
    }
    let outcome = if finish.state == JobState::Succeeded { "succeeded" } else { "failed" };
    let rows: i64 = sqlx::query_scalar(
        "with prev as (
             select state, lease_worker from jobs
             where id = $1 and lease_token = $2 and state not in ('succeeded', 'failed', 'cancelled')
             for update
         ), upd as (
             update jobs j set state = $3, finished_at = now(), updated_at = now(),
                 lease_owner = null, lease_worker = null, lease_token = null, lease_expires_at = null,
                 exit_code = coalesce($4, j.exit_code), error_code = $5, error = $6,
                 commit_sha = coalesce($7, j.commit_sha), image_id = coalesce($8, j.image_id),
                 pushed_ref = coalesce($9, j.pushed_ref), container_id = coalesce($10, j.container_id),
                 task_arn = coalesce($13, j.task_arn), stop_code = coalesce($14, j.stop_code),
                 stopped_reason = coalesce($15, j.stopped_reason)
             from prev where j.id = $1
             returning prev.state as from_state, coalesce($17, prev.lease_worker) as worker, j.cancel_requested_at
         ), ev as (
             insert into job_events (job_id, from_state, to_state, attempt, worker, reason)
             select $1, from_state, $3, $16, worker,
                    case when $3 = 'cancelled' and cancel_requested_at is not null
                         then format('cancelled: stopped %s s after the request',
                                     round(extract(epoch from now() - cancel_requested_at)::numeric, 2))
                         else $5 end
             from upd
         ), st as (
             update job_steps s set finished_at = now(), outcome = $11, error_code = $5, error = $6
             from upd where s.job_id = $1 and s.attempt = $16 and s.step = $12::job_step
         )
         select count(*) from upd",
    )
    .bind(lease.job_id)
    .bind(lease.token)
    .bind(finish.state)
    .bind(finish.exit_code)
    .bind(&finish.error_code)
    .bind(&finish.error)
    .bind(&outputs.commit_sha)
    .bind(&outputs.image_id)
    .bind(&outputs.pushed_ref)
    .bind(&outputs.container_id)
    .bind(outcome)
    .bind(step.as_str())
    .bind(&outputs.task_arn)
    .bind(&outputs.stop_code)
    .bind(&outputs.stopped_reason)
    .bind(lease.attempt)
    .bind(&lease.worker)
    .fetch_one(&mut *conn)
    .await?;
    fenced(rows)
}

/// The attempt failed and will be tried again: the job gives up its lease and
/// goes back to `retry.resume_at` with attempt + 1, runnable after
/// `retry.after`; the event says why; the step's row closes as failed. The ended
/// run's task is forgotten, so that the next attempt starts its own.
pub async fn mark_retry(conn: &mut PgConnection, lease: &Lease, step: Step, retry: &Retry) -> Result<(), StoreError> {
    let reason = format!("retry in {:.1}s after {}: {}", retry.after.as_secs_f64(), retry.error_code, retry.error);
    let rows: i64 = sqlx::query_scalar(
        "with prev as (
             select state, lease_worker from jobs
             where id = $1 and lease_token = $2 and state not in ('succeeded', 'failed', 'cancelled')
             for update
         ), upd as (
             update jobs j set state = $3, attempt = $10 + 1,
                 run_after = now() + make_interval(secs => $4), updated_at = now(),
                 lease_owner = null, lease_worker = null, lease_token = null, lease_expires_at = null,
                 exit_code = coalesce($7, j.exit_code), error_code = $5, error = $6,
                 task_arn = null, log_cursor = null
             from prev where j.id = $1
             returning prev.state as from_state, coalesce($11, prev.lease_worker) as worker
         ), ev as (
             insert into job_events (job_id, from_state, to_state, attempt, worker, reason)
             select $1, from_state, $3, $10 + 1, worker, $8 from upd
         ), st as (
             update job_steps s set finished_at = now(), outcome = 'failed', error_code = $5, error = $6
             from upd where s.job_id = $1 and s.attempt = $10 and s.step = $9::job_step
         )
         select count(*) from upd",
    )
    .bind(lease.job_id)
    .bind(lease.token)
    .bind(retry.resume_at)
    .bind(retry.after.as_secs_f64())
    .bind(&retry.error_code)
    .bind(&retry.error)
    .bind(retry.exit_code)
    .bind(reason)
    .bind(step.as_str())
    .bind(lease.attempt)
    .bind(&lease.worker)
    .fetch_one(&mut *conn)
    .await?;
    fenced(rows)
}
