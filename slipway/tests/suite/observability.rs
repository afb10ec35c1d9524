//! Metrics as a user sees them: Prometheus (Debian's) scrapes a running Slipway,
//! and PromQL over its HTTP API returns the job counters after a run; the shipped
//! Grafana dashboard asks only for metrics `/metrics` exposes. Log lines as a log
//! shipper reads them.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Prometheus {
    fn scraping(target_port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: slipway\n    static_configs:\n      - targets: [\"127.0.0.1:{target_port}\"]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts (scripts/test installs it)");
        wait_for_port(port, Duration::from_secs(30));
        Prometheus { child, _dir: dir, port }
    }

    async fn query(&self, promql: &str) -> Vec<Value> {
        let url = reqwest::Url::parse_with_params(
            &format!("http://127.0.0.1:{}/api/v1/query", self.port),
            &[("query", promql)],
        )
        .unwrap();
        let body: Value = http().get(url).send().await.unwrap().json().await.unwrap();
        assert_eq!(body["status"], "success", "{body}");
        body["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_job_counters_and_the_dashboard_asks_only_for_exposed_metrics() {
    let standalone = Standalone::start(&[]).await;
    let (repo, ports) = (&standalone.repo, &standalone.ports);
    let prometheus = Prometheus::scraping(ports.http);

    let image = format!("{}/metrics/app:{}", open_registry(), unique("t"));
    let id = submit(&ports.api(), &json!({ "repo": repo, "image": image })).await["id"].as_str().unwrap().to_string();
    assert_eq!(wait_finished(&ports.api(), &id, Duration::from_secs(120)).await["state"], "succeeded");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let finished = prometheus.query("slipway_jobs_finished_total{state=\"succeeded\"}").await;
        let runs = prometheus.query("slipway_step_duration_seconds_count{step=\"run\",outcome=\"succeeded\"}").await;
        if finished.first().map(|r| r["value"][1].clone()) == Some(json!("1"))
            && runs.first().map(|r| r["value"][1].clone()) == Some(json!("1"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "prometheus never saw the job: {finished:?} {runs:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let submitted = prometheus.query("slipway_jobs_submitted_total").await;
    assert_eq!(submitted[0]["value"][1], "1");
    let waited = prometheus.query("slipway_queue_wait_seconds_count").await;
    assert_eq!(waited[0]["value"][1], "1");

    // Every metric the dashboard asks for is one /metrics exposes.
    let exposed = http().get(format!("{}/metrics", ports.api())).send().await.unwrap().text().await.unwrap();
    let mut names: Vec<String> = exposed
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .flat_map(|n| [n.to_string(), format!("{n}_bucket"), format!("{n}_sum"), format!("{n}_count")])
        .collect();
    names.sort();
    let dashboard: Value =
        serde_json::from_str(include_str!("../../../observability/grafana/slipway-dashboard.json")).unwrap();
    let mut asked = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("slipway_") {
                let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[i + name.len()..];
                asked.push(name);
            }
        }
    }
    assert!(asked.len() >= 10, "{asked:?}");
    for name in &asked {
        assert!(names.binary_search(name).is_ok(), "the dashboard asks for {name}, which /metrics does not expose");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_into_a_pipe_carry_no_colour_and_the_json_format_is_one_object_a_line() {
    let db = TestDb::new().await;
    let logs = |format: &str| {
        let out = slipway_command()
            .arg("migrate")
            .env("DATABASE_URL", &db.url)
            .env("SLIPWAY_LOG_FORMAT", format)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stderr).unwrap()
    };
    let text = logs("text");
    assert!(text.contains("migrations applied"), "{text}");
    assert!(!text.contains('\x1b'), "colour codes in a pipe: {text:?}");
    let json = logs("json");
    let objects: Vec<Value> =
        json.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect();
    let applied = objects.iter().find(|o| o["message"] == "migrations applied").expect("the line is there");
    assert_eq!(applied["level"], "INFO");
    assert!(applied["timestamp"].is_string() && applied["target"].is_string(), "{applied}");
}
