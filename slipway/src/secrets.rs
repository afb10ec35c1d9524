//! `slipway secret`: set, list and delete a project's secrets through the HTTP API
//! (a value is read from standard input, never from an argument, so that it stays
//! out of shell history and process lists), and re-seal them all under a new key
//! from the database (`rotate-key`).

use std::io::{IsTerminal, Read};

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::json;
use slipway_engine::secrets::vault::Vault;
use slipway_engine::store::Store;

use crate::client::{Api, ApiArgs, call, print};
use crate::config::{DatabaseArgs, SecretsKeyArgs};

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Sets a secret to what standard input holds (one final newline dropped).
    #[command(after_help = "Example:\n  slipway secret set npm-token --project web < token.txt")]
    Set {
        /// The secret's name.
        name: String,
        /// The project [default: the token's].
        #[arg(long)]
        project: Option<String>,
    },
    /// Lists a project's secrets: names, when and by whom they were set; never values.
    #[command(after_help = "Example:\n  slipway secret list --project web")]
    List {
        /// The project [default: the token's].
        #[arg(long)]
        project: Option<String>,
    },
    /// Deletes a secret; jobs naming it that have not started fail `secret_missing`.
    #[command(after_help = "Example:\n  slipway secret delete npm-token --project web")]
    Delete {
        /// The secret's name.
        name: String,
        /// The project [default: the token's].
        #[arg(long)]
        project: Option<String>,
    },
    /// Re-seals every secret with SLIPWAY_SECRETS_KEY, opening older ones with
    /// SLIPWAY_SECRETS_PREVIOUS_KEY. Give every server both keys first; once this
    /// has run, the previous key may go.
    #[command(
        after_help = "Example:\n  SLIPWAY_SECRETS_KEY_FILE=new.key SLIPWAY_SECRETS_PREVIOUS_KEY_FILE=old.key \\\n  DATABASE_URL=postgres://slipway@db/slipway slipway secret rotate-key"
    )]
    RotateKey {
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        keys: SecretsKeyArgs,
    },
}

/// `slipway secret …`
pub async fn secret(command: SecretCommand, api: &ApiArgs) -> anyhow::Result<()> {
    match command {
        SecretCommand::Set { name, project } => {
            let api = api.resolve()?;
            let url = secrets_url(&api, project).await?;
            let value = read_value(&name)?;
            let request = api.client().put(format!("{url}/{name}")).json(&json!({ "value": value }));
            print(&call(&api, request).await?);
        }
        SecretCommand::List { project } => {
            let api = api.resolve()?;
            let url = secrets_url(&api, project).await?;
            print(&call(&api, api.client().get(url)).await?);
        }
        SecretCommand::Delete { name, project } => {
            let api = api.resolve()?;
            let url = secrets_url(&api, project).await?;
            call(&api, api.client().delete(format!("{url}/{name}"))).await?;
            eprintln!("deleted secret `{name}`");
        }
        SecretCommand::RotateKey { db, keys } => {
            let keys = keys.keyring()?.context("SLIPWAY_SECRETS_KEY (the new key) is required")?;
            let url = db.database_url.context("DATABASE_URL is required: secrets are re-sealed in the database")?;
            let store = Store::connect(&url, std::time::Duration::from_secs(30))
                .await
                .context("cannot connect to the database")?;
            let moved = Vault::new(store, Some(keys)).rotate().await?;
            eprintln!("re-sealed {moved} secret(s) with the current key");
        }
    }
    Ok(())
}

/// `…/v1/projects/{project}/secrets`; without a project named, the token's own.
async fn secrets_url(api: &Api, project: Option<String>) -> anyhow::Result<String> {
    let project = match project {
        Some(p) => p,
        None => {
            let listed = call(api, api.client().get(format!("{}/v1/projects", api.api))).await?;
            match listed["projects"].as_array().map(Vec::as_slice) {
                Some([only]) => only["name"].as_str().context("a project without a name")?.to_string(),
                _ => bail!("this token sees several projects: name one with --project"),
            }
        }
    };
    Ok(format!("{}/v1/projects/{project}/secrets", api.api))
}

/// The value from standard input, without one final newline.
fn read_value(name: &str) -> anyhow::Result<String> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("value of `{name}` (end with Ctrl-D):");
    }
    let mut value = String::new();
    stdin.read_to_string(&mut value).context("cannot read the value from standard input (it must be UTF-8)")?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        bail!("standard input held no value for `{name}`");
    }
    Ok(value)
}
