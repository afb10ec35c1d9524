//! The command-line client of the HTTP API: `submit`, `get`, `list`, `logs`,
//! `cancel`, each with the API and token from flags, variables or the credentials
//! file ([`crate::credentials`]).
//! Data goes to standard output (JSON, or log lines as text); progress and errors
//! to standard error.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::tables::Output;

/// Where the API is, and the token to call it with.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "API")]
pub struct ApiArgs {
    /// Base URL of the Slipway HTTP API [default: the profile's, else
    /// http://127.0.0.1:8080].
    #[arg(long, env = "SLIPWAY_API", global = true)]
    pub api: Option<String>,
    /// An API token [default: the profile's].
    #[arg(long, env = "SLIPWAY_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The profile of the credentials file to use.
    #[arg(long, env = "SLIPWAY_PROFILE", default_value = crate::credentials::DEFAULT_PROFILE, global = true)]
    pub profile: String,
}

/// The API to call and the token to call it with: flags and variables first, then
/// the profile of the credentials file.
#[derive(Debug, Clone)]
pub struct Api {
    pub api: String,
    token: Option<String>,
    /// One client for every call (its connections are kept and reused).
    http: reqwest::Client,
}

impl ApiArgs {
    pub fn resolve(&self) -> anyhow::Result<Api> {
        let profile = crate::credentials::read()?.remove(&self.profile).unwrap_or_default();
        let api = self.api.clone().or(profile.api).unwrap_or_else(|| "http://127.0.0.1:8080".to_string());
        let api = with_scheme(api.trim_end_matches('/'))?;
        let mut resolved = Api { api, token: self.token.clone().or(profile.token), http: reqwest::Client::new() };
        resolved.http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .default_headers(resolved.headers()?)
            .build()
            .context("cannot make an HTTP client")?;
        Ok(resolved)
    }
}

/// The API's URL: `host:port` is taken as `http://host:port`; any scheme but http
/// and https is refused.
pub(crate) fn with_scheme(api: &str) -> anyhow::Result<String> {
    match api.split_once("://") {
        None => Ok(format!("http://{api}")),
        Some(("http" | "https", rest)) if !rest.is_empty() => Ok(api.to_string()),
        Some(_) => bail!("--api {api}: give the API's http:// or https:// URL, such as http://127.0.0.1:8080"),
    }
}

impl Api {
    fn headers(&self) -> anyhow::Result<reqwest::header::HeaderMap> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &self.token {
            let mut value: reqwest::header::HeaderValue =
                format!("Bearer {token}").parse().context("the token cannot be sent in a header")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Ok(headers)
    }

    pub(crate) fn client(&self) -> reqwest::Client {
        self.http.clone()
    }

    fn streaming(&self) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .default_headers(self.headers()?)
            .build()?)
    }

    /// What to do when the API says who is calling is not known.
    fn no_credentials(&self) -> String {
        match self.token {
            None => format!(
                "no credentials for {}: run `slipway login --api {0} --token <token>`, or set SLIPWAY_TOKEN",
                self.api
            ),
            Some(_) => "the API refused this token".to_string(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// Git repository: a URL (https, ssh, git) or a folder on this machine (`.`),
    /// which `slipway standalone` builds from its commits.
    #[arg(long)]
    pub repo: String,
    /// Branch, tag or commit [default: the remote's default branch].
    #[arg(long = "ref")]
    pub git_ref: Option<String>,
    /// Image to build: `app:dev` stays on the worker's engine; with a registry host
    /// (127.0.0.1:5000/team/app:v1, docker.io/you/app) it is pushed there.
    #[arg(long)]
    pub image: String,
    /// Dockerfile path inside the repository.
    #[arg(long)]
    pub dockerfile: Option<String>,
    /// Build context inside the repository.
    #[arg(long)]
    pub context: Option<String>,
    /// Build argument KEY=VALUE (repeatable).
    #[arg(long = "build-arg", value_parser = key_value)]
    pub build_args: Vec<(String, String)>,
    /// Environment variable KEY=VALUE for the container (repeatable).
    #[arg(long = "env", short = 'e', value_parser = key_value)]
    pub env: Vec<(String, String)>,
    /// Environment variable VAR=SECRET of the container, from the project's secret
    /// named SECRET (repeatable). The job names the secret; its value never shows.
    #[arg(long = "secret", value_parser = key_value)]
    pub secrets: Vec<(String, String)>,
    /// Build secret ID=SECRET for `RUN --mount=type=secret,id=ID` (repeatable).
    #[arg(long = "build-secret", value_parser = key_value)]
    pub build_secrets: Vec<(String, String)>,
    /// The project's secret holding git credentials for the clone.
    #[arg(long)]
    pub git_credentials: Option<String>,
    /// Fetch the repository's submodules, recursively.
    #[arg(long)]
    pub submodules: bool,
    /// Image whose layers the build may reuse, with its registry host (repeatable)
    /// [default: the last image pushed for the same repository, Dockerfile and context].
    #[arg(long = "cache-from")]
    pub cache_from: Vec<String>,
    /// Build every step afresh, reusing no layer.
    #[arg(long, conflicts_with = "cache_from")]
    pub no_cache: bool,
    /// The project's secret holding a login for the image's registry.
    #[arg(long)]
    pub registry_credentials: Option<String>,
    /// Seconds the container may run.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Try the run again when the container exits non-zero (within the job's attempts).
    #[arg(long)]
    pub retry_on_failure: bool,
    /// Where to run: `docker` (the worker's engine) or `ecs` (Fargate) [default: the server's].
    #[arg(long)]
    pub runtime: Option<String>,
    /// CPU units, 1024 a CPU (Fargate's sizes for `ecs`) [default: the worker's].
    #[arg(long)]
    pub cpu: Option<u32>,
    /// Memory in MiB (Fargate's sizes for `ecs`) [default: the worker's].
    #[arg(long)]
    pub memory: Option<u32>,
    /// A label KEY=VALUE the worker must offer, such as region=eu-west-1 (repeatable).
    #[arg(long = "require", value_parser = key_value)]
    pub requires: Vec<(String, String)>,
    /// Wait for the job, print its logs, and exit with its outcome.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Command to run instead of the image's own (after `--`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

fn key_value(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("`{raw}` is not KEY=VALUE"))
}

/// How long the API asks to wait before trying again (`429`, `503` with
/// `Retry-After`), if it asks.
fn asked_to_wait(response: &reqwest::Response) -> Option<Duration> {
    let busy = matches!(response.status().as_u16(), 429 | 503);
    let seconds = response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.parse::<u64>().ok()?;
    busy.then(|| Duration::from_secs(seconds.clamp(1, 60)))
}

/// How many times a request the API asked to repeat later is sent again.
const BUSY_RETRIES: u32 = 5;

/// Sends a request and returns the JSON body, turning API errors into messages; a
/// request the API asks to repeat later is repeated after the wait it names.
pub(crate) async fn call(api: &Api, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let mut tries = 0;
    let response = loop {
        let response = request_send(&request).await?;
        match asked_to_wait(&response) {
            Some(wait) if tries < BUSY_RETRIES => {
                tries += 1;
                eprintln!("slipway: the API is busy; trying again in {}s", wait.as_secs());
                tokio::time::sleep(wait).await;
            }
            _ => break response,
        }
    };
    let status = response.status();
    if status == reqwest::StatusCode::NO_CONTENT {
        return Ok(Value::Null);
    }
    let body: Value = response.json().await.context("the API answered something that is not JSON")?;
    if status == reqwest::StatusCode::UNAUTHORIZED {
        let said = body["error"]["message"].as_str().unwrap_or_default();
        bail!("{}: {said}", api.no_credentials());
    }
    if !status.is_success() {
        let error = &body["error"];
        let field = error["field"].as_str().map(|f| format!(" (field `{f}`)")).unwrap_or_default();
        bail!("{}{field}: {}", error["code"].as_str().unwrap_or("error"), error["message"].as_str().unwrap_or(""));
    }
    Ok(body)
}

async fn request_send(request: &reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
    let request = request.try_clone().context("the request cannot be sent twice")?;
    request.send().await.context("cannot reach the Slipway API (is it running? see --api)")
}

pub(crate) fn print(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// The repository as the API takes it: a URL as given, a folder on this machine
/// as the absolute `file://` URL of its resolved path.
fn repo_url(repo: &str) -> anyhow::Result<String> {
    let scp_like =
        repo.split_once(':').is_some_and(|(user_host, _)| user_host.contains('@') && !user_host.contains('/'));
    if repo.contains("://") || scp_like {
        return Ok(repo.to_string());
    }
    let folder = std::path::Path::new(repo)
        .canonicalize()
        .with_context(|| format!("--repo {repo}: no such folder here (give a folder of a git repository, or a URL)"))?;
    Ok(slipway_steps::local_repo::fetch_url(&folder))
}

/// `slipway submit`; returns the process exit code.
pub async fn submit(api: &Api, args: SubmitArgs) -> anyhow::Result<i32> {
    let mut body = json!({ "repo": repo_url(&args.repo)?, "image": args.image });
    for (key, value) in [("ref", args.git_ref), ("dockerfile", args.dockerfile), ("context", args.context)] {
        if let Some(value) = value {
            body[key] = json!(value);
        }
    }
    let maps = [
        ("build_args", args.build_args),
        ("env", args.env),
        ("requires", args.requires),
        ("secrets", args.secrets),
        ("build_secrets", args.build_secrets),
    ];
    for (key, pairs) in maps {
        if !pairs.is_empty() {
            body[key] = json!(pairs.into_iter().collect::<std::collections::BTreeMap<_, _>>());
        }
    }
    let mut git = json!({});
    if let Some(secret) = args.git_credentials {
        git["credentials"] = json!(secret);
    }
    if args.submodules {
        git["submodules"] = json!(true);
    }
    if git.as_object().is_some_and(|o| !o.is_empty()) {
        body["git"] = git;
    }
    if let Some(secret) = args.registry_credentials {
        body["registry"] = json!({ "credentials": secret });
    }
    if !args.cache_from.is_empty() {
        body["cache_from"] = json!(args.cache_from);
    }
    if args.no_cache {
        body["cache"] = json!(false);
    }
    let mut run = json!({});
    if !args.command.is_empty() {
        run["command"] = json!(args.command);
    }
    if let Some(t) = args.timeout {
        run["timeout_seconds"] = json!(t);
    }
    if let Some(runtime) = args.runtime {
        run["runtime"] = json!(runtime);
    }
    if args.retry_on_failure {
        run["retry_on_failure"] = json!(true);
    }
    for (key, value) in [("cpu", args.cpu), ("memory", args.memory)] {
        if let Some(value) = value {
            run[key] = json!(value);
        }
    }
    if run.as_object().is_some_and(|o| !o.is_empty()) {
        body["run"] = run;
    }
    let job = call(api, api.client().post(format!("{}/v1/jobs", api.api)).json(&body)).await?;
    let id = job["id"].as_str().context("the API returned a job without id")?.to_string();
    if !args.follow {
        print(&job);
        return Ok(0);
    }
    eprintln!("submitted job {id}");
    follow(api, &id, false).await
}

/// The fewest characters of a job id a command takes for it.
const SHORTEST_ID_PREFIX: usize = 8;

/// The job an id names: a whole id as it is, or the one job whose id starts with
/// the given characters (at least [`SHORTEST_ID_PREFIX`]).
async fn job_id(api: &Api, id: &str) -> anyhow::Result<String> {
    if id.parse::<slipway_engine::job::JobId>().is_ok() {
        return Ok(id.to_string());
    }
    if !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        bail!("`{id}` is not a job id (hex digits and dashes)");
    }
    let digits = id.chars().filter(|c| *c != '-').count();
    if digits < SHORTEST_ID_PREFIX {
        bail!("job id `{id}` is too short: give at least {SHORTEST_ID_PREFIX} of its characters, or all of it");
    }
    let request = api.client().get(format!("{}/v1/jobs?id_prefix={id}&limit=2", api.api));
    let page = call(api, request).await?;
    let ids: Vec<&str> = page["jobs"].as_array().into_iter().flatten().filter_map(|j| j["id"].as_str()).collect();
    match ids.as_slice() {
        [one] => Ok(one.to_string()),
        [] => bail!("no job's id starts with `{id}`"),
        several => bail!("`{id}` starts the ids of several jobs ({}, …): give more of it", several.join(", ")),
    }
}

/// `slipway get ID`
pub async fn get(api: &Api, id: &str, output: Output) -> anyhow::Result<()> {
    let id = &job_id(api, id).await?;
    let job = call(api, api.client().get(format!("{}/v1/jobs/{id}", api.api))).await?;
    show(&job, output, crate::tables::job);
    Ok(())
}

/// `slipway events ID`: the job's history.
pub async fn events(api: &Api, id: &str, output: Output) -> anyhow::Result<()> {
    let id = &job_id(api, id).await?;
    let page = call(api, api.client().get(format!("{}/v1/jobs/{id}/events", api.api))).await?;
    show(&page, output, crate::tables::events);
    Ok(())
}

/// Prints an answer as a table for people, or as the API's JSON.
fn show(value: &Value, output: Output, table: fn(&Value) -> String) {
    match output {
        Output::Table => print!("{}", table(value)),
        Output::Json => print(value),
    }
}

/// `slipway cancel ID`: prints the job; with `wait`, until it has ended.
pub async fn cancel(api: &Api, id: &str, wait: bool) -> anyhow::Result<()> {
    let id = &job_id(api, id).await?;
    let job = call(api, api.client().post(format!("{}/v1/jobs/{id}/cancel", api.api))).await?;
    if !wait {
        print(&job);
        return Ok(());
    }
    // Said once, and again whenever the job moves on.
    let mut said = String::new();
    loop {
        let job = call(api, api.client().get(format!("{}/v1/jobs/{id}", api.api))).await?;
        let state = job["state"].as_str().unwrap_or("?");
        if matches!(state, "succeeded" | "failed" | "cancelled") {
            print(&job);
            return Ok(());
        }
        if state != said {
            eprintln!("slipway: waiting for job {id} to stop (it is {state}: its worker stops it)");
            said = state.to_string();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `slipway list`
pub async fn list(api: &Api, state: Option<String>, limit: Option<u32>, output: Output) -> anyhow::Result<()> {
    let mut query = Vec::new();
    if let Some(s) = state {
        query.push(format!("state={s}"));
    }
    if let Some(l) = limit {
        query.push(format!("limit={l}"));
    }
    let page = call(api, api.client().get(format!("{}/v1/jobs?{}", api.api, query.join("&")))).await?;
    show(&page, output, crate::tables::jobs);
    Ok(())
}

/// `slipway logs ID [--follow] [--raw]`; with `--follow`, returns the job's exit code.
pub async fn logs(api: &Api, id: &str, follow_on: bool, raw: bool) -> anyhow::Result<i32> {
    let id = &job_id(api, id).await?;
    if follow_on {
        return follow(api, id, raw).await;
    }
    let mut after = 0;
    loop {
        let page = call(api, api.client().get(format!("{}/v1/jobs/{id}/logs?after={after}", api.api))).await?;
        let lines = page["lines"].as_array().cloned().unwrap_or_default();
        print_lines(&lines, raw);
        after = page["next_after"].as_i64().unwrap_or(after);
        if lines.is_empty() {
            return Ok(0);
        }
    }
}

fn print_lines(lines: &[Value], raw: bool) {
    for line in lines {
        let text = line["line"].as_str().unwrap_or("");
        let text = if raw { text.into() } else { printable(text) };
        println!("[{} {}] {text}", line["step"].as_str().unwrap_or("?"), line["stream"].as_str().unwrap_or("?"));
    }
}

/// The line with every control character but a tab shown as `^X` (`^[` for ESC),
/// so that a job's output cannot move the cursor, recolour or retitle the
/// operator's terminal.
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push(c),
            c if (c as u32) < 0x20 => {
                out.push('^');
                out.push(char::from(b'@' + c as u8));
            }
            '\u{7f}' => out.push_str("^?"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.into()
}

/// Prints the job's log lines as they come (Server-Sent Events, resumed from the
/// last line seen if the connection drops) and a header when a step begins, until
/// the job ends; 0 when it succeeded.
async fn follow(api: &Api, id: &str, raw: bool) -> anyhow::Result<i32> {
    tokio::select! {
        code = follow_stream(api, id, raw) => code,
        _ = tokio::signal::ctrl_c() => {
            eprintln!(
                "\nslipway: stopped following; job {id} goes on: `slipway logs -f {id}` follows it again, \
                 `slipway cancel {id}` stops it"
            );
            Ok(130)
        }
    }
}

async fn follow_stream(api: &Api, id: &str, raw: bool) -> anyhow::Result<i32> {
    let streaming = api.streaming()?;
    let mut last_id: Option<String> = None;
    let mut step = (0, String::new());
    // Said once, until the job prints again.
    let mut said_waiting = false;
    // Set when the server said it was shutting down: reaching none then ends here.
    let mut server_left = false;
    loop {
        let mut request =
            streaming.get(format!("{}/v1/jobs/{id}/logs?follow=true", api.api)).header("Accept", "text/event-stream");
        if let Some(last) = &last_id {
            request = request.header("Last-Event-ID", last);
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(_) if server_left => bail!(
                "the server went away while following; job {id} goes on: follow it again with `slipway logs -f {id}`"
            ),
            Err(e) => return Err(e).context("cannot reach the Slipway API (is it running? see --api)"),
        };
        server_left = false;
        if let Some(wait) = asked_to_wait(&response) {
            eprintln!("slipway: the API is busy; following again in {}s", wait.as_secs());
            tokio::time::sleep(wait).await;
            continue;
        }
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            bail!("{}", api.no_credentials());
        }
        if !response.status().is_success() {
            let body: Value = response.json().await.unwrap_or_default();
            bail!("{}", body["error"]["message"].as_str().unwrap_or("the API refused to stream the logs"));
        }
        let mut buffer = String::new();
        // Reads events until the stream ends; a dropped connection is resumed. A
        // quiet job is looked at: one still waiting for a worker is said to be.
        loop {
            let chunk = match tokio::time::timeout(QUIET, response.chunk()).await {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(_) => break,
                Err(_) => {
                    if !said_waiting {
                        said_waiting = say_if_waiting(api, id).await;
                    }
                    continue;
                }
            };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let (mut event, mut data, mut event_id) = ("message", String::new(), None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = match v.trim() {
                            "end" => "end",
                            "line" => "line",
                            "shutdown" => "shutdown",
                            _ => "other",
                        };
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    } else if let Some(v) = line.strip_prefix("id:") {
                        event_id = Some(v.trim().to_string());
                    }
                }
                match event {
                    "line" => {
                        let line: Value = serde_json::from_str(&data).unwrap_or_default();
                        let this_step = (line["attempt"].as_i64().unwrap_or(0), line["step"].as_str().unwrap_or("?"));
                        if (this_step.0, this_step.1) != (step.0, step.1.as_str()) {
                            step = (this_step.0, this_step.1.to_string());
                            eprintln!("--- attempt {}: {}", step.0, step.1);
                        }
                        said_waiting = false;
                        print_lines(std::slice::from_ref(&line), raw);
                        last_id = event_id.or(last_id);
                    }
                    "end" => return finished(api, id).await,
                    "shutdown" => {
                        eprintln!("slipway: {data}");
                        server_left = true;
                    }
                    _ => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How long a followed job may stay silent before the CLI looks at it.
const QUIET: Duration = Duration::from_secs(5);

/// Says why a quiet job has not started, if it waits for a worker: which labels
/// and runtime that worker must offer. Returns whether it said so.
async fn say_if_waiting(api: &Api, id: &str) -> bool {
    let Ok(job) = call(api, api.client().get(format!("{}/v1/jobs/{id}", api.api))).await else { return false };
    if job["state"] != "queued" || !job["worker"].is_null() {
        return false;
    }
    let requires: Vec<String> = job["spec"]["requires"]
        .as_object()
        .map(|labels| labels.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
        .unwrap_or_default();
    let runtime = job["spec"]["run"]["runtime"].as_str().unwrap_or("docker");
    let why = if requires.is_empty() {
        format!("no worker that runs `{runtime}` jobs has a free slot, or none is reachable")
    } else {
        format!(
            "it needs a worker offering {} (SLIPWAY_WORKER_LABELS) that runs `{runtime}` jobs, and none with a \
                 free slot does",
            requires.join(",")
        )
    };
    eprintln!("slipway: job {id} is waiting for a worker: {why}");
    true
}

/// Prints how the job ended and returns the exit code of `--follow`: 0 when it
/// succeeded; the container's own code when its run exited with one (1 to 255);
/// 1 for any other failure, and for a cancel.
async fn finished(api: &Api, id: &str) -> anyhow::Result<i32> {
    let job = call(api, api.client().get(format!("{}/v1/jobs/{id}", api.api))).await?;
    let state = job["state"].as_str().unwrap_or("?");
    eprintln!("job {id} {state}");
    // Its first line: what follows it (a failed build's last output) was just printed.
    if let Some(message) = job["error"]["message"].as_str().and_then(|m| m.lines().next()) {
        eprintln!("{message}");
    }
    let container_code = job["exit_code"].as_i64().filter(|code| (1..=255).contains(code));
    Ok(match (state, container_code) {
        ("succeeded", _) => 0,
        ("failed", Some(code)) => code as i32,
        _ => 1,
    })
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(printable("plain\ttext"), "plain\ttext");
        assert_eq!(printable("\u{1b}[2J\u{1b}]0;pwned\u{7}red"), "^[[2J^[]0;pwned^Gred");
        assert_eq!(printable("a\rb\u{7f}\u{9b}c"), "a^Mb^?\\u{9b}c");
    }
}
