//! ECR through the SDK. A token is valid for twelve hours and good for every
//! repository of its registry, so it is cached per registry until
//! [`REFRESH_BEFORE`] its expiry; a token that comes back already expired is used
//! once and not kept.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use aws_sdk_ecr::Client;
use aws_sdk_ecr::types::{ImageIdentifier, ImageScanningConfiguration, ImageTagMutability};
use base64::Engine;
use tokio::sync::Mutex;

use super::{EcrRegistry, RepositorySettings};
use crate::aws::{AwsConfig, aws_error, service_code};
use crate::docker::push::RegistryCredentials;
use crate::{ErrorCode, StepError};

/// How long before a token's expiry a new one is fetched.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(15 * 60);

struct CachedToken {
    credentials: RegistryCredentials,
    expires_at: SystemTime,
}

/// ECR access for one process: clients per region and the token cache.
pub struct Ecr {
    config: AwsConfig,
    settings: RepositorySettings,
    tokens: Mutex<HashMap<EcrRegistry, CachedToken>>,
    /// Repositories known to exist, so that a push asks ECR once per repository.
    repositories: Mutex<HashSet<(EcrRegistry, String)>>,
    /// How many tokens were fetched from AWS (the rest came from the cache).
    fetched: std::sync::atomic::AtomicU64,
}

impl Ecr {
    pub fn new(config: AwsConfig, settings: RepositorySettings) -> Self {
        Ecr { config, settings, tokens: Mutex::default(), repositories: Mutex::default(), fetched: Default::default() }
    }

    fn client(&self, registry: &EcrRegistry) -> Client {
        Client::new(&self.config.sdk_for(Some(&registry.region)))
    }

    /// How many tokens have been fetched from AWS so far.
    pub fn tokens_fetched(&self) -> u64 {
        self.fetched.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Push credentials for the registry, from the cache while the token is fresh.
    pub async fn credentials(&self, registry: &EcrRegistry) -> Result<RegistryCredentials, StepError> {
        let mut tokens = self.tokens.lock().await;
        if let Some(cached) = tokens.get(registry)
            && SystemTime::now() + REFRESH_BEFORE < cached.expires_at
        {
            return Ok(cached.credentials.clone());
        }
        let ecr = self.client(registry);
        // The token is good for every registry the caller may reach.
        let answer = ecr
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| aws_error(e, ErrorCode::AuthRefused, "ECR refused an authorization token"))?;
        self.fetched.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let data = answer
            .authorization_data()
            .first()
            .ok_or_else(|| StepError::new(ErrorCode::AuthRefused, "ECR returned no authorization data"))?;
        let credentials = decode_token(data.authorization_token().unwrap_or_default())?;
        let expires_at =
            data.expires_at().and_then(|t| SystemTime::try_from(*t).ok()).unwrap_or(SystemTime::UNIX_EPOCH);
        if SystemTime::now() + REFRESH_BEFORE < expires_at {
            tokens.insert(registry.clone(), CachedToken { credentials: credentials.clone(), expires_at });
        } else {
            tokens.remove(registry);
        }
        Ok(credentials)
    }

    /// Creates the repository unless it exists, with the configured tag mutability
    /// and scan-on-push. Returns whether it was created.
    pub async fn ensure_repository(&self, registry: &EcrRegistry, repository: &str) -> Result<bool, StepError> {
        let key = (registry.clone(), repository.to_string());
        if self.repositories.lock().await.contains(&key) {
            return Ok(false);
        }
        let created = self.find_or_create_repository(registry, repository).await?;
        self.repositories.lock().await.insert(key);
        Ok(created)
    }

    /// Forgets that a repository exists (a push to it failed: it may be gone).
    pub async fn forget_repository(&self, registry: &EcrRegistry, repository: &str) {
        self.repositories.lock().await.remove(&(registry.clone(), repository.to_string()));
    }

    async fn find_or_create_repository(&self, registry: &EcrRegistry, repository: &str) -> Result<bool, StepError> {
        let ecr = self.client(registry);
        let found =
            ecr.describe_repositories().registry_id(&registry.account).repository_names(repository).send().await;
        match found {
            Ok(_) => return Ok(false),
            Err(e) if service_code(&e) == Some("RepositoryNotFoundException") => {}
            Err(e) => return Err(aws_error(e, ErrorCode::PushRefused, "cannot look up the ECR repository")),
        }
        let mutability =
            if self.settings.immutable_tags { ImageTagMutability::Immutable } else { ImageTagMutability::Mutable };
        let created = ecr
            .create_repository()
            .registry_id(&registry.account)
            .repository_name(repository)
            .image_tag_mutability(mutability)
            .image_scanning_configuration(
                ImageScanningConfiguration::builder().scan_on_push(self.settings.scan_on_push).build(),
            )
            .send()
            .await;
        match created {
            Ok(_) => Ok(true),
            // Another worker made it in between.
            Err(e) if service_code(&e) == Some("RepositoryAlreadyExistsException") => Ok(false),
            Err(e) => {
                Err(aws_error(e, ErrorCode::PushRefused, &format!("cannot create the ECR repository {repository}")))
            }
        }
    }

    /// Deletes one image by digest; an image or repository already gone counts as
    /// deleted. Returns whether ECR still had it.
    pub async fn delete_image(
        &self,
        registry: &EcrRegistry,
        repository: &str,
        digest: &str,
    ) -> Result<bool, StepError> {
        let ecr = self.client(registry);
        let answer = ecr
            .batch_delete_image()
            .registry_id(&registry.account)
            .repository_name(repository)
            .image_ids(ImageIdentifier::builder().image_digest(digest).build())
            .send()
            .await;
        match answer {
            Ok(answer) => {
                if let Some(failure) =
                    answer.failures().iter().find(|f| f.failure_code().is_none_or(|c| c.as_str() != "ImageNotFound"))
                {
                    return Err(StepError::new(
                        ErrorCode::PushRefused,
                        format!(
                            "ECR did not delete {repository}@{digest}: {}",
                            failure.failure_reason().unwrap_or("no reason given")
                        ),
                    ));
                }
                Ok(!answer.image_ids().is_empty())
            }
            Err(e) if service_code(&e) == Some("RepositoryNotFoundException") => Ok(false),
            Err(e) => Err(aws_error(e, ErrorCode::PushRefused, "cannot delete the image from ECR")),
        }
    }
}

/// `base64("AWS:<password>")` into a user name and password.
fn decode_token(token: &str) -> Result<RegistryCredentials, StepError> {
    let bad =
        || StepError::new(ErrorCode::AuthRefused, "ECR returned an authorization token that is not user:password");
    let decoded = base64::engine::general_purpose::STANDARD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (username, password) = text.split_once(':').ok_or_else(bad)?;
    Ok(RegistryCredentials { username: username.to_string(), password: password.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_token() {
        let c = decode_token("QVdTOnNlY3JldA==").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("AWS", "secret"));
        assert_eq!(decode_token("!!").unwrap_err().code, ErrorCode::AuthRefused);
    }
}
