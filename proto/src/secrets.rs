//! Debug for the messages that carry secret values: names and kinds, never values,
//! so that no log line or panic message can print one.

use std::fmt;

use crate::v1::{HttpsToken, JobSecrets, RegistryLogin, SshKey};

impl fmt::Debug for JobSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut env: Vec<&String> = self.env.keys().collect();
        env.sort();
        let mut build: Vec<&String> = self.build.keys().collect();
        build.sort();
        f.debug_struct("JobSecrets")
            .field("env", &env)
            .field("build", &build)
            .field("git", &self.git)
            .field("registry", &self.registry)
            .field("env_parameters", &self.env_parameters)
            .field("env_references", &self.env_references)
            .finish()
    }
}

impl fmt::Debug for HttpsToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpsToken").field("username", &self.username).finish_non_exhaustive()
    }
}

impl fmt::Debug for SshKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshKey").finish_non_exhaustive()
    }
}

impl fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryLogin").field("username", &self.username).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use crate::v1::{GitCredentials, HttpsToken, JobSecrets, RegistryLogin, StartJobRequest, git_credentials};

    #[test]
    fn no_value_is_printed() {
        let request = StartJobRequest {
            secrets: Some(JobSecrets {
                env: [("DB".to_string(), "env-value-1".to_string())].into(),
                build: [("npm".to_string(), "build-value-2".to_string())].into(),
                git: Some(GitCredentials {
                    kind: Some(git_credentials::Kind::HttpsToken(HttpsToken {
                        username: "x".into(),
                        token: "token-value-3".into(),
                    })),
                }),
                registry: Some(RegistryLogin { username: "u".into(), password: "password-value-4".into() }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let printed = format!("{request:?} {request:#?}");
        assert!(printed.contains("DB") && printed.contains("npm"), "{printed}");
        for value in ["env-value-1", "build-value-2", "token-value-3", "password-value-4"] {
            assert!(!printed.contains(value), "{value} in {printed}");
        }
    }
}
