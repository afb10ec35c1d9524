//! The HTTP API (`/v1/jobs`): submit, follow, list, read logs.

mod clients;
mod connections;
mod error;
mod follow;
mod jobs;
mod metrics;
mod serve;
mod views;

use axum::Router;
use axum::routing::get;
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
}

impl AppState {
    /// Starts listening for committed reports (for live logs) until `shutdown`.
    pub fn new(store: Store, defaults: SubmitDefaults, shutdown: CancellationToken) -> Self {
        let changes = follow::JobChanges::start(store.clone(), shutdown);
        AppState { store, defaults, changes, clients: clients::Clients::new(ClientLimits::default()) }
    }
}

impl axum::extract::FromRef<AppState> for Store {
    fn from_ref(state: &AppState) -> Store {
        state.store.clone()
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/jobs", get(jobs::list).post(jobs::submit))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/cancel", axum::routing::post(jobs::cancel))
        .route("/v1/jobs/{id}/events", get(jobs::events))
        .route("/v1/jobs/{id}/logs", get(jobs::logs))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics::metrics_text))
        .fallback(|| async { ApiError::new(error::Code::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::new(error::Code::MethodNotAllowed, format!("this endpoint does not take {method}"))
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), clients::rate_limit))
        .with_state(state)
}
