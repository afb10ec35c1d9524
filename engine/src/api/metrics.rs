//! `GET /metrics` for Prometheus: open by default (it carries no job data), or
//! behind a bearer token of its own (`SLIPWAY_METRICS_TOKEN`), compared in constant
//! time.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use slipway_observability::metrics;

use super::{ApiError, AppState};
use crate::error::Code;

/// `GET /metrics`: the Prometheus text format; the queue gauges are read from the
/// database at each scrape.
#[utoipa::path(get, path = "/metrics", tag = "service",
    description = "Open unless the server has SLIPWAY_METRICS_TOKEN, which it then takes as its bearer token",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The Prometheus text format", body = String,
         content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 401, description = "SLIPWAY_METRICS_TOKEN is set and was not presented",
         body = super::openapi::ErrorBody),
        (status = 503, description = "The database cannot be reached", body = super::openapi::ErrorBody),
    ))]
pub async fn metrics_text(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(expected) = &state.metrics_token {
        let presented =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        let same = presented.is_some_and(|p| crate::auth::token::matches(p, &crate::auth::token::hash(expected)));
        if !same {
            return Err(ApiError::new(
                Code::Unauthenticated,
                "/metrics needs its bearer token (SLIPWAY_METRICS_TOKEN)",
            ));
        }
    }
    let (depths, oldest) = state.store.queue_stats(None).await?;
    metrics::QUEUE_DEPTH.set_all(depths.into_iter().map(|(state, n)| (vec![state.as_str().to_string()], n as f64)));
    metrics::OLDEST_QUEUED_AGE.set(&[], oldest);
    let body = metrics::render();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response())
}
