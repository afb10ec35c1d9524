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
mod tables;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
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
    /// The API the client commands call, and as whom; accepted before or after the
    /// command.
    #[command(flatten)]
    api: ApiArgs,
    /// How log lines are written: `text`, or `json` (one object a line, for log
    /// shippers).
    #[arg(long, global = true, env = "SLIPWAY_LOG_FORMAT", default_value = "text", help_heading = "Logging")]
    log_format: slipway_observability::LogFormat,
}

#[derive(Debug, Subcommand)]
// Parsed once at start-up: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// HTTP API, orchestrator loops and the report service workers report to.
    #[command(
        after_help = "Example:\n  DATABASE_URL=postgres://slipway@db/slipway SLIPWAY_TLS_CA=ca.pem SLIPWAY_TLS_CERT=server.pem \\\n  SLIPWAY_TLS_KEY=server.key SLIPWAY_WORKERS=https://10.0.0.5:50051 slipway server"
    )]
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
    #[command(
        after_help = "Example:\n  SLIPWAY_TLS_CA=ca.pem SLIPWAY_TLS_CERT=worker-a.pem SLIPWAY_TLS_KEY=worker-a.key \\\n  SLIPWAY_WORKER_ADDR=10.0.0.5:50051 SLIPWAY_WORKER_LABELS=region=eu-west-1 slipway worker"
    )]
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
    #[command(
        after_help = "Example:\n  slipway standalone\n  # then, in a git repository with a Dockerfile:\n  slipway submit --repo . --image hello:dev --follow"
    )]
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
    #[command(after_help = "Example:\n  slipway login --api https://slipway.example.com < token.txt")]
    /// `--api` names the API, `--token` the token (read from standard input when
    /// not given), `--profile` the profile they are stored as.
    Login,
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
    #[command(after_help = "Example:\n  DATABASE_URL=postgres://slipway@db/slipway slipway migrate")]
    Migrate {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Submits a job.
    #[command(
        after_help = "Examples:\n  slipway submit --repo . --image hello:dev --follow\n  slipway submit --repo https://github.com/you/app.git --ref v1.2 --image 127.0.0.1:5000/team/app:v1 \\\n      -e GREETING=hello --follow -- /app/serve --once"
    )]
    Submit {
        #[command(flatten)]
        job: SubmitArgs,
    },
    /// Shows one job.
    #[command(after_help = "Example:\n  slipway get 0193b1c2-7c1e-7d3a-9f10-3a1b2c3d4e5f")]
    Get {
        /// The job's id, or its first 8 or more characters.
        id: String,
        /// `table` for people, `json` for scripts.
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: tables::Output,
    },
    /// Shows a job's history: every change of state, with its reason.
    #[command(after_help = "Example:\n  slipway events 0193b1c2-7c1e")]
    Events {
        /// The job's id, or its first 8 or more characters.
        id: String,
        /// `table` for people, `json` for scripts.
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: tables::Output,
    },
    /// Lists jobs, newest first.
    #[command(after_help = "Example:\n  slipway list --state failed --limit 20")]
    List {
        /// Only jobs in this state.
        #[arg(long)]
        state: Option<String>,
        /// The most jobs listed (1-500) [default: 50].
        #[arg(long)]
        limit: Option<u32>,
        /// `table` for people, `json` for scripts.
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: tables::Output,
    },
    /// Cancels a job.
    #[command(after_help = "Example:\n  slipway cancel --wait 0193b1c2-7c1e-7d3a-9f10-3a1b2c3d4e5f")]
    Cancel {
        /// The job's id, or its first 8 or more characters.
        id: String,
        /// Wait until the job has ended and print it.
        #[arg(long)]
        wait: bool,
    },
    /// Prints the shell completion script of `slipway` for bash, zsh or fish.
    #[command(after_help = "Example:\n  slipway completions bash > ~/.local/share/bash-completion/completions/slipway")]
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Prints the HTTP API's OpenAPI document (the one a server serves at /v1/openapi.json).
    #[command(after_help = "Example:\n  slipway openapi > openapi.json")]
    Openapi,
    /// Prints a job's log lines.
    #[command(after_help = "Example:\n  slipway logs -f 0193b1c2-7c1e-7d3a-9f10-3a1b2c3d4e5f")]
    Logs {
        /// The job's id, or its first 8 or more characters.
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
    #[command(after_help = "Example:\n  slipway certs init /etc/slipway/tls")]
    Init {
        /// The folder to make it in.
        dir: std::path::PathBuf,
    },
    /// Issues a certificate and key from the CA in `--dir`, written beside it as
    /// `<name>.pem` and `<name>.key`.
    #[command(after_help = "Example:\n  slipway certs issue --dir /etc/slipway/tls --worker worker-a")]
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

/// The command line, each setting naming its environment variable without its
/// value (an unset one would read `NAME=`, a secret one would show).
fn command_line() -> clap::Command {
    fn hide_values(command: clap::Command) -> clap::Command {
        command.mut_args(|arg| arg.hide_env_values(true)).mut_subcommands(hide_values)
    }
    hide_values(Cli::command())
}

async fn run() {
    let cli = Cli::from_arg_matches(&command_line().get_matches()).unwrap_or_else(|e| e.exit());
    let service_name = match &cli.command {
        Command::Server { .. } => "slipway-server",
        Command::Worker { .. } => "slipway-worker",
        Command::Standalone { .. } => "slipway",
        _ => "slipway-cli",
    };
    let config =
        slipway_observability::Config { service_name: service_name.into(), format: cli.log_format, filter: None };
    let telemetry = slipway_observability::init(&config);
    let api = cli.api;
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
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut command_line(), "slipway", &mut std::io::stdout());
            Ok(0)
        }
        Command::Openapi => {
            print!("{}", slipway_engine::api::openapi::document_json());
            Ok(0)
        }
        Command::Migrate { db } => process::migrate(db).await.map(|()| 0),
        Command::Submit { job } => async { client::submit(&api.resolve()?, job).await }.await,
        Command::Get { id, output } => async { client::get(&api.resolve()?, &id, output).await.map(|()| 0) }.await,
        Command::Events { id, output } => {
            async { client::events(&api.resolve()?, &id, output).await.map(|()| 0) }.await
        }
        Command::List { state, limit, output } => {
            async { client::list(&api.resolve()?, state, limit, output).await.map(|()| 0) }.await
        }
        Command::Logs { id, follow, raw } => async { client::logs(&api.resolve()?, &id, follow, raw).await }.await,
        Command::Cancel { id, wait } => async { client::cancel(&api.resolve()?, &id, wait).await.map(|()| 0) }.await,
        Command::Login => access::login(&api).map(|()| 0),
        Command::Token { command, db } => access::token(db, command).await.map(|()| 0),
        Command::Project { command, db } => access::project(db, command).await.map(|()| 0),
        Command::Secret { command } => secrets::secret(command, &api).await.map(|()| 0),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command says what it is for and shows an example, and every argument
    /// says what it is, in `--help`.
    #[test]
    fn every_command_and_argument_is_described_and_every_command_has_an_example() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            if command.get_about().is_none() {
                missing.push(format!("{path}: no description"));
            }
            let leaf = command.get_subcommands().next().is_none();
            if leaf && command.get_after_help().is_none_or(|h| !h.to_string().contains("Example")) {
                missing.push(format!("{path}: no example"));
            }
            for arg in command.get_arguments().filter(|a| !matches!(a.get_id().as_str(), "help" | "version")) {
                if arg.get_help().is_none() {
                    missing.push(format!("{path} {}: no description", arg.get_id()));
                }
            }
            for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        let root = command_line();
        for sub in root.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub, "slipway", &mut missing);
        }
        assert!(missing.is_empty(), "{missing:#?}");
    }
}
