//! The one error type of every step: a stable code, a message a person can act on,
//! whether another attempt could succeed, and the cause.

use std::fmt;

/// Stable, machine-readable failure codes. They are stored with the job and shown
/// by the API, so a code never changes meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    RepoNotFound,
    /// The repository's host is not one this worker may fetch from (an internal
    /// address not in `SLIPWAY_REPO_ALLOW_HOSTS`).
    RepoNotAllowed,
    /// The repository's download or checkout is larger than the worker takes
    /// (`SLIPWAY_MAX_CLONE_BYTES`).
    CloneTooLarge,
    RefNotFound,
    AuthRefused,
    CloneFailed,
    PathEscapesRepository,
    DockerfileMissing,
    /// The Dockerfile does not parse; the message names the line.
    DockerfileInvalid,
    ContextMissing,
    /// The context's `.dockerignore` cannot be used (not a regular file, too large,
    /// a pattern too long).
    DockerignoreInvalid,
    /// The build context is larger than the worker sends (`SLIPWAY_MAX_CONTEXT_BYTES`).
    ContextTooLarge,
    BuildFailed,
    /// The job names build secrets and the build cannot take them (the classic
    /// builder, or an engine without BuildKit).
    BuildSecretsUnsupported,
    EngineUnavailable,
    PushRefused,
    PushFailed,
    RunFailed,
    ExitNonZero,
    TimedOut,
    Cancelled,
    /// AWS did not answer, throttled or failed on its side.
    AwsUnavailable,
    /// ECS stopped the task for reasons of its own (it never started, the image could
    /// not be pulled, a Spot interruption, …).
    InfrastructureStop,
    /// The task was stopped from outside Slipway.
    TaskStopped,
    /// The job asks for a runtime this worker is not configured for.
    RuntimeUnavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::RepoNotFound => "repo_not_found",
            ErrorCode::RepoNotAllowed => "repo_not_allowed",
            ErrorCode::CloneTooLarge => "clone_too_large",
            ErrorCode::RefNotFound => "ref_not_found",
            ErrorCode::AuthRefused => "auth_refused",
            ErrorCode::CloneFailed => "clone_failed",
            ErrorCode::PathEscapesRepository => "path_escapes_repository",
            ErrorCode::DockerfileMissing => "dockerfile_missing",
            ErrorCode::DockerfileInvalid => "dockerfile_invalid",
            ErrorCode::ContextMissing => "context_missing",
            ErrorCode::DockerignoreInvalid => "dockerignore_invalid",
            ErrorCode::ContextTooLarge => "context_too_large",
            ErrorCode::BuildFailed => "build_failed",
            ErrorCode::BuildSecretsUnsupported => "build_secrets_unsupported",
            ErrorCode::EngineUnavailable => "engine_unavailable",
            ErrorCode::PushRefused => "push_refused",
            ErrorCode::PushFailed => "push_failed",
            ErrorCode::RunFailed => "run_failed",
            ErrorCode::ExitNonZero => "exit_nonzero",
            ErrorCode::TimedOut => "timed_out",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::AwsUnavailable => "aws_unavailable",
            ErrorCode::InfrastructureStop => "infrastructure_stop",
            ErrorCode::TaskStopped => "task_stopped",
            ErrorCode::RuntimeUnavailable => "runtime_unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// Whether another attempt of the same step could succeed without anyone
    /// changing the job or the repository.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::CloneFailed
                | ErrorCode::EngineUnavailable
                | ErrorCode::PushFailed
                | ErrorCode::AwsUnavailable
                | ErrorCode::InfrastructureStop
                | ErrorCode::RuntimeUnavailable
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct StepError {
    pub code: ErrorCode,
    pub message: String,
    /// The container's exit code, for [`ErrorCode::ExitNonZero`].
    pub exit_code: Option<i64>,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StepError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        StepError { code, message: message.into(), exit_code: None, source: None }
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    pub fn retryable(&self) -> bool {
        self.code.is_retryable()
    }

    pub fn cancelled() -> Self {
        StepError::new(ErrorCode::Cancelled, "the job was cancelled")
    }
}
