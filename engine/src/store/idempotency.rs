//! Submissions with an `Idempotency-Key`: the first creates the job, a repeat with
//! the same body gets that job back, a repeat with another body is refused.

use sqlx::types::Json;

use super::{JobRow, QUEUED_CHANNEL, Store, StoreError};
use crate::job::{JobId, JobSpec};

/// What a submission did.
#[derive(Debug, Clone)]
pub enum Submitted {
    /// The job as it was stored.
    Created(Box<JobRow>),
    /// The key was used before for the same spec: that job.
    Existing(JobId),
    /// The key was used before for another spec.
    Conflict(JobId),
}

/// Who submits a job, and for which project.
#[derive(Debug, Clone)]
pub struct Submitter {
    pub project: uuid::Uuid,
    /// How the job's history names the submitter (a token's prefix and name).
    pub actor: Option<String>,
    /// The reason of the job's first history row (`submitted`, `re-run of …`).
    pub reason: String,
    /// The job this one re-runs.
    pub rerun_of: Option<JobId>,
}

impl Store {
    /// Stores a new queued job (and its key, if any) and notifies idle
    /// orchestrators when it commits; the job row, its first event and the key are
    /// one transaction.
    pub async fn submit(
        &self,
        id: JobId,
        spec: &JobSpec,
        traceparent: Option<&str>,
        key: Option<&str>,
        by: &Submitter,
    ) -> Result<Submitted, StoreError> {
        const INSERT: &str = concat!(
            "with ins as (
                 insert into jobs (id, spec, traceparent, project_id, rerun_of) values ($1, $2, $3, $5, $8)
                 returning *
             ), ev as (
                 insert into job_events (job_id, from_state, to_state, attempt, reason, actor)
                 select id, null, state, attempt, $7, $6 from ins
             )
             select ",
            job_columns!(),
            ", pg_notify($4, id::text) from ins"
        );
        let insert = || {
            sqlx::query_as::<_, JobRow>(INSERT)
                .bind(id)
                .bind(Json(spec))
                .bind(traceparent)
                .bind(QUEUED_CHANNEL)
                .bind(by.project)
                .bind(by.actor.as_deref())
                .bind(&by.reason)
                .bind(by.rerun_of)
        };
        let Some(key) = key else {
            // Without a key the submission is one statement, committed on its own.
            return Ok(Submitted::Created(Box::new(insert().fetch_one(&self.pool).await?)));
        };
        let mut tx = self.pool.begin().await?;
        let created = insert().fetch_one(&mut *tx).await?;
        let stored: Option<JobId> = sqlx::query_scalar(
            "insert into idempotency_keys (key, job_id) values ($1, $2) on conflict (key) do nothing returning job_id",
        )
        .bind(key)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if stored.is_some() {
            tx.commit().await?;
            return Ok(Submitted::Created(Box::new(created)));
        }
        // The key is taken: nothing of this request is kept.
        tx.rollback().await?;
        let (existing, same): (JobId, bool) = sqlx::query_as(
            "select k.job_id, j.spec = $2 from idempotency_keys k join jobs j on j.id = k.job_id where k.key = $1",
        )
        .bind(key)
        .bind(Json(spec))
        .fetch_one(&self.pool)
        .await?;
        Ok(if same { Submitted::Existing(existing) } else { Submitted::Conflict(existing) })
    }
}
