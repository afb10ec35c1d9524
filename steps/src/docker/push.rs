//! Push: the built image to the registry its reference names, and the digest the
//! registry gave it.

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::PushImageOptionsBuilder;
use tokio_util::sync::CancellationToken;

use crate::docker::{engine_error, next_message, stream_error};
use crate::image_ref::ImageRef;
use crate::{ErrorCode, LogSink, LogStream, StepError};

/// A user name and password (or token) for a registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl RegistryCredentials {
    /// The login as the engine takes it, for the registry `host`.
    pub fn for_engine(&self, host: Option<String>) -> DockerCredentials {
        DockerCredentials {
            username: Some(self.username.clone()),
            password: Some(self.password.clone()),
            serveraddress: host,
            ..Default::default()
        }
    }
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials").field("username", &self.username).finish_non_exhaustive()
    }
}

/// Pushes `image` and returns `name@sha256:…`.
pub async fn push_image(
    docker: &Docker,
    image: &ImageRef,
    credentials: Option<&RegistryCredentials>,
    logs: &LogSink,
    cancel: &CancellationToken,
) -> Result<String, StepError> {
    let options = PushImageOptionsBuilder::default().tag(&image.tag).build();
    let credentials = credentials.map(|c| c.for_engine(image.registry.clone()));
    let name = image.name();
    let mut stream = std::pin::pin!(docker.push_image(&name, Some(options), credentials));
    let mut digest = None;
    while let Some(item) = next_message(&mut stream, cancel).await? {
        let info = match item {
            Ok(info) => info,
            Err(e) => match stream_error(&e) {
                Some(message) => return Err(classify_push_error(&name, message)),
                None => return Err(engine_error(e, ErrorCode::PushFailed, "the push was refused")),
            },
        };
        if let Some(message) = info.error_detail.and_then(|d| d.message) {
            return Err(classify_push_error(&name, &message));
        }
        if let Some(status) = info.status {
            // Per-layer progress ticks carry `progressDetail`; keep the log to the milestones.
            if info.progress_detail.is_none_or(|p| p.current.is_none()) {
                if let Some(d) = digest_in(&status) {
                    digest = Some(d.to_string());
                }
                logs.line(LogStream::System, status).await;
            }
        }
    }
    let digest = digest
        .ok_or_else(|| StepError::new(ErrorCode::PushFailed, format!("the registry reported no digest for {image}")))?;
    Ok(image.with_digest(&digest))
}

/// The `sha256:…` in a line such as `v1: digest: sha256:… size: 528`.
fn digest_in(status: &str) -> Option<&str> {
    let start = status.find("digest: sha256:")? + "digest: ".len();
    let digest = &status[start..];
    let end = digest.find(|c: char| c.is_whitespace()).unwrap_or(digest.len());
    let digest = &digest[..end];
    (digest.len() == "sha256:".len() + 64).then_some(digest)
}

fn classify_push_error(name: &str, message: &str) -> StepError {
    let lower = message.to_ascii_lowercase();
    let refused = ["unauthorized", "denied", "authentication required", "forbidden", "no basic auth"]
        .iter()
        .any(|w| lower.contains(w));
    if refused {
        StepError::new(ErrorCode::PushRefused, format!("the registry refused to take {name}: {message}"))
    } else {
        StepError::new(ErrorCode::PushFailed, format!("pushing {name} failed: {message}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_digest_in_the_final_status() {
        let d = "sha256:".to_string() + &"a".repeat(64);
        assert_eq!(digest_in(&format!("v1: digest: {d} size: 528")), Some(d.as_str()));
        assert_eq!(digest_in("Pushed"), None);
        assert_eq!(digest_in("digest: sha256:abc size: 1"), None);
    }

    #[test]
    fn auth_refusals_are_permanent_and_the_rest_retryable() {
        let e = classify_push_error("r/app", "unauthorized: authentication required");
        assert_eq!(e.code, ErrorCode::PushRefused);
        assert!(!e.retryable());
        let e = classify_push_error("r/app", "received unexpected HTTP status: 502 Bad Gateway");
        assert!(e.retryable());
    }
}
