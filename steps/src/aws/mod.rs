//! Amazon's side of the steps: ECR for images, ECS Fargate for runs, CloudWatch Logs
//! for their output, SSM Parameter Store for their secrets.
//!
//! Credentials and region come from the standard AWS chain (environment, profile,
//! instance or task role); `AWS_ENDPOINT_URL` points every client elsewhere, which is
//! how an emulator is reached. One [`AwsConfig`] is loaded per process and clients are
//! made from it per region, since an ECR image names its own region.
//!
//! Every call to AWS is spelled `ecr.<operation>()`, `ecs.<operation>()`,
//! `cloudwatch.<operation>()` or `ssm.<operation>()` on a client bound to one of
//! those names: the policy documents in `iam/` are checked against those calls
//! (`slipway/tests/suite/iam.rs`).
//!
//! The SDK is a large part of a cold build, so it is in builds with the `aws`
//! feature only (on by default). A build without it runs no ECS task and pushes to
//! no ECR registry: each such request fails with [`WITHOUT_AWS`] in its message.

pub mod ecr;
pub mod ecs;

#[cfg(feature = "aws")]
use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::{ErrorCode, StepError};

/// What a build without the `aws` feature says when asked for AWS.
pub const WITHOUT_AWS: &str =
    "this slipway was built without AWS support (the `aws` cargo feature, which the default build includes)";

/// `what` refused by a build without AWS, as a step error of `code`.
pub fn without_aws(code: ErrorCode, what: &str) -> StepError {
    StepError::new(code, format!("{what}: {WITHOUT_AWS}"))
}

#[cfg(feature = "aws")]
/// Every SDK's error, with the raw HTTP response.
type SdkError<E> = aws_sdk_ecs::error::SdkError<E, aws_sdk_ecs::config::http::HttpResponse>;

#[cfg(feature = "aws")]
/// The process's AWS configuration, loaded once from the standard chain.
#[derive(Clone, Debug)]
pub struct AwsConfig {
    sdk: SdkConfig,
}

#[cfg(feature = "aws")]
impl AwsConfig {
    pub async fn load() -> Self {
        AwsConfig { sdk: loader().load().await }
    }

    /// A configuration made elsewhere (an emulator's endpoint, fixed credentials).
    pub fn from_sdk(sdk: SdkConfig) -> Self {
        AwsConfig { sdk }
    }

    /// The configuration as loaded, for another region when one is named.
    pub fn sdk_for(&self, region: Option<&str>) -> SdkConfig {
        match region {
            Some(region) => self.sdk.to_builder().region(Region::new(region.to_string())).build(),
            None => self.sdk.clone(),
        }
    }

    /// The region the chain resolved, if any.
    pub fn region(&self) -> Option<String> {
        self.sdk.region().map(|r| r.to_string())
    }
}

#[cfg(feature = "aws")]
/// The standard chain's loader, with Slipway's HTTPS client; tests add an endpoint,
/// fixed credentials and so on before loading.
pub fn loader() -> aws_config::ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest()).http_client(https_client())
}

#[cfg(feature = "aws")]
/// rustls with ring, the platform's root certificates, and an http fallback for
/// `http://` endpoints (an emulator on loopback).
fn https_client() -> aws_sdk_ecs::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https()
}

#[cfg(feature = "aws")]
/// An AWS error as a step error: the service's own code and message, with
/// throttling and server-side faults retryable.
pub(crate) fn aws_error<E>(err: SdkError<E>, code: ErrorCode, what: &str) -> StepError
where
    E: aws_sdk_ecs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (detail, transient) = match &err {
        SdkError::ServiceError(e) => {
            let service = e.err();
            let name = service.code().unwrap_or("unknown");
            let transient = name.contains("Throttl") || name == "ServerException" || e.raw().status().is_server_error();
            (format!("{name}: {}", service.message().unwrap_or_default()), transient)
        }
        SdkError::ResponseError(e) => (format!("AWS answered HTTP {} that could not be read", e.raw().status()), true),
        SdkError::TimeoutError(_) => ("no answer in time".to_string(), true),
        SdkError::DispatchFailure(e) => {
            let why = e.as_connector_error().map_or_else(|| "unknown".to_string(), |c| c.to_string());
            (format!("cannot reach AWS: {why}"), true)
        }
        _ => (aws_sdk_ecs::error::DisplayErrorContext(&err).to_string(), false),
    };
    let code = if transient { ErrorCode::AwsUnavailable } else { code };
    StepError::new(code, format!("{what}: {detail}"))
}

#[cfg(feature = "aws")]
/// The service's error code, for the cases a caller handles itself.
pub(crate) fn service_code<E>(err: &SdkError<E>) -> Option<&str>
where
    E: aws_sdk_ecs::error::ProvideErrorMetadata,
{
    err.as_service_error().and_then(|e| e.code())
}
