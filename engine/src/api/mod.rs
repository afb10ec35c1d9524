//! The HTTP API (`/v1/jobs`): submit, follow, list, read logs.

mod access;
pub mod auth;
mod body;
pub(crate) mod bulk_cancel;
pub(crate) mod clients;
mod connections;
mod error;
pub(crate) mod follow;
pub(crate) mod job_actions;
pub(crate) mod jobs;
mod metrics;
pub mod openapi;
mod secrets;
mod serve;
pub(crate) mod views;
pub(crate) mod workers;

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
    /// Project secrets; without a key it refuses to store any.
    pub vault: crate::secrets::vault::Vault,
}

impl AppState {
    /// Starts listening for committed reports (for live logs) until `shutdown`.
    pub fn new(store: Store, defaults: SubmitDefaults, shutdown: CancellationToken) -> Self {
        let tokens = std::sync::Arc::new(auth::TokenCache::default());
        let changes = follow::JobChanges::start(store.clone(), shutdown, tokens.clone());
        let clients = clients::Clients::new(ClientLimits::default());
        let auth_failures = clients::Clients::new(AUTH_FAILURE_LIMITS);
        let vault = crate::secrets::vault::Vault::new(store.clone(), None);
        AppState { store, defaults, changes, clients, auth_failures, metrics_token: None, tokens, vault }
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

/// One route of the API, the role a token needs for it, and its handler.
#[derive(Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub role: crate::auth::Role,
    handler: fn() -> MethodRouter<AppState>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({})", self.method, self.path, self.role.as_str())
    }
}

/// Every `/v1/…` route: the router is built from this table, and the
/// authentication reads the role each needs from it.
pub const ROUTES: &[Route] = {
    use crate::auth::Role::{Admin, Owner, Read, Submit};
    &[
        Route { method: "GET", path: "/v1/jobs", role: Read, handler: || get(jobs::list) },
        Route { method: "POST", path: "/v1/jobs", role: Submit, handler: || post(jobs::submit) },
        Route { method: "POST", path: "/v1/jobs/cancel", role: Submit, handler: || post(bulk_cancel::cancel_matching) },
        Route { method: "GET", path: "/v1/jobs/{id}", role: Read, handler: || get(jobs::get) },
        Route { method: "POST", path: "/v1/jobs/{id}/cancel", role: Submit, handler: || post(jobs::cancel) },
        Route { method: "POST", path: "/v1/jobs/{id}/rerun", role: Submit, handler: || post(jobs::rerun) },
        Route { method: "GET", path: "/v1/jobs/{id}/events", role: Read, handler: || get(jobs::events) },
        Route { method: "GET", path: "/v1/jobs/{id}/logs", role: Read, handler: || get(jobs::logs) },
        Route { method: "POST", path: "/v1/projects", role: Owner, handler: || post(access::create_project) },
        Route { method: "GET", path: "/v1/projects", role: Read, handler: || get(access::list_projects) },
        Route {
            method: "POST",
            path: "/v1/projects/{project}/tokens",
            role: Admin,
            handler: || post(access::create_token),
        },
        Route {
            method: "GET",
            path: "/v1/projects/{project}/tokens",
            role: Admin,
            handler: || get(access::list_tokens),
        },
        Route {
            method: "DELETE",
            path: "/v1/projects/{project}/tokens/{id}",
            role: Admin,
            handler: || axum::routing::delete(access::revoke_token),
        },
        Route {
            method: "PUT",
            path: "/v1/projects/{project}/secrets/{name}",
            role: Admin,
            handler: || axum::routing::put(secrets::put_secret),
        },
        Route {
            method: "GET",
            path: "/v1/projects/{project}/secrets",
            role: Read,
            handler: || get(secrets::list_secrets),
        },
        Route {
            method: "DELETE",
            path: "/v1/projects/{project}/secrets/{name}",
            role: Admin,
            handler: || axum::routing::delete(secrets::delete_secret),
        },
        Route {
            method: "PUT",
            path: "/v1/projects/{project}/git-credentials/{host}",
            role: Admin,
            handler: || axum::routing::put(secrets::put_git_default),
        },
        Route {
            method: "GET",
            path: "/v1/projects/{project}/git-credentials",
            role: Read,
            handler: || get(secrets::list_git_defaults),
        },
        Route {
            method: "DELETE",
            path: "/v1/projects/{project}/git-credentials/{host}",
            role: Admin,
            handler: || axum::routing::delete(secrets::delete_git_default),
        },
        Route { method: "GET", path: "/v1/audit", role: Admin, handler: || get(access::audit_log) },
        Route { method: "GET", path: "/v1/workers", role: Read, handler: || get(workers::list) },
    ]
};

/// The routes that take no API token (`/metrics` may take its own).
pub const OPEN_ROUTES: [(&str, &str); 3] = [("GET", "/healthz"), ("GET", "/metrics"), ("GET", openapi::OPENAPI_PATH)];

pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        router = router.route(route.path, (route.handler)());
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .merge(crate::web::router())
        .route("/healthz", get(healthz))
        .route(openapi::OPENAPI_PATH, get(openapi_json))
        .route("/metrics", get(metrics::metrics_text))
        .fallback(|| async { ApiError::new(error::Code::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::new(error::Code::MethodNotAllowed, format!("this endpoint does not take {method}"))
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), clients::rate_limit))
        .with_state(state)
}

/// `GET /healthz`: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "service", security(()),
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

/// `GET /v1/openapi.json`: this API's description. It says how to call the API, not
/// anything of anyone's: as open as the repository that holds it.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "service", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
async fn openapi_json() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], openapi::document_json())
}
