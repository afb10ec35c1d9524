//! `GET /jobs/{id}`: one job — its state, error, what it built and ran, its
//! specification (secrets by name only: a spec holds no value), the timeline of
//! its steps, its history with reasons and actors, and its log with a header per
//! step, followed live by the script; Cancel and Re-run for those who may.
//! `GET /jobs/{id}/log.txt` downloads the log as stored.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::jobs_page::{ago, can_cancel, short};
use super::layout::{self, Section};
use super::session::{Viewer, viewer};
use super::{log_lines, timeline};
use crate::api::ApiError;
use crate::api::AppState;
use crate::api::job_actions::visible;
use crate::api::jobs::job_id;
use crate::store::{EventRow, JobRow, LogRow, StepRow};

/// Lines shown when the page loads; the rest is in the raw log.
const SHOWN_LINES: i64 = 5000;

pub(super) async fn page(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let viewer = match viewer(&state, &headers, &format!("/jobs/{id}")).await {
        Ok(v) => v,
        Err(to_login) => return to_login,
    };
    match read(&state, &viewer, &id).await {
        Ok((job, steps, events, lines)) => {
            let title = format!("Job {}", short(job.id));
            layout::page(&viewer, &title, Section::Jobs, body(&viewer, &job, &steps, &events, &lines))
        }
        Err(e) => layout::error_page(e),
    }
}

type Read = (JobRow, Vec<StepRow>, Vec<EventRow>, Vec<LogRow>);

async fn read(state: &AppState, viewer: &Viewer, id: &str) -> Result<Read, ApiError> {
    let id = job_id(id)?;
    let job = visible(&state.store, &viewer.principal, id).await?;
    let steps = state.store.steps(id).await?;
    let events = state.store.events(id).await?;
    let lines = state.store.logs(id, 0, SHOWN_LINES).await?;
    Ok((job, steps, events, lines))
}

fn body(viewer: &Viewer, job: &JobRow, steps: &[StepRow], events: &[EventRow], lines: &[LogRow]) -> Markup {
    let spec = &job.spec.0;
    let last_line = lines.last().map_or(0, |l| l.id);
    let more = lines.len() as i64 == SHOWN_LINES;
    html! {
        div.job-head {
            h1 { "Job " code { (job.id) } }
            span #job-state class=(format!("state big {}", job.state.as_str())) { (job.state.as_str()) }
            @if can_cancel(viewer) {
                div.buttons {
                    @if !job.state.is_terminal() {
                        form method="post" action=(format!("/jobs/{}/cancel", job.id)) {
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            button.danger #cancel type="submit" { "Cancel" }
                        }
                    }
                    form method="post" action=(format!("/jobs/{}/rerun", job.id)) {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        @if job.commit_sha.is_some() {
                            label.inline { input type="checkbox" name="same_commit" value="true"; " same commit" }
                        }
                        button #rerun type="submit" { "Re-run" }
                    }
                }
            }
        }
        @if let Some(code) = &job.error_code {
            p.problem role="alert" { strong { (code) } ": " (job.error.as_deref().unwrap_or("")) }
        }
        dl.facts {
            dt { "Project" } dd { (job.project) }
            dt { "Attempt" } dd { (job.attempt) @if job.workers_lost > 0 { " (" (job.workers_lost) " lost with their worker)" } }
            dt { "Repository" } dd.wrap { (spec.repo) }
            dt { "Ref" } dd { (spec.git_ref.as_deref().unwrap_or("(default branch)")) }
            dt { "Commit" } dd { code { (job.commit_sha.as_deref().unwrap_or("—")) } }
            dt { "Dockerfile" } dd { (spec.dockerfile) " in " (spec.context) }
            dt { "Image" } dd.wrap { (spec.image) }
            dt { "Image id" } dd.wrap { code { (job.image_id.as_deref().unwrap_or("—")) } }
            @if let Some((hits, of)) = steps.iter().rev().find(|s| s.step == "build").and_then(|s| s.cache_hits.zip(s.cache_steps)) {
                dt { "Build cache" } dd { (hits) " of " (of) " steps from cache" }
            }
            dt { "Pushed" } dd.wrap { (job.pushed_ref.as_deref().unwrap_or(if spec.is_local_image() { "no: a local image" } else { "—" })) }
            dt { "Runs on" } dd { (spec.run.runtime.as_str())
                @if let Some(c) = &job.container_id { " · container " code { (c.get(..12).unwrap_or(c)) } }
                @if let Some(t) = &job.task_arn { " · task " code { (t) } } }
            dt { "Worker" } dd {
                @if let Some(worker) = &job.lease_worker { (worker) }
                @else if let Some(last) = steps.iter().rev().find_map(|s| s.worker.as_deref()) { (last) " (last)" }
                @else { "—" }
            }
            dt { "Exit code" } dd { (job.exit_code.map_or("—".to_string(), |c| c.to_string())) }
            dt { "Submitted" } dd { time datetime=(job.created_at.to_rfc3339()) { (ago(job.created_at)) } }
            @if let Some(original) = job.rerun_of {
                dt { "Re-runs" } dd { a href=(format!("/jobs/{original}")) { code { (short(original)) } } }
            }
        }
        details.spec {
            summary { "Specification" }
            pre { (serde_json::to_string_pretty(spec).unwrap_or_default()) }
        }
        h2 { "Timeline" }
        (timeline::svg(job.created_at, job.finished_at, steps))
        h2 { "History" }
        table.events {
            thead { tr { th { "At" } th { "From" } th { "To" } th { "Attempt" } th { "Worker" } th { "Reason" } th { "By" } } }
            tbody {
                @for e in events {
                    tr {
                        td { time datetime=(e.at.to_rfc3339()) { (e.at.format("%H:%M:%S%.3f")) } }
                        td { (e.from_state.map_or("", |s| s.as_str())) }
                        td { span class=(format!("state {}", e.to_state.as_str())) { (e.to_state.as_str()) } }
                        td { (e.attempt) }
                        td { (e.worker.as_deref().unwrap_or("")) }
                        td.wrap { (e.reason.as_deref().unwrap_or("")) }
                        td { (e.actor.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        div.log-head {
            h2 { "Log" }
            a href=(format!("/jobs/{}/log.txt", job.id)) download { "Download the raw log" }
            button #follow type="button" hidden { "Pause" }
        }
        @if more { p.hint { "The first " (SHOWN_LINES) " lines; the download has them all." } }
        div #log.log data-live=(format!("/live/jobs/{}/logs?after={last_line}", job.id)) data-ended=(job.state.is_terminal()) {
            @for (i, line) in lines.iter().enumerate() {
                @if i == 0 || (lines[i - 1].attempt, &lines[i - 1].step) != (line.attempt, &line.step) {
                    h3.step { "attempt " (line.attempt) " · " (line.step) }
                }
                (log_lines::line(line))
            }
        }
    }
}

/// `GET /jobs/{id}/log.txt`: every line, as stored, one per line.
pub(super) async fn raw_log(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let viewer = match viewer(&state, &headers, &format!("/jobs/{id}")).await {
        Ok(v) => v,
        Err(to_login) => return to_login,
    };
    let read = async {
        let id = job_id(&id)?;
        visible(&state.store, &viewer.principal, id).await?;
        let mut text = String::new();
        let mut after = 0;
        loop {
            let page = state.store.logs(id, after, 10_000).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for line in &page {
                text.push_str(&line.line);
                text.push('\n');
            }
        }
        Ok::<_, ApiError>((id, text))
    };
    match read.await {
        Ok((id, text)) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_string()),
                (header::CONTENT_DISPOSITION, format!("attachment; filename=\"slipway-{id}.log\"")),
            ],
            text,
        )
            .into_response(),
        Err(e) => layout::error_page(e),
    }
}
