//! Every `/v1/…` call carries `Authorization: Bearer <token>`: the token is found by
//! its prefix (one indexed lookup), checked by its hash, and must not be revoked or
//! expired; its role must allow the route ([`super::ROUTES`]). The caller's
//! [`Principal`] then goes with the request, and handlers keep to its project: a job
//! of another project answers `404`, exactly as a missing one. Failed
//! authentications are counted (`slipway_auth_failures_total{reason}`), limited per
//! client address, and never logged with the token (its prefix at most).
//!
//! A verified token is kept for [`CACHE_TTL`] in a [`TokenCache`] keyed by its hash,
//! so that a busy client costs one database lookup every few seconds rather than
//! one a request; a revocation (notified on `slipway_tokens`, from any process)
//! drops it from every server's cache at once, and expiry is checked on every use.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use slipway_observability::metrics;
use uuid::Uuid;

use super::clients::ClientAddr;
use super::{ApiError, AppState, ROUTES, error::Code};
use crate::auth::token::{matches, prefix_of};
use crate::auth::{ProjectId, Role};

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Principal {
    pub token_id: Uuid,
    /// The token's visible prefix, for logs and the audit log.
    pub prefix: String,
    pub name: String,
    pub role: Role,
    /// The token's project; `None` for an owner token (every project).
    pub project: Option<(ProjectId, String)>,
    pub expires_at: Option<chrono::DateTime<Utc>>,
}

impl Principal {
    /// How the caller is named in a job's history and the audit log.
    pub fn label(&self) -> String {
        format!("{} ({})", self.prefix, self.name)
    }

    /// Whether the caller may see the project's jobs.
    pub fn sees(&self, project: ProjectId) -> bool {
        self.project.as_ref().is_none_or(|(own, _)| *own == project)
    }

    /// The project the caller's listings keep to; `None`: every project.
    pub fn scope(&self) -> Option<ProjectId> {
        self.project.as_ref().map(|(id, _)| *id)
    }
}

/// How long a verified token is trusted without asking the database again.
const CACHE_TTL: Duration = Duration::from_secs(10);
/// The most tokens kept; past it the cache starts afresh.
const CACHE_ENTRIES: usize = 10_000;

/// Tokens verified lately, by the hash of what was presented.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<Vec<u8>, (Principal, Instant)>>,
}

impl TokenCache {
    fn get(&self, hash: &[u8]) -> Option<Principal> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(hash).filter(|(_, at)| at.elapsed() < CACHE_TTL).map(|(p, _)| p.clone())
    }

    fn put(&self, hash: Vec<u8>, principal: Principal) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(hash, (principal, Instant::now()));
    }

    /// Drops a revoked token.
    pub fn forget(&self, token_id: Uuid) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, (p, _)| p.token_id != token_id);
    }
}

/// The role a route needs, from the table the router is built from; a route not
/// in it needs an owner (nothing is open by omission).
fn needed(method: &str, path: &str) -> Role {
    ROUTES.iter().find(|r| r.method == method && r.path == path).map_or(Role::Owner, |r| r.role)
}

/// Middleware of the `/v1/…` routes.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    // `/healthz` and `/metrics` carry no job data.
    if !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
    }
    let path = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
    let needed = needed(request.method().as_str(), &path);
    let client = request.extensions().get::<ClientAddr>().map(|c| c.0);
    let presented = request.headers().contains_key(axum::http::header::AUTHORIZATION);
    match principal(&state, request.headers()).await {
        Ok(principal) => {
            if !principal.role.allows(needed) {
                let message = format!(
                    "this needs a token with the `{}` role; {} has `{}`",
                    needed.as_str(),
                    principal.prefix,
                    principal.role.as_str()
                );
                return ApiError::new(Code::Forbidden, message).into_response();
            }
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => {
            metrics::AUTH_FAILURES.inc(&[error.code.as_str()]);
            // Guessing is slow: failures take from a bucket of their own per client.
            // A request without any token guesses nothing (and costs no lookup).
            if presented
                && let Some(addr) = client
                && let Err(wait) = state.auth_failures.take(addr, Instant::now())
            {
                let slow = ApiError::new(Code::RateLimited, "too many failed authentications from this client");
                return slow.retry_after(wait).into_response();
            }
            error.into_response()
        }
    }
}

async fn principal(state: &AppState, headers: &axum::http::HeaderMap) -> Result<Principal, ApiError> {
    let unauthenticated = |why: &str| ApiError::new(Code::Unauthenticated, why.to_string());
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Err(unauthenticated(
            "send `Authorization: Bearer <token>`; `slipway token create` makes tokens, `slipway login` keeps one",
        ));
    };
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| unauthenticated("the Authorization header is not `Bearer <token>`"))?;
    verify(state, presented).await
}

/// The caller a presented token names, if it is good: known, not revoked, not
/// expired. The dashboard's sign-in checks a pasted token with this too.
pub(crate) async fn verify(state: &AppState, presented: &str) -> Result<Principal, ApiError> {
    let unauthenticated = |why: &str| ApiError::new(Code::Unauthenticated, why.to_string());
    let prefix = prefix_of(presented).ok_or_else(|| unauthenticated("that is not a Slipway token"))?;
    let presented_hash = crate::auth::token::hash(presented);
    if let Some(principal) = state.tokens.get(&presented_hash) {
        if principal.expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(ApiError::new(Code::TokenExpired, format!("token {} has expired", principal.prefix)));
        }
        return Ok(principal);
    }
    let row = state.store.token_by_prefix(prefix).await?;
    let row = row.filter(|r| matches(presented, &r.hash)).ok_or_else(|| unauthenticated("no such token"))?;
    if row.revoked_at.is_some() {
        return Err(ApiError::new(Code::TokenRevoked, format!("token {} was revoked", row.prefix)));
    }
    if row.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(ApiError::new(Code::TokenExpired, format!("token {} has expired", row.prefix)));
    }
    let store = state.store.clone();
    let id = row.id;
    tokio::spawn(async move {
        if let Err(e) = store.touch_token(id).await {
            tracing::debug!(error = %e, "cannot note a token's use");
        }
    });
    let principal = Principal::from(row);
    state.tokens.put(presented_hash, principal.clone());
    Ok(principal)
}

impl From<crate::store::TokenRow> for Principal {
    fn from(row: crate::store::TokenRow) -> Self {
        Principal {
            token_id: row.id,
            prefix: row.prefix,
            name: row.name,
            role: row.role,
            project: row.project_id.zip(row.project),
            expires_at: row.expires_at,
        }
    }
}
