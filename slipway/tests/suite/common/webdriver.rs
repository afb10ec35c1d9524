//! A real browser for the dashboard's tests: Debian's headless Chromium driven
//! through chromedriver's W3C WebDriver protocol (JSON over HTTP, spoken here with
//! the tests' HTTP client rather than a crate of its own).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{env, free_port};

/// The W3C name of an element reference in a JSON answer.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver and one headless browser session; both end when this drops.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    /// The site the browser is pointed at.
    pub site: String,
}

impl Browser {
    /// A headless Chromium looking at `site` (`http://host:port`).
    pub async fn start(site: &str) -> Browser {
        let port = free_port();
        let driver = Command::new(env("SLIPWAY_TEST_CHROMEDRIVER"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let args =
            ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000", "--disable-dev-shm-usage"];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": { "args": args }
        } } });
        let answer: Value =
            http.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let session =
            answer["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {answer}")).to_string();
        Browser { driver, base, session, http, site: site.to_string() }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    /// Opens a path of the site and waits for the page to load.
    pub async fn open(&self, path: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": format!("{}{path}", self.site) }))).await;
    }

    /// The page's path and query.
    pub async fn location(&self) -> String {
        let url = self.call(reqwest::Method::GET, "/url", None).await;
        url.as_str().unwrap().trim_start_matches(&self.site).to_string()
    }

    /// The elements a CSS selector matches now.
    pub async fn find_all(&self, css: &str) -> Vec<String> {
        let found =
            self.call(reqwest::Method::POST, "/elements", Some(json!({ "using": "css selector", "value": css }))).await;
        found
            .as_array()
            .map(|a| a.iter().filter_map(|e| e[ELEMENT].as_str().map(String::from)).collect())
            .unwrap_or_default()
    }

    /// The first element the selector matches, waiting for it up to `limit`.
    pub async fn wait_for(&self, css: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(first) = self.find_all(css).await.into_iter().next() {
                return first;
            }
            if Instant::now() >= deadline {
                let source = self.call(reqwest::Method::GET, "/source", None).await;
                let found = self
                    .call(reqwest::Method::POST, "/elements", Some(json!({ "using": "css selector", "value": css })))
                    .await;
                panic!("no `{css}` on {} after {limit:?} ({found}):\n{source}", self.location().await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, element: &str) {
        let answer = self.call(reqwest::Method::POST, &format!("/element/{element}/click"), Some(json!({}))).await;
        assert!(answer.is_null(), "the click failed: {answer}");
    }

    /// Clicks what `css` matches, finding it again if the page replaced it meanwhile.
    pub async fn click_on(&self, css: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let element = self.wait_for(css, limit).await;
            let url = format!("/element/{element}/click");
            let answer = self.call(reqwest::Method::POST, &url, Some(json!({}))).await;
            if answer.is_null() {
                return;
            }
            assert!(Instant::now() < deadline, "cannot click `{css}`: {answer}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn type_into(&self, element: &str, text: &str) {
        self.call(reqwest::Method::POST, &format!("/element/{element}/value"), Some(json!({ "text": text }))).await;
    }

    pub async fn text(&self, element: &str) -> String {
        self.call(reqwest::Method::GET, &format!("/element/{element}/text"), None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Runs a script in the page; an `async` body's promise is awaited.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        let body = json!({ "script": script, "args": args });
        self.call(reqwest::Method::POST, "/execute/sync", Some(body)).await
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let encoded = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD.decode(encoded.as_str().unwrap()).unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session's browser goes with its driver's process group on kill; ask
        // the driver to end it first so that no Chromium is left behind.
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async { reqwest::Client::new().delete(url).send().await.ok() });
        })
        .join();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
