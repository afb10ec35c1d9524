//! The key project secrets are sealed with, and the one before it during a rotation.
//! Each is given as base64 in a variable or as a file holding it; a key file must
//! not be readable by others. `standalone` makes its own key in its data folder.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use slipway_engine::secrets::keyring::{Keyring, SecretKey};

#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Secrets")]
pub struct SecretsKeyArgs {
    /// The key project secrets are sealed with: 32 random bytes in base64
    /// (`head -c 32 /dev/urandom | base64`) [default: none, and the server refuses
    /// to store secrets; `standalone` makes one in its data folder].
    #[arg(long, env = "SLIPWAY_SECRETS_KEY", hide_env_values = true, conflicts_with = "secrets_key_file")]
    pub secrets_key: Option<String>,
    /// A file holding the key (mode 0600 or stricter).
    #[arg(long, env = "SLIPWAY_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// The key before a rotation: values sealed with it still open until
    /// `slipway secret rotate-key` has moved them to the current key.
    #[arg(
        long,
        env = "SLIPWAY_SECRETS_PREVIOUS_KEY",
        hide_env_values = true,
        conflicts_with = "secrets_previous_key_file"
    )]
    pub secrets_previous_key: Option<String>,
    /// A file holding the previous key.
    #[arg(long, env = "SLIPWAY_SECRETS_PREVIOUS_KEY_FILE")]
    pub secrets_previous_key_file: Option<PathBuf>,
}

impl SecretsKeyArgs {
    /// The keys given, if a current one is.
    pub fn keyring(&self) -> anyhow::Result<Option<Keyring>> {
        let current = read_key("SLIPWAY_SECRETS_KEY", self.secrets_key.as_deref(), self.secrets_key_file.as_deref())?;
        let previous = read_key(
            "SLIPWAY_SECRETS_PREVIOUS_KEY",
            self.secrets_previous_key.as_deref(),
            self.secrets_previous_key_file.as_deref(),
        )?;
        match (current, previous) {
            (Some(current), previous) => Ok(Some(Keyring::new(current, previous.into_iter().collect()))),
            (None, Some(_)) => anyhow::bail!("SLIPWAY_SECRETS_PREVIOUS_KEY is given without SLIPWAY_SECRETS_KEY"),
            (None, None) => Ok(None),
        }
    }

    /// The keys given, or else the key kept in `folder` (made there on first use).
    pub fn keyring_or_own(&self, folder: &Path) -> anyhow::Result<Keyring> {
        match self.keyring()? {
            Some(keys) => Ok(keys),
            None => Ok(Keyring::new(read_or_create(&folder.join("secrets.key"))?, Vec::new())),
        }
    }
}

fn read_key(name: &str, text: Option<&str>, file: Option<&Path>) -> anyhow::Result<Option<SecretKey>> {
    let text = match (text, file) {
        (Some(text), _) => text.to_string(),
        (None, Some(path)) => read_private(path).with_context(|| format!("{name}_FILE {}", path.display()))?,
        (None, None) => return Ok(None),
    };
    SecretKey::from_base64(&text).map(Some).map_err(|why| anyhow::anyhow!("{name}: {why}"))
}

/// Reads a key file, refusing one that others may read.
fn read_private(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).context("cannot read it")?.permissions().mode();
    if mode & 0o077 != 0 {
        anyhow::bail!("others may read it (mode {:o}); chmod 600 it", mode & 0o777);
    }
    std::fs::read_to_string(path).context("cannot read it")
}

/// The key in `path`, or a new one written there (mode 0600) when there is none.
/// The new file is written aside and linked into place, so that two processes
/// starting at once end up with the same key.
fn read_or_create(path: &Path) -> anyhow::Result<SecretKey> {
    if !path.exists() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let folder = path.parent().context("the key file has a folder")?;
        std::fs::create_dir_all(folder).with_context(|| format!("cannot make {}", folder.display()))?;
        let aside = folder.join(format!(".secrets.key.{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&aside)
            .with_context(|| format!("cannot write {}", aside.display()))?;
        writeln!(file, "{}", SecretKey::generate_base64())?;
        file.sync_all()?;
        // Losing the race is fine: the key already linked is the one to use.
        let _ = std::fs::hard_link(&aside, path);
        let _ = std::fs::remove_file(&aside);
        tracing::info!(path = %path.display(), "made a key for project secrets; keep a copy of it with the database's backups");
    }
    let text = read_private(path).with_context(|| format!("the secrets key {}", path.display()))?;
    SecretKey::from_base64(&text).map_err(|why| anyhow::anyhow!("the secrets key {}: {why}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_made_once_is_read_again_and_a_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let args = SecretsKeyArgs::default();
        let first = args.keyring_or_own(dir.path()).unwrap();
        let again = args.keyring_or_own(dir.path()).unwrap();
        assert_eq!(first.current_id(), again.current_id());
        let path = dir.path().join("secrets.key");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = args.keyring_or_own(dir.path()).unwrap_err();
        assert!(format!("{refused:#}").contains("chmod 600"), "{refused:#}");
    }

    #[test]
    fn a_previous_key_alone_is_refused() {
        let args = SecretsKeyArgs { secrets_previous_key: Some(SecretKey::generate_base64()), ..Default::default() };
        assert!(args.keyring().unwrap_err().to_string().contains("without SLIPWAY_SECRETS_KEY"));
    }
}
