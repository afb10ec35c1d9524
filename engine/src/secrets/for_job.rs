//! A job's secrets at the two moments they matter: at submission, where every name
//! must exist in the job's project, credentials must fit the repository, and no
//! plain field may carry a secret's value; and when an attempt starts, where the
//! values are opened for the worker, or the job fails `secret_missing` if one is
//! gone. (And once more after its end: the sweep deletes its image with its own
//! registry login.)

use std::collections::BTreeMap;

use slipway_steps::aws::ecs::secrets::parameter_name;
use slipway_steps::secrets::{GitAuth, JobSecrets, RegistryCredentials, SecretEnv, parse_registry_login};

use super::MAX_JOB_BYTES;
use super::vault::{Opened, Vault, VaultError};
use crate::auth::ProjectId;
use crate::job::{FieldError, JobSpec};
use crate::store::{Store, StoreError};

/// Why a submission is refused.
#[derive(Debug)]
pub enum SubmitRefusal {
    /// A field names a secret that is not there or does not fit.
    Invalid(FieldError),
    /// This field's value is one of the project's secrets.
    PlainField(String),
    Vault(VaultError),
}

impl From<VaultError> for SubmitRefusal {
    fn from(e: VaultError) -> Self {
        SubmitRefusal::Vault(e)
    }
}

fn invalid(field: &str, message: String) -> SubmitRefusal {
    SubmitRefusal::Invalid(FieldError { field: field.to_string(), message, credentials: false })
}

/// Fills in the project's default credentials for the repository's host when the
/// job names none (the default in force at submission is the job's).
pub async fn fill_git_default(store: &Store, project: ProjectId, spec: &mut JobSpec) -> Result<(), StoreError> {
    if spec.named_secrets.git.credentials.is_some() {
        return Ok(());
    }
    let Some((host, _)) = slipway_steps::repo_url::host_and_port(&spec.repo) else { return Ok(()) };
    spec.named_secrets.git.credentials = store.git_default_for(project, &host.to_ascii_lowercase()).await?;
    Ok(())
}

/// Checks a valid spec's secrets against its project.
pub async fn check_submission(vault: &Vault, project: ProjectId, spec: &JobSpec) -> Result<(), SubmitRefusal> {
    let named = spec.named_secrets.named();
    if !named.is_empty() {
        let names: Vec<String> = named.iter().map(|(_, name)| name.to_string()).collect();
        let opened = vault.open(project, &names).await?;
        for (field, name) in &named {
            if !opened.0.contains_key(*name) {
                return Err(invalid(field, format!("{field}: this project has no secret `{name}`")));
            }
        }
        typed(spec, &opened).map_err(|(field, message)| invalid(&field, message))?;
        if let Some(why) = too_large(&opened) {
            return Err(invalid("secrets", why));
        }
    }
    let plain = spec
        .env
        .iter()
        .map(|(k, v)| (format!("env.{k}"), v))
        .chain(spec.build_args.iter().map(|(k, v)| (format!("build_args.{k}"), v)));
    let plain: Vec<(String, &String)> = plain.filter(|(_, v)| !v.is_empty()).collect();
    if !plain.is_empty() {
        let all = vault.open_all(project).await?;
        if let Some((field, _)) = plain.into_iter().find(|(_, v)| all.0.values().any(|s| s == *v)) {
            return Err(SubmitRefusal::PlainField(field));
        }
    }
    Ok(())
}

/// Why an attempt cannot have its secrets.
#[derive(Debug)]
pub enum OpenRefusal {
    /// A secret the job names is gone or no longer fits: the job fails for good.
    Missing(String),
    /// The store could not be read: the job waits for another try.
    Store(crate::store::StoreError),
}

/// Opens the values an attempt of `spec` needs (the worker's [`JobSecrets`]).
pub async fn open_for_attempt(vault: &Vault, project: ProjectId, spec: &JobSpec) -> Result<JobSecrets, OpenRefusal> {
    let named = spec.named_secrets.named();
    let references = spec.named_secrets.references().map(|(k, arn)| (k.clone(), SecretEnv::Reference(arn.clone())));
    let references: BTreeMap<String, SecretEnv> = references.collect();
    if named.is_empty() {
        return Ok(JobSecrets { env: references, ..JobSecrets::default() });
    }
    let names: Vec<String> = named.iter().map(|(_, name)| name.to_string()).collect();
    let opened = match vault.open(project, &names).await {
        Ok(opened) => opened,
        Err(VaultError::Store(e)) => return Err(OpenRefusal::Store(e)),
        Err(e) => return Err(OpenRefusal::Missing(e.to_string())),
    };
    for (field, name) in &named {
        if !opened.0.contains_key(*name) {
            return Err(OpenRefusal::Missing(format!("{field}: secret `{name}` was deleted from the project")));
        }
    }
    let (git, registry) = typed(spec, &opened).map_err(|(_, message)| OpenRefusal::Missing(message))?;
    if let Some(why) = too_large(&opened) {
        return Err(OpenRefusal::Missing(why));
    }
    let value = |name: &String| opened.0[name].clone();
    let mut env = references;
    // The variables not read from an ARN name project secrets.
    for (variable, name) in &spec.named_secrets.secrets {
        if !env.contains_key(variable) {
            let parameter = parameter_name(&project.to_string(), name);
            env.insert(variable.clone(), SecretEnv::Value { value: value(name), parameter });
        }
    }
    Ok(JobSecrets {
        env,
        build: spec.named_secrets.build_secrets.iter().map(|(k, name)| (k.clone(), value(name))).collect(),
        git,
        registry,
    })
}

/// The registry login secret `name` of `project` holds, for the sweep to delete an
/// expired job's image with: `None` when the secret is gone, no longer a login, or
/// this server has no key (the server's own login for the host is used then).
pub async fn registry_login_for_sweep(
    vault: &Vault,
    project: ProjectId,
    name: &str,
) -> Result<Option<RegistryCredentials>, StoreError> {
    match vault.open(project, &[name.to_string()]).await {
        Ok(opened) => Ok(opened.0.get(name).and_then(|value| parse_registry_login(value).ok())),
        Err(VaultError::Store(e)) => Err(e),
        Err(_) => Ok(None),
    }
}

/// Why the values a job names cannot travel to a worker, if they cannot.
fn too_large(opened: &Opened) -> Option<String> {
    let total: usize = opened.0.values().map(String::len).sum();
    (total > MAX_JOB_BYTES)
        .then(|| format!("the secrets the job names hold {total} bytes; a job's secrets hold at most {MAX_JOB_BYTES}"))
}

/// The credentials among `opened`, read by their kind and checked against the
/// repository; or the field at fault and why.
fn typed(spec: &JobSpec, opened: &Opened) -> Result<(Option<GitAuth>, Option<RegistryCredentials>), (String, String)> {
    let git = match &spec.named_secrets.git.credentials {
        None => None,
        Some(name) => {
            let field = "git.credentials".to_string();
            let credentials =
                GitAuth::parse(&opened.0[name]).map_err(|why| (field.clone(), format!("secret `{name}` {why}")))?;
            if !credentials.fits(&spec.repo) {
                let message = format!(
                    "secret `{name}` holds {} credentials, which {} cannot use (https_token for https://, ssh_key for ssh)",
                    credentials.kind(),
                    spec.repo
                );
                return Err((field, message));
            }
            Some(credentials)
        }
    };
    let registry = match &spec.named_secrets.registry {
        None => None,
        Some(r) => Some(
            parse_registry_login(&opened.0[&r.credentials])
                .map_err(|why| ("registry.credentials".to_string(), format!("secret `{}` {why}", r.credentials)))?,
        ),
    };
    Ok((git, registry))
}
