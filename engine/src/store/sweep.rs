//! What the TTL sweep reads and deletes: finished jobs past their retention (their
//! events, steps, logs and idempotency keys go with them), and which jobs the
//! leftovers on an engine belong to.

use std::time::Duration;

use super::{Store, StoreError};
use crate::auth::ProjectId;
use crate::job::{JobId, JobState};

/// A finished job past its retention.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExpiredJob {
    pub id: JobId,
    pub pushed_ref: Option<String>,
    /// Whether a job still kept pushed the same manifest: it must stay in the registry.
    pub image_shared: bool,
    pub project_id: ProjectId,
    /// The secret the job named for its registry (`registry.credentials`).
    pub registry_credentials: Option<String>,
}

impl Store {
    /// This installation's id.
    pub async fn instance_id(&self) -> Result<String, StoreError> {
        let id: uuid::Uuid = sqlx::query_scalar("select id from slipway_instance").fetch_one(&self.pool).await?;
        Ok(id.to_string())
    }

    /// Up to `limit` finished jobs that ended more than `retention` ago, oldest first.
    pub async fn expired_jobs(&self, retention: Duration, limit: i64) -> Result<Vec<ExpiredJob>, StoreError> {
        let jobs = sqlx::query_as::<_, ExpiredJob>(
            "select j.id, j.pushed_ref,
                    j.pushed_ref is not null and exists (select 1 from jobs o
                            where o.pushed_ref = j.pushed_ref and o.id <> j.id
                              and (o.finished_at is null or o.finished_at >= now() - make_interval(secs => $1))
                    ) as image_shared,
                    j.project_id, j.spec->'registry'->>'credentials' as registry_credentials
             from jobs j
             where j.state = any($3)
               and j.finished_at < now() - make_interval(secs => $1)
             order by j.finished_at
             limit $2",
        )
        .bind(retention.as_secs_f64())
        .bind(limit)
        .bind(JobState::TERMINAL)
        .fetch_all(&self.pool)
        .await?;
        Ok(jobs)
    }

    /// Deletes finished jobs and everything recorded about them.
    pub async fn delete_jobs(&self, ids: &[JobId]) -> Result<u64, StoreError> {
        let deleted = sqlx::query("delete from jobs where id = any($1) and state = any($2)")
            .bind(ids)
            .bind(JobState::TERMINAL)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(deleted)
    }

    /// Of `ids`, those that exist, with whether each has ended.
    pub async fn job_states(&self, ids: &[JobId]) -> Result<Vec<(JobId, bool)>, StoreError> {
        let rows = sqlx::query_as("select id, state = any($2) from jobs where id = any($1)")
            .bind(ids)
            .bind(JobState::TERMINAL)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows)
    }
}
