//! `/v1/projects/{project}/secrets`: a project's admins set and delete its secrets;
//! anyone who may read the project lists their names (jobs name them). A value goes
//! in once and never comes out through the API. Every change is in the audit log.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::access::{audit, managed};
use super::auth::Principal;
use super::body::{read_json, read_json_within};
use super::clients::ClientAddr;
use super::{ApiError, AppState};
use crate::error::Code;
use crate::secrets::for_job::SubmitRefusal;
use crate::secrets::vault::VaultError;
use crate::secrets::{MAX_PER_PROJECT, MAX_VALUE_BYTES, is_git_host, is_secret_name};
use crate::store::{GitDefaultRow, PutOutcome, SecretRow};

/// A value's JSON may be escaped to six bytes a byte (`\u0001`).
const MAX_SECRET_BODY_BYTES: usize = 6 * MAX_VALUE_BYTES + 1024;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretValue {
    /// 1 byte to 64 KiB, no NUL.
    #[schema(min_length = 1)]
    value: String,
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::NoKey => ApiError::new(Code::NoSecretsKey, e.to_string()),
            VaultError::Store(e) => e.into(),
            VaultError::Open { .. } => {
                tracing::error!(error = %e, "a stored secret does not open");
                ApiError::new(Code::Internal, "a stored secret cannot be read; see the server's log")
            }
        }
    }
}

impl From<SubmitRefusal> for ApiError {
    fn from(refusal: SubmitRefusal) -> Self {
        match refusal {
            SubmitRefusal::Invalid(e) => ApiError::invalid(e.field, e.message),
            SubmitRefusal::PlainField(field) => ApiError {
                message: format!(
                    "{field} holds the value of one of this project's secrets; name the secret in `secrets` \
                     (or `build_secrets`) instead, so that it is never shown"
                ),
                field: Some(field),
                ..ApiError::new(Code::SecretInPlainField, "")
            },
            SubmitRefusal::Vault(e) => e.into(),
        }
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if is_secret_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "name",
            "a secret's name is a letter or `_`, then up to 127 letters, digits, `_`, `.` or `-`",
        ))
    }
}

/// `PUT /v1/projects/{project}/secrets/{name}` (admin): `{"value"}` → 201 when new,
/// 200 when replaced; the answer names the secret, never its value.
#[utoipa::path(
    put, path = "/v1/projects/{project}/secrets/{name}", tag = "secrets",
    params(("project" = String, Path, description = "The project's name", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("name" = String, Path, description = "The secret's name", pattern = "^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")),
    request_body = SecretValue,
    responses(
        (status = 201, description = "Set; the answer names the secret, never its value", body = SecretRow),
        (status = 200, description = "Replaced", body = SecretRow),
        (status = 400, description = "A bad name or value", body = super::openapi::ErrorBody),
        (status = 404, description = "No such project (or one the caller does not manage)", body = super::openapi::ErrorBody),
        (status = 409, description = "The project holds as many secrets as it may", body = super::openapi::ErrorBody),
        (status = 503, description = "The server holds no secrets key", body = super::openapi::ErrorBody),
    ),
)]
pub async fn put_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    client: Option<Extension<ClientAddr>>,
    Path((project, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let project = managed(&state, &caller, &project).await?;
    check_name(&name)?;
    let request: SecretValue = read_json_within(&headers, body, MAX_SECRET_BODY_BYTES).await?;
    let value = request.value;
    if value.is_empty() {
        return Err(ApiError::invalid("value", "a secret's value must not be empty"));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::invalid("value", format!("a secret's value is at most {MAX_VALUE_BYTES} bytes")));
    }
    if value.contains('\0') {
        return Err(ApiError::invalid("value", "a secret's value must not contain a NUL character"));
    }
    let status = match state.vault.put(project.id, &name, &value, &caller.label()).await? {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Updated => StatusCode::OK,
        PutOutcome::Full => {
            return Err(ApiError {
                field: Some("name".into()),
                ..ApiError::new(Code::Conflict, format!("a project holds at most {MAX_PER_PROJECT} secrets"))
            });
        }
    };
    audit(&state, &caller, client.map(|c| c.0), "secret.set", Some(project.id), Some(&name)).await;
    let row = state.store.secrets(project.id).await?.into_iter().find(|s| s.name == name);
    Ok((status, Json(row)).into_response())
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SecretList {
    secrets: Vec<SecretRow>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct GitDefaultList {
    git_credentials: Vec<GitDefaultRow>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GitDefault {
    /// A secret of the project that holds git credentials.
    #[schema(pattern = "^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")]
    secret: String,
}

/// `PUT /v1/projects/{project}/git-credentials/{host}` (admin): `{"secret"}` — the
/// secret (git credentials) the project's jobs clone `host` with when they name none.
#[utoipa::path(
    put, path = "/v1/projects/{project}/git-credentials/{host}", tag = "secrets",
    params(("project" = String, Path, description = "The project's name", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("host" = String, Path, description = "A git host, lowercase, without port")),
    request_body = GitDefault,
    responses(
        (status = 201, description = "Set", body = GitDefaultRow),
        (status = 200, description = "Replaced", body = GitDefaultRow),
        (status = 400, description = "A bad host, or a secret that is missing or holds no git credentials", body = super::openapi::ErrorBody),
        (status = 404, description = "No such project (or one the caller does not manage)", body = super::openapi::ErrorBody),
        (status = 503, description = "The server holds no secrets key", body = super::openapi::ErrorBody),
    ),
)]
pub async fn put_git_default(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    client: Option<Extension<ClientAddr>>,
    Path((project, host)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let project = managed(&state, &caller, &project).await?;
    if !is_git_host(&host) {
        return Err(ApiError::invalid("host", "a git host is a lowercase name or address, without port"));
    }
    let request: GitDefault = read_json(&headers, body).await?;
    check_name(&request.secret).map_err(|e| ApiError { field: Some("secret".into()), ..e })?;
    let opened = state.vault.open(project.id, std::slice::from_ref(&request.secret)).await?;
    let Some(value) = opened.0.get(&request.secret) else {
        return Err(ApiError::invalid(
            "secret",
            format!("project {} has no secret `{}`", project.name, request.secret),
        ));
    };
    slipway_steps::secrets::GitAuth::parse(value)
        .map_err(|why| ApiError::invalid("secret", format!("secret `{}` {why}", request.secret)))?;
    let created = state.store.put_git_default(project.id, &host, &request.secret, &caller.label()).await?;
    let target = format!("{host}: {}", request.secret);
    audit(&state, &caller, client.map(|c| c.0), "git_credentials.set", Some(project.id), Some(&target)).await;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let row = state.store.git_defaults(project.id).await?.into_iter().find(|g| g.host == host);
    Ok((status, Json(row)).into_response())
}

/// `GET /v1/projects/{project}/git-credentials`: each host and the secret it uses.
#[utoipa::path(
    get, path = "/v1/projects/{project}/git-credentials", tag = "secrets",
    params(("project" = String, Path, description = "The project's name", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    responses(
        (status = 200, description = "Each host and the secret its clones use", body = GitDefaultList),
        (status = 404, description = "No such project (or one of another project)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn list_git_defaults(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(project): Path<String>,
) -> Result<Json<GitDefaultList>, ApiError> {
    let project = managed(&state, &caller, &project).await?;
    Ok(Json(GitDefaultList { git_credentials: state.store.git_defaults(project.id).await? }))
}

/// `DELETE /v1/projects/{project}/git-credentials/{host}` (admin).
#[utoipa::path(
    delete, path = "/v1/projects/{project}/git-credentials/{host}", tag = "secrets",
    params(("project" = String, Path, description = "The project's name", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("host" = String, Path, description = "A git host, lowercase, without port")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such project, or no credentials for that host", body = super::openapi::ErrorBody),
    ),
)]
pub async fn delete_git_default(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    client: Option<Extension<ClientAddr>>,
    Path((project, host)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let project = managed(&state, &caller, &project).await?;
    if !state.store.delete_git_default(project.id, &host).await? {
        return Err(ApiError::new(Code::NotFound, format!("project {} has no credentials for `{host}`", project.name)));
    }
    audit(&state, &caller, client.map(|c| c.0), "git_credentials.delete", Some(project.id), Some(&host)).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/projects/{project}/secrets`: names, when they were set and by whom.
#[utoipa::path(
    get, path = "/v1/projects/{project}/secrets", tag = "secrets",
    params(("project" = String, Path, description = "The project's name", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")),
    responses(
        (status = 200, description = "The names, when they were set and by whom; never a value", body = SecretList),
        (status = 404, description = "No such project (or one of another project)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn list_secrets(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(project): Path<String>,
) -> Result<Json<SecretList>, ApiError> {
    let project = managed(&state, &caller, &project).await?;
    let secrets = state.store.secrets(project.id).await?;
    Ok(Json(SecretList { secrets }))
}

/// `DELETE /v1/projects/{project}/secrets/{name}` (admin). Jobs that name it and
/// have not started fail `secret_missing`.
#[utoipa::path(
    delete, path = "/v1/projects/{project}/secrets/{name}", tag = "secrets",
    params(("project" = String, Path, description = "The project's name", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"), ("name" = String, Path, description = "The secret's name", pattern = "^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Not a secret name", body = super::openapi::ErrorBody),
        (status = 404, description = "No such project or secret", body = super::openapi::ErrorBody),
    ),
)]
pub async fn delete_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    client: Option<Extension<ClientAddr>>,
    Path((project, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let project = managed(&state, &caller, &project).await?;
    check_name(&name)?;
    if !state.store.delete_secret(project.id, &name).await? {
        return Err(ApiError::new(Code::NotFound, format!("project {} has no secret `{name}`", project.name)));
    }
    audit(&state, &caller, client.map(|c| c.0), "secret.delete", Some(project.id), Some(&name)).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
