//! `GET /v1/workers`: the workers the orchestrators ping, as last seen.
//!
//! A worker's address is the installation's business: it is shown to owner tokens
//! only.

use axum::Json;
use axum::extract::{Extension, State};
use serde::Serialize;

use super::ApiError;
use super::auth::Principal;
use crate::store::{Store, WorkerRow};

/// Workers no orchestrator pinged for this long are left out (gone from the
/// configuration, or every orchestrator down).
pub(crate) const SHOWN_WITHIN: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkerList {
    pub workers: Vec<WorkerView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkerView {
    /// The worker's own id (`SLIPWAY_WORKER_ID`); `null` if it never answered.
    pub id: Option<String>,
    /// Its gRPC address; owner tokens only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub runtimes: Vec<String>,
    pub slots_busy: i32,
    pub slots_total: i32,
    /// Whether it answered the last ping.
    pub reachable: bool,
    /// Why it takes no job now, as it said (its engine is wedged).
    pub unhealthy: Option<String>,
    pub last_answer_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The orchestrator that pinged it last, and when.
    pub seen_by: String,
    pub seen_at: chrono::DateTime<chrono::Utc>,
}

#[utoipa::path(
    get, path = "/v1/workers", tag = "workers",
    responses((status = 200, description = "The workers, as last seen", body = WorkerList)),
)]
pub async fn list(
    State(store): State<Store>,
    Extension(caller): Extension<Principal>,
) -> Result<Json<WorkerList>, ApiError> {
    let owner = caller.project.is_none();
    let workers = store.workers(SHOWN_WITHIN).await?.into_iter().map(|row| WorkerView::new(row, owner)).collect();
    Ok(Json(WorkerList { workers }))
}

impl WorkerView {
    fn new(row: WorkerRow, with_url: bool) -> Self {
        WorkerView {
            id: row.worker_id,
            url: with_url.then_some(row.url),
            labels: row.labels.0,
            runtimes: row.runtimes,
            slots_busy: row.slots_busy,
            slots_total: row.slots_total,
            reachable: row.reachable,
            unhealthy: row.unhealthy,
            last_answer_at: row.last_answer_at,
            seen_by: row.seen_by,
            seen_at: row.seen_at,
        }
    }
}
