//! `/v1/jobs` handlers.

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::body::{read_json, read_optional_json};
use super::clients::ClientAddr;
use super::job_actions::{Cancelled, cancel_job, listing_scope, rerun_job, visible};
use super::views::{EventPage, JobPage, JobView, LogPage};
use super::{ApiError, AppState, follow};
use crate::error::Code;
use crate::job::{JobId, JobRequest, JobState};
use slipway_observability::{metrics, trace};
use tracing::Instrument;

use super::auth::Principal;
use crate::auth::{DEFAULT_PROJECT, ProjectId};
use crate::store::{JobFilter, Store, Submitted, Submitter};

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 500;
const DEFAULT_LOG_PAGE: i64 = 1000;
const MAX_LOG_PAGE: i64 = 10_000;

/// `POST /v1/jobs`: validates the body and stores the job; nothing is written for
/// a request that is refused.
#[utoipa::path(
    post, path = "/v1/jobs", tag = "jobs",
    request_body = crate::job::JobRequest,
    params(("Idempotency-Key" = Option<String>, Header,
            description = "1-255 visible ASCII characters: a repeat with the same body gets the same job")),
    responses(
        (status = 201, description = "The job, queued", body = JobView,
         headers(("Location" = String, description = "The job's URL"))),
        (status = 200, description = "A repeat of an earlier request with the same Idempotency-Key and body: that job",
         body = JobView),
        (status = 400, description = "A field is wrong; `field` names it", body = super::openapi::ErrorBody),
        (status = 409, description = "The Idempotency-Key was used with another body", body = super::openapi::ErrorBody),
        (status = 503, description = "A project secret is named but the server holds no secrets key",
         body = super::openapi::ErrorBody),
    ),
)]
pub async fn submit(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let store = &state.store;
    let key = idempotency_key(&headers)?;
    let request: JobRequest = read_json(&headers, body).await?;
    let project = project_for(store, &caller, request.project.as_deref()).await?;
    let mut spec = request.validate(&state.defaults).map_err(|e| {
        let code = if e.credentials { Code::CredentialsInUrl } else { Code::InvalidField };
        ApiError { field: Some(e.field), ..ApiError::new(code, e.message) }
    })?;
    crate::secrets::for_job::fill_git_default(store, project, &mut spec).await?;
    crate::secrets::for_job::check_submission(&state.vault, project, &spec).await?;
    let id = JobId::new();
    // The job's trace begins here; its context is stored with the job.
    let span = tracing::info_span!("job.submit", job.id = %id);
    let traceparent = trace::traceparent_of(&span).unwrap_or_else(trace::random_traceparent);
    let by = Submitter { project, actor: Some(caller.label()), reason: "submitted".into(), rerun_of: None };
    let submitted = store.submit(id, &spec, Some(&traceparent), key.as_deref(), &by).instrument(span).await?;
    let (job, status) = match submitted {
        Submitted::Created(row) => {
            tracing::info!(job.id = %row.id, repo = %spec.repo, image = %spec.image, by = %caller.prefix, "job submitted");
            metrics::JOBS_SUBMITTED.inc(&[]);
            let target = row.id.to_string();
            super::access::audit(&state, &caller, client.map(|c| c.0), "job.submit", Some(project), Some(&target))
                .await;
            (JobView::new(*row, Some(Vec::new())), StatusCode::CREATED)
        }
        Submitted::Existing(id) => (JobView::new(store.job(id).await?, Some(store.steps(id).await?)), StatusCode::OK),
        Submitted::Conflict(id) => {
            return Err(ApiError {
                field: Some("Idempotency-Key".into()),
                ..ApiError::new(
                    Code::IdempotencyKeyReused,
                    format!("this Idempotency-Key was used for job {id} with another request body"),
                )
            });
        }
    };
    let location = format!("/v1/jobs/{}", job.id);
    Ok((status, [(header::LOCATION, location)], Json(job)).into_response())
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get("idempotency-key") else { return Ok(None) };
    match raw.to_str() {
        Ok(key) if (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(key.to_string()))
        }
        _ => Err(ApiError::invalid(
            "Idempotency-Key",
            "the Idempotency-Key header must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// `POST /v1/jobs/{id}/rerun`: a new job with the same specification, in the same
/// project, its history saying which job it re-runs; `201` with the new job.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/rerun", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job to run again")),
    request_body(content = Option<RerunRequest>, description = "Optional"),
    responses(
        (status = 201, description = "The new job", body = JobView,
         headers(("Location" = String, description = "The new job's URL"))),
        (status = 400, description = "A bad id or body", body = super::openapi::ErrorBody),
        (status = 404, description = "No such job (or one of another project)", body = super::openapi::ErrorBody),
        (status = 409, description = "`same_commit`, and the job has no commit yet", body = super::openapi::ErrorBody),
    ),
)]
pub async fn rerun(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    client: Option<Extension<ClientAddr>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: RerunRequest = read_optional_json(&headers, body).await?;
    let row = rerun_job(&state, &caller, client.map(|c| c.0), job_id(&id)?, request.same_commit).await?;
    let location = format!("/v1/jobs/{}", row.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(JobView::new(row, Some(Vec::new())))).into_response())
}

/// `POST /v1/jobs/{id}/rerun`'s optional body.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RerunRequest {
    /// Build the commit the original job built, not what its ref names now.
    #[serde(default)]
    same_commit: bool,
}

/// The project a submission goes to: the one it names, which must be the token's
/// unless the token is an owner's; else the token's; else (an owner naming none)
/// `default`.
async fn project_for(store: &Store, caller: &Principal, named: Option<&str>) -> Result<ProjectId, ApiError> {
    match (&caller.project, named) {
        (Some((id, _)), None) => Ok(*id),
        (Some((id, own)), Some(name)) if name == own => Ok(*id),
        (Some((_, own)), Some(name)) => Err(ApiError {
            field: Some("project".into()),
            ..ApiError::new(Code::Forbidden, format!("this token submits to project `{own}`, not `{name}`"))
        }),
        (None, named) => {
            let name = named.unwrap_or(DEFAULT_PROJECT);
            let project = store.project_named(name).await?;
            project.map(|p| p.id).ok_or_else(|| ApiError::invalid("project", format!("there is no project `{name}`")))
        }
    }
}

/// `POST /v1/jobs/{id}/cancel`: a job without a lease is cancelled at once
/// (`200`); a leased job's worker is told to stop it (`202`), and the job ends
/// `cancelled` when it has. A job that already ended answers `409`.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job held no lease and is cancelled", body = JobView),
        (status = 202, description = "Its worker is told to stop it; it ends `cancelled`", body = JobView),
        (status = 400, description = "Not a job id", body = super::openapi::ErrorBody),
        (status = 404, description = "No such job (or one of another project)", body = super::openapi::ErrorBody),
        (status = 409, description = "The job has already ended", body = super::openapi::ErrorBody),
    ),
)]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    client: Option<Extension<ClientAddr>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let store = &state.store;
    let id = job_id(&id)?;
    let status = match cancel_job(&state, &caller, client.map(|c| c.0), id).await? {
        Cancelled::Now => StatusCode::OK,
        Cancelled::Stopping => StatusCode::ACCEPTED,
    };
    let job = JobView::new(store.job(id).await?, Some(store.steps(id).await?));
    Ok((status, Json(job)).into_response())
}

/// A job id from a path, or `400` naming `id`.
pub(crate) fn job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|_| ApiError::invalid("id", format!("`{raw}` is not a job id")))
}

/// `GET /v1/jobs/{id}`
#[utoipa::path(
    get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job, with every step of every attempt", body = JobView),
        (status = 400, description = "Not a job id", body = super::openapi::ErrorBody),
        (status = 404, description = "No such job (or one of another project)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn get(
    State(store): State<Store>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = job_id(&id)?;
    let row = visible(&store, &caller, id).await?;
    let steps = store.steps(id).await?;
    Ok(Json(JobView::new(row, Some(steps))))
}

/// `GET /v1/jobs/{id}/events`: the job's history, one entry per transition, oldest first.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job's history, oldest first", body = EventPage),
        (status = 400, description = "Not a job id", body = super::openapi::ErrorBody),
        (status = 404, description = "No such job (or one of another project)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn events(
    State(store): State<Store>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<EventPage>, ApiError> {
    let id = job_id(&id)?;
    visible(&store, &caller, id).await?;
    Ok(Json(EventPage { events: store.events(id).await? }))
}

/// `GET /v1/jobs?state=&limit=&cursor=&project=&id_prefix=`: newest first.
#[utoipa::path(
    get, path = "/v1/jobs", tag = "jobs",
    params(JobListQuery),
    responses(
        (status = 200, description = "Jobs, newest first", body = JobPage),
        (status = 400, description = "A parameter is wrong; `field` names it", body = super::openapi::ErrorBody),
    ),
)]
pub async fn list(
    State(store): State<Store>,
    Extension(caller): Extension<Principal>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<JobPage>, ApiError> {
    for key in params.keys() {
        if !matches!(key.as_str(), "state" | "limit" | "cursor" | "project" | "id_prefix") {
            return Err(ApiError::invalid(
                key.clone(),
                format!("unknown parameter `{key}`; use state, limit, cursor, project or id_prefix"),
            ));
        }
    }
    let state = params
        .get("state")
        .map(|s| s.parse::<JobState>().map_err(|why| ApiError::invalid("state", why)))
        .transpose()?;
    let limit = page_size(params.get("limit"), DEFAULT_PAGE, MAX_PAGE)?;
    let cursor = params
        .get("cursor")
        .map(|c| c.parse::<JobId>().map_err(|_| ApiError::invalid("cursor", format!("`{c}` is not a cursor"))))
        .transpose()?;
    let ids = params
        .get("id_prefix")
        .map(|p| crate::job::id_prefix_range(p).map_err(|why| ApiError::invalid("id_prefix", why)))
        .transpose()?;
    // Every parameter is checked before a project that matches nothing ends the search.
    let Some(project) = listing_scope(&store, &caller, params.get("project").map(String::as_str)).await? else {
        return Ok(Json(JobPage { jobs: Vec::new(), next_cursor: None }));
    };
    let filter = JobFilter { project, state, ids, ..Default::default() };
    let rows = store.jobs(&filter, cursor, limit).await?;
    let next_cursor = if rows.len() as i64 == limit { rows.last().map(|r| r.id) } else { None };
    let jobs = rows.into_iter().map(|r| JobView::new(r, None)).collect();
    Ok(Json(JobPage { jobs, next_cursor }))
}

/// `GET /v1/jobs/{id}/logs?after=&limit=`: lines in the order they were produced.
/// With `follow=true` (or `Accept: text/event-stream`): Server-Sent Events, from
/// `Last-Event-ID` or `after`, until the job ends.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/logs", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id"), LogQuery,
           ("Last-Event-ID" = Option<String>, Header, description = "Resume a stream after this line id")),
    responses(
        (status = 200, description = "A page of lines; with `follow=true` (or `Accept: text/event-stream`) a stream \
                                      of Server-Sent Events: `line` (data: a line), `end` (data: the job's state), \
                                      `error`, `shutdown`",
         content((LogPage = "application/json"), (String = "text/event-stream"))),
        (status = 400, description = "A parameter is wrong; `field` names it", body = super::openapi::ErrorBody),
        (status = 404, description = "No such job (or one of another project)", body = super::openapi::ErrorBody),
        (status = 503, description = "Too many streams are open (from this client, or in all)",
         body = super::openapi::ErrorBody),
    ),
)]
pub async fn logs(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    client: Option<axum::Extension<ClientAddr>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let store = &state.store;
    let id = job_id(&id)?;
    for key in params.keys() {
        if !matches!(key.as_str(), "after" | "limit" | "follow") {
            return Err(ApiError::invalid(
                key.clone(),
                format!("unknown parameter `{key}`; use after, limit or follow"),
            ));
        }
    }
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(String::from);
    let after = match resume.as_ref().or(params.get("after")) {
        Some(a) => a.parse::<i64>().map_err(|_| ApiError::invalid("after", format!("`{a}` is not a line id")))?,
        None => 0,
    };
    let wants_stream =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/event-stream"));
    let follow = match params.get("follow").map(String::as_str) {
        None => wants_stream,
        Some("true") => true,
        Some("false") => false,
        Some(other) => return Err(ApiError::invalid("follow", format!("follow must be true or false, not `{other}`"))),
    };
    // Read the state first: a job seen finished has all its lines stored already.
    let finished = visible(store, &caller, id).await?.state.is_terminal();
    if follow {
        let addr = client.map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.0.0);
        let slot = state.clients.follow(addr)?;
        let token = (caller.token_id, caller.expires_at);
        let stream = follow::stream(store.clone(), state.changes.clone(), id, after, slot, token, follow::line_event);
        return Ok(stream.into_response());
    }
    let limit = page_size(params.get("limit"), DEFAULT_LOG_PAGE, MAX_LOG_PAGE)?;
    let lines = store.logs(id, after, limit).await?;
    let next_after = lines.last().map(|l| l.id).unwrap_or(after);
    let finished = finished && (lines.len() as i64) < limit;
    Ok(Json(LogPage { lines, next_after, finished }).into_response())
}

/// `GET /v1/jobs`'s parameters.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct JobListQuery {
    /// Only jobs in this state.
    state: Option<JobState>,
    /// 1-500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<JobId>,
    /// A project's name (owner tokens; a project token lists its own).
    project: Option<String>,
    /// The first hex digits of the id (1-32, dashes ignored).
    id_prefix: Option<String>,
}

/// `GET /v1/jobs/{id}/logs`'s parameters.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct LogQuery {
    /// Lines after this line id (`next_after` of the previous page).
    after: Option<i64>,
    /// 1-10000 (default 1000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<i64>,
    /// A stream of Server-Sent Events until the job ends.
    follow: Option<bool>,
}

fn page_size(raw: Option<&String>, default: i64, max: i64) -> Result<i64, ApiError> {
    match raw {
        None => Ok(default),
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid("limit", format!("limit must be a whole number from 1 to {max}"))),
        },
    }
}
