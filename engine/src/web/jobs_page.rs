//! `GET /`: the jobs, newest first, filtered by state, project, repository, image
//! and the start of the id, with the count in each state, paged by id (a keyset:
//! the page after is the jobs older than the last one shown), and boxes to cancel
//! the selected jobs or every job the filter matches.
//!
//! With `X-Slipway-Fragment: rows` only the counts and the rows are answered: the
//! script swaps them in when the jobs change.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, Section};
use super::session::{Viewer, viewer};
use crate::api::ApiError;
use crate::api::AppState;
use crate::api::job_actions::{check_filter_text, listing_scope};
use crate::auth::Role;
use crate::job::{JobId, JobState};
use crate::store::{JobFilter, JobRow};

const PAGE: i64 = 50;

/// The list's query: every field optional.
#[derive(Debug, Default, Clone, Deserialize)]
pub(super) struct ListQuery {
    #[serde(default, deserialize_with = "empty_is_none")]
    pub state: Option<String>,
    #[serde(default, deserialize_with = "empty_is_none")]
    pub project: Option<String>,
    #[serde(default, deserialize_with = "empty_is_none")]
    pub repo: Option<String>,
    #[serde(default, deserialize_with = "empty_is_none")]
    pub image: Option<String>,
    /// The start of a job id.
    #[serde(default, deserialize_with = "empty_is_none")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "empty_is_none")]
    pub cursor: Option<String>,
}

fn empty_is_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value: Option<String> = Option::deserialize(d)?;
    Ok(value.map(|v| v.trim().to_string()).filter(|v| !v.is_empty()))
}

impl ListQuery {
    /// The query string that shows this list (the cursor left out unless asked).
    pub fn to_query(&self, cursor: Option<JobId>) -> String {
        let cursor = cursor.map(|c| c.to_string());
        let pairs = [
            ("state", &self.state),
            ("project", &self.project),
            ("repo", &self.repo),
            ("image", &self.image),
            ("id", &self.id),
            ("cursor", &cursor),
        ];
        let parts: Vec<String> =
            pairs.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", super::encode(v)))).collect();
        if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
    }

    /// The store's filter, in the viewer's projects; `None` when nothing can match.
    pub async fn filter(&self, state: &AppState, viewer: &Viewer) -> Result<Option<JobFilter>, ApiError> {
        let job_state = self
            .state
            .as_deref()
            .map(|s| s.parse::<JobState>().map_err(|why| ApiError::invalid("state", why)))
            .transpose()?;
        let ids = self
            .id
            .as_deref()
            .map(|p| crate::job::id_prefix_range(p).map_err(|why| ApiError::invalid("id", why)))
            .transpose()?;
        check_filter_text("repo", self.repo.as_deref())?;
        check_filter_text("image", self.image.as_deref())?;
        let Some(project) = listing_scope(&state.store, &viewer.principal, self.project.as_deref()).await? else {
            return Ok(None);
        };
        Ok(Some(JobFilter { project, state: job_state, ids, repo: self.repo.clone(), image: self.image.clone() }))
    }
}

pub(super) async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Response {
    let here = format!("/{}", query.to_query(None));
    let viewer = match viewer(&state, &headers, &here).await {
        Ok(v) => v,
        Err(to_login) => return to_login,
    };
    match listing(&state, &viewer, &query).await {
        Ok(Listing { counts, rows, next }) => {
            let fragment = headers.get("x-slipway-fragment").is_some_and(|v| v == "rows");
            let live = html! { (counts_bar(&query, &counts)) (rows_table(&viewer, &rows)) };
            if fragment {
                return Html(live.into_string()).into_response();
            }
            let body = html! {
                h1 { "Jobs" }
                (filter_form(&query))
                form #jobs-form method="post" action="/jobs/cancel" {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    div #live data-live="/live/jobs" data-fragment=(here) { (live) }
                    @if can_cancel(&viewer) {
                        div.actions {
                            button type="submit" name="scope" value="selected" { "Cancel selected" }
                            (filter_fields(&query))
                            button type="submit" name="scope" value="filter" { "Cancel every unfinished job matching the filter…" }
                        }
                    }
                }
                @if let Some(next) = next {
                    p.pager { a href=(format!("/{}", query.to_query(Some(next)))) { "Older jobs →" } }
                }
            };
            layout::page(&viewer, "Jobs", Section::Jobs, body)
        }
        Err(e) => layout::error_page(e),
    }
}

struct Listing {
    counts: Vec<(JobState, i64)>,
    rows: Vec<JobRow>,
    next: Option<JobId>,
}

async fn listing(state: &AppState, viewer: &Viewer, query: &ListQuery) -> Result<Listing, ApiError> {
    let cursor = query
        .cursor
        .as_deref()
        .map(|c| c.parse::<JobId>().map_err(|_| ApiError::invalid("cursor", format!("`{c}` is not a cursor"))))
        .transpose()?;
    let Some(filter) = query.filter(state, viewer).await? else {
        return Ok(Listing { counts: Vec::new(), rows: Vec::new(), next: None });
    };
    let counts = state.store.state_counts(&filter).await?;
    let rows = state.store.jobs(&filter, cursor, PAGE).await?;
    let next = if rows.len() as i64 == PAGE { rows.last().map(|r| r.id) } else { None };
    Ok(Listing { counts, rows, next })
}

pub(super) fn can_cancel(viewer: &Viewer) -> bool {
    viewer.principal.role.allows(Role::Submit)
}

fn filter_form(query: &ListQuery) -> Markup {
    html! {
        form.filters method="get" action="/" {
            label { "State "
                select name="state" {
                    option value="" { "any" }
                    @for s in JobState::ALL {
                        option value=(s.as_str()) selected[query.state.as_deref() == Some(s.as_str())] { (s.as_str()) }
                    }
                }
            }
            label { "Project " input type="text" name="project" value=[query.project.as_deref()]; }
            label { "Repository " input type="text" name="repo" value=[query.repo.as_deref()]; }
            label { "Image " input type="text" name="image" value=[query.image.as_deref()]; }
            label { "Id starts with " input type="text" name="id" value=[query.id.as_deref()] size="10"; }
            button type="submit" { "Filter" }
            a href="/" { "Clear" }
        }
    }
}

/// The filter again, for the cancel-by-filter button.
fn filter_fields(query: &ListQuery) -> Markup {
    html! {
        @for (name, value) in [("state", &query.state), ("project", &query.project), ("repo", &query.repo), ("image", &query.image), ("id", &query.id)] {
            @if let Some(value) = value { input type="hidden" name=(format!("filter_{name}")) value=(value); }
        }
    }
}

fn counts_bar(query: &ListQuery, counts: &[(JobState, i64)]) -> Markup {
    html! {
        ul #counts.counts {
            @for (state, n) in counts {
                @let link = ListQuery { state: Some(state.as_str().to_string()), cursor: None, ..query.clone() };
                li { a class=(format!("state {}", state.as_str())) href=(format!("/{}", link.to_query(None))) { (state.as_str()) " " strong { (n) } } }
            }
        }
    }
}

fn rows_table(viewer: &Viewer, rows: &[JobRow]) -> Markup {
    let selectable = can_cancel(viewer);
    html! {
        table #rows.jobs {
            thead { tr {
                @if selectable { th { span.visually-hidden { "Select" } } }
                th { "Job" } th { "State" } th { "Project" } th { "Repository" } th { "Image" } th { "Attempt" } th { "Submitted" } th { "Took" }
            } }
            tbody {
                @if rows.is_empty() { tr { td colspan="9" { "No job matches." } } }
                @for job in rows {
                    tr data-job=(job.id) {
                        @if selectable {
                            td { @if !job.state.is_terminal() { input type="checkbox" name="ids" value=(job.id) aria-label="select"; } }
                        }
                        td { a href=(format!("/jobs/{}", job.id)) { code { (short(job.id)) } } }
                        td { span class=(format!("state {}", job.state.as_str())) { (job.state.as_str()) } }
                        td { (job.project) }
                        td.wrap { (job.spec.0.repo) }
                        td.wrap { (job.spec.0.image) }
                        td { (job.attempt) }
                        td { time datetime=(job.created_at.to_rfc3339()) { (ago(job.created_at)) } }
                        td { (took(job.created_at, job.finished_at)) }
                    }
                }
            }
        }
    }
}

/// The first 8 characters of an id: what the CLI accepts.
pub(super) fn short(id: JobId) -> String {
    id.to_string()[..8].to_string()
}

pub(super) fn ago(at: DateTime<Utc>) -> String {
    let seconds = (Utc::now() - at).num_seconds().max(0);
    match seconds {
        0..60 => format!("{seconds} s ago"),
        60..3600 => format!("{} min ago", seconds / 60),
        3600..86400 => format!("{} h ago", seconds / 3600),
        _ => at.format("%Y-%m-%d %H:%M UTC").to_string(),
    }
}

fn took(from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> String {
    match to {
        Some(to) => seconds((to - from).num_milliseconds() as f64 / 1000.0),
        None => "…".into(),
    }
}

/// A duration in seconds, as people read it.
pub(super) fn seconds(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.1} s")
    } else if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min {:.0} s", (s / 60.0).floor(), s % 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}
