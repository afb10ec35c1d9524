//! Tokens and projects made from the database (`slipway token`, `slipway project`),
//! `slipway login`, and the owner token `standalone` makes on its first start.
//! Whoever holds the database holds the installation: these commands need
//! `DATABASE_URL`, and print a token once, never log it.

use anyhow::{Context, bail};
use clap::Subcommand;
use slipway_engine::auth::token::NewToken;
use slipway_engine::auth::{Role, is_project_name};
use slipway_engine::store::{Store, TokenGrant};

use crate::config::DatabaseArgs;
use crate::credentials::{self, Profile};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Makes a token and prints it (once): an owner token (`--owner`), or one of a
    /// project with a role.
    #[command(
        after_help = "Example:\n  slipway token create --name ci --project web --role submit --expires-in 90days"
    )]
    Create {
        /// What the token is for, to tell it apart in lists.
        #[arg(long)]
        name: String,
        /// An owner token: the whole installation.
        #[arg(long, conflicts_with_all = ["project", "role"])]
        owner: bool,
        /// The project of the token.
        #[arg(long, required_unless_present = "owner")]
        project: Option<String>,
        /// read, submit or admin.
        #[arg(long, required_unless_present = "owner")]
        role: Option<Role>,
        /// How long it works (`30days`, `12h`) [default: until revoked].
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
    },
    /// Lists the tokens of a project (or, without one, the owner tokens): prefix,
    /// name, role and state, never a secret.
    #[command(after_help = "Example:\n  slipway token list --project web")]
    List {
        /// The project [default: the owner tokens].
        #[arg(long)]
        project: Option<String>,
    },
    /// Revokes the token with this prefix (`slp_` and 8 hex digits), at once.
    #[command(after_help = "Example:\n  slipway token revoke slp_2c65e9bb")]
    Revoke {
        /// The token's prefix, as `token list` shows it.
        prefix: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Makes a project.
    #[command(after_help = "Example:\n  slipway project create web")]
    Create {
        /// Its name: lowercase letters, digits and `-`.
        name: String,
    },
    /// Lists the projects.
    #[command(after_help = "Example:\n  slipway project list")]
    List,
}

async fn store(db: DatabaseArgs) -> anyhow::Result<Store> {
    let url = db.database_url.context("DATABASE_URL is required: tokens and projects are made in the database")?;
    let store =
        Store::connect(&url, std::time::Duration::from_secs(30)).await.context("cannot connect to the database")?;
    store.migrate().await.context("cannot apply the migrations")?;
    Ok(store)
}

/// `slipway token …`
pub async fn token(db: DatabaseArgs, command: TokenCommand) -> anyhow::Result<()> {
    let store = store(db).await?;
    match command {
        TokenCommand::Create { name, owner, project, role, expires_in } => {
            let (role, project) = match (owner, project, role) {
                (true, _, _) => (Role::Owner, None),
                (false, Some(project), Some(role)) => {
                    if role == Role::Owner {
                        bail!("an owner token belongs to no project: use --owner");
                    }
                    let found = store.project_named(&project).await?;
                    (role, Some(found.with_context(|| format!("there is no project `{project}`"))?.id))
                }
                _ => bail!("name the token's project and role, or make an owner token with --owner"),
            };
            let expires_at = expires_in
                .map(|d| chrono::Duration::from_std(d).map(|d| chrono::Utc::now() + d))
                .transpose()
                .context("--expires-in is too long")?;
            let token = NewToken::generate().context("cannot make a token")?;
            let grant = TokenGrant { name: &name, role, project, expires_at, created_by: None };
            let row = store.create_token(&token, &grant).await?;
            eprintln!("made {} ({}, {}); it is shown once:", row.prefix, row.name, row.role.as_str());
            println!("{}", token.secret);
            Ok(())
        }
        TokenCommand::List { project } => {
            let project = match project {
                Some(name) => {
                    Some(store.project_named(&name).await?.with_context(|| format!("there is no project `{name}`"))?.id)
                }
                None => None,
            };
            for t in store.tokens(project).await? {
                let state = match (t.revoked_at, t.expires_at) {
                    (Some(at), _) => format!("revoked {at}"),
                    (None, Some(at)) if at <= chrono::Utc::now() => format!("expired {at}"),
                    (None, Some(at)) => format!("until {at}"),
                    (None, None) => "no expiry".to_string(),
                };
                let used = t.last_used_at.map_or("never used".to_string(), |at| format!("last used {at}"));
                println!("{}\t{}\t{}\t{state}\t{used}", t.prefix, t.name, t.role.as_str());
            }
            Ok(())
        }
        TokenCommand::Revoke { prefix } => {
            let row = store.token_by_prefix(&prefix).await?.with_context(|| format!("there is no token {prefix}"))?;
            if !store.revoke_token(row.project_id, row.id).await? {
                bail!("token {prefix} was revoked already");
            }
            eprintln!("revoked {prefix} ({})", row.name);
            Ok(())
        }
    }
}

/// `slipway project …`
pub async fn project(db: DatabaseArgs, command: ProjectCommand) -> anyhow::Result<()> {
    let store = store(db).await?;
    match command {
        ProjectCommand::Create { name } => {
            if !is_project_name(&name) {
                bail!("`{name}` cannot name a project: use 1-63 lowercase letters, digits and `-`");
            }
            let made = store.create_project(&name).await?;
            made.with_context(|| format!("project `{name}` exists already"))?;
            println!("{name}");
            Ok(())
        }
        ProjectCommand::List => {
            for project in store.projects().await? {
                println!("{}", project.name);
            }
            Ok(())
        }
    }
}

/// `slipway login`
pub fn login(args: &crate::client::ApiArgs) -> anyhow::Result<()> {
    let profile = args.profile.as_str();
    let api = args.api.clone().context("name the API to log in to: slipway login --api URL")?;
    let api = crate::client::with_scheme(api.trim_end_matches('/'))?;
    let token = match args.token.clone() {
        Some(token) => token,
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("cannot read the token from standard input")?;
            line.trim().to_string()
        }
    };
    if slipway_engine::auth::token::prefix_of(&token).is_none() {
        bail!("that is not a Slipway token (slp_…)");
    }
    let path = credentials::save(profile, &Profile { api: Some(api), token: Some(token) })?;
    eprintln!("saved as profile `{profile}` in {}", path.display());
    Ok(())
}

/// On a `standalone`'s first start (no owner token yet): makes one and writes it,
/// with the API's URL, as the default profile of the credentials file, so that the
/// CLI works with no step between.
pub async fn bootstrap_owner(store: &Store, api: &str) -> anyhow::Result<()> {
    if store.has_owner().await? {
        return Ok(());
    }
    let token = NewToken::generate().context("cannot make a token")?;
    let grant = TokenGrant { name: "standalone", role: Role::Owner, project: None, expires_at: None, created_by: None };
    let row = store.create_token(&token, &grant).await?;
    let profile = Profile { api: Some(api.to_string()), token: Some(token.secret) };
    let path = credentials::save(credentials::DEFAULT_PROFILE, &profile)?;
    tracing::info!(token = %row.prefix, path = %path.display(), "made an owner token for this installation and saved it for the CLI");
    Ok(())
}
