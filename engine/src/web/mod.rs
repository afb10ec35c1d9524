//! The dashboard: the job list, a job with its timeline and live log, the workers
//! and the queue, served by the same process and port as the API.
//!
//! Pages are HTML rendered here (maud, escaped by default) and work without
//! JavaScript; one small script (`assets/app.js`) adds what must be live: the
//! list's rows and a job's log, through `EventSource` streams whose lines are
//! rendered here too, so that there is one renderer. Styles are one file. Both are
//! compiled into the binary.
//!
//! A browser signs in with an API token and gets a session (see [`session`]): the
//! token's role and project apply to every page and form exactly as in the API,
//! through the same functions (`api::job_actions`).

mod actions;
mod fleet;
mod job_page;
mod jobs_page;
mod layout;
mod live;
mod log_lines;
mod session;
mod timeline;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};

use crate::api::AppState;

/// The dashboard's routes; [`crate::api::router`] serves them beside the API's.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(jobs_page::page))
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .route("/jobs/{id}", get(job_page::page))
        .route("/jobs/{id}/cancel", post(actions::cancel))
        .route("/jobs/{id}/rerun", post(actions::rerun))
        .route("/jobs/{id}/log.txt", get(job_page::raw_log))
        .route("/jobs/cancel", post(actions::cancel_many))
        .route("/workers", get(fleet::workers))
        .route("/queue", get(fleet::queue))
        .route("/live/jobs", get(live::jobs))
        .route("/live/jobs/{id}/logs", get(live::logs))
        .route("/assets/app.css", get(|| asset("text/css; charset=utf-8", include_str!("assets/app.css"))))
        .route("/assets/app.js", get(|| asset("text/javascript; charset=utf-8", include_str!("assets/app.js"))))
}

async fn asset(kind: &'static str, body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "max-age=300")], body)
}

/// Text for a query string: every byte but the unreserved ones and `/` escaped.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
