//! The dashboard in a real browser (headless Chromium through WebDriver) against a
//! real `standalone`: sign in with a token, see a submitted job appear in the list
//! without reloading, watch a running job's line arrive, cancel it, re-run it; a
//! `read` token gets no Cancel button and its forged cancel is refused; sign out.
//! Screenshots of the list and a job page are kept in `target/screenshots/`.

use std::time::Duration;

use serde_json::json;
use slipway_engine::auth::Role;
use slipway_engine::auth::token::NewToken;
use slipway_engine::store::TokenGrant;

use crate::common::webdriver::Browser;
use crate::common::*;

const LIMIT: Duration = Duration::from_secs(60);

/// An image that prints a numbered line every half second for half a minute.
const TICKER: &str = "FROM scratch\nCOPY busybox /bin/busybox\n\
    CMD [\"/bin/busybox\", \"sh\", \"-c\", \"i=0; while [ $i -lt 60 ]; do i=$((i+1)); echo tick $i; sleep 0.5; done\"]\n";

async fn sign_in(browser: &Browser, token: &str) {
    browser.open("/login").await;
    let field = browser.wait_for("#token", LIMIT).await;
    browser.type_into(&field, token).await;
    browser.click_on("form button[type=submit]", LIMIT).await;
    browser.wait_for("header.top .who", LIMIT).await;
}

fn keep(name: &str, png: &[u8]) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_is_watched_cancelled_and_rerun_in_a_browser_and_a_reader_cannot_cancel() {
    let standalone = Standalone::start(&[]).await;
    let api = standalone.api();
    let repo = standalone.git.repo("ticker", &[("Dockerfile", Entry::Text(TICKER)), ("busybox", Entry::Busybox)]);
    let browser = Browser::start(&api).await;
    sign_in(&browser, &test_token().secret).await;

    // The list: a job submitted through the API appears without a reload.
    browser.open("/").await;
    browser.wait_for("#live table.jobs", LIMIT).await;
    browser.run("window.slipwayMark = 'this page';", json!([])).await;
    let image = format!("slipway-test/{}:dev", unique("ticker"));
    let id = submit(&api, &json!({ "repo": repo, "image": image })).await["id"].as_str().unwrap().to_string();
    browser.wait_for(&format!("tr[data-job='{id}']"), LIMIT).await;
    assert_eq!(browser.run("return window.slipwayMark;", json!([])).await, "this page", "the list was reloaded");
    keep("dashboard-jobs.png", &browser.screenshot().await);

    // The job while it runs: its lines arrive on the open page.
    browser.click_on(&format!("a[href='/jobs/{id}']"), LIMIT).await;
    browser.wait_for("#log", LIMIT).await;
    browser.run("window.slipwayMark = 'job page';", json!([])).await;
    let first = browser.wait_for(".line.stdout[data-step='run']", LIMIT).await;
    assert!(browser.text(&first).await.starts_with("tick"), "{}", browser.text(&first).await);
    let before = browser.find_all(".line.stdout[data-step='run']").await.len();
    let deadline = std::time::Instant::now() + LIMIT;
    while browser.find_all(".line.stdout[data-step='run']").await.len() <= before {
        assert!(std::time::Instant::now() < deadline, "no new line arrived on the page");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(browser.run("return window.slipwayMark;", json!([])).await, "job page", "the page was reloaded");
    // Paused, from the top: the picture of a job page.
    browser.click_on("#follow", LIMIT).await;
    browser.run("window.scrollTo(0, 0);", json!([])).await;
    keep("dashboard-job.png", &browser.screenshot().await);

    // Cancel: the job ends cancelled, and says so on its page.
    browser.click_on("#cancel", LIMIT).await;
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let state = browser.wait_for("#job-state", LIMIT).await;
        if browser.text(&state).await == "cancelled" {
            break;
        }
        if std::time::Instant::now() >= deadline {
            keep("failed-cancel.png", &browser.screenshot().await);
            let job: serde_json::Value =
                http().get(format!("{api}/v1/jobs/{id}")).send().await.unwrap().json().await.unwrap();
            panic!("the job's page never said cancelled (at {}); the job: {job}", browser.location().await);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if browser.find_all("#log[data-ended='false']").await.is_empty() {
            browser.open(&format!("/jobs/{id}")).await;
        }
    }
    assert_eq!(wait_finished(&api, &id, LIMIT).await["state"], "cancelled");

    // Re-run: the new job's page, naming the original.
    browser.click_on("#rerun", LIMIT).await;
    let deadline = std::time::Instant::now() + LIMIT;
    while browser.location().await == format!("/jobs/{id}") {
        assert!(std::time::Instant::now() < deadline, "Re-run went nowhere");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rerun = browser.location().await.trim_start_matches("/jobs/").to_string();
    browser.wait_for(&format!("dl.facts a[href='/jobs/{id}']"), LIMIT).await;
    let job: serde_json::Value =
        http().get(format!("{api}/v1/jobs/{rerun}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(job["rerun_of"], json!(id), "{job}");
    http().post(format!("{api}/v1/jobs/{rerun}/cancel")).send().await.unwrap();

    // Sign out; then a reader: no Cancel button, and a cancel forged from its page
    // (with its own session's CSRF token) is refused.
    browser.click_on("header.top form button", LIMIT).await;
    browser.wait_for("#token", LIMIT).await;
    let reader = NewToken::generate().unwrap();
    let default = standalone.db.store.project_named("default").await.unwrap().map(|p| p.id);
    let grant = TokenGrant { name: "reader", role: Role::Read, project: default, expires_at: None, created_by: None };
    standalone.db.store.create_token(&reader, &grant).await.unwrap();
    let victim = submit(&api, &json!({ "repo": repo, "image": image })).await["id"].as_str().unwrap().to_string();
    sign_in(&browser, &reader.secret).await;
    browser.open(&format!("/jobs/{victim}")).await;
    browser.wait_for("#log", LIMIT).await;
    assert!(browser.find_all("#cancel").await.is_empty(), "a reader sees a Cancel button");
    let forged = browser
        .run(
            "const csrf = document.querySelector('input[name=csrf]').value;
             const r = new XMLHttpRequest();
             r.open('POST', arguments[0], false);
             r.setRequestHeader('content-type', 'application/x-www-form-urlencoded');
             r.send('csrf=' + csrf);
             return r.status;",
            json!([format!("/jobs/{victim}/cancel")]),
        )
        .await;
    assert_eq!(forged, 403, "a reader's cancel was accepted");
    let job: serde_json::Value =
        http().get(format!("{api}/v1/jobs/{victim}")).send().await.unwrap().json().await.unwrap();
    assert_ne!(job["state"], "cancelled", "{job}");
    http().post(format!("{api}/v1/jobs/{victim}/cancel")).send().await.unwrap();
    browser.click_on("header.top form button", LIMIT).await;
    browser.wait_for("#token", LIMIT).await;
    assert!(browser.location().await.starts_with("/login"));
}
