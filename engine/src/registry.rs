//! Deleting pushed images from OCI registries (the distribution API), for the TTL
//! sweep; ECR images through ECR's own `BatchDeleteImage`, with the AWS chain's
//! credentials. Registries on loopback are spoken to over http, others over https.
//! A registry gets the login of the job that pushed the image
//! (`registry.credentials`), else the credentials configured for its own host, as
//! basic auth, and no other; one that answers with a bearer challenge (`WWW-Authenticate: Bearer
//! realm=…`) gets a token from its realm first. A realm is whatever URL the registry
//! names, so it gets the credentials only when it is on the registry's own host,
//! over https unless on loopback; elsewhere the token is asked for anonymously.

#[cfg(feature = "aws")]
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
#[cfg(feature = "aws")]
use slipway_steps::aws::AwsConfig;
use slipway_steps::aws::ecr::EcrRegistry;
#[cfg(feature = "aws")]
use slipway_steps::aws::ecr::{Ecr, RepositorySettings};
use slipway_steps::docker::push::RegistryCredentials;
use slipway_steps::image_ref::ImageRef;
use slipway_steps::registry_logins::{RegistryLogins, is_loopback};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("`{0}` is not a pushed image reference")]
    BadReference(String),
    /// Worth trying again later: the registry was unreachable or failed.
    #[error("the registry is unavailable: {0}")]
    Unavailable(String),
    /// Trying again will not help (credentials refused, unexpected answer).
    #[error("the registry refused: {0}")]
    Refused(String),
}

/// What became of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    Deleted,
    AlreadyGone,
    /// The registry does not allow deletes (e.g. `storage.delete.enabled` is off).
    NotAllowed,
}

#[derive(Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    logins: RegistryLogins,
    /// ECR, reached through its API (`BatchDeleteImage`), made at the first ECR image.
    #[cfg(feature = "aws")]
    ecr: Arc<tokio::sync::OnceCell<Ecr>>,
}

impl RegistryClient {
    pub fn new(logins: RegistryLogins) -> Self {
        // No redirects: a registry's answer must not carry credentials elsewhere.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an http client builds");
        RegistryClient {
            http,
            logins,
            #[cfg(feature = "aws")]
            ecr: Default::default(),
        }
    }

    #[cfg(feature = "aws")]
    async fn delete_from_ecr(
        &self,
        registry: &EcrRegistry,
        path: &str,
        digest: &str,
    ) -> Result<Deletion, RegistryError> {
        let ecr =
            self.ecr.get_or_init(|| async { Ecr::new(AwsConfig::load().await, RepositorySettings::default()) }).await;
        match ecr.delete_image(registry, path, digest).await {
            Ok(true) => Ok(Deletion::Deleted),
            Ok(false) => Ok(Deletion::AlreadyGone),
            Err(e) if e.retryable() => Err(RegistryError::Unavailable(e.message)),
            Err(e) => Err(RegistryError::Refused(e.message)),
        }
    }

    #[cfg(not(feature = "aws"))]
    async fn delete_from_ecr(&self, _: &EcrRegistry, _: &str, _: &str) -> Result<Deletion, RegistryError> {
        Err(RegistryError::Refused(slipway_steps::aws::WITHOUT_AWS.to_string()))
    }

    /// Deletes the manifest `name@sha256:…` names, with `login` (the job's own
    /// registry login) or else the one configured for the registry's host.
    pub async fn delete(
        &self,
        pushed_ref: &str,
        login: Option<&RegistryCredentials>,
    ) -> Result<Deletion, RegistryError> {
        let bad = || RegistryError::BadReference(pushed_ref.to_string());
        let (name, digest) = pushed_ref.split_once('@').ok_or_else(bad)?;
        let image: ImageRef = name.parse().map_err(|_| bad())?;
        let host = image.registry.clone().unwrap_or_else(|| "registry-1.docker.io".to_string());
        if let Some(registry) = EcrRegistry::parse(&host) {
            return self.delete_from_ecr(&registry, &image.path, digest).await;
        }
        let path = if image.registry.is_none() && !image.path.contains('/') {
            format!("library/{}", image.path)
        } else {
            image.path.clone()
        };
        let scheme = if is_loopback(&host) { "http" } else { "https" };
        let url = format!("{scheme}://{host}/v2/{path}/manifests/{digest}");

        let login = login.or_else(|| self.logins.for_host(image.registry.as_deref()));
        let mut response = self.send(&url, None, login).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let challenge = response
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            if let Some(token) = match challenge {
                Some(c) if c.starts_with("Bearer ") => Some(self.token(&c, &host, login).await?),
                _ => None,
            } {
                response = self.send(&url, Some(&token), login).await?;
            }
        }
        match response.status() {
            StatusCode::ACCEPTED | StatusCode::OK => Ok(Deletion::Deleted),
            StatusCode::NOT_FOUND => Ok(Deletion::AlreadyGone),
            StatusCode::METHOD_NOT_ALLOWED => Ok(Deletion::NotAllowed),
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                Err(RegistryError::Unavailable(format!("{url} answered {s}")))
            }
            s => Err(RegistryError::Refused(format!("{url} answered {s}"))),
        }
    }

    async fn send(
        &self,
        url: &str,
        bearer: Option<&str>,
        login: Option<&RegistryCredentials>,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut request = self.http.delete(url);
        request = match (bearer, login) {
            (Some(token), _) => request.bearer_auth(token),
            (None, Some(login)) => request.basic_auth(&login.username, Some(&login.password)),
            (None, None) => request,
        };
        request.send().await.map_err(|e| RegistryError::Unavailable(format!("{url}: {e}")))
    }

    /// A token from a bearer challenge's realm, for its service and scope; the
    /// registry's credentials go along only to a realm on its own host.
    async fn token(
        &self,
        challenge: &str,
        registry_host: &str,
        login: Option<&RegistryCredentials>,
    ) -> Result<String, RegistryError> {
        let param = |key: &str| {
            challenge.split(',').find_map(|part| {
                let (k, v) = part.trim().trim_start_matches("Bearer ").split_once('=')?;
                (k == key).then(|| v.trim_matches('"').to_string())
            })
        };
        let realm = param("realm").ok_or_else(|| RegistryError::Refused(format!("no realm in `{challenge}`")))?;
        let mut query = Vec::new();
        for key in ["service", "scope"] {
            if let Some(v) = param(key) {
                query.push((key, v));
            }
        }
        let url = reqwest::Url::parse_with_params(&realm, &query)
            .map_err(|e| RegistryError::Refused(format!("realm `{realm}`: {e}")))?;
        let authority = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            (None, _) => String::new(),
        };
        let trusted = !authority.is_empty() && self.logins.realm_is_trusted(url.scheme(), &authority, registry_host);
        let mut request = self.http.get(url);
        if let Some(login) = login.filter(|_| trusted) {
            request = request.basic_auth(&login.username, Some(&login.password));
        }
        let response = request.send().await.map_err(|e| RegistryError::Unavailable(format!("{realm}: {e}")))?;
        if !response.status().is_success() {
            return Err(RegistryError::Refused(format!("{realm} answered {}", response.status())));
        }
        let body: serde_json::Value =
            response.json().await.map_err(|e| RegistryError::Refused(format!("{realm}: {e}")))?;
        body["token"]
            .as_str()
            .or_else(|| body["access_token"].as_str())
            .map(String::from)
            .ok_or_else(|| RegistryError::Refused(format!("{realm} gave no token")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_use_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("ghcr.io"));
        assert!(!is_loopback("123456789.dkr.ecr.eu-west-1.amazonaws.com"));
    }
}
