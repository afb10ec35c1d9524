//! Log lines: appended in batches, fenced like every other write of a worker, and
//! read back in the order they were produced.

use chrono::{DateTime, Utc};
use serde::Serialize;
use slipway_steps::Step;

use super::{Lease, Store, StoreError};
use crate::job::JobId;

/// A line as a worker sends it.
#[derive(Debug, Clone)]
pub struct NewLogLine {
    pub step: Step,
    /// `stdout`, `stderr` or `system`.
    pub stream: &'static str,
    pub at: DateTime<Utc>,
    pub line: String,
}

/// A stored line, as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LogRow {
    /// Increases with every line stored: the position to resume after.
    pub id: i64,
    pub attempt: i32,
    pub step: String,
    pub stream: String,
    pub at: DateTime<Utc>,
    pub line: String,
}

impl Store {
    /// Up to `limit` lines of a job after line `after`, oldest first.
    pub async fn logs(&self, job_id: JobId, after: i64, limit: i64) -> Result<Vec<LogRow>, StoreError> {
        let rows = sqlx::query_as::<_, LogRow>(
            "select id, attempt, step::text as step, stream, at, line from job_logs
             where job_id = $1 and id > $2 order by id limit $3",
        )
        .bind(job_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}

/// Appends a batch of lines of the leased attempt; nothing is stored when the
/// lease is no longer current.
pub async fn append_logs(conn: &mut sqlx::PgConnection, lease: &Lease, lines: &[NewLogLine]) -> Result<(), StoreError> {
    if lines.is_empty() {
        return Ok(());
    }
    let steps: Vec<&str> = lines.iter().map(|l| l.step.as_str()).collect();
    let streams: Vec<&str> = lines.iter().map(|l| l.stream).collect();
    let ats: Vec<DateTime<Utc>> = lines.iter().map(|l| l.at).collect();
    // Postgres text cannot hold NUL.
    let texts: Vec<String> = lines.iter().map(|l| l.line.replace('\0', "\u{FFFD}")).collect();
    let rows = sqlx::query(
        "insert into job_logs (job_id, attempt, step, stream, at, line)
         select $1, $2, s::job_step, st, a, l
         from unnest($3::text[], $4::text[], $5::timestamptz[], $6::text[]) with ordinality as t(s, st, a, l, n)
         where exists (select 1 from jobs where id = $1 and lease_token = $7)
         order by n",
    )
    .bind(lease.job_id)
    .bind(lease.attempt)
    .bind(&steps)
    .bind(&streams)
    .bind(&ats)
    .bind(&texts)
    .bind(lease.token)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if rows == 0 { Err(StoreError::LeaseLost) } else { Ok(()) }
}
