//! `POST /v1/jobs/cancel`: every unfinished job matching a filter asked to stop, as
//! if each had been cancelled on its own (same statement, same history row, an
//! audit entry each).
//!
//! A filter must name something: an empty one would stop every job of the scope,
//! which nobody means by accident. One request asks at most [`MAX_PER_REQUEST`]
//! jobs, so that its time stays bounded; `more` says that others still match.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use slipway_observability::metrics;

use super::auth::Principal;
use super::body::read_json;
use super::clients::ClientAddr;
use super::job_actions::{check_filter_text, listing_scope};
use super::{ApiError, AppState};
use crate::job::{JobId, JobState};
use crate::store::{CancelOutcome, JobFilter};

/// The most jobs one request asks to stop.
pub const MAX_PER_REQUEST: usize = 1000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelFilter {
    /// One unfinished state (`queued`, `cloning`, …).
    pub(crate) state: Option<JobState>,
    /// A project's name (an owner token's choice; a project token's own).
    pub(crate) project: Option<String>,
    /// The repository URL, exactly as submitted.
    pub(crate) repo: Option<String>,
    /// The image, exactly as submitted.
    pub(crate) image: Option<String>,
    /// The first hex digits of the id (1-32, dashes ignored).
    pub(crate) id_prefix: Option<String>,
    /// Job ids, at most [`MAX_PER_REQUEST`].
    pub(crate) ids: Option<Vec<JobId>>,
}

impl CancelFilter {
    /// Whether it names nothing (and would match every job).
    pub(crate) fn is_empty(&self) -> bool {
        [&self.project, &self.repo, &self.image, &self.id_prefix].iter().all(|f| f.is_none())
            && self.state.is_none()
            && self.ids.is_none()
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CancelCount {
    /// How many jobs were asked to stop.
    pub asked: usize,
    /// Of those, how many held no lease and are `cancelled` now.
    pub cancelled: usize,
    /// Of those, how many are being stopped by their worker (they end `cancelled`).
    pub stopping: usize,
    /// Whether more jobs match than one request asks (send it again).
    pub more: bool,
}

#[utoipa::path(
    post, path = "/v1/jobs/cancel", tag = "jobs",
    request_body = CancelFilter,
    responses(
        (status = 200, description = "How many jobs were asked to stop", body = CancelCount),
        (status = 400, description = "An empty or wrong filter; `field` names it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn cancel_matching(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<CancelCount>, ApiError> {
    let filter: CancelFilter = read_json(&headers, body).await?;
    Ok(Json(cancel_matching_jobs(&state, &caller, client.map(|c| c.0), &filter).await?))
}

/// The unfinished jobs the filter matches in the caller's projects, oldest first,
/// at most [`MAX_PER_REQUEST`], and whether more match.
pub(crate) async fn matching_jobs(
    state: &AppState,
    caller: &Principal,
    filter: &CancelFilter,
) -> Result<(Vec<(JobId, uuid::Uuid)>, bool), ApiError> {
    if filter.is_empty() {
        return Err(ApiError::invalid(
            "filter",
            "name a state, project, repo, image, id_prefix or ids: an empty filter would cancel every job",
        ));
    }
    if let Some(finished) = filter.state.filter(|s| s.is_terminal()) {
        return Err(ApiError::invalid("state", format!("`{}` jobs have ended already", finished.as_str())));
    }
    check_filter_text("repo", filter.repo.as_deref())?;
    check_filter_text("image", filter.image.as_deref())?;
    let id_range = filter
        .id_prefix
        .as_deref()
        .map(|p| crate::job::id_prefix_range(p).map_err(|why| ApiError::invalid("id_prefix", why)))
        .transpose()?;
    if filter.ids.as_ref().is_some_and(|ids| ids.len() > MAX_PER_REQUEST) {
        return Err(ApiError::invalid("ids", format!("at most {MAX_PER_REQUEST} ids a request")));
    }
    let Some(project) = listing_scope(&state.store, caller, filter.project.as_deref()).await? else {
        return Ok((Vec::new(), false));
    };
    let store_filter = JobFilter {
        project,
        state: filter.state,
        ids: id_range,
        repo: filter.repo.clone(),
        image: filter.image.clone(),
    };
    let limit = MAX_PER_REQUEST as i64 + 1;
    let mut matching = state.store.unfinished_matching(&store_filter, filter.ids.as_deref(), limit).await?;
    let more = matching.len() > MAX_PER_REQUEST;
    matching.truncate(MAX_PER_REQUEST);
    Ok((matching, more))
}

/// Asks every unfinished job the filter matches, in the caller's projects, to stop.
pub(crate) async fn cancel_matching_jobs(
    state: &AppState,
    caller: &Principal,
    client: Option<ClientAddr>,
    filter: &CancelFilter,
) -> Result<CancelCount, ApiError> {
    let (matching, more) = matching_jobs(state, caller, filter).await?;
    let mut count = CancelCount { asked: 0, cancelled: 0, stopping: 0, more };
    let by = caller.label();
    for (id, project) in matching {
        match state.store.request_cancel(id, Some(&by)).await? {
            CancelOutcome::Cancelled => {
                metrics::JOBS_FINISHED.inc(&[JobState::Cancelled.as_str()]);
                count.cancelled += 1;
            }
            CancelOutcome::Requested => count.stopping += 1,
            // It ended between the listing and the cancel.
            CancelOutcome::AlreadyFinished(_) => continue,
        }
        count.asked += 1;
        let target = id.to_string();
        super::access::audit(state, caller, client, "job.cancel", Some(project), Some(&target)).await;
    }
    tracing::info!(asked = count.asked, more = count.more, by = %caller.prefix, "cancel by filter");
    Ok(count)
}
