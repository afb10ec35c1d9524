//! The dashboard's forms: cancel a job, re-run it, cancel the selected jobs or
//! every job a filter matches (after a page that says how many). Each checks the
//! session's CSRF token, then calls what the API calls, so that roles, history and
//! audit are the same.

use axum::Form;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::layout::{self, Section};
use super::session::{Viewer, viewer};
use crate::api::ApiError;
use crate::api::bulk_cancel::{CancelFilter, MAX_PER_REQUEST, cancel_matching_jobs, matching_jobs};
use crate::api::clients::ClientAddr;
use crate::api::job_actions::{cancel_job, rerun_job};
use crate::api::jobs::job_id;
use crate::job::{JobId, JobState};

type Fields = Vec<(String, String)>;

fn field<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

/// The viewer of a form that changes something: signed in, with the session's CSRF
/// token, and allowed to submit.
async fn checked(state: &crate::api::AppState, headers: &HeaderMap, fields: &Fields) -> Result<Viewer, Response> {
    let viewer = viewer(state, headers, "/").await?;
    if !field(fields, "csrf").is_some_and(|csrf| viewer.sent(csrf)) {
        return Err(layout::forbidden("The form's CSRF token is not this session's; reload the page and try again."));
    }
    if !super::jobs_page::can_cancel(&viewer) {
        return Err(layout::forbidden(&format!(
            "This needs a token with the `submit` role; {} has `{}`.",
            viewer.principal.prefix,
            viewer.principal.role.as_str()
        )));
    }
    Ok(viewer)
}

/// A form about one job: its viewer (checked as [`checked`] does) and the job's id.
async fn one_job(
    state: &crate::api::AppState,
    headers: &HeaderMap,
    fields: &Fields,
    raw_id: &str,
) -> Result<(Viewer, JobId), Response> {
    let viewer = checked(state, headers, fields).await?;
    let id = job_id(raw_id).map_err(layout::error_page)?;
    Ok((viewer, id))
}

/// `POST /jobs/{id}/cancel`.
pub(super) async fn cancel(
    State(state): State<crate::api::AppState>,
    client: Option<axum::Extension<ClientAddr>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(fields): Form<Fields>,
) -> Response {
    let (viewer, id) = match one_job(&state, &headers, &fields, &id).await {
        Ok(found) => found,
        Err(refused) => return refused,
    };
    match cancel_job(&state, &viewer.principal, client.map(|c| c.0), id).await {
        Ok(_) => Redirect::to(&format!("/jobs/{id}")).into_response(),
        Err(e) => layout::error_page(e),
    }
}

/// `POST /jobs/{id}/rerun`: to the new job's page.
pub(super) async fn rerun(
    State(state): State<crate::api::AppState>,
    client: Option<axum::Extension<ClientAddr>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(fields): Form<Fields>,
) -> Response {
    let (viewer, id) = match one_job(&state, &headers, &fields, &id).await {
        Ok(found) => found,
        Err(refused) => return refused,
    };
    let same_commit = field(&fields, "same_commit") == Some("true");
    match rerun_job(&state, &viewer.principal, client.map(|c| c.0), id, same_commit).await {
        Ok(new) => Redirect::to(&format!("/jobs/{}", new.id)).into_response(),
        Err(e) => layout::error_page(e),
    }
}

/// `POST /jobs/cancel`: the selected jobs at once; every job matching a filter
/// after a confirmation that says how many.
pub(super) async fn cancel_many(
    State(state): State<crate::api::AppState>,
    client: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
    Form(fields): Form<Fields>,
) -> Response {
    let viewer = match checked(&state, &headers, &fields).await {
        Ok(v) => v,
        Err(refused) => return refused,
    };
    let by_filter = field(&fields, "scope") == Some("filter");
    let filter = if by_filter {
        let state_field = field(&fields, "filter_state").map(|s| s.parse::<JobState>());
        let job_state = match state_field.transpose() {
            Ok(s) => s,
            Err(why) => return layout::error_page(ApiError::invalid("state", why)),
        };
        CancelFilter {
            state: job_state,
            project: field(&fields, "filter_project").map(String::from),
            repo: field(&fields, "filter_repo").map(String::from),
            image: field(&fields, "filter_image").map(String::from),
            id_prefix: field(&fields, "filter_id").map(String::from),
            ids: None,
        }
    } else {
        let ids: Result<Vec<JobId>, _> = fields.iter().filter(|(k, _)| k == "ids").map(|(_, v)| v.parse()).collect();
        match ids {
            Ok(ids) if !ids.is_empty() => {
                CancelFilter { state: None, project: None, repo: None, image: None, id_prefix: None, ids: Some(ids) }
            }
            Ok(_) => return Redirect::to("/").into_response(),
            Err(_) => return layout::error_page(ApiError::invalid("ids", "not a list of job ids")),
        }
    };
    if by_filter && field(&fields, "confirm") != Some("yes") {
        return confirm(&state, &viewer, &filter).await;
    }
    match cancel_matching_jobs(&state, &viewer.principal, client.map(|c| c.0), &filter).await {
        Ok(count) => {
            let body = html! {
                h1 { "Cancel requested" }
                p { (count.asked) " jobs were asked to stop: " (count.cancelled) " cancelled at once, "
                    (count.stopping) " being stopped by their workers." }
                @if count.more { p { "More jobs match than one request asks; send it again." } }
                p { a href="/" { "Back to the jobs" } }
            };
            layout::page(&viewer, "Cancel requested", Section::Jobs, body)
        }
        Err(e) => layout::error_page(e),
    }
}

/// The page that says how many jobs a cancel by filter would stop.
async fn confirm(state: &crate::api::AppState, viewer: &Viewer, filter: &CancelFilter) -> Response {
    let (matching, more) = match matching_jobs(state, &viewer.principal, filter).await {
        Ok(found) => found,
        Err(e) => return layout::error_page(e),
    };
    let how_many = if more { format!("more than {MAX_PER_REQUEST}") } else { matching.len().to_string() };
    let named = [
        ("state", filter.state.map(|s| s.as_str().to_string())),
        ("project", filter.project.clone()),
        ("repo", filter.repo.clone()),
        ("image", filter.image.clone()),
        ("id", filter.id_prefix.clone()),
    ];
    let body = html! {
        h1 { "Cancel " (how_many) " jobs?" }
        p { "Every unfinished job matching "
            @for (name, value) in &named { @if let Some(value) = value { code { (name) "=" (value) } " " } }
            "will be asked to stop: " strong { (how_many) } "." }
        @if !matching.is_empty() {
            form method="post" action="/jobs/cancel" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                input type="hidden" name="scope" value="filter";
                input type="hidden" name="confirm" value="yes";
                @for (name, value) in &named {
                    @if let Some(value) = value { input type="hidden" name=(format!("filter_{name}")) value=(value); }
                }
                button.danger type="submit" { "Yes, cancel " (how_many) " jobs" }
                " " a href="/" { "No, go back" }
            }
        } @else {
            p { a href="/" { "Back to the jobs" } }
        }
    };
    layout::page(viewer, "Cancel jobs?", Section::Jobs, body)
}
