//! Benchmark of the engine path: claim → dispatch over gRPC → report → fenced commit.
//!
//! A real `slipway server` process runs against a fresh database (default Postgres
//! settings, fsync on) at its default log level. The workers are benchmark-only:
//! they serve the real `JobService` over gRPC with a stated number of slots and, for
//! every job they are given, report what a real worker reports — each step's start,
//! about 20 log lines a step, the run's container id before its end, each step's
//! end with the next one's start — with no clone, build or container in between, so
//! that what is measured is the engine, not Docker. It prints:
//!
//! - throughput: complete jobs/s for a backlog of `BENCH_JOBS` jobs (queued before
//!   the clock starts), with one worker of 2 slots (the default) and two workers of
//!   `BENCH_SLOTS` slots each, and the same with a transaction per report
//!   (`SLIPWAY_COMMIT_BATCH=1`); transitions/s counts the history rows written
//!   inside the timed window (five a job: the `queued` row is written before);
//! - latency: from `POST /v1/jobs` to the committed start of the job's first step
//!   (the worker holding the answer to its report), p50 and p99, at a fixed offered
//!   rate of `BENCH_RATE` jobs/s, beside the raw floor of a LISTEN/NOTIFY + SKIP
//!   LOCKED queue measured in the same run (the statements of
//!   `shared/bench/latency-floor/latency_floor.py`);
//! - the size of the tables after the backlog, and after a sweep deleted it;
//! - the dashboard's job list with `BENCH_DASHBOARD_JOBS` (100,000) jobs stored.
//!
//! Run with `scripts/bench` (it starts Postgres like the tests do).

// The tests' support modules: a fresh database, the `slipway` process launcher.
#[path = "../tests/suite/common/mod.rs"]
#[allow(unused_imports)]
mod common;

#[path = "engine_path/load.rs"]
mod load;

#[path = "engine_path/dashboard.rs"]
mod dashboard;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Ports, Slipway, TestDb, settings, spawn_server, wait_healthy};
use slipway_engine::store::Store;
use slipway_proto::tls::{self, TlsIdentity};
use slipway_proto::v1::{self, job_service_server::JobService, report_service_client::ReportServiceClient};
use sqlx::Connection;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

const STEPS: [v1::Step; 4] = [v1::Step::Clone, v1::Step::Build, v1::Step::Push, v1::Step::Run];
/// Log lines a benchmark job sends per step.
const LINES_PER_STEP: usize = 20;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// When the first step of a job was committed, as its worker learned it.
type FirstSteps = Arc<Mutex<HashMap<String, Instant>>>;

/// A worker that runs every step at once, reporting like a real one.
struct InstantWorker {
    id: String,
    slots: u32,
    busy: Arc<AtomicU32>,
    first_steps: FirstSteps,
    clients: Arc<Mutex<HashMap<String, ReportServiceClient<Channel>>>>,
    /// Its certificate, as a real worker's, from the launcher's test CA.
    tls: TlsIdentity,
}

impl InstantWorker {
    fn client(&self, url: &str) -> ReportServiceClient<Channel> {
        let mut clients = self.clients.lock().unwrap();
        clients
            .entry(url.to_string())
            .or_insert_with(|| {
                ReportServiceClient::new(self.tls.endpoint(url, tls::Server::Orchestrator).unwrap().connect_lazy())
            })
            .clone()
    }
}

/// What the worker sends for one job, in order.
enum Send {
    Step(Box<v1::StepReport>),
    Logs(v1::LogBatch),
}

/// A real worker's reports for a job whose steps all succeed at once.
fn reports_of(lease: &v1::Lease) -> Vec<Send> {
    let report = |step: v1::Step, event, exit_code, then_start: i32| {
        Send::Step(Box::new(v1::StepReport {
            lease: Some(lease.clone()),
            step: step as i32,
            event: Some(event),
            exit_code,
            then_start,
        }))
    };
    let lines = |step: v1::Step| {
        let at_micros = chrono::Utc::now().timestamp_micros();
        let lines = (0..LINES_PER_STEP)
            .map(|i| v1::LogLine {
                step: step as i32,
                stream: v1::Stream::Stdout as i32,
                text: format!("{} output line {i} of a benchmark job, about as long as a build's", step.as_str_name()),
                at_micros,
                cursor: String::new(),
            })
            .collect();
        Send::Logs(v1::LogBatch { lease: Some(lease.clone()), lines })
    };
    let mut sends = vec![report(STEPS[0], v1::step_report::Event::Started(v1::step_report::Started {}), None, 0)];
    for (i, step) in STEPS.into_iter().enumerate() {
        if step == v1::Step::Run {
            // The container id, stored before the worker waits on the container.
            let started = v1::StepOutputs { container_id: format!("c{}", lease.job_id), ..Default::default() };
            sends.push(report(step, v1::step_report::Event::Progress(started), None, 0));
        }
        sends.push(lines(step));
        let outputs = match step {
            v1::Step::Clone => v1::StepOutputs { commit_sha: "0".repeat(40), ..Default::default() },
            v1::Step::Build => v1::StepOutputs { image_id: format!("sha256:{}", "1".repeat(64)), ..Default::default() },
            v1::Step::Push => v1::StepOutputs {
                pushed_ref: format!("127.0.0.1:5000/bench/app@sha256:{}", "2".repeat(64)),
                ..Default::default()
            },
            _ => v1::StepOutputs::default(),
        };
        let next = STEPS.get(i + 1).map_or(0, |s| *s as i32);
        let exit_code = (step == v1::Step::Run).then_some(0);
        sends.push(report(step, v1::step_report::Event::Succeeded(outputs), exit_code, next));
    }
    sends
}

#[tonic::async_trait]
impl JobService for InstantWorker {
    async fn start_job(&self, request: Request<v1::StartJobRequest>) -> Result<Response<v1::StartJobResponse>, Status> {
        let request = request.into_inner();
        let mut lease = request.lease.unwrap();
        lease.worker_id = self.id.clone();
        if self.busy.fetch_add(1, Ordering::SeqCst) >= self.slots {
            self.busy.fetch_sub(1, Ordering::SeqCst);
            return Err(Status::resource_exhausted("no free slot"));
        }
        let mut client = self.client(&request.report_to);
        let (busy, first_steps) = (self.busy.clone(), self.first_steps.clone());
        tokio::spawn(async move {
            for (i, send) in reports_of(&lease).into_iter().enumerate() {
                let ack = match send {
                    Send::Step(report) => client.report_step(*report).await,
                    Send::Logs(batch) => client.append_logs(batch).await,
                };
                match ack {
                    Ok(ack) if ack.get_ref().accepted => {}
                    Ok(_) => panic!("a report was refused"),
                    Err(status) => panic!("a report failed: {status}"),
                }
                if i == 0 {
                    first_steps.lock().unwrap().insert(lease.job_id.clone(), Instant::now());
                }
            }
            busy.fetch_sub(1, Ordering::SeqCst);
        });
        Ok(Response::new(v1::StartJobResponse { worker_id: self.id.clone() }))
    }

    async fn get_status(&self, _: Request<v1::GetStatusRequest>) -> Result<Response<v1::GetStatusResponse>, Status> {
        Ok(Response::new(v1::GetStatusResponse::default()))
    }

    async fn cancel(&self, _: Request<v1::CancelRequest>) -> Result<Response<v1::CancelResponse>, Status> {
        Ok(Response::new(v1::CancelResponse::default()))
    }

    async fn ping(&self, _: Request<v1::PingRequest>) -> Result<Response<v1::PingResponse>, Status> {
        Ok(Response::new(v1::PingResponse {
            worker_id: self.id.clone(),
            slots_total: self.slots,
            slots_busy: self.busy.load(Ordering::SeqCst),
            running: Vec::new(),
            labels: Default::default(),
            runtimes: vec!["docker".into()],
            ..Default::default()
        }))
    }

    async fn list_leftovers(
        &self,
        _: Request<v1::ListLeftoversRequest>,
    ) -> Result<Response<v1::ListLeftoversResponse>, Status> {
        Ok(Response::new(v1::ListLeftoversResponse::default()))
    }

    async fn remove_leftovers(
        &self,
        _: Request<v1::RemoveLeftoversRequest>,
    ) -> Result<Response<v1::RemoveLeftoversResponse>, Status> {
        Ok(Response::new(v1::RemoveLeftoversResponse::default()))
    }
}

/// Starts `count` instant workers of `slots` slots; returns their ports and when
/// each job's first step was committed.
async fn start_workers(count: usize, slots: u32) -> (Vec<u16>, FirstSteps) {
    let first_steps = Arc::new(Mutex::new(HashMap::new()));
    let mut ports = Vec::new();
    for i in 0..count {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        ports.push(listener.local_addr().unwrap().port());
        let id = format!("bench-worker-{i}");
        let files = common::tls_env(common::TlsRole::Worker(&id));
        let path = |name| std::path::PathBuf::from(&files[name]);
        let tls =
            TlsIdentity::read(&path("SLIPWAY_TLS_CA"), &path("SLIPWAY_TLS_CERT"), &path("SLIPWAY_TLS_KEY")).unwrap();
        let server = tonic::transport::Server::builder().tls_config(tls.server_config()).unwrap();
        let worker = InstantWorker {
            id,
            tls,
            slots,
            busy: Arc::new(AtomicU32::new(0)),
            first_steps: first_steps.clone(),
            clients: Arc::new(Mutex::new(HashMap::new())),
        };
        let mut server = server;
        tokio::spawn(
            server
                .add_service(v1::job_service_server::JobServiceServer::new(worker))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
    }
    (ports, first_steps)
}

/// A `slipway server` on `db` dispatching to the workers on `workers`, with the
/// heartbeat and worker timeout a production server has by default (the test
/// launcher's are shorter); its API's URL.
async fn start_server(db: &TestDb, workers: &[u16], extra: &[(&'static str, &str)]) -> (Slipway, String) {
    let ports = Ports::new();
    let mut env = settings(&[("SLIPWAY_HEARTBEAT_INTERVAL", "1s"), ("SLIPWAY_WORKER_TIMEOUT", "10s")]);
    env.extend(settings(extra));
    let server = spawn_server("bench-server", &db.url, &ports, workers, env);
    wait_healthy(&ports.api(), Duration::from_secs(30)).await;
    (server, ports.api())
}

const SPEC: &str = r#"{"repo":"git://127.0.0.1/app","ref":null,"dockerfile":"Dockerfile","context":".",
    "image":"127.0.0.1:5000/bench/app:1","build_args":{},"env":{},
    "run":{"command":null,"timeout_seconds":86400,"retry_on_failure":false},
    "retry":{"max_attempts":3,"initial_backoff_ms":1000,"max_backoff_ms":60000}}"#;

/// Queues `n` jobs in one statement, before the clock starts. Their `run_after`
/// is in the future, so that no claim takes one before the clock starts; the
/// notification that starts the run moves it.
async fn queue_backlog(store: &Store, n: i64) {
    sqlx::query(
        "with ins as (
             insert into jobs (id, spec, run_after, project_id)
             select gen_random_uuid(), $2::jsonb, now() + interval '1 day', (select id from projects where name = 'default')
             from generate_series(1, $1)
             returning id, state, attempt
         )
         insert into job_events (job_id, from_state, to_state, attempt, reason)
         select id, null, state, attempt, 'submitted' from ins",
    )
    .bind(n)
    .bind(SPEC)
    .execute(store.pool())
    .await
    .unwrap();
}

async fn finished(store: &Store) -> i64 {
    sqlx::query_scalar("select count(*) from jobs where state = 'succeeded'").fetch_one(store.pool()).await.unwrap()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

/// Transitions written after the `queued` row of each job.
async fn transitions(store: &Store) -> i64 {
    sqlx::query_scalar("select count(*) from job_events where to_state <> 'queued'")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

async fn throughput(workers: usize, slots: u32, jobs: i64, extra: &[(&'static str, &str)]) -> TestDb {
    let db = TestDb::new().await;
    let store = &db.store;
    let (ports, _) = start_workers(workers, slots).await;
    let _server = start_server(&db, &ports, extra).await;
    queue_backlog(store, jobs).await;
    let started = Instant::now();
    sqlx::query(
        "with due as (update jobs set run_after = now() returning id) select pg_notify('slipway_jobs', 'backlog')",
    )
    .execute(store.pool())
    .await
    .unwrap();
    while finished(store).await < jobs {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let how = if extra.is_empty() {
        String::new()
    } else {
        format!(", {}", extra.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "))
    };
    println!(
        "throughput, {workers} worker(s) × {slots} slots{how}: {jobs} jobs in {elapsed:.2} s = {:.0} jobs/s, {:.0} transitions/s",
        jobs as f64 / elapsed,
        transitions(store).await as f64 / elapsed
    );
    db
}

async fn latency(rate: u32, seconds: u32, workers: usize, slots: u32) {
    let db = TestDb::new().await;
    let (ports, first_steps) = start_workers(workers, slots).await;
    let (_server, api) = start_server(&db, &ports, &[]).await;
    let ms = load::queue_waits(&api, &db.store, &first_steps, rate, seconds).await;
    println!(
        "latency at {rate} jobs/s offered ({workers} worker(s) × {slots} slots), POST /v1/jobs → first step committed: p50 {:.2} ms, p99 {:.2} ms ({} jobs)",
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        ms.len()
    );
}

/// What authentication costs a submission: `POST /v1/jobs` one after another
/// (each authenticated), beside the token check timed alone — cached (the hash of
/// the presented token) and uncached (the indexed lookup by prefix and the hash
/// comparison, made once per token every 10 s).
async fn auth_cost(submissions: u32) {
    let db = TestDb::new().await;
    let (ports, _) = start_workers(1, 1).await;
    let (_server, api) =
        start_server(&db, &ports, &[("SLIPWAY_HTTP_RATE", "100000"), ("SLIPWAY_HTTP_BURST", "1000000")]).await;
    let http = common::client_with(reqwest::Client::builder());
    // Jobs no worker takes: only the submissions are measured.
    let body = serde_json::json!({ "repo": "git://127.0.0.1/app", "image": "127.0.0.1:5000/bench/app:1",
                                   "requires": { "pool": "nobody" } });
    let started = Instant::now();
    for _ in 0..submissions {
        let response = http.post(format!("{api}/v1/jobs")).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 201);
    }
    let per_submission = started.elapsed().as_secs_f64() / f64::from(submissions);
    let token = common::test_token();
    let started = Instant::now();
    for _ in 0..submissions {
        let row = db.store.token_by_prefix(&token.prefix).await.unwrap().unwrap();
        assert!(slipway_engine::auth::token::matches(&token.secret, &row.hash));
    }
    let per_lookup = started.elapsed().as_secs_f64() / f64::from(submissions);
    // What a request whose token was verified lately costs: the hash of what it
    // presents (the cache's key); the map lookup beside it is less.
    let started = Instant::now();
    for _ in 0..submissions * 100 {
        std::hint::black_box(slipway_engine::auth::token::hash(std::hint::black_box(&token.secret)));
    }
    let per_cached = started.elapsed().as_secs_f64() / f64::from(submissions * 100);
    println!(
        "authenticated submissions, one after another: {:.0}/s ({:.2} ms each); a cached token check (its hash): {:.4} ms ({:.2} % of a submission); an uncached one (the lookup by prefix, once per token every 10 s): {:.3} ms",
        1.0 / per_submission,
        per_submission * 1000.0,
        per_cached * 1000.0,
        100.0 * per_cached / per_submission,
        per_lookup * 1000.0
    );
}

/// The raw floor: insert + notify on one connection, LISTEN and claim with SKIP
/// LOCKED on another — two commits and a notification hop, no engine.
async fn latency_floor(jobs: u32) {
    let db = TestDb::new().await;
    let (url, store) = (&db.url, &db.store);
    sqlx::raw_sql(
        "create table jobs_lat (id bigserial primary key, state text not null, run_at timestamptz not null,
             attempts int not null default 0, locked_by text, locked_until timestamptz, payload jsonb,
             updated_at timestamptz not null default now());
         create index jobs_lat_runnable on jobs_lat (run_at, id) where state = 'queued';",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let mut enqueue = sqlx::PgConnection::connect(url).await.unwrap();
    let mut claim = sqlx::PgConnection::connect(url).await.unwrap();
    let mut listener = sqlx::postgres::PgListener::connect(url).await.unwrap();
    listener.listen("jobs_lat").await.unwrap();
    let mut ms = Vec::new();
    for _ in 0..jobs {
        let t0 = Instant::now();
        sqlx::query(
            "with j as (insert into jobs_lat (state, run_at, payload) values ('queued', now(), '{\"kind\":\"noop\"}')
             returning id) select pg_notify('jobs_lat', id::text) from j",
        )
        .execute(&mut enqueue)
        .await
        .unwrap();
        listener.recv().await.unwrap();
        let id: i64 = sqlx::query_scalar(
            "update jobs_lat set state = 'running', locked_by = 'w1', locked_until = now() + interval '30 s',
                 attempts = attempts + 1, updated_at = now()
             where id = (select id from jobs_lat where state = 'queued' and run_at <= now()
                         order by run_at, id for update skip locked limit 1)
             returning id",
        )
        .fetch_one(&mut claim)
        .await
        .unwrap();
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        sqlx::query("update jobs_lat set state = 'done', locked_by = null, locked_until = null, updated_at = now() where id = $1")
            .bind(id)
            .execute(&mut claim)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "latency floor (LISTEN/NOTIFY + SKIP LOCKED, no engine): p50 {:.2} ms, p99 {:.2} ms ({jobs} jobs)",
        percentile(&ms, 50.0),
        percentile(&ms, 99.0)
    );
}

async fn table_sizes(store: &Store, when: &str) {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "select c.relname::text, pg_total_relation_size(c.oid), coalesce(s.n_live_tup, 0)
         from pg_class c left join pg_stat_user_tables s on s.relid = c.oid
         where c.relname in ('jobs', 'job_events', 'job_steps', 'job_logs') order by c.relname",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let sizes: Vec<String> =
        rows.iter().map(|(t, bytes, live)| format!("{t} {:.1} MiB ({live} rows)", *bytes as f64 / 1048576.0)).collect();
    println!("table sizes {when}: {}", sizes.join(", "));
}

#[tokio::main]
async fn main() {
    if let Ok(spec) = std::env::var(load::IDLE_CHILD) {
        return load::idle_child(&spec).await;
    }
    let jobs: i64 = env_or("BENCH_JOBS", 5_000);
    let rate: u32 = env_or("BENCH_RATE", 100);
    let seconds: u32 = env_or("BENCH_SECONDS", 10);
    let slots: u32 = env_or("BENCH_SLOTS", 16);

    if std::env::var("BENCH_ONLY").as_deref() == Ok("auth") {
        return auth_cost(env_or("BENCH_SUBMISSIONS", 1000)).await;
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("dashboard") {
        return dashboard::job_list(env_or("BENCH_DASHBOARD_JOBS", 100_000), env_or("BENCH_PAGE_LOADS", 50)).await;
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("load") {
        return load::under_load(rate, seconds, env_or("BENCH_IDLE", 20_000), env_or("BENCH_FOLLOWERS", 1_500)).await;
    }
    latency_floor(200).await;
    latency(rate, seconds, 2, slots).await;
    latency_floor(200).await;
    auth_cost(env_or("BENCH_SUBMISSIONS", 1000)).await;
    throughput(1, 2, jobs, &[]).await;
    throughput(2, slots, jobs, &[("SLIPWAY_COMMIT_BATCH", "1")]).await;
    let db = throughput(2, slots, jobs, &[]).await;
    let store = &db.store;

    sqlx::query("analyze").execute(store.pool()).await.unwrap();
    table_sizes(store, &format!("after {jobs} jobs")).await;
    // A sweep with no retention deletes every finished job; autovacuum then makes the
    // space reusable (the files keep their size until a VACUUM FULL).
    let (ports, _) = start_workers(1, 1).await;
    let _server = start_server(&db, &ports, &[("SLIPWAY_RETENTION", "1ms"), ("SLIPWAY_SWEEP_INTERVAL", "200ms")]).await;
    while sqlx::query_scalar::<_, i64>("select count(*) from jobs").fetch_one(store.pool()).await.unwrap() > 0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sqlx::query("vacuum analyze").execute(store.pool()).await.unwrap();
    table_sizes(store, "after the sweep and a vacuum").await;
    load::under_load(rate, seconds, env_or("BENCH_IDLE", 20_000), env_or("BENCH_FOLLOWERS", 1_500)).await;
    dashboard::job_list(env_or("BENCH_DASHBOARD_JOBS", 100_000), env_or("BENCH_PAGE_LOADS", 50)).await;
}
