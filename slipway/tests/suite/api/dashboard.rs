//! The dashboard over HTTP, as a browser (or a forger) speaks to it: signing in
//! puts an opaque session id in a strict, HttpOnly cookie and never the token;
//! every form needs the session's CSRF token; roles apply as in the API; job text
//! is escaped; signing out, or revoking the token, ends the session.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use slipway_engine::auth::Role;

use super::auth::{call, token};
use super::{Api, start, valid};

/// A browser without JavaScript: no redirects followed, cookies kept by hand.
struct Browser {
    client: reqwest::Client,
    base: String,
    cookies: Vec<(String, String)>,
}

struct Page {
    status: u16,
    location: Option<String>,
    set_cookies: Vec<String>,
    body: String,
}

impl Browser {
    fn new(api: &Api) -> Self {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Browser { client, base: api.base.clone(), cookies: Vec::new() }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let cookie = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let request = if cookie.is_empty() { request } else { request.header("cookie", cookie) };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let location = response.headers().get("location").map(|l| l.to_str().unwrap().to_string());
        let set_cookies: Vec<String> =
            response.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
        for set in &set_cookies {
            let (pair, attributes) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.retain(|(k, _)| k != name);
            if !value.is_empty() && !attributes.contains("Max-Age=0") {
                self.cookies.push((name.to_string(), value.to_string()));
            }
        }
        Page { status, location, set_cookies, body: response.text().await.unwrap() }
    }

    async fn get(&mut self, path: &str) -> Page {
        let request = self.client.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let request = self.client.post(format!("{}{path}", self.base)).header("content-type", FORM).body(encode(form));
        self.send(request).await
    }

    async fn sign_in(&mut self, token: &str) -> Page {
        let form = self.get("/login").await;
        let csrf = hidden(&form.body, "csrf");
        self.post("/login", &[("token", token), ("csrf", &csrf), ("next", "/")]).await
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

const FORM: &str = "application/x-www-form-urlencoded";

/// A form's body, as a browser encodes it.
fn encode(form: &[(&str, &str)]) -> String {
    let part = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    form.iter().map(|(k, v)| format!("{}={}", part(k), part(v))).collect::<Vec<_>>().join("&")
}

/// The value of the first hidden input named `name`.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!(r#"name="{name}" value=""#);
    let start = html.find(&marker).unwrap_or_else(|| panic!("no {name} in {html}")) + marker.len();
    html[start..].split('"').next().unwrap().to_string()
}

async fn submit(api: &Api, bearer: &str, body: &Value) -> String {
    let (status, job, _) = call(api, "POST", "/v1/jobs", Some(bearer), Some(body)).await;
    assert_eq!(status, 201, "{job}");
    job["id"].as_str().unwrap().to_string()
}

async fn state_of(api: &Api, id: &str) -> String {
    let (_, job, _) =
        call(api, "GET", &format!("/v1/jobs/{id}"), Some(&token(api, Role::Owner, None, None).await), None).await;
    job["state"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_in_keeps_an_opaque_strict_cookie_and_the_sign_in_form_resists_forgery() {
    let api = start().await;
    let owner = token(&api, Role::Owner, None, None).await;
    let mut browser = Browser::new(&api);

    let page = browser.get("/jobs/01a2c3d4-0000-7000-8000-000000000000").await;
    assert_eq!(page.status, 303);
    assert_eq!(page.location.as_deref(), Some("/login?next=/jobs/01a2c3d4-0000-7000-8000-000000000000"));

    // A sign-in posted without the form's own cookie (from another site) is refused.
    let mut forger = Browser::new(&api);
    let page = forger.post("/login", &[("token", &owner), ("csrf", "0000"), ("next", "/")]).await;
    assert_eq!(page.status, 401, "{}", page.body);
    assert!(forger.cookie("slipway_session").is_none());
    // A wrong token: the page says why, no session.
    let page = browser.sign_in(&format!("slp_00000000_{}", "0".repeat(64))).await;
    assert_eq!(page.status, 401);
    assert!(page.body.contains("no such token"), "{}", page.body);
    assert!(browser.cookie("slipway_session").is_none());

    let page = browser.sign_in(&owner).await;
    assert_eq!((page.status, page.location.as_deref()), (303, Some("/")));
    let set = page.set_cookies.iter().find(|c| c.starts_with("slipway_session=")).unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && !set.contains("Secure"), "{set}");
    let session = browser.cookie("slipway_session").unwrap().to_string();
    assert!(!session.contains(&owner[13..]) && !owner.contains(&session), "the cookie holds the token");
    let stored: Vec<Vec<u8>> =
        sqlx::query_scalar("select id_hash from web_sessions").fetch_all(api.db.store.pool()).await.unwrap();
    assert_eq!(stored, vec![Sha256::digest(session.as_bytes()).to_vec()], "only the id's hash is stored");
    let page = browser.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Jobs"));

    // Behind an HTTPS proxy the cookie is Secure.
    let mut behind_tls = Browser::new(&api);
    let form = behind_tls.get("/login").await;
    let csrf = hidden(&form.body, "csrf");
    let request = behind_tls
        .client
        .clone()
        .post(format!("{}/login", api.base))
        .header("x-forwarded-proto", "https")
        .header("content-type", FORM)
        .body(encode(&[("token", owner.as_str()), ("csrf", &csrf), ("next", "//evil.example/")]));
    let page = behind_tls.send(request).await;
    assert_eq!(page.location.as_deref(), Some("/"), "a sign-in never sends the browser to another site");
    assert!(page.set_cookies.iter().any(|c| c.starts_with("slipway_session=") && c.contains("Secure")));

    // Signing out ends the session: the old cookie leads to the sign-in page.
    let old = session.clone();
    let page = browser.get("/").await;
    let csrf = hidden(&page.body, "csrf");
    let page = browser.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!((page.status, page.location.as_deref()), (303, Some("/login")));
    browser.cookies.push(("slipway_session".into(), old));
    assert_eq!(browser.get("/").await.status, 303, "a closed session still works");
}

#[tokio::test(flavor = "multi_thread")]
async fn forms_need_the_sessions_csrf_token_and_the_role_the_api_needs() {
    let api = start().await;
    let submitter = token(&api, Role::Submit, Some("alpha"), None).await;
    let reader = token(&api, Role::Read, Some("alpha"), None).await;
    let mut body = valid();
    body["env"] = json!({ "NOTE": "<script>alert('x')</script>" });
    let id = submit(&api, &submitter, &body).await;

    // A reader sees the job, escaped, and no Cancel; a forged cancel is refused.
    let mut reading = Browser::new(&api);
    reading.sign_in(&reader).await;
    let page = reading.get(&format!("/jobs/{id}")).await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("Build cache"), "a job that built nothing shows no count");
    assert!(!page.body.contains("<script>alert"), "job text reaches the page unescaped");
    assert!(page.body.contains("&lt;script&gt;alert"), "{}", page.body);
    assert!(!page.body.contains(r#"id="cancel""#) && !page.body.contains(r#"id="rerun""#), "a reader gets buttons");
    let csrf = hidden(&page.body, "csrf");
    let page = reading.post(&format!("/jobs/{id}/cancel"), &[("csrf", &csrf)]).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("`submit` role"), "{}", page.body);
    assert_eq!(state_of(&api, &id).await, "queued");
    // A build's count, once there is one, is on the page.
    sqlx::query(
        "insert into job_steps (job_id, attempt, step, worker, finished_at, outcome, cache_hits, cache_steps)
         values ($1, 1, 'build', 'w', now(), 'succeeded', 3, 4)",
    )
    .bind(id.parse::<uuid::Uuid>().unwrap())
    .execute(api.db.store.pool())
    .await
    .unwrap();
    let page = reading.get(&format!("/jobs/{id}")).await;
    assert!(page.body.contains("3 of 4 steps from cache"), "{}", page.body);

    // A submitter: without the session's CSRF token, refused; with it, cancelled.
    let mut browser = Browser::new(&api);
    browser.sign_in(&submitter).await;
    let page = browser.get(&format!("/jobs/{id}")).await;
    assert!(page.body.contains(r#"id="cancel""#));
    let csrf = hidden(&page.body, "csrf");
    for forged in ["", "0123456789abcdef0123456789abcdef", &hidden(&reading.get("/").await.body, "csrf")] {
        let page = browser.post(&format!("/jobs/{id}/cancel"), &[("csrf", forged)]).await;
        assert_eq!(page.status, 403, "csrf {forged:?}: {}", page.body);
    }
    assert_eq!(state_of(&api, &id).await, "queued", "a forged form changed the job");
    let page = browser.post(&format!("/jobs/{id}/cancel"), &[("csrf", &csrf)]).await;
    assert_eq!((page.status, page.location.clone()), (303, Some(format!("/jobs/{id}"))), "{}", page.body);
    assert_eq!(state_of(&api, &id).await, "cancelled");
    let actor: Option<String> =
        sqlx::query_scalar("select actor from job_events where job_id = $1::uuid and to_state = 'cancelled'")
            .bind(&id)
            .fetch_one(api.db.store.pool())
            .await
            .unwrap();
    assert!(actor.is_some_and(|a| a.starts_with(&submitter[..12])), "the history names who cancelled");

    // Re-run: to the new job's page, which names the original.
    let page = browser.post(&format!("/jobs/{id}/rerun"), &[("csrf", &csrf)]).await;
    assert_eq!(page.status, 303, "{}", page.body);
    let new = page.location.unwrap();
    let page = browser.get(&new).await;
    assert!(page.body.contains(&format!("/jobs/{id}")), "the new job links to the one it re-runs");

    // Cancel by filter: a page first says how many, then the confirmed form stops them.
    submit(&api, &submitter, &valid()).await;
    let page = browser.post("/jobs/cancel", &[("csrf", &csrf), ("scope", "filter"), ("filter_state", "queued")]).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Cancel 2 jobs?"), "{}", page.body);
    let queued: i64 = sqlx::query_scalar("select count(*) from jobs where state = 'queued'")
        .fetch_one(api.db.store.pool())
        .await
        .unwrap();
    assert_eq!(queued, 2, "the confirmation page stopped something");
    let confirm = [("csrf", csrf.as_str()), ("scope", "filter"), ("filter_state", "queued"), ("confirm", "yes")];
    let page = browser.post("/jobs/cancel", &confirm).await;
    assert!(page.body.contains("2 jobs were asked to stop"), "{}", page.body);

    // Revoking the token ends its sessions.
    sqlx::query("update api_tokens set revoked_at = now() where prefix = $1")
        .bind(&submitter[..12])
        .execute(api.db.store.pool())
        .await
        .unwrap();
    assert_eq!(browser.get("/").await.status, 303, "a revoked token's session still works");
}

#[tokio::test(flavor = "multi_thread")]
async fn live_streams_need_a_session_and_the_list_filters_and_pages() {
    let api = start().await;
    let owner = token(&api, Role::Owner, None, None).await;
    let other = json!({ "repo": "git://127.0.0.1:9418/other.git", "image": "127.0.0.1:5000/team/other:v1" });
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(submit(&api, &owner, &valid()).await);
    }
    let odd = submit(&api, &owner, &other).await;
    let mut anonymous = Browser::new(&api);
    assert_eq!(anonymous.get("/live/jobs").await.status, 401);
    assert_eq!(anonymous.get(&format!("/live/jobs/{odd}/logs")).await.status, 401);

    let mut browser = Browser::new(&api);
    browser.sign_in(&owner).await;
    let page = browser.get("/?repo=git%3A%2F%2F127.0.0.1%3A9418%2Fother.git").await;
    let shows = |body: &str, id: &str| body.contains(&format!("/jobs/{id}"));
    assert!(shows(&page.body, &odd) && !shows(&page.body, &ids[0]), "the repository filter");
    assert!(page.body.contains("queued <strong>1</strong>"), "the counts follow the filter");
    let page = browser.get(&format!("/?id={}", ids[1])).await;
    assert!(shows(&page.body, &ids[1]) && !shows(&page.body, &ids[0]), "the id filter");
    let page = browser.get("/?state=dreaming").await;
    assert_eq!(page.status, 400, "a bad filter names itself: {}", page.body);
    // What a stranger types into the address bar: a clear 4xx page, never a 500.
    for (path, status) in [
        ("/?repo=git%3A%2F%2Fx%00y", 400),
        ("/?image=%1B%5B31m", 400),
        ("/?id=zz", 400),
        ("/?cursor=x", 400),
        ("/jobs/%00", 400),
        ("/jobs/01a2c3d4-0000-7000-8000-000000000000", 404),
        ("/jobs/01a2c3d4-0000-7000-8000-000000000000/log.txt", 404),
    ] {
        let page = browser.get(path).await;
        assert_eq!(page.status, status, "{path}: {}", page.body);
    }
    let page = browser.get("/?project=de%00fault").await;
    assert!(page.status == 200 && page.body.contains("No job matches."), "{}", page.body);
    let request = browser.client.get(format!("{}/", api.base)).header("x-slipway-fragment", "rows");
    let fragment = browser.send(request).await;
    assert!(fragment.body.starts_with("<ul") && !fragment.body.contains("<html"), "{}", fragment.body);
}
