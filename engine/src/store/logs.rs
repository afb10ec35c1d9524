//! Log lines: appended in batches, fenced like every other write of a worker, and
//! read back in the order they were produced.

use chrono::{DateTime, Utc};
use serde::Serialize;
use slipway_steps::Step;

use super::{Lease, Store, StoreError};
use crate::job::JobId;
use crate::job::transitions::Transition;

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
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct LogRow {
    /// Increases with every line stored: the position to resume after.
    pub id: i64,
    pub attempt: i32,
    /// The worker that sent the line.
    pub worker: Option<String>,
    pub step: String,
    pub stream: String,
    pub at: DateTime<Utc>,
    pub line: String,
}

impl Store {
    /// Up to `limit` lines of a job after line `after`, oldest first.
    pub async fn logs(&self, job_id: JobId, after: i64, limit: i64) -> Result<Vec<LogRow>, StoreError> {
        let rows = sqlx::query_as::<_, LogRow>(
            "select id, attempt, worker, step::text as step, stream, at, line from job_logs
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

/// Appends a batch of lines of the leased attempt, and the position their source
/// is read up to (`cursor`), in one statement; nothing is stored when the lease is
/// no longer current. A job stores at most `max_bytes` of lines: the line
/// that would cross the limit is replaced by one marker line saying so, and every
/// later line is dropped.
pub async fn append_logs(
    conn: &mut sqlx::PgConnection,
    lease: &Lease,
    lines: &[NewLogLine],
    cursor: Option<&str>,
    max_bytes: i64,
) -> Result<(), StoreError> {
    if lines.is_empty() && cursor.is_none() {
        return Ok(());
    }
    let used: Option<i64> = sqlx::query_scalar(
        "select log_bytes from jobs
         where id = $1 and lease_token = $2 and lease_worker = coalesce($4, lease_worker) and state = any($3)
         for update",
    )
    .bind(lease.job_id)
    .bind(lease.token)
    .bind(Transition::KeepLease.from_states())
    .bind(&lease.worker)
    .fetch_optional(&mut *conn)
    .await?;
    let used = used.ok_or(StoreError::LeaseLost)?;
    let (kept, total) = within_limit(lines, used, max_bytes);
    let steps: Vec<&str> = kept.iter().map(|l| l.step.as_str()).collect();
    let streams: Vec<&str> = kept.iter().map(|l| l.stream).collect();
    let ats: Vec<DateTime<Utc>> = kept.iter().map(|l| l.at).collect();
    // Postgres text cannot hold NUL.
    let texts: Vec<String> = kept.iter().map(|l| l.line.replace('\0', "\u{FFFD}")).collect();
    sqlx::query(
        "with ins as (
             insert into job_logs (job_id, attempt, worker, step, stream, at, line)
             select $1, $2, $9, s::job_step, st, a, l
             from unnest($3::text[], $4::text[], $5::timestamptz[], $6::text[]) with ordinality as t(s, st, a, l, n)
             order by n
         )
         update jobs set log_bytes = $7, log_cursor = coalesce($8, log_cursor) where id = $1",
    )
    .bind(lease.job_id)
    .bind(lease.attempt)
    .bind(&steps)
    .bind(&streams)
    .bind(&ats)
    .bind(&texts)
    .bind(total)
    .bind(cursor)
    .bind(&lease.worker)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The lines of a batch that fit under `max_bytes` given `used`, with the marker
/// line when the batch crosses the limit, and the new byte count (past the limit
/// once the marker is written, so that it is written once).
fn within_limit(lines: &[NewLogLine], used: i64, max_bytes: i64) -> (Vec<NewLogLine>, i64) {
    let mut kept = Vec::new();
    let mut total = used;
    for line in lines {
        let size = line.line.len() as i64;
        if total + size > max_bytes {
            if total <= max_bytes {
                kept.push(NewLogLine {
                    step: line.step,
                    stream: "system",
                    at: line.at,
                    line: format!(
                        "[slipway] this job's log reached its limit of {max_bytes} bytes; later lines are dropped"
                    ),
                });
                total = max_bytes + 1;
            }
            break;
        }
        total += size;
        kept.push(line.clone());
    }
    (kept, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> NewLogLine {
        NewLogLine { step: Step::Run, stream: "stdout", at: Utc::now(), line: text.into() }
    }

    #[test]
    fn keeps_lines_up_to_the_limit_then_one_marker_then_nothing() {
        let batch = vec![line("aaaa"), line("bbbb"), line("cccc")];
        let (kept, total) = within_limit(&batch, 0, 100);
        assert_eq!((kept.len(), total), (3, 12));

        let (kept, total) = within_limit(&batch, 0, 9);
        let texts: Vec<&str> = kept.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(&texts[..2], ["aaaa", "bbbb"]);
        assert!(texts[2].contains("limit of 9 bytes"));
        assert_eq!((kept[2].stream, total), ("system", 10));

        let (kept, total) = within_limit(&batch, total, 9);
        assert!(kept.is_empty());
        assert_eq!(total, 10);
    }
}
