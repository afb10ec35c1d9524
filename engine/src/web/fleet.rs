//! `GET /workers` and `GET /queue`: the workers as the orchestrators last saw them,
//! and the queue from SQL — depth by state, the oldest wait, jobs finished per
//! minute over the last hour, why jobs failed in the last day (in the viewer's
//! project, or every project for an owner).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use maud::html;

use super::jobs_page::{ago, seconds};
use super::layout::{self, Section};
use super::session::viewer;
use crate::api::AppState;
use crate::api::workers::SHOWN_WITHIN;

pub(super) async fn workers(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let viewer = match viewer(&state, &headers, "/workers").await {
        Ok(v) => v,
        Err(to_login) => return to_login,
    };
    let rows = match state.store.workers(SHOWN_WITHIN).await {
        Ok(rows) => rows,
        Err(e) => return layout::error_page(e.into()),
    };
    let body = html! {
        h1 { "Workers" }
        table.workers {
            thead { tr { th { "Worker" } th { "Labels" } th { "Runtimes" } th { "Slots busy / total" } th { "Health" } th { "Last answer" } } }
            tbody {
                @if rows.is_empty() { tr { td colspan="6" { "No orchestrator has pinged a worker in the last 10 minutes." } } }
                @for w in &rows {
                    tr {
                        td { code { (w.worker_id.as_deref().unwrap_or("(never answered)")) } }
                        td { @for (k, v) in w.labels.0.iter() { span.label { (k) "=" (v) } " " } }
                        td { (w.runtimes.join(", ")) }
                        td { (w.slots_busy) " / " (w.slots_total) }
                        td {
                            @if !w.reachable { span.state.failed { "unreachable" } }
                            @else if let Some(why) = &w.unhealthy { span.state.failed title=(why) { "unhealthy" } }
                            @else { span.state.succeeded { "ready" } }
                        }
                        td { (w.last_answer_at.map_or("never".to_string(), ago)) }
                    }
                }
            }
        }
    };
    layout::page(&viewer, "Workers", Section::Workers, body)
}

pub(super) async fn queue(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let viewer = match viewer(&state, &headers, "/queue").await {
        Ok(v) => v,
        Err(to_login) => return to_login,
    };
    let figures = match state.store.queue_figures(viewer.principal.scope()).await {
        Ok(f) => f,
        Err(e) => return layout::error_page(e.into()),
    };
    let busiest = figures.finished_per_minute.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1) as f64;
    let finished: i64 = figures.finished_per_minute.iter().map(|(_, n)| n).sum();
    let body = html! {
        h1 { "Queue" }
        ul.counts {
            @for (s, n) in &figures.depth { li { span class=(format!("state {}", s.as_str())) { (s.as_str()) " " strong { (n) } } } }
        }
        p { "The oldest job waiting to be claimed has waited " strong { (seconds(figures.oldest_wait)) } "." }
        h2 { "Finished per minute, last hour (" (finished) " in all)" }
        svg.bars viewBox="0 0 600 120" role="img" aria-label="Jobs finished per minute over the last hour" xmlns="http://www.w3.org/2000/svg" {
            @for (i, (minute, n)) in figures.finished_per_minute.iter().enumerate() {
                @let h = 100.0 * *n as f64 / busiest;
                rect x=(i * 10) y=(105.0 - h) width="8" height=(h) {
                    title { (minute.format("%H:%M")) ": " (n) }
                }
            }
        }
        h2 { "Why jobs failed, last day" }
        table {
            thead { tr { th { "Error code" } th { "Jobs" } } }
            tbody {
                @if figures.failures.is_empty() { tr { td colspan="2" { "No job failed." } } }
                @for (code, n) in &figures.failures {
                    tr { td { code { (code) } } td { (n) } }
                }
            }
        }
    };
    layout::page(&viewer, "Queue", Section::Queue, body)
}
