//! Reading jobs back: one job with its steps and events, and pages of jobs.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;

use super::{Store, StoreError};
use crate::job::transitions::Transition;
use crate::job::{JobId, JobSpec, JobState};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: JobId,
    pub state: JobState,
    pub attempt: i32,
    pub spec: Json<JobSpec>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub lease_worker: Option<String>,
    pub commit_sha: Option<String>,
    pub image_id: Option<String>,
    pub pushed_ref: Option<String>,
    pub container_id: Option<String>,
    pub task_arn: Option<String>,
    pub stop_code: Option<String>,
    pub stopped_reason: Option<String>,
    pub exit_code: Option<i64>,
    pub error_code: Option<String>,
    pub error: Option<String>,
    pub workers_lost: i32,
    pub project_id: uuid::Uuid,
    pub project: String,
    pub rerun_of: Option<JobId>,
}

/// What a listing keeps: every part given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub project: Option<uuid::Uuid>,
    pub state: Option<JobState>,
    /// The first and last id of a prefix's range ([`crate::job::id_prefix_range`]).
    pub ids: Option<(JobId, JobId)>,
    /// The repository URL and the image, exactly as submitted.
    pub repo: Option<String>,
    pub image: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct StepRow {
    pub step: String,
    pub attempt: i32,
    pub worker: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub error_code: Option<String>,
    pub error: Option<String>,
    /// Of a build that succeeded: how many of its steps came from cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_hits: Option<i32>,
    /// Of a build that succeeded: the steps it had (instructions after `FROM`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_steps: Option<i32>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EventRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub from_state: Option<JobState>,
    pub to_state: JobState,
    pub attempt: i32,
    pub worker: Option<String>,
    pub reason: Option<String>,
    /// Who caused it, when a person did (a token's prefix and name).
    pub actor: Option<String>,
}

/// The columns of [`JobRow`], as a literal so that queries stay static strings.
macro_rules! job_columns {
    () => {
        "id, state, attempt, spec, created_at, updated_at, finished_at, lease_worker,
         commit_sha, image_id, pushed_ref, container_id, task_arn, stop_code, stopped_reason,
         exit_code, error_code, error, workers_lost, project_id,
         (select p.name from projects p where p.id = project_id) as project, rerun_of"
    };
}

impl Store {
    pub async fn job(&self, id: JobId) -> Result<JobRow, StoreError> {
        job(&mut *self.pool.acquire().await?, id).await
    }

    /// Newest first, matching every part of `filter`; `before` is the last id of
    /// the previous page. The primary key orders and pages it.
    pub async fn jobs(&self, filter: &JobFilter, before: Option<JobId>, limit: i64) -> Result<Vec<JobRow>, StoreError> {
        let (first, last) = filter.ids.unzip();
        let rows = sqlx::query_as::<_, JobRow>(concat!(
            "select ",
            job_columns!(),
            " from jobs
             where ($1::job_state is null or state = $1) and ($2::uuid is null or id < $2)
               and ($4::uuid is null or project_id = $4)
               and ($5::uuid is null or id between $5 and $6)
               and ($7::text is null or spec->>'repo' = $7) and ($8::text is null or spec->>'image' = $8)
             order by id desc limit $3"
        ))
        .bind(filter.state)
        .bind(before)
        .bind(limit)
        .bind(filter.project)
        .bind(first)
        .bind(last)
        .bind(filter.repo.as_deref())
        .bind(filter.image.as_deref())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// How many jobs match `filter` in each state (its own state left aside), every
    /// state listed. Grouped on the table alone, so that with no other filter it is
    /// an index-only scan of `jobs_state_id` once autovacuum has marked the finished
    /// jobs visible.
    pub async fn state_counts(&self, filter: &JobFilter) -> Result<Vec<(JobState, i64)>, StoreError> {
        let (first, last) = filter.ids.unzip();
        let found: Vec<(JobState, i64)> = sqlx::query_as(
            "select state, count(*) from jobs
             where ($1::uuid is null or project_id = $1) and ($2::uuid is null or id between $2 and $3)
               and ($4::text is null or spec->>'repo' = $4) and ($5::text is null or spec->>'image' = $5)
             group by state",
        )
        .bind(filter.project)
        .bind(first)
        .bind(last)
        .bind(filter.repo.as_deref())
        .bind(filter.image.as_deref())
        .fetch_all(&self.pool)
        .await?;
        Ok(JobState::ALL
            .iter()
            .map(|state| (*state, found.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n)))
            .collect())
    }

    /// Unfinished jobs matching `filter` (and among `ids`, when given), oldest
    /// first, at most `limit`: what a cancel by filter asks to stop.
    pub async fn unfinished_matching(
        &self,
        filter: &JobFilter,
        ids: Option<&[JobId]>,
        limit: i64,
    ) -> Result<Vec<(JobId, uuid::Uuid)>, StoreError> {
        let (first, last) = filter.ids.unzip();
        let rows = sqlx::query_as(
            "select id, project_id from jobs
             where state <> all($1) and ($2::job_state is null or state = $2)
               and ($3::uuid is null or project_id = $3) and ($4::text is null or spec->>'repo' = $4)
               and ($5::text is null or spec->>'image' = $5) and ($6::uuid is null or id between $6 and $7)
               and ($8::uuid[] is null or id = any($8))
             order by id limit $9",
        )
        .bind(JobState::TERMINAL)
        .bind(filter.state)
        .bind(filter.project)
        .bind(filter.repo.as_deref())
        .bind(filter.image.as_deref())
        .bind(first)
        .bind(last)
        .bind(ids)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Every step of every attempt, in the order they started.
    pub async fn steps(&self, id: JobId) -> Result<Vec<StepRow>, StoreError> {
        let rows = sqlx::query_as::<_, StepRow>(
            "select step::text as step, attempt, worker, started_at, finished_at, outcome, error_code, error,
                    cache_hits, cache_steps
             from job_steps where job_id = $1 order by attempt, started_at",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Unfinished jobs by state (every unfinished state, zero included), and the age
    /// in seconds of the oldest job waiting to be claimed (0 when none waits), in
    /// one project or all.
    pub async fn queue_stats(&self, project: Option<uuid::Uuid>) -> Result<(Vec<(JobState, i64)>, f64), StoreError> {
        let counts = sqlx::query_as(
            "select s.state, count(j.id)
             from unnest(enum_range(null::job_state)) as s(state)
             left join jobs j on j.state = s.state and ($2::uuid is null or j.project_id = $2)
             where s.state <> all($1)
             group by s.state order by s.state",
        )
        .bind(JobState::TERMINAL)
        .bind(project)
        .fetch_all(&self.pool)
        .await?;
        let oldest = sqlx::query_scalar(
            "select coalesce(extract(epoch from now() - min(run_after))::double precision, 0)
             from jobs where lease_token is null and state = any($1) and run_after <= now()
               and ($2::uuid is null or project_id = $2)",
        )
        .bind(Transition::Claim.from_states())
        .bind(project)
        .fetch_one(&self.pool)
        .await?;
        Ok((counts, oldest))
    }

    /// The job's history, oldest first.
    pub async fn events(&self, id: JobId) -> Result<Vec<EventRow>, StoreError> {
        let rows = sqlx::query_as::<_, EventRow>(
            "select id, at, from_state, to_state, attempt, worker, reason, actor
             from job_events where job_id = $1 order by id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}

/// One job, read on `conn` (inside a transaction, it sees that transaction's writes).
pub async fn job(conn: &mut sqlx::PgConnection, id: JobId) -> Result<JobRow, StoreError> {
    let row = sqlx::query_as::<_, JobRow>(concat!("select ", job_columns!(), " from jobs where id = $1"))
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(row)
}

/// What the dashboard's queue page shows, in one project or all.
#[derive(Debug, Clone, Default)]
pub struct QueueFigures {
    /// Jobs in each unfinished state.
    pub depth: Vec<(JobState, i64)>,
    /// Seconds the oldest runnable job has waited (0 when none waits).
    pub oldest_wait: f64,
    /// Jobs finished in each of the last 60 minutes, oldest first (minute, count).
    pub finished_per_minute: Vec<(DateTime<Utc>, i64)>,
    /// Why jobs failed in the last day: error code, count.
    pub failures: Vec<(String, i64)>,
}

impl Store {
    /// The queue's figures, from SQL (the finished jobs through their index).
    pub async fn queue_figures(&self, project: Option<uuid::Uuid>) -> Result<QueueFigures, StoreError> {
        let (depth, oldest_wait) = self.queue_stats(project).await?;
        let finished_per_minute = sqlx::query_as(
            "select m.minute, count(j.id)
             from generate_series(date_trunc('minute', now()) - interval '59 minutes', date_trunc('minute', now()),
                                  interval '1 minute') as m(minute)
             left join jobs j on j.finished_at >= m.minute and j.finished_at < m.minute + interval '1 minute'
               and ($1::uuid is null or j.project_id = $1)
             group by m.minute order by m.minute",
        )
        .bind(project)
        .fetch_all(&self.pool)
        .await?;
        let failures = sqlx::query_as(
            "select coalesce(error_code, 'unknown'), count(*) from jobs
             where state = 'failed' and finished_at > now() - interval '1 day'
               and ($1::uuid is null or project_id = $1)
             group by 1 order by 2 desc, 1 limit 20",
        )
        .bind(project)
        .fetch_all(&self.pool)
        .await?;
        Ok(QueueFigures { depth, oldest_wait, finished_per_minute, failures })
    }
}
