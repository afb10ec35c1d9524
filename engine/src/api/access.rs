//! `/v1/projects` and their tokens: owners make projects; a project's admins (and
//! owners) make, list and revoke its tokens, never of a role above their own. A
//! new token is shown once, in the answer that makes it. Every change is in the
//! audit log.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::auth::Principal;
use super::body::read_json;
use super::clients::ClientAddr;
use super::{ApiError, AppState};
use crate::auth::token::NewToken;
use crate::auth::{ProjectId, Role, is_project_name};
use crate::error::Code;
use crate::store::{AuditEntry, ProjectRow, TokenGrant, TokenRow};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    /// 1-63 lowercase letters, digits and `-`, not at either end.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    name: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTokenRequest {
    name: String,
    /// `read`, `submit` or `admin`, at most the caller's own.
    #[schema(pattern = "^(read|submit|admin)$")]
    role: String,
    /// How long the token works (`30days`, `12h`); none: until revoked.
    expires_in: Option<String>,
}

/// A token as lists show it: never its secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenView {
    id: Uuid,
    prefix: String,
    name: String,
    role: Role,
    project: Option<String>,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

/// A token just made: shown with its secret, this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewTokenView {
    #[serde(flatten)]
    #[schema(inline)]
    view: TokenView,
    /// The token itself; it cannot be read again.
    token: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProjectList {
    projects: Vec<ProjectRow>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenList {
    tokens: Vec<TokenView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    entries: Vec<crate::store::AuditRow>,
    /// Pass as `after` for the next entries.
    next_after: i64,
}

impl From<TokenRow> for TokenView {
    fn from(t: TokenRow) -> Self {
        TokenView {
            id: t.id,
            prefix: t.prefix,
            name: t.name,
            role: t.role,
            project: t.project,
            created_at: t.created_at,
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
        }
    }
}

/// Appends to the audit log; a failure to is logged, and does not undo the change.
pub(super) async fn audit(
    state: &AppState,
    caller: &Principal,
    client: Option<ClientAddr>,
    action: &str,
    project: Option<ProjectId>,
    target: Option<&str>,
) {
    let client = client.map(|c| c.0.to_string());
    let entry = AuditEntry {
        actor_token: Some(caller.token_id),
        actor_name: &caller.label(),
        action,
        project,
        target,
        request_id: None,
        client_addr: client.as_deref(),
        outcome: "ok",
    };
    if let Err(e) = state.store.audit(&entry).await {
        tracing::error!(error = %e, action, "cannot write the audit log");
    }
}

/// `POST /v1/projects` (owner): `{"name"}` → the project.
#[utoipa::path(
    post, path = "/v1/projects", tag = "projects",
    request_body = NewProject,
    responses(
        (status = 201, description = "The project", body = ProjectRow),
        (status = 400, description = "Not a project name", body = super::openapi::ErrorBody),
        (status = 409, description = "A project of that name exists", body = super::openapi::ErrorBody),
    ),
)]
pub async fn create_project(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: NewProject = read_json(&headers, body).await?;
    if !is_project_name(&request.name) {
        return Err(ApiError::invalid("name", "a project's name is 1-63 lowercase letters, digits and `-`"));
    }
    let project = state.store.create_project(&request.name).await?.ok_or_else(|| ApiError {
        field: Some("name".into()),
        ..ApiError::new(Code::Conflict, "a project of that name exists")
    })?;
    audit(&state, &caller, client.map(|c| c.0), "project.create", Some(project.id), Some(&project.name)).await;
    Ok((StatusCode::CREATED, Json(project)).into_response())
}

/// `GET /v1/projects`: every project for an owner, a token's own project otherwise.
#[utoipa::path(
    get, path = "/v1/projects", tag = "projects",
    responses((status = 200, description = "Every project for an owner token, its own for a project token",
               body = ProjectList)),
)]
pub async fn list_projects(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
) -> Result<Json<ProjectList>, ApiError> {
    let projects: Vec<ProjectRow> = state.store.projects().await?.into_iter().filter(|p| caller.sees(p.id)).collect();
    Ok(Json(ProjectList { projects }))
}

/// The project named in the path, if the caller may manage it (else as missing).
pub(super) async fn managed(state: &AppState, caller: &Principal, name: &str) -> Result<ProjectRow, ApiError> {
    let project = state.store.project_named(name).await?;
    project.filter(|p| caller.sees(p.id)).ok_or_else(|| ApiError::not_found("project"))
}

/// `POST /v1/projects/{project}/tokens` (admin): `{"name", "role", "expires_in"}` →
/// the token, shown this once.
#[utoipa::path(
    post, path = "/v1/projects/{project}/tokens", tag = "projects",
    params(("project" = String, Path, description = "The project's name", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    request_body = NewTokenRequest,
    responses(
        (status = 201, description = "The token, with its secret shown this once", body = NewTokenView),
        (status = 400, description = "A field is wrong; `field` names it", body = super::openapi::ErrorBody),
        (status = 404, description = "No such project (or one the caller does not manage)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    client: Option<Extension<ClientAddr>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let project = managed(&state, &caller, &project).await?;
    let request: NewTokenRequest = read_json(&headers, body).await?;
    let role: Role = request.role.parse().map_err(|why: String| ApiError::invalid("role", why))?;
    if role == Role::Owner || !caller.role.allows(role) {
        return Err(ApiError {
            field: Some("role".into()),
            ..ApiError::new(
                Code::Forbidden,
                format!("a `{}` token cannot make a `{}` token", caller.role.as_str(), role.as_str()),
            )
        });
    }
    if request.name.trim().is_empty() || request.name.len() > 200 || request.name.chars().any(char::is_control) {
        return Err(ApiError::invalid("name", "a token's name is 1-200 characters without control characters"));
    }
    let expires_at = match &request.expires_in {
        None => None,
        Some(text) => {
            let ttl = humantime::parse_duration(text)
                .ok()
                .and_then(|d| chrono::Duration::from_std(d).ok())
                .filter(|d| *d > chrono::Duration::zero() && *d <= chrono::Duration::days(3650))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "expires_in",
                        format!("`{text}` is not a duration such as 30days (up to 10 years)"),
                    )
                })?;
            Some(Utc::now() + ttl)
        }
    };
    let token = NewToken::generate().map_err(|e| {
        tracing::error!(error = %e, "cannot make a token");
        ApiError::new(Code::Internal, "internal error")
    })?;
    let grant = TokenGrant {
        name: request.name.trim(),
        role,
        project: Some(project.id),
        expires_at,
        created_by: Some(caller.token_id),
    };
    let row = state.store.create_token(&token, &grant).await?;
    audit(&state, &caller, client.map(|c| c.0), "token.create", Some(project.id), Some(&row.prefix)).await;
    let view = NewTokenView { view: TokenView::from(row), token: token.secret };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// `GET /v1/projects/{project}/tokens` (admin): the project's tokens, no secrets.
#[utoipa::path(
    get, path = "/v1/projects/{project}/tokens", tag = "projects",
    params(("project" = String, Path, description = "The project's name", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    responses(
        (status = 200, description = "The project's tokens, without secrets", body = TokenList),
        (status = 404, description = "No such project (or one the caller does not manage)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn list_tokens(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(project): Path<String>,
) -> Result<Json<TokenList>, ApiError> {
    let project = managed(&state, &caller, &project).await?;
    let tokens: Vec<TokenView> = state.store.tokens(Some(project.id)).await?.into_iter().map(TokenView::from).collect();
    Ok(Json(TokenList { tokens }))
}

/// `DELETE /v1/projects/{project}/tokens/{id}` (admin): revokes it at once.
#[utoipa::path(
    delete, path = "/v1/projects/{project}/tokens/{id}", tag = "projects",
    params(("project" = String, Path, description = "The project's name", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("id" = uuid::Uuid, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked, at once"),
        (status = 400, description = "Not a token id", body = super::openapi::ErrorBody),
        (status = 404, description = "No such project or token", body = super::openapi::ErrorBody),
    ),
)]
pub async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    client: Option<Extension<ClientAddr>>,
    Path((project, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let project = managed(&state, &caller, &project).await?;
    let id: Uuid = id.parse().map_err(|_| ApiError::invalid("id", format!("`{id}` is not a token id")))?;
    if !state.store.revoke_token(Some(project.id), id).await? {
        return Err(ApiError::not_found("token"));
    }
    // Other servers hear of it through the database; this one forgets it now.
    state.tokens.forget(id);
    audit(&state, &caller, client.map(|c| c.0), "token.revoke", Some(project.id), Some(&id.to_string())).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/audit?project=&action=&after=&limit=` (admin): the audit log, oldest
/// first, of the token's project (an owner's: every project, or the one named).
#[utoipa::path(
    get, path = "/v1/audit", tag = "projects",
    params(AuditQuery),
    responses(
        (status = 200, description = "Audit entries, oldest first", body = AuditPage),
        (status = 400, description = "A parameter is wrong; `field` names it", body = super::openapi::ErrorBody),
        (status = 404, description = "No such project (or one the caller does not manage)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn audit_log(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    axum::extract::Query(params): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Json<AuditPage>, ApiError> {
    for key in params.keys() {
        if !matches!(key.as_str(), "project" | "action" | "after" | "limit") {
            return Err(ApiError::invalid(
                key.clone(),
                format!("unknown parameter `{key}`; use project, action, after or limit"),
            ));
        }
    }
    let project = match (params.get("project"), caller.scope()) {
        (None, scope) => scope,
        (Some(name), _) => Some(managed(&state, &caller, name).await?.id),
    };
    let after = match params.get("after") {
        Some(a) => a.parse::<i64>().map_err(|_| ApiError::invalid("after", format!("`{a}` is not an entry id")))?,
        None => 0,
    };
    let limit = match params.get("limit") {
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::invalid("limit", "limit must be 1-1000"))?,
        None => 100,
    };
    let action = params.get("action").map(String::as_str);
    if action.is_some_and(|a| {
        a.is_empty() || a.len() > 64 || !a.bytes().all(|b| b.is_ascii_lowercase() || b"._".contains(&b))
    }) {
        return Err(ApiError::invalid(
            "action",
            "an action is lowercase words joined by `.` or `_`, such as job.submit",
        ));
    }
    let rows = state.store.audit_rows(project, action, after, limit).await?;
    let next_after = rows.last().map_or(after, |r| r.id);
    Ok(Json(AuditPage { entries: rows, next_after }))
}

/// `GET /v1/audit`'s parameters.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct AuditQuery {
    /// A project's name (owner tokens; an admin reads its own project's).
    project: Option<String>,
    /// Only entries of this action (`job.submit`, `token.create`, …).
    action: Option<String>,
    /// Entries after this id (`next_after` of the previous page).
    after: Option<i64>,
    /// 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}
