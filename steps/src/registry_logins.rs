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
    /// Token services on hosts of their own a registry's credentials may go to
    /// (`SLIPWAY_REGISTRY_REALM_HOSTS`, such as `auth.docker.io`), over https only.
    realm_hosts: Vec<String>,
}

impl RegistryLogins {
    /// Lets the credentials go to token realms on these hosts too.
    pub fn allow_realm_hosts(&mut self, hosts: impl IntoIterator<Item = String>) {
        self.realm_hosts.extend(hosts.into_iter().map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()));
    }

    /// Whether a registry's token realm may get that registry's credentials: on
    /// the registry's own host (and port), over https unless that host is loopback;
    /// or, over https, on a host allowed with [`Self::allow_realm_hosts`].
    pub fn realm_is_trusted(&self, scheme: &str, realm_authority: &str, registry_host: &str) -> bool {
        let own =
            realm_authority.eq_ignore_ascii_case(registry_host) && (scheme == "https" || is_loopback(registry_host));
        let allowed = scheme == "https" && self.realm_hosts.iter().any(|h| h.eq_ignore_ascii_case(realm_authority));
        own || allowed
    }

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

/// Whether a registry host is on this machine (plain http is fine there).
pub fn is_loopback(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(n, _)| n);
    name == "localhost" || name.starts_with("127.") || name == "[::1]"
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

    #[test]
    fn a_realm_gets_credentials_on_the_registry_s_own_host_or_an_allowed_one_over_https() {
        let mut logins = RegistryLogins::default();
        assert!(logins.realm_is_trusted("http", "127.0.0.1:5000", "127.0.0.1:5000"));
        assert!(!logins.realm_is_trusted("http", "127.0.0.1:5001", "127.0.0.1:5000"), "another port");
        assert!(logins.realm_is_trusted("https", "ghcr.io", "ghcr.io"));
        assert!(!logins.realm_is_trusted("http", "ghcr.io", "ghcr.io"), "plain http off loopback");
        assert!(!logins.realm_is_trusted("https", "auth.docker.io", "registry-1.docker.io"));
        logins.allow_realm_hosts(["Auth.Docker.io".to_string()]);
        assert!(logins.realm_is_trusted("https", "auth.docker.io", "registry-1.docker.io"));
        assert!(!logins.realm_is_trusted("http", "auth.docker.io", "registry-1.docker.io"), "allowed over https only");
        assert!(!logins.realm_is_trusted("https", "evil.example", "ghcr.io"));
    }
}
