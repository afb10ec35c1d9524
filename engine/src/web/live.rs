//! The dashboard's live parts, as Server-Sent Events authenticated by the session:
//! `/live/jobs` says `changed` when any job changed (the script then fetches the
//! list's rows again), and `/live/jobs/{id}/logs` sends a job's new lines already
//! rendered as HTML, then `end`; a stream opened by a session stops being fed when
//! the session's token is revoked or expires. Every event carries data: a browser
//! drops an event whose data is empty.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::log_lines;
use super::session::viewer;
use crate::api::AppState;
use crate::api::clients::ClientAddr;
use crate::api::job_actions::visible;
use crate::job::JobId;
use crate::store::LogRow;

/// Changes closer together than this are said once.
const SETTLE: Duration = Duration::from_millis(300);
/// A quiet list is looked at anyway this often.
const QUIET: Duration = Duration::from_secs(15);

pub(super) async fn jobs(
    State(state): State<AppState>,
    client: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
) -> Response {
    let viewer = match viewer(&state, &headers, "/").await {
        Ok(v) => v,
        Err(_) => return axum::http::StatusCode::UNAUTHORIZED.into_response(),
    };
    let addr = client.map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.0.0);
    let slot = match state.clients.follow(addr) {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    let (changes, shutdown) = state.changes.any();
    let token = (viewer.principal.token_id, viewer.principal.expires_at);
    let store = state.store.clone();
    let events = futures_util::stream::unfold(
        (changes, shutdown, store, token, slot, false),
        |(mut changes, shutdown, store, token, slot, ended)| async move {
            if ended {
                return None;
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let event = Event::default().event("shutdown").data("the server is shutting down");
                    return Some((Ok::<_, Infallible>(event), (changes, shutdown, store, token, slot, true)));
                }
                _ = changes.changed() => tokio::time::sleep(SETTLE).await,
                _ = tokio::time::sleep(QUIET) => {}
            }
            changes.mark_unchanged();
            let expired = token.1.is_some_and(|at| at <= chrono::Utc::now());
            if expired || !store.token_works(token.0).await.unwrap_or(true) {
                let event = Event::default().event("error").data("the session's token was revoked or expired");
                return Some((Ok(event), (changes, shutdown, store, token, slot, true)));
            }
            Some((
                Ok(Event::default().event("changed").data("jobs changed")),
                (changes, shutdown, store, token, slot, false),
            ))
        },
    );
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

#[derive(Deserialize)]
pub(super) struct After {
    #[serde(default)]
    after: i64,
}

pub(super) async fn logs(
    State(state): State<AppState>,
    client: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(after): Query<After>,
) -> Response {
    let viewer = match viewer(&state, &headers, &format!("/jobs/{id}")).await {
        Ok(v) => v,
        Err(_) => return axum::http::StatusCode::UNAUTHORIZED.into_response(),
    };
    let Ok(id) = id.parse::<JobId>() else { return axum::http::StatusCode::NOT_FOUND.into_response() };
    if let Err(e) = visible(&state.store, &viewer.principal, id).await {
        return e.into_response();
    }
    let addr = client.map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.0.0);
    let slot = match state.clients.follow(addr) {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    let token = (viewer.principal.token_id, viewer.principal.expires_at);
    let stream = crate::api::follow::stream(
        state.store.clone(),
        state.changes.clone(),
        id,
        after.after.max(0),
        slot,
        token,
        html_line,
    );
    stream.into_response()
}

/// A line rendered as the page renders it.
fn html_line(line: &LogRow) -> Event {
    Event::default().id(line.id.to_string()).event("line").data(log_lines::line(line).into_string())
}
