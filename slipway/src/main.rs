//! The `slipway` binary: wiring only. Each subcommand's work lives in `process`
//! (long-running processes), `client` (the HTTP API's command-line client) and
//! `certs` (the installation's CA); `config` turns flags and `SLIPWAY_*` variables
//! into validated settings.

mod access;
mod certs;
mod client;
mod config;
mod credentials;
mod local_postgres;
mod process;
mod secrets;

use clap::{Parser, Subcommand};
use client::{ApiArgs, SubmitArgs};
use config::{DatabaseArgs, RegistryArgs, RepoArgs, ServerArgs, TlsArgs, WorkerArgs};
use tokio_util::sync::CancellationToken;

/// Slipway: a durable build-and-run engine. Jobs are cloned, built, pushed and run,
/// with every step recorded in Postgres.
#[derive(Debug, Parser)]
#[command(name = "slipway", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written: `text`, or `json` (one object a line, for log
    /// shippers).
    #[arg(long, global = true, env = "SLIPWAY_LOG_FORMAT", default_value = "text")]
    log_format: slipway_observability::LogFormat,
}

#[derive(Debug, Subcommand)]
// Parsed once at start-up: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// HTTP API, orchestrator loops and the report service workers report to.
    Server {
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// The gRPC worker that runs jobs' steps; holds no database credentials.
    Worker {
        #[command(flatten)]
        worker: WorkerArgs,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Server and one worker in one process; a private Postgres without DATABASE_URL.
    Standalone {
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        worker: WorkerArgs,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        repo: RepoArgs,
        /// Folder of the private Postgres (used when DATABASE_URL is not set) and of
        /// the CA that secures the link to its worker (`tls/`)
        /// [default: /var/lib/slipway as root, else ~/.local/share/slipway].
        #[arg(long, env = "SLIPWAY_DATA_DIR")]
        data_dir: Option<std::path::PathBuf>,
    },
    /// The installation's CA: orchestrators and workers accept only each other's
    /// certificates from it.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Stores an API and a token in the credentials file, for the commands to use.
    Login {
        /// Base URL of the Slipway HTTP API.
        #[arg(long)]
        api: String,
        /// The token [default: read from standard input].
        #[arg(long, env = "SLIPWAY_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The profile to store them as.
        #[arg(long, env = "SLIPWAY_PROFILE", default_value = credentials::DEFAULT_PROFILE)]
        profile: String,
    },
    /// API tokens, made from the database (whoever holds it holds the instance).
    Token {
        #[command(subcommand)]
        command: access::TokenCommand,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Projects, made from the database.
    Project {
        #[command(subcommand)]
        command: access::ProjectCommand,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// A project's secrets: values jobs name and never show.
    Secret {
        #[command(subcommand)]
        command: secrets::SecretCommand,
    },
    /// Applies the migrations and exits.
    Migrate {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Submits a job.
    Submit {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        job: SubmitArgs,
    },
    /// Shows one job.
    Get {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
    },
    /// Lists jobs, newest first.
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// Only jobs in this state.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Cancels a job.
    Cancel {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
        /// Wait until the job has ended and print it.
        #[arg(long)]
        wait: bool,
    },
    /// Prints a job's log lines.
    Logs {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
        /// Keep printing until the job ends.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Print lines exactly as stored, control characters included (by default
        /// they are shown as `^X`, so that a job cannot drive your terminal).
        #[arg(long)]
        raw: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Makes a CA in DIR: `ca.pem` (every process trusts it) and `ca.key`.
    Init { dir: std::path::PathBuf },
    /// Issues a certificate and key from the CA in `--dir`, written beside it as
    /// `<name>.pem` and `<name>.key`.
    Issue {
        /// The folder of the CA.
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        /// For the worker of this name (its SLIPWAY_WORKER_ID).
        #[arg(long, value_name = "NAME", conflicts_with = "orchestrator", required_unless_present = "orchestrator")]
        worker: Option<String>,
        /// For an orchestrator (`slipway server`), named so in the file names.
        #[arg(long, value_name = "NAME")]
        orchestrator: Option<String>,
    },
}

fn certs(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init { dir } => certs::init(&dir),
        CertsCommand::Issue { dir, worker: Some(name), .. } => {
            certs::issue(&dir, &slipway_proto::tls::Role::Worker(name.clone()), &name).map(drop)
        }
        CertsCommand::Issue { dir, orchestrator: Some(name), .. } => {
            certs::issue(&dir, &slipway_proto::tls::Role::Orchestrator, &name).map(drop)
        }
        CertsCommand::Issue { .. } => {
            anyhow::bail!("name what the certificate is for: --worker NAME or --orchestrator NAME")
        }
    }
}

/// Cancels the token on the first SIGINT or SIGTERM; exits at once on the second.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("shutting down; a second signal exits at once");
        trigger.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        std::process::exit(130);
    });
    token
}

fn main() {
    // Before any thread exists: libgit2's timeouts are process globals.
    slipway_steps::clone::configure_timeouts();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("the async runtime starts");
    runtime.block_on(run());
}

async fn run() {
    let cli = Cli::parse();
    let service_name = match &cli.command {
        Command::Server { .. } => "slipway-server",
        Command::Worker { .. } => "slipway-worker",
        Command::Standalone { .. } => "slipway",
        _ => "slipway-cli",
    };
    let config =
        slipway_observability::Config { service_name: service_name.into(), format: cli.log_format, filter: None };
    let telemetry = slipway_observability::init(&config);
    let result: anyhow::Result<i32> = match cli.command {
        Command::Server { db, server, registry, tls, repo } => {
            process::server(db, server, registry, tls, repo, shutdown_on_signals()).await.map(|()| 0)
        }
        Command::Worker { worker, registry, tls, repo } => {
            process::worker(worker, registry, tls, repo, shutdown_on_signals()).await.map(|()| 0)
        }
        Command::Standalone { db, server, worker, registry, repo, data_dir } => {
            let parts = process::Parts { db, server, worker, registry, repo, data_dir };
            process::standalone(parts, shutdown_on_signals()).await.map(|()| 0)
        }
        Command::Certs { command } => certs(command).map(|()| 0),
        Command::Migrate { db } => process::migrate(db).await.map(|()| 0),
        Command::Submit { api, job } => async { client::submit(&api.resolve()?, job).await }.await,
        Command::Get { api, id } => async { client::get(&api.resolve()?, &id).await.map(|()| 0) }.await,
        Command::List { api, state, limit } => {
            async { client::list(&api.resolve()?, state, limit).await.map(|()| 0) }.await
        }
        Command::Logs { api, id, follow, raw } => async { client::logs(&api.resolve()?, &id, follow, raw).await }.await,
        Command::Cancel { api, id, wait } => {
            async { client::cancel(&api.resolve()?, &id, wait).await.map(|()| 0) }.await
        }
        Command::Login { api, token, profile } => access::login(api, token, &profile).map(|()| 0),
        Command::Token { command, db } => access::token(db, command).await.map(|()| 0),
        Command::Project { command, db } => access::project(db, command).await.map(|()| 0),
        Command::Secret { command } => secrets::secret(command).await.map(|()| 0),
    };
    // Flush the spans still buffered before exiting.
    drop(telemetry);
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("slipway: {e:#}");
            std::process::exit(1);
        }
    }
}
