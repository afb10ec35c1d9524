//! The writes a worker's step reports cause, each one statement fenced by the
//! lease token and the worker it was given to, and guarded by the from-states of
//! its [`Transition`].

use std::sync::LazyLock;
use std::time::Duration;

use slipway_steps::{Step, StepOutputs};
use sqlx::PgConnection;
use sqlx::postgres::PgArguments;
use sqlx::query::QueryScalar;
use uuid::Uuid;

use super::StoreError;
use crate::job::transitions::{PUSH_SKIPPED_LOCAL, Transition, where_attempt_starts};
use crate::job::{JobId, JobState, state_of_step};

/// The attempt a report speaks for. The history rows a report writes record its
/// `attempt` and `worker`, not the job row's: a write that slipped past a fence
/// would show in the history as the stale attempt it came from.
#[derive(Debug, Clone)]
pub struct Lease {
    pub job_id: JobId,
    pub attempt: i32,
    pub token: Uuid,
    /// The worker that sent the report: a write is fenced to the lease's own
    /// worker (the report service sets it from the caller's certificate). `None`:
    /// any worker holding the token, as the engine's own writes are.
    pub worker: Option<String>,
}

/// The `jobs` columns of [`StepOutputs`]' fields, in the order [`bound`] binds
/// them: the one place outside the migrations that names them.
const OUTPUT_COLUMNS: [&str; 7] =
    ["commit_sha", "image_id", "pushed_ref", "container_id", "task_arn", "stop_code", "stopped_reason"];

/// `column = coalesce($1, j.column), …`: every output, as `$1` … `$7` of the
/// statement, its own placeholders following from `$8`.
fn set_outputs() -> String {
    OUTPUT_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} = coalesce(${}, j.{c})", i + 1))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Starts a statement written with [`set_outputs`], the outputs bound.
fn bound<'q>(sql: &'static str, outputs: &'q StepOutputs) -> QueryScalar<'q, sqlx::Postgres, i64, PgArguments> {
    [
        &outputs.commit_sha,
        &outputs.image_id,
        &outputs.pushed_ref,
        &outputs.container_id,
        &outputs.task_arn,
        &outputs.stop_code,
        &outputs.stopped_reason,
    ]
    .into_iter()
    .fold(sqlx::query_scalar(sql), |query, value| query.bind(value))
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
    // The run entered from `pushing` with nothing pushed: the image is local.
    let (rows, waited): (i64, Option<f64>) = sqlx::query_as(
        "with prev as (
             select state, lease_worker, pushed_ref, dispatch_reason from jobs
             where id = $1 and lease_token = $2 and lease_worker = coalesce($7, lease_worker)
               and state = any($8) and cancel_requested_at is null
             for update
         ), upd as (
             update jobs j set state = $3, updated_at = now(), dispatch_reason = null,
                 lease_expires_at = now() + make_interval(secs => $5)
             from prev where j.id = $1
             returning prev.state as from_state, coalesce($7, prev.lease_worker) as worker,
                       prev.pushed_ref is null as nothing_pushed, prev.dispatch_reason,
                       extract(epoch from now() - j.created_at)::double precision as waited
         ), ev as (
             insert into job_events (job_id, from_state, to_state, attempt, worker, reason)
             select $1, from_state, $3, $6, worker,
                    coalesce(case when from_state = 'pushing' and nothing_pushed then $9 end, dispatch_reason)
             from upd
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
    .bind(Transition::StartStep(step).from_states())
    .bind(PUSH_SKIPPED_LOCAL)
    .fetch_one(&mut *conn)
    .await?;
    fenced(rows).map(|()| waited)
}

/// Stores outputs a step produced before it ends (the container id before the
/// wait), so that a recovery can find what the step started.
pub async fn record_outputs(
    conn: &mut PgConnection,
    lease: &Lease,
    step: Step,
    outputs: &StepOutputs,
    lease_ttl: Duration,
) -> Result<(), StoreError> {
    store_outputs(conn, lease, step, false, outputs, lease_ttl).await
}

/// A step that is not the last ended well: its outputs are stored and its row closed.
pub async fn mark_step_succeeded(
    conn: &mut PgConnection,
    lease: &Lease,
    step: Step,
    outputs: &StepOutputs,
    lease_ttl: Duration,
) -> Result<(), StoreError> {
    store_outputs(conn, lease, step, true, outputs, lease_ttl).await
}

/// Stores outputs and extends the lease; closes `ended`'s step row when given,
/// with the build's cache count when there is one.
async fn store_outputs(
    conn: &mut PgConnection,
    lease: &Lease,
    step: Step,
    ended: bool,
    outputs: &StepOutputs,
    lease_ttl: Duration,
) -> Result<(), StoreError> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "with upd as (
                 update jobs j set {}, updated_at = now(), lease_expires_at = now() + make_interval(secs => $11)
                 where id = $8 and lease_token = $9 and lease_worker = coalesce($15, lease_worker) and state = any($13)
                 returning id
             ), st as (
                 update job_steps s set finished_at = now(), outcome = 'succeeded',
                     cache_hits = coalesce($16, s.cache_hits), cache_steps = coalesce($17, s.cache_steps)
                 from upd where $12 and s.job_id = $8 and s.attempt = $14 and s.step = $10::job_step
             )
             select count(*) from upd",
            set_outputs()
        )
    });
    let transition = if ended { Transition::SucceedStep(step) } else { Transition::RecordOutputs(step) };
    let cache = outputs.cache.filter(|_| step == Step::Build);
    let rows = bound(SQL.as_str(), outputs)
        .bind(lease.job_id)
        .bind(lease.token)
        .bind(step.as_str())
        .bind(lease_ttl.as_secs_f64())
        .bind(ended)
        .bind(transition.from_states())
        .bind(lease.attempt)
        .bind(&lease.worker)
        // A build's count; later steps' outputs carry it along, their rows do not.
        .bind(cache.map(|c| i32::try_from(c.hits).unwrap_or(i32::MAX)))
        .bind(cache.map(|c| i32::try_from(c.steps).unwrap_or(i32::MAX)))
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
    outputs: &StepOutputs,
    finish: &Finish,
) -> Result<(), StoreError> {
    if !finish.state.is_terminal() {
        return Err(StoreError::InvalidTransition(finish.state));
    }
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "with prev as (
                 select state, lease_worker from jobs
                 where id = $8 and lease_token = $9 and lease_worker = coalesce($17, lease_worker) and state = any($18)
                 for update
             ), upd as (
                 update jobs j set state = $10, finished_at = now(), updated_at = now(),
                     lease_owner = null, lease_worker = null, lease_token = null, lease_expires_at = null,
                     exit_code = coalesce($11, j.exit_code), error_code = $12, error = $13, {}
                 from prev where j.id = $8
                 returning prev.state as from_state, coalesce($17, prev.lease_worker) as worker, j.cancel_requested_at,
                           j.cancel_requested_by
             ), ev as (
                 insert into job_events (job_id, from_state, to_state, attempt, worker, actor, reason)
                 select $8, from_state, $10, $16, worker, case when $10 = 'cancelled' then cancel_requested_by end,
                        case when $10 = 'cancelled' and cancel_requested_at is not null
                             then format('cancelled: stopped %s s after the request',
                                         round(extract(epoch from now() - cancel_requested_at)::numeric, 2))
                             else $12 end
                 from upd
             ), st as (
                 update job_steps s set finished_at = now(), outcome = $14, error_code = $12, error = $13
                 from upd where s.job_id = $8 and s.attempt = $16 and s.step = $15::job_step
             )
             select count(*) from upd",
            set_outputs()
        )
    });
    let outcome = if finish.state == JobState::Succeeded { "succeeded" } else { "failed" };
    let rows = bound(SQL.as_str(), outputs)
        .bind(lease.job_id)
        .bind(lease.token)
        .bind(finish.state)
        .bind(finish.exit_code)
        .bind(&finish.error_code)
        .bind(&finish.error)
        .bind(outcome)
        .bind(step.as_str())
        .bind(lease.attempt)
        .bind(&lease.worker)
        .bind(Transition::EndAttempt(step).from_states())
        .fetch_one(&mut *conn)
        .await?;
    fenced(rows)
}

/// The attempt failed and will be tried again: the job gives up its lease and
/// goes back to `retry.resume_at` with attempt + 1, runnable after
/// `retry.after`; the event says why; the step's row closes as failed. The ended
/// run's task is forgotten, so that the next attempt starts its own.
///
/// A system line in the failed step's log says the same to whoever follows the job.
pub async fn mark_retry(conn: &mut PgConnection, lease: &Lease, step: Step, retry: &Retry) -> Result<(), StoreError> {
    let reason = format!("retry in {:.1}s after {}: {}", retry.after.as_secs_f64(), retry.error_code, retry.error);
    let said = format!(
        "attempt {} failed ({}): {}; attempt {} starts {} in {:.1}s",
        lease.attempt,
        retry.error_code,
        retry.error,
        lease.attempt + 1,
        where_attempt_starts(retry.resume_at),
        retry.after.as_secs_f64()
    );
    let rows: i64 = sqlx::query_scalar(
        "with prev as (
             select state, lease_worker from jobs
             where id = $1 and lease_token = $2 and lease_worker = coalesce($11, lease_worker) and state = any($12)
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
         ), said as (
             insert into job_logs (job_id, attempt, worker, step, stream, at, line)
             select $1, $10, worker, $9::job_step, 'system', now(), $13 from upd
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
    .bind(Transition::EndAttempt(step).from_states())
    .bind(said)
    .fetch_one(&mut *conn)
    .await?;
    fenced(rows)
}
