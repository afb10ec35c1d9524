//! Signing in to the dashboard, and who is signed in.
//!
//! A browser signs in by pasting an API token, checked exactly as the API checks
//! one. It then holds an opaque session id in an HttpOnly, `SameSite=Strict` cookie
//! (`Secure` when the request came over HTTPS, as a proxy in front says with
//! `X-Forwarded-Proto`); the token itself never reaches a cookie, and only the
//! id's SHA-256 is stored. A session lasts [`SESSION_HOURS`] or until its token
//! expires or is revoked. Every form that changes something carries the session's
//! CSRF token, compared in constant time; the sign-in form, before any session,
//! carries one that must match a cookie of its own (double submit). Failed
//! sign-ins take from the same per-client bucket as failed API calls.

use std::time::Instant;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::layout;
use crate::api::AppState;
use crate::api::auth::Principal;
use crate::api::clients::ClientAddr;
use crate::auth::token::{hash, matches, random_hex};

const SESSION_COOKIE: &str = "slipway_session";
const LOGIN_COOKIE: &str = "slipway_login";
/// How long a session lasts at most.
const SESSION_HOURS: i64 = 12;

/// Who is looking at a page, and the CSRF token their forms carry.
#[derive(Debug, Clone)]
pub(super) struct Viewer {
    pub principal: Principal,
    pub csrf: String,
}

impl Viewer {
    /// Whether a form's CSRF token is this session's.
    pub fn sent(&self, csrf: &str) -> bool {
        same(csrf, &self.csrf)
    }
}

/// The signed-in viewer, or the sign-in page's address to send the browser to.
pub(super) async fn viewer(state: &AppState, headers: &HeaderMap, here: &str) -> Result<Viewer, Response> {
    let to_login = || Redirect::to(&format!("/login?next={}", super::encode(here))).into_response();
    let Some(id) = cookie(headers, SESSION_COOKIE) else { return Err(to_login()) };
    match state.store.session(&hash(id)).await {
        Ok(Some(session)) => Ok(Viewer { principal: Principal::from(session.token), csrf: session.csrf }),
        Ok(None) => Err(to_login()),
        Err(e) => Err(layout::error_page(crate::api::ApiError::from(e))),
    }
}

#[derive(Deserialize)]
pub(super) struct Next {
    next: Option<String>,
}

/// `GET /login`: the sign-in form.
pub(super) async fn login_page(headers: HeaderMap, Query(next): Query<Next>) -> Response {
    form_page(&headers, next.next.as_deref(), None)
}

fn form_page(headers: &HeaderMap, next: Option<&str>, problem: Option<&str>) -> Response {
    let Ok(csrf) = random_hex(32) else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    let body = html! {
        section.signin {
            h1 { "Sign in to Slipway" }
            @if let Some(problem) = problem { p.problem role="alert" { (problem) } }
            form method="post" action="/login" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(local_path(next));
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="off" required placeholder="slp_…";
                button type="submit" { "Sign in" }
            }
            p.hint { "Make one with " code { "slipway token create" } "; its role and project apply here." }
        }
    };
    let cookie = cookie_header(headers, LOGIN_COOKIE, &csrf, "/login", Some(600));
    let status = if problem.is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
    (status, [(header::SET_COOKIE, cookie)], layout::bare("Sign in", body)).into_response()
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
    csrf: String,
    next: Option<String>,
}

/// `POST /login`: opens a session for a good token.
pub(super) async fn login(
    State(state): State<AppState>,
    client: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = form.next.as_deref();
    if !cookie(&headers, LOGIN_COOKIE).is_some_and(|expected| same(&form.csrf, expected)) {
        return form_page(&headers, next, Some("The form expired; sign in again."));
    }
    // Every sign-in takes from the client's bucket of failed authentications: a
    // person signs in now and then, a guesser all the time.
    if let Some(addr) = client.map(|c| c.0.0)
        && state.auth_failures.take(addr, Instant::now()).is_err()
    {
        return form_page(&headers, next, Some("Too many sign-ins from here; wait a minute."));
    }
    let principal = match crate::api::auth::verify(&state, form.token.trim()).await {
        Ok(principal) => principal,
        Err(refused) => {
            slipway_observability::metrics::AUTH_FAILURES.inc(&[refused.code.as_str()]);
            return form_page(&headers, next, Some(&refused.message));
        }
    };
    let (Ok(id), Ok(csrf)) = (random_hex(64), random_hex(32)) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut expires_at = chrono::Utc::now() + chrono::Duration::hours(SESSION_HOURS);
    if let Some(token_expiry) = principal.expires_at {
        expires_at = expires_at.min(token_expiry);
    }
    if let Err(e) = state.store.open_session(&hash(&id), principal.token_id, &csrf, expires_at).await {
        return layout::error_page(e.into());
    }
    tracing::info!(by = %principal.prefix, "dashboard sign-in");
    let max_age = (expires_at - chrono::Utc::now()).num_seconds().max(1);
    let session = cookie_header(&headers, SESSION_COOKIE, &id, "/", Some(max_age));
    let used = cookie_header(&headers, LOGIN_COOKIE, "", "/login", Some(0));
    let mut response = Redirect::to(local_path(next)).into_response();
    response.headers_mut().append(header::SET_COOKIE, session);
    response.headers_mut().append(header::SET_COOKIE, used);
    response
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    csrf: String,
}

/// `POST /logout`: ends the session.
pub(super) async fn logout(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    let viewer = match viewer(&state, &headers, "/").await {
        Ok(viewer) => viewer,
        Err(to_login) => return to_login,
    };
    if !viewer.sent(&form.csrf) {
        return layout::forbidden("The form's CSRF token is not this session's.");
    }
    if let Some(id) = cookie(&headers, SESSION_COOKIE)
        && let Err(e) = state.store.close_session(&hash(id)).await
    {
        return layout::error_page(e.into());
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(header::SET_COOKIE, cookie_header(&headers, SESSION_COOKIE, "", "/", Some(0)));
    response
}

/// A cookie's value from the request, if it was sent.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

fn cookie_header(headers: &HeaderMap, name: &str, value: &str, path: &str, max_age: Option<i64>) -> HeaderValue {
    let https = headers.get("x-forwarded-proto").is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let mut cookie = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict");
    if let Some(seconds) = max_age {
        cookie.push_str(&format!("; Max-Age={seconds}"));
    }
    if https {
        cookie.push_str("; Secure");
    }
    HeaderValue::from_str(&cookie).expect("hex values and fixed names make a valid header")
}

/// Where to go after signing in: a path of this site only, never another host.
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => path,
        _ => "/",
    }
}

/// Constant-time comparison of two secrets.
fn same(a: &str, b: &str) -> bool {
    matches(a, &hash(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(local_path(Some("/jobs/1?x=2")), "/jobs/1?x=2");
        for other in ["//evil.example/x", "https://evil.example", "/\\evil.example", "jobs", ""] {
            assert_eq!(local_path(Some(other)), "/", "{other}");
        }
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "x_slipway_session=1; slipway_session=abc; other=2".parse().unwrap());
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, LOGIN_COOKIE), None);
    }
}
