//! Leases over time: heartbeats extend them, expiry (or a worker handing a job
//! back) ends them, and a cancel request is noted for the holder to act on.
//!
//! When a lease ends without a report, the attempt is over: the job goes back to be
//! claimed again with attempt + 1 (at `queued`, or at `running` when its image is
//! pushed, so that the run re-attaches instead of rebuilding), unless it was asked
//! to cancel (it ends `cancelled`) or its attempts are used up (it ends `failed`
//! with `lease_expired`). One statement does it all, with the history rows.

use std::sync::LazyLock;
use std::time::Duration;

use sqlx::PgConnection;
use uuid::Uuid;

use slipway_steps::ErrorCode;

use super::{Store, StoreError};
use crate::job::transitions::{CANCELLED_BY_REQUEST, EngineCode, Transition, where_attempt_starts};
use crate::job::{JobId, JobState, RetryPolicy};

/// A lease a worker says it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldLease {
    pub job_id: JobId,
    pub token: Uuid,
}

/// What a heartbeat learned about one lease the worker holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Extended; nothing to do.
    Current,
    /// Extended, but the job is to be cancelled: tell the worker.
    CancelRequested,
    /// Not the job's current lease: the worker must stop that attempt.
    Stale,
}

/// A lease that ended without a report, and where its job went.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EndedLease {
    pub id: JobId,
    pub from_state: JobState,
    pub to_state: JobState,
    pub attempt: i32,
    pub worker: Option<String>,
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job held no lease and is now cancelled.
    Cancelled,
    /// The job is leased: its worker is told to stop it.
    Requested,
    /// The job had already ended in this state.
    AlreadyFinished(JobState),
}

/// The shared body of lease expiry and hand-back; `$1`/`$2` select the leases,
/// `$3` is the reason recorded, `$4` the default attempt limit, `$5` the states
/// [`Transition::EndLease`] leaves, `$6`… the codes and error it records, `$10`
/// whether the worker was lost (counted in `jobs.workers_lost`), `$11` the channel
/// its followers are woken on, `$12`/`$13` where the next attempt starts. A job that goes on says so in its log (a `system`
/// line of the step that was running), as a failed attempt's report does. Where each job goes
/// is [`crate::job::transitions::after_lease_end`], written in SQL so that one statement
/// ends every expired lease (a store test holds the two together).
///
/// `{lock}`: the sweep skips rows another transaction holds (a report being
/// committed decides them), but a hand-back of one named lease waits for its row:
/// skipping it would drop the hand-back and leave the job to its lease's expiry.
const END_LEASES: &str = "
    with ended as (
        select id, state, attempt, lease_worker, cancel_requested_at, cancel_requested_by, pushed_ref,
               coalesce((spec->'retry'->>'max_attempts')::int, $4) as max_attempts
        from jobs
        where lease_token is not null and state = any($5)
          and (($1::uuid is null and lease_expires_at < now()) or (id = $1 and lease_token = $2))
        order by lease_expires_at
        limit 500
        {lock}
    ), decided as (
        select *, case
            when cancel_requested_at is not null then 'cancelled'
            when attempt >= max_attempts then 'failed'
            when pushed_ref is not null then 'running'
            else 'queued' end::job_state as next_state
        from ended
    ), upd as (
        update jobs j set
            state = d.next_state,
            attempt = case when d.next_state in ('cancelled', 'failed') then j.attempt else j.attempt + 1 end,
            lease_owner = null, lease_worker = null, lease_token = null, lease_expires_at = null,
            run_after = now(), updated_at = now(),
            workers_lost = j.workers_lost + case when $10 then 1 else 0 end,
            finished_at = case when d.next_state in ('cancelled', 'failed') then now() end,
            error_code = case d.next_state when 'cancelled' then $6
                              when 'failed' then $8 else j.error_code end,
            error = case d.next_state when 'cancelled' then $7
                         when 'failed' then 'the worker went silent on the last attempt' else j.error end
        from decided d
        where j.id = d.id
        returning j.id, d.state as from_state, j.state as to_state, j.attempt, d.lease_worker as worker,
                  d.attempt as ended_attempt, d.cancel_requested_by
    ), ev as (
        insert into job_events (job_id, from_state, to_state, attempt, worker, reason, actor)
        select id, from_state, to_state, attempt, worker, $3,
               case when to_state = 'cancelled' then cancel_requested_by end
        from upd
    ), st as (
        update job_steps s set finished_at = now(), outcome = 'failed', error_code = $9, error = $3
        from upd where s.job_id = upd.id and s.attempt = upd.ended_attempt and s.finished_at is null
    ), said as (
        insert into job_logs (job_id, attempt, worker, step, stream, at, line)
        select u.id, u.ended_attempt, u.worker,
               coalesce((select s.step from job_steps s where s.job_id = u.id and s.attempt = u.ended_attempt
                         order by s.started_at desc limit 1), 'clone'),
               'system', now(),
               format('attempt %s ended: %s; attempt %s starts %s', u.ended_attempt, $3, u.attempt,
                      case u.to_state when 'running' then $12 else $13 end)
        from upd u where u.to_state in ('queued', 'running')
    ), notify as (
        select pg_notify($11, id::text) from upd
    )
    select id, from_state, to_state, attempt, worker from upd
    where (select count(*) from notify) >= 0";

impl Store {
    /// Extends the leases a worker confirmed it holds (and makes this orchestrator
    /// their owner), and says what the worker should do about each.
    pub async fn heartbeat(
        &self,
        owner: &str,
        held: &[HeldLease],
        lease_ttl: Duration,
    ) -> Result<Vec<(HeldLease, LeaseStatus)>, StoreError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        // In job id order, as the report committer locks rows.
        let mut sorted = held.to_vec();
        sorted.sort_by_key(|h| h.job_id);
        let ids: Vec<JobId> = sorted.iter().map(|h| h.job_id).collect();
        let tokens: Vec<Uuid> = sorted.iter().map(|h| h.token).collect();
        let current: Vec<(JobId, bool)> = sqlx::query_as(
            "update jobs j set lease_expires_at = now() + make_interval(secs => $3), lease_owner = $4
             from unnest($1::uuid[], $2::uuid[]) as l(id, token)
             where j.id = l.id and j.lease_token = l.token and j.state = any($5)
             returning j.id, j.cancel_requested_at is not null",
        )
        .bind(&ids)
        .bind(&tokens)
        .bind(lease_ttl.as_secs_f64())
        .bind(owner)
        .bind(Transition::KeepLease.from_states())
        .fetch_all(&self.pool)
        .await?;
        Ok(held
            .iter()
            .map(|h| {
                let status = match current.iter().find(|(id, _)| *id == h.job_id) {
                    Some((_, true)) => LeaseStatus::CancelRequested,
                    Some((_, false)) => LeaseStatus::Current,
                    None => LeaseStatus::Stale,
                };
                (*h, status)
            })
            .collect())
    }

    /// Ends every expired lease (in batches of at most 500).
    pub async fn expire_leases(&self, default_policy: &RetryPolicy) -> Result<Vec<EndedLease>, StoreError> {
        let reason = format!("{}: the worker went silent", EngineCode::LeaseExpired.as_str());
        self.end_leases(None, None, &reason, default_policy).await
    }

    async fn end_leases(
        &self,
        job_id: Option<JobId>,
        token: Option<Uuid>,
        reason: &str,
        default_policy: &RetryPolicy,
    ) -> Result<Vec<EndedLease>, StoreError> {
        end_leases(&mut *self.pool.acquire().await?, job_id, token, reason, default_policy).await
    }

    /// Asks for a job to be cancelled: at once when it holds no lease, else by
    /// noting the request for its worker ([`crate::job::transitions::after_cancel_request`],
    /// written in SQL so that the decision and the write are one statement; a store
    /// test holds the two together). Notifies orchestrators either way.
    /// `by`: who asks, named in the history row of the job's `cancelled` transition.
    pub async fn request_cancel(&self, id: JobId, by: Option<&str>) -> Result<CancelOutcome, StoreError> {
        let (before, after): (Option<JobState>, Option<JobState>) = sqlx::query_as(
            "with prev as (
                 select state, lease_token from jobs where id = $1 for update
             ), upd as (
                 update jobs j set
                     cancel_requested_at = coalesce(j.cancel_requested_at, now()), updated_at = now(),
                     cancel_requested_by = coalesce(j.cancel_requested_by, $6),
                     state = case when prev.lease_token is null then 'cancelled' else j.state end,
                     finished_at = case when prev.lease_token is null then now() else j.finished_at end,
                     error_code = case when prev.lease_token is null then $3 else j.error_code end,
                     error = case when prev.lease_token is null then $4 else j.error end
                 from prev
                 where j.id = $1 and prev.state = any($5)
                 returning prev.state as from_state, j.state as to_state, j.attempt
             ), ev as (
                 insert into job_events (job_id, from_state, to_state, attempt, reason, actor)
                 select $1, from_state, to_state, attempt, $4, $6 from upd
                 where to_state = 'cancelled'
             ), notify as (
                 select pg_notify($2, $1::text) from upd
             )
             select (select state from prev), (select to_state from upd)
             from (select count(*) from notify) as n",
        )
        .bind(id)
        .bind(super::CANCEL_CHANNEL)
        .bind(ErrorCode::Cancelled.as_str())
        .bind(CANCELLED_BY_REQUEST)
        .bind(Transition::RequestCancel.from_states())
        .bind(by)
        .fetch_one(&self.pool)
        .await?;
        match (before, after) {
            (None, _) => Err(StoreError::NotFound),
            (Some(state), None) => Ok(CancelOutcome::AlreadyFinished(state)),
            (Some(_), Some(JobState::Cancelled)) => Ok(CancelOutcome::Cancelled),
            (Some(_), Some(_)) => Ok(CancelOutcome::Requested),
        }
    }
}

impl Store {
    /// The current leases of these jobs that are asked to cancel, with the worker
    /// holding each: whom to tell at once.
    pub async fn leases_to_cancel(&self, ids: &[JobId]) -> Result<Vec<(JobId, String, Uuid)>, StoreError> {
        let leases = sqlx::query_as(
            "select id, lease_worker, lease_token from jobs
             where id = any($1) and cancel_requested_at is not null and lease_token is not null
               and lease_worker is not null and state = any($2)",
        )
        .bind(ids)
        .bind(Transition::KeepLease.from_states())
        .fetch_all(&self.pool)
        .await?;
        Ok(leases)
    }
}

/// Ends one lease its worker gives back (shutting down) before the job ended.
pub async fn hand_back(
    conn: &mut PgConnection,
    job_id: JobId,
    token: Uuid,
    default_policy: &RetryPolicy,
) -> Result<Option<EndedLease>, StoreError> {
    let reason = format!("{}: the worker is shutting down", EngineCode::HandedBack.as_str());
    Ok(end_leases(conn, Some(job_id), Some(token), &reason, default_policy).await?.pop())
}

async fn end_leases(
    conn: &mut PgConnection,
    job_id: Option<JobId>,
    token: Option<Uuid>,
    reason: &str,
    default_policy: &RetryPolicy,
) -> Result<Vec<EndedLease>, StoreError> {
    static EXPIRED: LazyLock<String> = LazyLock::new(|| END_LEASES.replace("{lock}", "for update skip locked"));
    static NAMED: LazyLock<String> = LazyLock::new(|| END_LEASES.replace("{lock}", "for update"));
    let statement = if job_id.is_some() { NAMED.as_str() } else { EXPIRED.as_str() };
    let ended = sqlx::query_as::<_, EndedLease>(statement)
        .bind(job_id)
        .bind(token)
        .bind(reason)
        .bind(default_policy.max_attempts as i32)
        .bind(Transition::EndLease.from_states())
        .bind(ErrorCode::Cancelled.as_str())
        .bind(CANCELLED_BY_REQUEST)
        .bind(EngineCode::LeaseExpired.as_str())
        // Every expired lease is a worker lost; a hand-back is not.
        .bind(if job_id.is_none() { EngineCode::WorkerLost.as_str() } else { EngineCode::HandedBack.as_str() })
        .bind(job_id.is_none())
        .bind(super::CHANGED_CHANNEL)
        .bind(where_attempt_starts(JobState::Running))
        .bind(where_attempt_starts(JobState::Queued))
        .fetch_all(&mut *conn)
        .await?;
    Ok(ended)
}

/// Whether the job of this lease is to be cancelled.
pub async fn cancel_requested(conn: &mut PgConnection, job_id: JobId, token: Uuid) -> Result<bool, StoreError> {
    let requested: Option<bool> =
        sqlx::query_scalar("select cancel_requested_at is not null from jobs where id = $1 and lease_token = $2")
            .bind(job_id)
            .bind(token)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(requested.unwrap_or(false))
}
