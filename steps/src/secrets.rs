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

/// How a clone authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum GitAuth {
    HttpsToken { username: String, token: String },
    SshKey { private_key: String, passphrase: Option<String> },
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

/// An attempt's secrets. Its Debug shows names and kinds, never values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct JobSecrets {
    /// Environment variable of the run → value.
    pub env: BTreeMap<String, String>,
    /// BuildKit secret id → value.
    pub build: BTreeMap<String, String>,
    pub git: Option<GitAuth>,
    /// A login for the registry of the job's image (push, and base images there).
    pub registry: Option<RegistryCredentials>,
}

impl std::fmt::Debug for JobSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let git = self.git.as_ref().map(|g| match g {
            GitAuth::HttpsToken { .. } => "https_token",
            GitAuth::SshKey { .. } => "ssh_key",
        });
        f.debug_struct("JobSecrets")
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("build", &self.build.keys().collect::<Vec<_>>())
            .field("git", &git)
            .field("registry", &self.registry.as_ref().map(|r| &r.username))
            .finish()
    }
}

impl JobSecrets {
    /// Every value, to mask.
    pub fn values(&self) -> Vec<&str> {
        let mut values: Vec<&str> = self.env.values().chain(self.build.values()).map(String::as_str).collect();
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
    fn debug_shows_no_value() {
        let secrets = JobSecrets {
            env: [("DB".to_string(), "v-env".to_string())].into(),
            build: [("npm".to_string(), "v-build".to_string())].into(),
            git: Some(GitAuth::SshKey { private_key: "v-key".into(), passphrase: Some("v-pass".into()) }),
            registry: Some(RegistryCredentials { username: "u".into(), password: "v-password".into() }),
        };
        let printed = format!("{secrets:?} {:?} {:?}", secrets.mask(), secrets.git);
        assert!(!printed.contains("v-"), "{printed}");
        assert_eq!(secrets.values().len(), 5);
    }
}
