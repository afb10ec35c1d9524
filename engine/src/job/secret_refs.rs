//! The secrets a job names: for its container's environment (`secrets`: a project
//! secret, or for an ECS run also a Secrets Manager or SSM ARN), for
//! `RUN --mount=type=secret` during its build (`build_secrets`), for its clone
//! (`git.credentials`) and for its registry (`registry.credentials`). A spec holds
//! names only; the values are opened when an attempt starts
//! ([`crate::secrets::for_job`]). This file checks what can be checked without the
//! store: the shapes of names, and where each may be used.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use slipway_steps::aws::ecs::secrets::is_secret_arn;
use slipway_steps::image_ref::ImageRef;
use slipway_steps::runtime::RuntimeKind;

use super::spec::FieldError;
use crate::secrets::{MAX_PER_JOB, is_secret_name};

/// `git` as sent.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GitRequest {
    /// A secret holding git credentials (`https_token` or `ssh_key`).
    pub credentials: Option<String>,
    /// Fetch the repository's submodules, recursively.
    pub submodules: Option<bool>,
}

/// `registry` as sent.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryRequest {
    /// A secret holding `{"username", "password"}` for the registry in `image`.
    pub credentials: Option<String>,
}

/// What a valid spec names, as stored and shown (names, never values).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretRefs {
    /// Environment variable → secret (or, for ECS, an ARN), put in the container's
    /// environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// BuildKit secret id → secret, for `RUN --mount=type=secret,id=…`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub build_secrets: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "GitSpec::is_plain")]
    pub git: GitSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GitSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
    #[serde(default)]
    pub submodules: bool,
}

impl GitSpec {
    fn is_plain(&self) -> bool {
        *self == GitSpec::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegistrySpec {
    pub credentials: String,
}

/// What the submission says about secrets, beside the fields they touch.
pub struct Named<'a> {
    pub secrets: Option<BTreeMap<String, String>>,
    pub build_secrets: Option<BTreeMap<String, String>>,
    pub git: Option<GitRequest>,
    pub registry: Option<RegistryRequest>,
    pub env: &'a BTreeMap<String, String>,
    pub image: &'a ImageRef,
    pub runtime: RuntimeKind,
}

impl SecretRefs {
    pub fn check(named: Named<'_>) -> Result<SecretRefs, FieldError> {
        let secrets = named.secrets.unwrap_or_default();
        for (variable, secret) in &secrets {
            let field = format!("secrets.{variable}");
            if !slipway_steps::repo_url::is_variable_name(variable) {
                return Err(FieldError::new(field, "an environment variable name must match [A-Za-z_][A-Za-z0-9_]*"));
            }
            if named.env.contains_key(variable) {
                return Err(FieldError::new(field, format!("`{variable}` is in env as well; name it once")));
            }
            if !is_secret_arn(secret) {
                check_secret_name(&field, secret)?;
            } else if named.runtime != RuntimeKind::Ecs {
                return Err(FieldError::new(
                    field,
                    "an AWS ARN is read by an ECS task's execution role; a docker run takes the name of a project secret",
                ));
            }
        }
        let build_secrets = named.build_secrets.unwrap_or_default();
        for (id, secret) in &build_secrets {
            let field = format!("build_secrets.{id}");
            let valid_id =
                (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !valid_id {
                return Err(FieldError::new(field, "a build secret's id is 1 to 128 letters, digits, `_`, `.` or `-`"));
            }
            check_secret_name(&field, secret)?;
        }
        let git = named.git.unwrap_or_default();
        if let Some(secret) = &git.credentials {
            check_secret_name("git.credentials", secret)?;
        }
        let registry = match named.registry.and_then(|r| r.credentials) {
            None => None,
            Some(secret) => {
                check_secret_name("registry.credentials", &secret)?;
                let host = named.image.registry.as_deref().unwrap_or_default();
                if slipway_steps::aws::ecr::EcrRegistry::parse(host).is_some() {
                    return Err(FieldError::new(
                        "registry.credentials",
                        "an ECR image is pushed with the worker's AWS credentials; leave registry.credentials out",
                    ));
                }
                Some(RegistrySpec { credentials: secret })
            }
        };
        let refs = SecretRefs {
            secrets,
            build_secrets,
            git: GitSpec { credentials: git.credentials, submodules: git.submodules.unwrap_or(false) },
            registry,
        };
        if refs.named().len() + refs.references().count() > MAX_PER_JOB {
            return Err(FieldError::new("secrets", format!("a job names at most {MAX_PER_JOB} secrets")));
        }
        Ok(refs)
    }

    /// The environment variables an ECS task reads from an ARN the job gave.
    pub fn references(&self) -> impl Iterator<Item = (&String, &String)> {
        self.secrets.iter().filter(|(_, v)| is_secret_arn(v))
    }

    /// Every project secret the spec names, with the field that names it.
    pub fn named(&self) -> Vec<(String, &str)> {
        let mut named: Vec<(String, &str)> = Vec::new();
        let secrets = self.secrets.iter().filter(|(_, v)| !is_secret_arn(v));
        named.extend(secrets.map(|(k, v)| (format!("secrets.{k}"), v.as_str())));
        named.extend(self.build_secrets.iter().map(|(k, v)| (format!("build_secrets.{k}"), v.as_str())));
        named.extend(self.git.credentials.iter().map(|v| ("git.credentials".to_string(), v.as_str())));
        named.extend(self.registry.iter().map(|r| ("registry.credentials".to_string(), r.credentials.as_str())));
        named
    }
}

fn check_secret_name(field: &str, name: &str) -> Result<(), FieldError> {
    if is_secret_name(name) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("{field} must name a secret: a letter or `_`, then up to 127 letters, digits, `_`, `.` or `-`"),
        ))
    }
}
