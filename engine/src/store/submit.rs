//! Submitting a job: the row, its first event and the wake-up, in one statement.

use sqlx::types::Json;

use super::{QUEUED_CHANNEL, Store, StoreError};
use crate::job::{JobId, JobSpec};

impl Store {
    /// Stores a new queued job and notifies idle orchestrators when it commits.
    pub async fn insert_job(&self, id: JobId, spec: &JobSpec, traceparent: Option<&str>) -> Result<(), StoreError> {
        sqlx::query(
            "with ins as (
                 insert into jobs (id, spec, traceparent) values ($1, $2, $3)
                 returning id, state, attempt
             ), ev as (
                 insert into job_events (job_id, from_state, to_state, attempt, reason)
                 select id, null, state, attempt, 'submitted' from ins
             )
             select pg_notify($4, id::text) from ins",
        )
        .bind(id)
        .bind(Json(spec))
        .bind(traceparent)
        .bind(QUEUED_CHANNEL)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
