//! The API under a crowd: new jobs' queue wait and `/healthz` while 20,000
//! connections are opened and left idle and 1,500 live-log streams stay open,
//! beside the same figures with nobody else there.
//!
//! The idle connections come from child processes (a process may hold 20,000
//! descriptors here), each from its own loopback address; the followers from 100
//! addresses, 15 each (under the per-client cap), on jobs no worker can take.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::common::TestDb;
use super::{FirstSteps, finished, percentile, start_server, start_workers};

/// Set in a child process: `<api addr>,<connections>,<local address>`.
pub const IDLE_CHILD: &str = "BENCH_IDLE_CHILD";

/// In a child: opens the connections, says `ready`, and holds them until killed.
pub async fn idle_child(spec: &str) {
    let mut parts = spec.split(',');
    let (addr, count, local) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let local: std::net::IpAddr = local.parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..count.parse::<usize>().unwrap() {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((local, 0).into()).unwrap();
        if let Ok(stream) = socket.connect(addr).await {
            held.push(stream);
        }
    }
    println!("ready {}", held.len());
    std::future::pending::<()>().await;
}

/// Submits at `rate` jobs/s for `seconds`; the queue wait of each (POST to first
/// step committed), sorted, in ms.
pub async fn queue_waits(
    api: &str,
    store: &slipway_engine::store::Store,
    first_steps: &FirstSteps,
    rate: u32,
    seconds: u32,
) -> Vec<f64> {
    let http = super::common::client_with(reqwest::Client::builder());
    let body = serde_json::json!({ "repo": "git://127.0.0.1/app", "image": "127.0.0.1:5000/bench/app:1" });
    let submitted = Arc::new(Mutex::new(Vec::new()));
    let done_before = finished(store).await;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    let mut posts = Vec::new();
    for _ in 0..rate * seconds {
        tick.tick().await;
        let (http, body, submitted, api) = (http.clone(), body.clone(), submitted.clone(), api.to_string());
        posts.push(tokio::spawn(async move {
            let sent = Instant::now();
            let response = http.post(format!("{api}/v1/jobs")).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 201);
            let job: serde_json::Value = response.json().await.unwrap();
            submitted.lock().unwrap().push((job["id"].as_str().unwrap().to_string(), sent));
        }));
    }
    for post in posts {
        post.await.unwrap();
    }
    while finished(store).await < done_before + i64::from(rate * seconds) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (submitted, first_steps) = (submitted.lock().unwrap(), first_steps.lock().unwrap());
    let mut ms: Vec<f64> =
        submitted.iter().map(|(id, at)| first_steps[id].duration_since(*at).as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    ms
}

/// Asks `/healthz` on a fresh connection every 50 ms until `stop`; the answer
/// times, sorted, in ms (a failed answer counts as 10 s).
async fn sample_health(api: String, stop: Arc<AtomicBool>) -> Vec<f64> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    // (`/healthz` needs no token.)
    let mut ms = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let ok = http
            .get(format!("{api}/healthz"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        ms.push(if ok { started.elapsed().as_secs_f64() * 1000.0 } else { 10_000.0 });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ms.sort_by(f64::total_cmp);
    ms
}

/// Queue wait and `/healthz` for `seconds` at `rate`, as one line.
async fn measure(
    api: &str,
    store: &slipway_engine::store::Store,
    first_steps: &FirstSteps,
    rate: u32,
    seconds: u32,
) -> String {
    let stop = Arc::new(AtomicBool::new(false));
    let health = tokio::spawn(sample_health(api.to_string(), stop.clone()));
    let waits = queue_waits(api, store, first_steps, rate, seconds).await;
    stop.store(true, Ordering::Relaxed);
    let health = health.await.unwrap();
    format!(
        "queue wait p50 {:.2} ms, p99 {:.2} ms; /healthz p99 {:.1} ms, max {:.1} ms ({} asks)",
        percentile(&waits, 50.0),
        percentile(&waits, 99.0),
        percentile(&health, 99.0),
        health.last().copied().unwrap_or_default(),
        health.len()
    )
}

pub async fn under_load(rate: u32, seconds: u32, idle: usize, followers: usize) {
    let db = TestDb::new().await;
    let store = &db.store;
    let (ports, first_steps) = start_workers(2, 16).await;
    let limits = [
        ("SLIPWAY_HTTP_MAX_CONNECTIONS", "4096"),
        ("SLIPWAY_MAX_FOLLOWERS", "2000"),
        ("SLIPWAY_HTTP_RATE", "100000"),
        ("SLIPWAY_HTTP_BURST", "1000000"),
    ];
    let (_server, api) = start_server(&db, &ports, &limits).await;
    let alone = measure(&api, store, &first_steps, rate, seconds).await;
    println!("alone: {alone}");

    // The crowd: idle connections from children, followers on jobs nobody takes.
    let addr = api.trim_start_matches("http://").to_string();
    let per_child = 10_000;
    let mut children = Vec::new();
    for (i, start) in (0..idle).step_by(per_child).enumerate() {
        let count = per_child.min(idle - start);
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .env(IDLE_CHILD, format!("{addr},{count},127.0.{}.1", 10 + i))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
        assert!(line.starts_with("ready"), "{line}");
        children.push(child);
    }
    let http = super::common::client_with(reqwest::Client::builder());
    let parked = serde_json::json!({ "repo": "git://127.0.0.1/app", "image": "127.0.0.1:5000/bench/app:1",
                                      "requires": { "pool": "nobody" } });
    let mut jobs = Vec::new();
    for _ in 0..followers.div_ceil(100) {
        let job: serde_json::Value =
            http.post(format!("{api}/v1/jobs")).json(&parked).send().await.unwrap().json().await.unwrap();
        jobs.push(job["id"].as_str().unwrap().to_string());
    }
    let mut streams = Vec::new();
    for i in 0..followers {
        let local: std::net::IpAddr = format!("127.0.2.{}", 1 + i % 100).parse().unwrap();
        let client = super::common::client_with(reqwest::Client::builder().local_address(local));
        let url = format!("{api}/v1/jobs/{}/logs?follow=true", jobs[i % jobs.len()]);
        let response = client.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200, "follower {i} refused");
        streams.push(response);
    }
    let crowd = measure(&api, store, &first_steps, rate, seconds).await;
    println!("with {idle} connections opened and left idle and {followers} live-log streams open: {crowd}");
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(streams);
}
