//! The workers as orchestrators last saw them: written after each round of pings,
//! read by `GET /v1/workers`.
//!
//! A row is rewritten when what it says changed, or when it is a few seconds old, so
//! that an idle fleet costs no write per heartbeat and `last_answer_at` stays fresh
//! within [`REFRESH`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;

use super::{Store, StoreError, WorkerOffer};

/// How old a row that says nothing new may grow before it is rewritten.
pub const REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// One worker after a ping: its answer, or `None` when it did not answer.
#[derive(Debug, Clone)]
pub struct WorkerSeen {
    pub url: String,
    pub answer: Option<WorkerAnswer>,
}

#[derive(Debug, Clone)]
pub struct WorkerAnswer {
    pub worker_id: String,
    pub offer: WorkerOffer,
    pub slots_total: u32,
    pub slots_busy: u32,
    pub unhealthy: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct WorkerRow {
    pub url: String,
    pub worker_id: Option<String>,
    pub labels: Json<std::collections::BTreeMap<String, String>>,
    pub runtimes: Vec<String>,
    pub slots_total: i32,
    pub slots_busy: i32,
    pub unhealthy: Option<String>,
    pub reachable: bool,
    pub last_answer_at: Option<DateTime<Utc>>,
    pub seen_by: String,
    pub seen_at: DateTime<Utc>,
}

impl Store {
    /// Records one round of pings by orchestrator `seen_by`, in one statement. A
    /// worker that did not answer keeps what it said last.
    pub async fn record_workers(&self, seen_by: &str, seen: &[WorkerSeen]) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        let rows: Vec<serde_json::Value> = seen
            .iter()
            .map(|w| match &w.answer {
                Some(a) => serde_json::json!({
                    "url": w.url, "reachable": true, "worker_id": a.worker_id,
                    "labels": a.offer.labels, "runtimes": a.offer.runtimes,
                    "slots_total": a.slots_total, "slots_busy": a.slots_busy, "unhealthy": a.unhealthy,
                }),
                None => serde_json::json!({ "url": w.url, "reachable": false }),
            })
            .collect();
        sqlx::query(
            "insert into workers as w (url, worker_id, labels, runtimes, slots_total, slots_busy, unhealthy,
                                       reachable, last_answer_at, seen_by, seen_at)
             select r.url, r.worker_id, coalesce(r.labels, '{}'),
                    coalesce(array(select jsonb_array_elements_text(r.runtimes)), '{}'),
                    coalesce(r.slots_total, 0), coalesce(r.slots_busy, 0), r.unhealthy,
                    r.reachable, case when r.reachable then now() end, $2, now()
             from jsonb_to_recordset($1) as r(url text, worker_id text, labels jsonb, runtimes jsonb,
                                              slots_total integer, slots_busy integer, unhealthy text,
                                              reachable boolean)
             on conflict (url) do update set
                 worker_id = coalesce(excluded.worker_id, w.worker_id),
                 labels = case when excluded.reachable then excluded.labels else w.labels end,
                 runtimes = case when excluded.reachable then excluded.runtimes else w.runtimes end,
                 slots_total = case when excluded.reachable then excluded.slots_total else w.slots_total end,
                 slots_busy = case when excluded.reachable then excluded.slots_busy else 0 end,
                 unhealthy = case when excluded.reachable then excluded.unhealthy else w.unhealthy end,
                 reachable = excluded.reachable,
                 last_answer_at = coalesce(excluded.last_answer_at, w.last_answer_at),
                 seen_by = excluded.seen_by, seen_at = excluded.seen_at
             where w.seen_at < now() - $3::interval
                or w.reachable is distinct from excluded.reachable
                or (excluded.reachable and (w.worker_id, w.labels, w.runtimes, w.slots_total, w.slots_busy, w.unhealthy)
                    is distinct from
                    (excluded.worker_id, excluded.labels, excluded.runtimes, excluded.slots_total,
                     excluded.slots_busy, excluded.unhealthy))",
        )
        .bind(Json(rows))
        .bind(seen_by)
        .bind(format!("{} seconds", REFRESH.as_secs()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The workers some orchestrator pinged within `within`, by id.
    pub async fn workers(&self, within: std::time::Duration) -> Result<Vec<WorkerRow>, StoreError> {
        let rows = sqlx::query_as(
            "select url, worker_id, labels, runtimes, slots_total, slots_busy, unhealthy, reachable,
                    last_answer_at, seen_by, seen_at
             from workers where seen_at > now() - $1::interval order by worker_id nulls last, url",
        )
        .bind(format!("{} seconds", within.as_secs()))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}
