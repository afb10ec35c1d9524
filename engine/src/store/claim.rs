//! Claiming: runnable jobs leased to one worker, in one statement.
//!
//! `for update skip locked` lets several orchestrators claim from one table without
//! waiting on each other or taking the same row; the `limit` is the worker's free
//! slots, so nothing is claimed that cannot start at once.

use std::time::Duration;

use sqlx::types::Json;
use uuid::Uuid;

use super::{Store, StoreError};
use crate::job::transitions::{EngineCode, Transition};
use crate::job::{JobId, JobSpec, JobState};

/// A job this orchestrator now holds a lease on.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: JobId,
    pub project_id: crate::auth::ProjectId,
    pub state: JobState,
    pub attempt: i32,
    pub lease_token: Uuid,
    pub spec: Json<JobSpec>,
    pub traceparent: Option<String>,
    pub commit_sha: Option<String>,
    pub image_id: Option<String>,
    pub pushed_ref: Option<String>,
    pub container_id: Option<String>,
    pub task_arn: Option<String>,
    pub log_cursor: Option<String>,
    /// The last attempt's run ended with its end recorded (a retry): this attempt
    /// runs afresh instead of re-attaching to what an earlier one left.
    pub fresh_run: bool,
    /// The job's cache key (`jobs.cache_key`).
    pub cache_key: Option<String>,
    /// The last image pushed for the job's cache key in its project, if any.
    pub cache_image: Option<String>,
}

/// What a worker offers: a job runs there only if the worker has every label the
/// job requires and the runtime it names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerOffer {
    pub labels: std::collections::BTreeMap<String, String>,
    pub runtimes: Vec<String>,
    /// The cache keys of the builds whose layers its engine holds.
    pub cache_keys: Vec<String>,
}

/// Where else a job's build cache is: a queued job whose key another worker holds
/// waits up to `wait` (from when it became runnable) for that worker before this
/// one may take it. Jobs that do not build (a run resumed) never wait.
#[derive(Debug, Clone, Default)]
pub struct CacheElsewhere {
    /// The keys the other workers that take jobs now hold.
    pub keys: Vec<String>,
    pub wait: Duration,
}

impl Store {
    /// Leases up to `limit` runnable jobs that `offer` satisfies, oldest first, to
    /// `worker` on behalf of orchestrator `owner`; a job whose build cache is
    /// `elsewhere` is left for that worker while it waits. The history of a job
    /// that went where it did for its cache says so (`jobs.dispatch_reason`).
    pub async fn claim(
        &self,
        owner: &str,
        worker: &str,
        offer: &WorkerOffer,
        limit: u32,
        lease_ttl: Duration,
        elsewhere: &CacheElsewhere,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let jobs = sqlx::query_as::<_, ClaimedJob>(
            "with runnable as (
                 select id from jobs
                 where lease_token is null and state = any($7)
                   and run_after <= now()
                   and coalesce(spec->'requires', '{}') <@ $5::jsonb
                   and coalesce(spec->'run'->>'runtime', 'docker') = any($6::text[])
                   and (state <> 'queued' or cache_key = any($9) or not cache_key = any($10)
                        or run_after <= now() - make_interval(secs => $11))
                 order by run_after, id
                 limit $1
                 for update skip locked
             )
             update jobs j
             set lease_owner = $2, lease_worker = $3, lease_token = gen_random_uuid(),
                 lease_expires_at = now() + make_interval(secs => $4), updated_at = now(),
                 dispatch_reason = case
                     when j.state <> 'queued' then null
                     when j.cache_key = any($9) then format('dispatched to %s: holds the cache of this repository', $3)
                     when j.cache_key = any($10) then format(
                         'dispatched to %s: the workers holding the cache of this repository had no free slot within %s s',
                         $3, $11)
                 end
             from runnable
             where j.id = runnable.id
             returning j.id, j.project_id, j.state, j.attempt, j.lease_token, j.spec, j.traceparent,
                       j.commit_sha, j.image_id, j.pushed_ref, j.container_id, j.task_arn, j.log_cursor,
                       exists (select 1 from job_steps s
                               where s.job_id = j.id and s.step = 'run' and s.attempt = j.attempt - 1
                                 and s.outcome = 'failed'
                                 and (s.error_code is null or s.error_code <> all($8)))
                           as fresh_run,
                       j.cache_key,
                       (select p.pushed_ref from jobs p
                        where p.cache_key = j.cache_key and p.project_id = j.project_id
                          and p.pushed_ref is not null and p.id <> j.id
                        order by p.created_at desc limit 1) as cache_image",
        )
        .bind(i64::from(limit))
        .bind(owner)
        .bind(worker)
        .bind(lease_ttl.as_secs_f64())
        .bind(Json(&offer.labels))
        .bind(&offer.runtimes)
        .bind(Transition::Claim.from_states())
        .bind(EngineCode::LEASE_ENDED.map(EngineCode::as_str))
        .bind(&offer.cache_keys)
        .bind(&elsewhere.keys)
        .bind(elsewhere.wait.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(jobs)
    }

    /// A claimed job that cannot start at all (a secret it names is gone): it fails
    /// at `step` with `code`, for good, before any worker heard of it.
    pub async fn fail_claimed(
        &self,
        job: &ClaimedJob,
        step: slipway_steps::Step,
        code: EngineCode,
        message: &str,
    ) -> Result<(), StoreError> {
        let lease = super::Lease { job_id: job.id, attempt: job.attempt, token: job.lease_token, worker: None };
        let finish = super::Finish {
            state: crate::job::JobState::Failed,
            exit_code: None,
            error_code: Some(code.as_str().to_string()),
            error: Some(message.to_string()),
        };
        let mut conn = self.pool.acquire().await?;
        super::reports::mark_finished(&mut conn, &lease, step, &Default::default(), &finish).await?;
        slipway_observability::metrics::JOBS_FINISHED.inc(&["failed"]);
        Ok(())
    }

    /// Gives a lease back unused (the worker refused the job): the job is runnable
    /// again at once, with the same attempt. A lease that is no longer the job's
    /// current one is [`StoreError::LeaseLost`], and nothing changes.
    pub async fn release(&self, id: JobId, lease_token: Uuid) -> Result<(), StoreError> {
        let released = sqlx::query(
            "update jobs set lease_owner = null, lease_worker = null, lease_token = null,
                 lease_expires_at = null, updated_at = now()
             where id = $1 and lease_token = $2 and state = any($3)",
        )
        .bind(id)
        .bind(lease_token)
        .bind(Transition::Release.from_states())
        .execute(&self.pool)
        .await?;
        if released.rows_affected() == 0 { Err(StoreError::LeaseLost) } else { Ok(()) }
    }
}
