//! The HTTP API (`/v1/jobs`): submit, follow, list, read logs.

mod access;
pub mod auth;
mod body;
mod clients;
mod connections;
mod error;
mod follow;
mod jobs;
mod metrics;
mod serve;
mod views;

use axum::Router;
use axum::routing::{MethodRouter, get, post};
use tokio_util::sync::CancellationToken;

pub use clients::ClientLimits;
pub use error::ApiError;
pub use serve::{HttpLimits, serve};

use crate::job::SubmitDefaults;
use crate::store::Store;

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    pub defaults: SubmitDefaults,
    pub changes: follow::JobChanges,
    /// What each client is using; [`serve`] sets its limits.
    pub clients: std::sync::Arc<clients::Clients>,
    /// Failed authentications by client: a few, then `429`.
    pub auth_failures: std::sync::Arc<clients::Clients>,
    /// The bearer token `/metrics` needs, if it needs one (`SLIPWAY_METRICS_TOKEN`).
    pub metrics_token: Option<std::sync::Arc<str>>,
    /// Tokens verified lately.
    pub tokens: std::sync::Arc<auth::TokenCache>,
}

impl AppState {
    /// Starts listening for committed reports (for live logs) until `shutdown`.
    pub fn new(store: Store, defaults: SubmitDefaults, shutdown: CancellationToken) -> Self {
        let tokens = std::sync::Arc::new(auth::TokenCache::default());
        let changes = follow::JobChanges::start(store.clone(), shutdown, tokens.clone());
        let clients = clients::Clients::new(ClientLimits::default());
        let auth_failures = clients::Clients::new(AUTH_FAILURE_LIMITS);
        AppState { store, defaults, changes, clients, auth_failures, metrics_token: None, tokens }
    }
}

impl axum::extract::FromRef<AppState> for Store {
    fn from_ref(state: &AppState) -> Store {
        state.store.clone()
    }
}

/// Failed authentications one client may make: a burst of 20, then one a second.
const AUTH_FAILURE_LIMITS: ClientLimits =
    ClientLimits { rate: 1.0, burst: 20, max_followers: 0, max_followers_per_client: 0 };

/// One route of the API and the role a token needs for it.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub role: crate::auth::Role,
}

/// Every `/v1/…` route: the router is built from this table, and the
/// authentication reads the role each needs from it.
pub const ROUTES: &[Route] = {
    use crate::auth::Role::{Admin, Owner, Read, Submit};
    &[
        Route { method: "GET", path: "/v1/jobs", role: Read },
        Route { method: "POST", path: "/v1/jobs", role: Submit },
        Route { method: "GET", path: "/v1/jobs/{id}", role: Read },
        Route { method: "POST", path: "/v1/jobs/{id}/cancel", role: Submit },
        Route { method: "POST", path: "/v1/jobs/{id}/rerun", role: Submit },
        Route { method: "GET", path: "/v1/jobs/{id}/events", role: Read },
        Route { method: "GET", path: "/v1/jobs/{id}/logs", role: Read },
        Route { method: "POST", path: "/v1/projects", role: Owner },
        Route { method: "GET", path: "/v1/projects", role: Read },
        Route { method: "POST", path: "/v1/projects/{project}/tokens", role: Admin },
        Route { method: "GET", path: "/v1/projects/{project}/tokens", role: Admin },
        Route { method: "DELETE", path: "/v1/projects/{project}/tokens/{id}", role: Admin },
        Route { method: "GET", path: "/v1/audit", role: Admin },
    ]
};

fn handler(route: &Route) -> MethodRouter<AppState> {
    match (route.method, route.path) {
        ("GET", "/v1/jobs") => get(jobs::list),
        ("POST", "/v1/jobs") => post(jobs::submit),
        ("GET", "/v1/jobs/{id}") => get(jobs::get),
        ("POST", "/v1/jobs/{id}/cancel") => post(jobs::cancel),
        ("POST", "/v1/jobs/{id}/rerun") => post(jobs::rerun),
        ("GET", "/v1/jobs/{id}/events") => get(jobs::events),
        ("GET", "/v1/jobs/{id}/logs") => get(jobs::logs),
        ("POST", "/v1/projects") => post(access::create_project),
        ("GET", "/v1/projects") => get(access::list_projects),
        ("POST", "/v1/projects/{project}/tokens") => post(access::create_token),
        ("GET", "/v1/projects/{project}/tokens") => get(access::list_tokens),
        ("DELETE", "/v1/projects/{project}/tokens/{id}") => axum::routing::delete(access::revoke_token),
        ("GET", "/v1/audit") => get(access::audit_log),
        (method, path) => unreachable!("no handler for {method} {path}"),
    }
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        router = router.route(route.path, handler(route));
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics::metrics_text))
        .fallback(|| async { ApiError::new(error::Code::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::new(error::Code::MethodNotAllowed, format!("this endpoint does not take {method}"))
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), clients::rate_limit))
        .with_state(state)
}
