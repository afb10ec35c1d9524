//! The HTTP API (`/v1/jobs`): submit, follow, list, read logs.

mod error;
mod jobs;
mod views;

use axum::Router;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

use crate::store::Store;

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn router(store: Store) -> Router {
    Router::new()
        .route("/v1/jobs", get(jobs::list).post(jobs::submit))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/logs", get(jobs::logs))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { ApiError::new(axum::http::StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(store)
}

/// Serves until `shutdown`, then finishes the requests under way.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "http api listening");
    axum::serve(listener, router(store))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
