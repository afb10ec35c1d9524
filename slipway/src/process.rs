//! The long-running processes of the `slipway` binary, each run until its shutdown
//! token is cancelled: stop claiming, let running steps finish (bounded), close the
//! servers.

use std::time::Duration;

use anyhow::Context;
use slipway_proto::tls::{Role, TlsIdentity};
use slipway_proto::v1::report_service_server::ReportServiceServer;
use slipway_worker::BoundWorker;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::certs::Ca;
use crate::config::{DatabaseArgs, RegistryArgs, RepoArgs, ServerArgs, TlsArgs, WorkerArgs, local_url, tls_error};
use crate::local_postgres::{LocalPostgres, default_data_root};
use slipway_engine::orchestrator::{self, OrchestratorConfig, ReportHandler, SweepConfig, Sweeper};
use slipway_engine::registry::RegistryClient;
use slipway_engine::store::Store;

/// How long a start waits for Postgres to accept connections.
const DATABASE_PATIENCE: Duration = Duration::from_secs(30);

/// Connects and applies the migrations.
async fn open_store(url: &str) -> anyhow::Result<Store> {
    let store = Store::connect(url, DATABASE_PATIENCE).await.context("cannot connect to the database")?;
    store.migrate().await.context("cannot apply the migrations")?;
    Ok(store)
}

/// `slipway migrate`
pub async fn migrate(db: DatabaseArgs) -> anyhow::Result<()> {
    let url = db.database_url.context("DATABASE_URL is required")?;
    open_store(&url).await?;
    tracing::info!("migrations applied");
    Ok(())
}

/// `slipway server`
pub async fn server(
    db: DatabaseArgs,
    args: ServerArgs,
    registry: RegistryArgs,
    tls: TlsArgs,
    repo: RepoArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    args.validate()?;
    let tls = tls.identity()?;
    tls.expect_orchestrator().map_err(tls_error)?;
    let logins = registry.logins()?;
    let url = db.database_url.context("DATABASE_URL is required for `slipway server`")?;
    let store = open_store(&url).await?;
    let keys = args.secrets.keyring()?;
    if keys.is_none() {
        tracing::warn!("no SLIPWAY_SECRETS_KEY: project secrets cannot be stored or used");
    }
    let links = Links { logins, tls, repo: repo.policy(false), keys };
    serve_orchestrator(store, args, links, Vec::new(), None, shutdown, async { Ok(()) }).await
}

/// `slipway worker`
pub async fn worker(
    args: WorkerArgs,
    registry: RegistryArgs,
    tls: TlsArgs,
    repo: RepoArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    args.validate()?;
    let mut config = args.worker_config(args.worker_addr, registry.logins()?, tls.identity()?, repo.policy(false))?;
    config.metrics_addr = Some(args.metrics_addr.unwrap_or_else(|| ([127, 0, 0, 1], 9464).into()));
    let worker = BoundWorker::bind(config).await?;
    worker.serve(shutdown).await?;
    Ok(())
}

/// `slipway standalone`: a server and a worker in one process, with a private
/// Postgres when no `DATABASE_URL` is given. The two speak mutual TLS like any
/// other pair, with certificates issued at each start from a CA kept in the data
/// folder (`tls/`, made on first start), so that other workers can be issued
/// certificates for it with `slipway certs issue --dir <data>/tls`.
pub async fn standalone(parts: Parts, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Parts { db, server, worker, registry, repo, data_dir } = parts;
    server.validate()?;
    worker.validate()?;
    let logins = registry.logins()?;
    let root = data_dir.unwrap_or_else(default_data_root);
    let ca = Ca::read_or_create(&root.join("tls"))?;
    let keys = server.secrets.keyring_or_own(&root)?;
    let worker_id = worker.standalone_worker_id(worker.worker_addr);
    let worker_tls = ca.identity(&Role::Worker(worker_id.clone()))?;
    let orchestrator_tls = ca.identity(&Role::Orchestrator)?;
    let local_postgres = match db.database_url {
        Some(_) => None,
        None => {
            tracing::info!(path = %root.display(), "no DATABASE_URL: using a private postgres in this data folder");
            Some(LocalPostgres::start(&root).await?)
        }
    };
    let url = match (&db.database_url, &local_postgres) {
        (Some(url), _) => url.clone(),
        (None, Some(pg)) => pg.url.clone(),
        (None, None) => unreachable!("a private postgres is started when no URL is given"),
    };
    let policy = repo.policy(true);
    let result = async {
        let store = open_store(&url).await?;
        // The first start makes the installation's owner token, saved for the CLI.
        let api = local_url(server.http_addr).replacen("https://", "http://", 1);
        crate::access::bootstrap_owner(&store, &api).await?;
        let worker = WorkerArgs { worker_id: Some(worker_id), ..worker };
        let mut config = worker.worker_config(worker.worker_addr, logins.clone(), worker_tls, policy.clone())?;
        config.metrics_addr = None;
        let bound = BoundWorker::bind(config).await?;
        let local_worker = local_url(bound.local_addr());
        let ready = Ready { worker: bound.local_addr(), builder: bound.builder_description().await };
        let worker_task = tokio::spawn(bound.serve(shutdown.clone()));
        // The report service stays up until the worker has drained and reported.
        let drained = async move {
            worker_task.await.context("the worker task panicked")??;
            Ok(())
        };
        let links = Links { logins, tls: orchestrator_tls, repo: policy, keys: Some(keys) };
        serve_orchestrator(store, server, links, vec![local_worker], Some(ready), shutdown, drained).await
    }
    .await;
    if let Some(pg) = local_postgres {
        pg.stop().await;
    }
    result
}

/// What `slipway standalone` is made of.
pub struct Parts {
    pub db: DatabaseArgs,
    pub server: ServerArgs,
    pub worker: WorkerArgs,
    pub registry: RegistryArgs,
    pub repo: RepoArgs,
    pub data_dir: Option<std::path::PathBuf>,
}

/// What an orchestrator may reach, and as whom: registries with their credentials,
/// workers with its certificate, repositories by the policy.
struct Links {
    logins: slipway_steps::registry_logins::RegistryLogins,
    tls: TlsIdentity,
    repo: slipway_steps::repo_url::RepoPolicy,
    /// The keys project secrets are sealed with, if any.
    keys: Option<slipway_engine::secrets::keyring::Keyring>,
}

/// What `standalone` says in its one line once it is ready.
struct Ready {
    worker: std::net::SocketAddr,
    builder: String,
}

/// Runs the HTTP API, the report service and the dispatch loop until `shutdown`;
/// prints the ready line, when given, once the API listens.
async fn serve_orchestrator(
    store: Store,
    args: ServerArgs,
    links: Links,
    local_workers: Vec<String>,
    ready: Option<Ready>,
    shutdown: CancellationToken,
    before_close: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let http = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("cannot listen on SLIPWAY_HTTP_ADDR {}", args.http_addr))?;
    let grpc = tokio::net::TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on SLIPWAY_GRPC_ADDR {}", args.grpc_addr))?;
    let grpc_addr = grpc.local_addr()?;
    let report_url = match &args.report_url {
        Some(url) => url.clone(),
        None => local_url(grpc_addr),
    };
    let wake = orchestrator::Wake::default();
    let Links { logins, tls, repo, keys } = links;
    let vault = slipway_engine::secrets::vault::Vault::new(store.clone(), keys);
    let defaults = args.submit_defaults(repo);
    let instance_id = store.instance_id().await?;
    let worker_urls: Vec<String> = local_workers.into_iter().chain(args.workers.iter().cloned()).collect();
    let workers = orchestrator::WorkerLink::connect_all(&worker_urls, &tls);
    let sweep = SweepConfig { retention: args.retention, interval: args.sweep_interval, batch: 500 };
    let registry = RegistryClient::new(logins);
    let sweeper = Sweeper::new(store.clone(), vault.clone(), registry, sweep, instance_id.clone(), workers.clone());
    let sweep_task = tokio::spawn(sweeper.run(shutdown.clone()));
    let config = OrchestratorConfig {
        owner: args.orchestrator_id(),
        report_url,
        worker_timeout: args.worker_timeout,
        heartbeat_interval: args.heartbeat_interval,
        default_policy: defaults.retry,
        instance_id,
        cache_affinity_wait: args.cache_affinity_wait,
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<ReportServiceServer<ReportHandler>>().await;
    let commits = orchestrator::CommitConfig {
        lease_ttl: args.worker_timeout,
        default_policy: defaults.retry,
        max_log_bytes: args.max_log_bytes,
        batch: usize::from(args.commit_batch),
    };
    let reports = orchestrator::report_handler(&store, commits, wake.clone());
    let grpc_stop = CancellationToken::new();
    let grpc_task = {
        let stop = grpc_stop.clone();
        tracing::info!(addr = %grpc_addr, "report service listening");
        let reports = ReportServiceServer::new(reports)
            .max_decoding_message_size(slipway_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(slipway_proto::MAX_MESSAGE_BYTES);
        // Only a worker's certificate of the installation's CA gets a report in.
        let mut server = tonic::transport::Server::builder().tls_config(tls.server_config())?;
        tokio::spawn(
            server
                .add_service(health_service)
                .add_service(InterceptedService::new(reports, slipway_proto::tls::workers_only))
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(grpc), async move {
                    stop.cancelled().await
                }),
        )
    };
    let mut api = slipway_engine::api::AppState::new(store.clone(), defaults, shutdown.clone());
    api.metrics_token = args.metrics_token.as_deref().map(std::sync::Arc::from);
    api.vault = vault.clone();
    let http_addr = http.local_addr()?;
    let http_task = tokio::spawn(slipway_engine::api::serve(http, api, shutdown.clone(), args.http_limits()));
    if let Some(Ready { worker, builder }) = ready {
        let reach = if worker.ip().is_loopback() { "loopback only" } else { "open to the network, mutual TLS" };
        println!(
            "slipway is ready: API on http://{http_addr}, its worker on {worker} ({reach}), building with {builder}. \
             Try, in a git repository with a Dockerfile: slipway submit --repo . --image hello:dev --follow"
        );
    }
    orchestrator::run(store, vault, config, workers, wake, shutdown).await;
    http_task.await.context("the http task panicked")??;
    sweep_task.await.context("the sweep task panicked")?;
    // Workers keep reporting while they drain; the report service closes last.
    let drained = before_close.await;
    grpc_stop.cancel();
    grpc_task.await.context("the grpc task panicked")??;
    drained
}
