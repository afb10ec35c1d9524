//! The page around every page: head, navigation, who is signed in and the sign-out
//! form; and the pages that say something went wrong.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::session::Viewer;
use crate::api::ApiError;

/// The sections of the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Jobs,
    Workers,
    Queue,
}

/// A page for a signed-in viewer.
pub(super) fn page(viewer: &Viewer, title: &str, section: Section, body: Markup) -> Response {
    let nav =
        [(Section::Jobs, "/", "Jobs"), (Section::Workers, "/workers", "Workers"), (Section::Queue, "/queue", "Queue")];
    let who = &viewer.principal;
    let content = html! {
        header.top {
            a.brand href="/" { "Slipway" }
            nav {
                @for (s, href, name) in nav {
                    a href=(href) aria-current=[(s == section).then_some("page")] { (name) }
                }
            }
            div.who {
                span title="The token this session was opened with" {
                    (who.prefix) " · " (who.name) " · " (who.role.as_str())
                    @if let Some((_, project)) = &who.project { " · " (project) }
                }
                form method="post" action="/logout" {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    button.link type="submit" { "Sign out" }
                }
            }
        }
        main { (body) }
    };
    Html(document(title, content).into_string()).into_response()
}

/// A page with no navigation (signing in).
pub(super) fn bare(title: &str, body: Markup) -> Html<String> {
    Html(document(title, html! { main.narrow { (body) } }).into_string())
}

fn document(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Slipway" }
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/app.js" defer {}
            }
            body { (content) }
        }
    }
}

/// What an API error looks like as a page, with the status it carries.
pub(super) fn error_page(error: ApiError) -> Response {
    let status = error.code.http_status();
    let body = html! {
        section.problem-page {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p { (error.message) }
            p { a href="/" { "Back to the jobs" } }
        }
    };
    (status, bare("Error", body)).into_response()
}

/// A refused form.
pub(super) fn forbidden(why: &str) -> Response {
    let body =
        html! { section.problem-page { h1 { "403 Forbidden" } p { (why) } p { a href="/" { "Back to the jobs" } } } };
    (StatusCode::FORBIDDEN, bare("Forbidden", body)).into_response()
}
