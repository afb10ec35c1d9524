//! The CLI's credentials file: the API and token of each profile, so that commands
//! need neither flags nor variables. `$XDG_CONFIG_HOME/slipway/credentials.toml`
//! (else `~/.config/slipway/credentials.toml`), mode 0600, written by `slipway login`
//! and by `standalone` for the owner token it makes on first start:
//!
//! ```toml
//! [default]
//! api = "http://127.0.0.1:8080"
//! token = "slp_…"
//! ```
//!
//! Only this shape is read: `[profile]` headers and `key = "value"` lines.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::Context;

/// The profile used when none is named.
pub const DEFAULT_PROFILE: &str = "default";

/// One profile's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub api: Option<String>,
    pub token: Option<String>,
}

/// Where the file is.
pub fn path() -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    config.join("slipway").join("credentials.toml")
}

/// Every profile in the file; none when there is no file.
pub fn read() -> anyhow::Result<BTreeMap<String, Profile>> {
    let path = path();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    parse(&text).with_context(|| format!("{} is not a credentials file", path.display()))
}

fn parse(text: &str) -> anyhow::Result<BTreeMap<String, Profile>> {
    let mut profiles = BTreeMap::new();
    let mut current: Option<String> = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim().to_string());
            profiles.entry(name.trim().to_string()).or_insert_with(Profile::default);
            continue;
        }
        let (key, value) =
            line.split_once('=').with_context(|| format!("line {}: not `key = \"value\"`", number + 1))?;
        let value = value.trim().strip_prefix('"').and_then(|v| v.strip_suffix('"'));
        let value = value.with_context(|| format!("line {}: the value is not in double quotes", number + 1))?;
        let profile = current.as_ref().with_context(|| format!("line {}: outside a [profile]", number + 1))?;
        let entry = profiles.entry(profile.clone()).or_insert_with(Profile::default);
        match key.trim() {
            "api" => entry.api = Some(value.to_string()),
            "token" => entry.token = Some(value.to_string()),
            other => anyhow::bail!("line {}: unknown key `{other}`", number + 1),
        }
    }
    Ok(profiles)
}

/// Writes `profile` into the file (mode 0600), keeping the other profiles.
pub fn save(name: &str, profile: &Profile) -> anyhow::Result<PathBuf> {
    let path = path();
    let mut profiles = read()?;
    profiles.insert(name.to_string(), profile.clone());
    let mut text = String::from("# Written by slipway: API URLs and tokens, one [profile] each.\n");
    for (name, profile) in &profiles {
        text.push_str(&format!("\n[{name}]\n"));
        for (key, value) in [("api", &profile.api), ("token", &profile.token)] {
            if let Some(value) = value {
                anyhow::ensure!(!value.contains('"') && !value.contains('\n'), "the {key} cannot be written as given");
                text.push_str(&format!("{key} = \"{value}\"\n"));
            }
        }
    }
    let folder = path.parent().context("the credentials file has no folder")?;
    std::fs::create_dir_all(folder).with_context(|| format!("cannot make {}", folder.display()))?;
    let staging = path.with_extension("toml.new");
    let _ = std::fs::remove_file(&staging);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staging)
        .with_context(|| format!("cannot write {}", staging.display()))?;
    file.write_all(text.as_bytes())?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&staging, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_read_as_written_and_anything_else_is_refused() {
        let text = "# c\n[default]\napi = \"http://127.0.0.1:8080\"\ntoken = \"slp_x\"\n\n[ci]\ntoken = \"slp_y\"\n";
        let profiles = parse(text).unwrap();
        assert_eq!(profiles["default"].api.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(profiles["ci"], Profile { api: None, token: Some("slp_y".into()) });
        for bad in ["token = \"x\"", "[a]\ntoken = x", "[a]\nuser = \"x\"", "[a]\nnonsense"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
