//! `GET /metrics` for Prometheus.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use slipway_observability::metrics;

use super::ApiError;
use crate::store::Store;

/// `GET /metrics`: the Prometheus text format; the queue gauges are read from the
/// database at each scrape.
pub async fn metrics_text(State(store): State<Store>) -> Result<Response, ApiError> {
    let (depths, oldest) = store.queue_stats().await?;
    metrics::QUEUE_DEPTH.set_all(depths.into_iter().map(|(state, n)| (vec![state.as_str().to_string()], n as f64)));
    metrics::OLDEST_QUEUED_AGE.set(&[], oldest);
    let body = metrics::render();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response())
}
