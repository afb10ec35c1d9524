//! Registry credentials, each bound to the one registry host it belongs to and
//! sent nowhere else: an image reference (or a registry's token realm) naming
//! another host gets none, whatever a job writes in its `image`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::docker::push::RegistryCredentials;

/// The host an image reference without one goes to (Docker Hub).
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// Credentials by registry host (`host` or `host:port`, as image references name it).
#[derive(Debug, Clone, Default)]
pub struct RegistryLogins {
    by_host: BTreeMap<String, RegistryCredentials>,
}

impl RegistryLogins {
    pub fn insert(&mut self, host: &str, credentials: RegistryCredentials) {
        self.by_host.insert(host.to_ascii_lowercase(), credentials);
    }

    /// The credentials of exactly this host (`None`: the default registry).
    pub fn for_host(&self, host: Option<&str>) -> Option<&RegistryCredentials> {
        self.by_host.get(&host.unwrap_or(DEFAULT_REGISTRY).to_ascii_lowercase())
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }

    /// Reads a credentials file: `{"<host>": {"username": "…", "password": "…"}}`.
    pub fn read(path: &Path) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Login {
            username: String,
            password: String,
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let logins: BTreeMap<String, Login> = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not {{\"<host>\": {{\"username\", \"password\"}}}}: {e}", path.display()))?;
        let mut this = RegistryLogins::default();
        for (host, login) in logins {
            if host.is_empty() || host.contains(['/', ' ', '@']) {
                return Err(format!("`{host}` in {} is not a registry host", path.display()));
            }
            this.insert(&host, RegistryCredentials { username: login.username, password: login.password });
        }
        Ok(this)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_to_their_own_host_only() {
        let mut logins = RegistryLogins::default();
        let login = RegistryCredentials { username: "u".into(), password: "p".into() };
        logins.insert("127.0.0.1:5000", login);
        assert!(logins.for_host(Some("127.0.0.1:5000")).is_some());
        assert!(logins.for_host(Some("127.0.0.1:5001")).is_none(), "another port is another registry");
        assert!(logins.for_host(Some("127.0.0.1")).is_none());
        assert!(logins.for_host(None).is_none());

        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), r#"{"Ghcr.io": {"username": "me", "password": "tok"}}"#).unwrap();
        let read = RegistryLogins::read(file.path()).unwrap();
        assert_eq!(read.for_host(Some("ghcr.io")).unwrap().username, "me");
        std::fs::write(file.path(), r#"{"ghcr.io/x": {"username": "me", "password": "tok"}}"#).unwrap();
        assert!(RegistryLogins::read(file.path()).unwrap_err().contains("not a registry host"));
        std::fs::write(file.path(), r#"{"ghcr.io": {"user": "me"}}"#).unwrap();
        assert!(RegistryLogins::read(file.path()).is_err());
    }
}
