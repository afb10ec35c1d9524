//! The secrets of one attempt, as the worker holds them (in memory, for the
//! attempt only), and the mask every line of its output passes through before it
//! leaves the worker.

use std::borrow::Cow;
use std::collections::BTreeMap;

/// What is written in place of a secret.
pub const MASK: &str = "***";
/// Pieces shorter than this are not masked: they would blank out ordinary text
/// while hiding nothing worth hiding.
pub const MIN_MASKED_CHARS: usize = 4;

/// How a clone authenticates, as a secret's value holds it:
/// `{"kind": "https_token", "username": "…", "token": "…"}` or
/// `{"kind": "ssh_key", "private_key": "-----BEGIN …", "passphrase": "…"}`.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum GitAuth {
    HttpsToken {
        username: String,
        token: String,
    },
    SshKey {
        private_key: String,
        #[serde(default)]
        passphrase: Option<String>,
    },
}

impl GitAuth {
    /// Reads a secret's value as git credentials, or says what is wrong with it
    /// (never quoting it).
    pub fn parse(value: &str) -> Result<Self, String> {
        serde_json::from_str(value).map_err(|_| {
            "is not git credentials: a JSON object {\"kind\": \"https_token\", \"username\", \"token\"} \
             or {\"kind\": \"ssh_key\", \"private_key\", \"passphrase\"?}"
                .to_string()
        })
    }

    /// Whether these credentials can be offered to a repository at `repo`: a token
    /// over https, a key over ssh (or the scp-like `host:path`).
    pub fn fits(&self, repo: &str) -> bool {
        match self {
            GitAuth::HttpsToken { .. } => repo.starts_with("https://"),
            GitAuth::SshKey { .. } => repo.starts_with("ssh://") || !repo.contains("://"),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            GitAuth::HttpsToken { .. } => "https_token",
            GitAuth::SshKey { .. } => "ssh_key",
        }
    }
}

/// Reads a secret's value as a registry login: `{"username": "…", "password": "…"}`.
pub fn parse_registry_login(value: &str) -> Result<RegistryCredentials, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Login {
        username: String,
        password: String,
    }
    let login: Login = serde_json::from_str(value)
        .map_err(|_| "is not a registry login: a JSON object {\"username\", \"password\"}".to_string())?;
    Ok(RegistryCredentials { username: login.username, password: login.password })
}

impl std::fmt::Debug for GitAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GitAuth::HttpsToken { username, .. } => {
                f.debug_struct("HttpsToken").field("username", username).finish_non_exhaustive()
            }
            GitAuth::SshKey { .. } => f.debug_struct("SshKey").finish_non_exhaustive(),
        }
    }
}

pub use crate::docker::push::RegistryCredentials;
pub use crate::runtime::SecretEnv;

/// An attempt's secrets. Its Debug shows names and kinds, never values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct JobSecrets {
    /// Environment variable of the run → its value, or where an ECS task reads it.
    pub env: BTreeMap<String, SecretEnv>,
    /// BuildKit secret id → value.
    pub build: BTreeMap<String, String>,
    pub git: Option<GitAuth>,
    /// A login for the registry of the job's image (push, and base images there).
    pub registry: Option<RegistryCredentials>,
}

impl std::fmt::Debug for JobSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSecrets")
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("build", &self.build.keys().collect::<Vec<_>>())
            .field("git", &self.git.as_ref().map(GitAuth::kind))
            .field("registry", &self.registry.as_ref().map(|r| &r.username))
            .finish()
    }
}

impl JobSecrets {
    /// Every value, to mask.
    pub fn values(&self) -> Vec<&str> {
        let mut values: Vec<&str> = self.build.values().map(String::as_str).collect();
        values.extend(self.env.values().filter_map(|env| match env {
            SecretEnv::Value { value, .. } => Some(value.as_str()),
            SecretEnv::Reference(_) => None,
        }));
        match &self.git {
            Some(GitAuth::HttpsToken { token, .. }) => values.push(token),
            Some(GitAuth::SshKey { private_key, passphrase }) => {
                values.push(private_key);
                values.extend(passphrase.as_deref());
            }
            None => {}
        }
        values.extend(self.registry.as_ref().map(|r| r.password.as_str()));
        values
    }

    pub fn mask(&self) -> Mask {
        Mask::new(self.values())
    }
}

/// Replaces every secret value, and each line of a multi-line value, in a text by
/// [`MASK`]. Longer pieces go first, so that a value containing another is masked
/// whole.
#[derive(Clone, Default)]
pub struct Mask {
    pieces: Vec<String>,
}

impl std::fmt::Debug for Mask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mask({} pieces)", self.pieces.len())
    }
}

impl Mask {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut pieces: Vec<String> = Vec::new();
        for value in values {
            let whole = std::iter::once(value.trim_end_matches(['\r', '\n']));
            for piece in whole.chain(value.lines().map(|l| l.trim_end_matches('\r'))) {
                if piece.chars().count() >= MIN_MASKED_CHARS && !pieces.iter().any(|p| p == piece) {
                    pieces.push(piece.to_string());
                }
            }
        }
        pieces.sort_by_key(|p| std::cmp::Reverse(p.len()));
        Mask { pieces }
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// `text` with every piece replaced.
    pub fn apply<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut masked = Cow::Borrowed(text);
        for piece in &self.pieces {
            if masked.contains(piece.as_str()) {
                masked = Cow::Owned(masked.replace(piece.as_str(), MASK));
            }
        }
        masked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_each_line_of_multi_line_values_are_masked() {
        let mask = Mask::new(["hunter22", "-----BEGIN KEY-----\nAAAABBBB\nCCCC\n-----END KEY-----\n", "abc"]);
        assert_eq!(mask.apply("password=hunter22;"), "password=***;");
        assert_eq!(mask.apply("line AAAABBBB here"), "line *** here");
        assert_eq!(mask.apply("-----END KEY-----"), "***");
        // Shorter than four characters: left alone.
        assert_eq!(mask.apply("abc"), "abc");
        assert!(matches!(mask.apply("nothing"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_value_holding_another_is_masked_whole() {
        let mask = Mask::new(["token", "token-and-more"]);
        assert_eq!(mask.apply("x token-and-more y token"), "x *** y ***");
    }

    #[test]
    fn credentials_are_read_by_kind_and_fit_their_scheme() {
        let token = GitAuth::parse(r#"{"kind":"https_token","username":"x","token":"t"}"#).unwrap();
        assert!(token.fits("https://git.example/a.git") && !token.fits("ssh://git@git.example/a.git"));
        let key = GitAuth::parse(r#"{"kind":"ssh_key","private_key":"k"}"#).unwrap();
        assert!(key.fits("git@git.example:a.git") && key.fits("ssh://git.example/a") && !key.fits("https://x/a"));
        for bad in ["hunter2", r#"{"kind":"password","token":"t"}"#, r#"{"kind":"ssh_key","private_key":"k","x":1}"#] {
            assert!(!GitAuth::parse(bad).unwrap_err().contains("hunter2"));
        }
        assert!(parse_registry_login(r#"{"username":"u","password":"p"}"#).is_ok());
        assert!(parse_registry_login(r#"{"username":"u"}"#).is_err());
    }

    #[test]
    fn debug_shows_no_value() {
        let secrets = JobSecrets {
            env: [
                ("DB".to_string(), SecretEnv::Value { value: "v-env".into(), parameter: "/slipway/p/db".into() }),
                ("API".to_string(), SecretEnv::Reference("arn:aws:ssm:r:123456789012:parameter/api".into())),
            ]
            .into(),
            build: [("npm".to_string(), "v-build".to_string())].into(),
            git: Some(GitAuth::SshKey { private_key: "v-key".into(), passphrase: Some("v-pass".into()) }),
            registry: Some(RegistryCredentials { username: "u".into(), password: "v-password".into() }),
        };
        let printed = format!("{secrets:?} {:?} {:?}", secrets.mask(), secrets.git);
        assert!(!printed.contains("v-"), "{printed}");
        assert_eq!(secrets.values().len(), 5);
    }
}
