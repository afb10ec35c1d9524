//! Prometheus metrics: counters, gauges and histograms kept in memory and rendered
//! in the text exposition format for `/metrics`. A small registry of its own, since
//! the set is fixed and known: every metric Slipway exposes is a static below, so
//! its name, help and labels are written down once.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{LazyLock, Mutex};

/// A metric's series, keyed by label values in the order of its label names.
type Series<T> = Mutex<BTreeMap<Vec<String>, T>>;

pub struct Counter {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Series<f64>,
}

pub struct Gauge {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Series<f64>,
}

pub struct Histogram {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
    series: Series<HistogramSeries>,
}

#[derive(Debug, Clone, Default)]
struct HistogramSeries {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

fn key(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

fn lock<T>(series: &Series<T>) -> std::sync::MutexGuard<'_, BTreeMap<Vec<String>, T>> {
    series.lock().unwrap_or_else(|p| p.into_inner())
}

impl Counter {
    const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Counter { name, help, labels, series: Mutex::new(BTreeMap::new()) }
    }

    pub fn inc(&self, values: &[&str]) {
        self.add(values, 1.0);
    }

    pub fn add(&self, values: &[&str], by: f64) {
        *lock(&self.series).entry(key(values)).or_default() += by;
    }
}

impl Gauge {
    const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Gauge { name, help, labels, series: Mutex::new(BTreeMap::new()) }
    }

    pub fn set(&self, values: &[&str], value: f64) {
        lock(&self.series).insert(key(values), value);
    }

    /// Replaces every series at once (for gauges computed from a query).
    pub fn set_all(&self, series: impl IntoIterator<Item = (Vec<String>, f64)>) {
        *lock(&self.series) = series.into_iter().collect();
    }
}

impl Histogram {
    const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Self {
        Histogram { name, help, labels, buckets, series: Mutex::new(BTreeMap::new()) }
    }

    pub fn observe(&self, values: &[&str], value: f64) {
        let mut series = lock(&self.series);
        let entry = series
            .entry(key(values))
            .or_insert_with(|| HistogramSeries { counts: vec![0; self.buckets.len()], ..Default::default() });
        for (i, bound) in self.buckets.iter().enumerate() {
            if value <= *bound {
                entry.counts[i] += 1;
            }
        }
        entry.sum += value;
        entry.count += 1;
    }
}

/// Seconds: from a millisecond to an hour.
const DURATION_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

pub static JOBS_SUBMITTED: Counter = Counter::new("slipway_jobs_submitted_total", "Jobs accepted by the API.", &[]);
pub static JOBS_FINISHED: Counter =
    Counter::new("slipway_jobs_finished_total", "Jobs that ended, by final state.", &["state"]);
pub static RETRIES: Counter =
    Counter::new("slipway_retries_total", "Failed attempts scheduled to run again, by error code.", &["reason"]);
pub static LEASE_EXPIRIES: Counter = Counter::new(
    "slipway_lease_expiries_total",
    "Leases that ended without a report, by where the job went (queued, running, failed, cancelled).",
    &["outcome"],
);
pub static SWEEP_DELETIONS: Counter = Counter::new(
    "slipway_sweep_deletions_total",
    "What the TTL sweep removed: jobs, registry_images, containers, engine_images, tasks.",
    &["kind"],
);
pub static QUEUE_WAIT: Histogram = Histogram::new(
    "slipway_queue_wait_seconds",
    "From submission to the start of a job's first step.",
    &[],
    DURATION_BUCKETS,
);
pub static STEP_DURATION: Histogram = Histogram::new(
    "slipway_step_duration_seconds",
    "How long steps take on the workers, by step and outcome.",
    &["step", "outcome"],
    DURATION_BUCKETS,
);
pub static QUEUE_DEPTH: Gauge =
    Gauge::new("slipway_queue_depth", "Unfinished jobs by state, read when scraped.", &["state"]);
pub static OLDEST_QUEUED_AGE: Gauge = Gauge::new(
    "slipway_oldest_queued_job_age_seconds",
    "Age of the oldest job waiting to be claimed, read when scraped (0 when none waits).",
    &[],
);
pub static AUTH_FAILURES: Counter =
    Counter::new("slipway_auth_failures_total", "HTTP calls refused for their credentials, by reason.", &["reason"]);
pub static BUILD_CACHE_STEPS: Counter = Counter::new(
    "slipway_build_cache_steps_total",
    "Steps of successful builds, by whether they came from cache (hit) or ran (miss).",
    &["result"],
);
pub static WORKER_HEALTHY: Gauge = Gauge::new(
    "slipway_worker_healthy",
    "1 while a worker's engine answers and builds, 0 while the worker takes no job.",
    &["worker"],
);
pub static WORKER_SLOTS: Gauge =
    Gauge::new("slipway_worker_slots", "A worker's slots: total and busy.", &["worker", "kind"]);

/// Every metric, in the order they are rendered.
enum Metric {
    Counter(&'static Counter),
    Gauge(&'static Gauge),
    Histogram(&'static Histogram),
}

static ALL: LazyLock<Vec<Metric>> = LazyLock::new(|| {
    vec![
        Metric::Counter(&JOBS_SUBMITTED),
        Metric::Counter(&JOBS_FINISHED),
        Metric::Counter(&RETRIES),
        Metric::Counter(&LEASE_EXPIRIES),
        Metric::Counter(&SWEEP_DELETIONS),
        Metric::Counter(&AUTH_FAILURES),
        Metric::Counter(&BUILD_CACHE_STEPS),
        Metric::Histogram(&QUEUE_WAIT),
        Metric::Histogram(&STEP_DURATION),
        Metric::Gauge(&QUEUE_DEPTH),
        Metric::Gauge(&OLDEST_QUEUED_AGE),
        Metric::Gauge(&WORKER_SLOTS),
        Metric::Gauge(&WORKER_HEALTHY),
    ]
});

fn labels(names: &[&str], values: &[String], extra: Option<(&str, String)>) -> String {
    let mut pairs: Vec<String> = names.iter().zip(values).map(|(n, v)| format!("{n}=\"{}\"", escape(v))).collect();
    if let Some((n, v)) = extra {
        pairs.push(format!("{n}=\"{v}\""));
    }
    if pairs.is_empty() { String::new() } else { format!("{{{}}}", pairs.join(",")) }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Every metric in the Prometheus text format. Metrics without series show their
/// `HELP` and `TYPE` lines, so that a scraper always sees the full set of names.
pub fn render() -> String {
    let mut out = String::new();
    for metric in ALL.iter() {
        match metric {
            Metric::Counter(c) => {
                let _ = writeln!(out, "# HELP {} {}\n# TYPE {} counter", c.name, c.help, c.name);
                let series = lock(&c.series);
                if series.is_empty() && c.labels.is_empty() {
                    let _ = writeln!(out, "{} 0", c.name);
                }
                for (values, v) in series.iter() {
                    let _ = writeln!(out, "{}{} {}", c.name, labels(c.labels, values, None), v);
                }
            }
            Metric::Gauge(g) => {
                let _ = writeln!(out, "# HELP {} {}\n# TYPE {} gauge", g.name, g.help, g.name);
                for (values, v) in lock(&g.series).iter() {
                    let _ = writeln!(out, "{}{} {}", g.name, labels(g.labels, values, None), v);
                }
            }
            Metric::Histogram(h) => {
                let _ = writeln!(out, "# HELP {} {}\n# TYPE {} histogram", h.name, h.help, h.name);
                for (values, s) in lock(&h.series).iter() {
                    for (bound, count) in h.buckets.iter().zip(&s.counts) {
                        let le = Some(("le", bound.to_string()));
                        let _ = writeln!(out, "{}_bucket{} {}", h.name, labels(h.labels, values, le), count);
                    }
                    let inf = Some(("le", "+Inf".to_string()));
                    let _ = writeln!(out, "{}_bucket{} {}", h.name, labels(h.labels, values, inf), s.count);
                    let _ = writeln!(out, "{}_sum{} {}", h.name, labels(h.labels, values, None), s.sum);
                    let _ = writeln!(out, "{}_count{} {}", h.name, labels(h.labels, values, None), s.count);
                }
            }
        }
    }
    out
}

/// The names a scrape can contain (histograms with their `_bucket`, `_sum` and
/// `_count` series), for checking dashboards against.
pub fn names() -> Vec<String> {
    let mut names = Vec::new();
    for metric in ALL.iter() {
        match metric {
            Metric::Counter(c) => names.push(c.name.to_string()),
            Metric::Gauge(g) => names.push(g.name.to_string()),
            Metric::Histogram(h) => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.push(format!("{}{suffix}", h.name));
                }
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    static TEST_COUNTER: Counter = Counter::new("t_total", "t", &["state"]);
    static TEST_HISTOGRAM: Histogram = Histogram::new("t_seconds", "t", &["step"], &[0.1, 1.0]);

    #[test]
    fn histograms_count_cumulatively_and_labels_are_escaped() {
        TEST_HISTOGRAM.observe(&["build"], 0.05);
        TEST_HISTOGRAM.observe(&["build"], 0.5);
        TEST_HISTOGRAM.observe(&["build"], 5.0);
        let s = lock(&TEST_HISTOGRAM.series);
        let series = &s[&vec!["build".to_string()]];
        assert_eq!(series.counts, vec![1, 2]);
        assert_eq!(series.count, 3);
        TEST_COUNTER.inc(&["a\"b"]);
        assert_eq!(labels(TEST_COUNTER.labels, &["a\"b".to_string()], None), "{state=\"a\\\"b\"}");
    }

    #[test]
    fn every_metric_is_rendered_and_named() {
        JOBS_FINISHED.inc(&["succeeded"]);
        let text = render();
        assert!(text.contains("slipway_jobs_finished_total{state=\"succeeded\"}"));
        assert!(text.contains("# TYPE slipway_step_duration_seconds histogram"));
        assert!(names().contains(&"slipway_queue_wait_seconds_bucket".to_string()));
    }
}
