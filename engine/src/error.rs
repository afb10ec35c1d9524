//! One vocabulary for what the engine answers when a request cannot be served: each
//! code carries its HTTP status and its gRPC code, so that the HTTP API and the
//! report service say the same thing the same way, and a store error is translated
//! to one of them in one place ([`Code::of_store`]).

use axum::http::StatusCode;

use crate::store::StoreError;

/// A stable error code, as the API's JSON `error.code` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// A field of the request is wrong; the error names it.
    InvalidField,
    /// The repo URL carries a credential; it is refused rather than stored.
    CredentialsInUrl,
    /// The body is not JSON, or not the JSON expected.
    InvalidJson,
    UnsupportedMediaType,
    BodyTooLarge,
    /// The request's body did not arrive in time.
    RequestTimeout,
    NotFound,
    /// The endpoint exists, not with this method.
    MethodNotAllowed,
    /// The job already ended; there is nothing to cancel.
    AlreadyFinished,
    /// An idempotency key came back with another body.
    IdempotencyKeyReused,
    /// A name that must be unique is taken.
    Conflict,
    /// No token, or one that is not a Slipway token or not known.
    Unauthenticated,
    TokenExpired,
    TokenRevoked,
    /// The token's role does not allow this.
    Forbidden,
    /// The client sent more requests than its rate allows (`Retry-After` says when).
    RateLimited,
    /// The cap on open live-log streams is reached, for this client or in all.
    TooManyFollowers,
    /// An `env` or `build_args` value is one of the project's secrets: it belongs in
    /// `secrets` or `build_secrets`, where it is never shown.
    SecretInPlainField,
    /// This server has no key to seal secrets with (`SLIPWAY_SECRETS_KEY`).
    NoSecretsKey,
    /// The database (or the process) cannot serve now; trying again may work.
    Unavailable,
    Internal,
}

impl Code {
    pub const ALL: [Code; 21] = [
        Code::InvalidField,
        Code::CredentialsInUrl,
        Code::InvalidJson,
        Code::UnsupportedMediaType,
        Code::BodyTooLarge,
        Code::RequestTimeout,
        Code::NotFound,
        Code::MethodNotAllowed,
        Code::AlreadyFinished,
        Code::IdempotencyKeyReused,
        Code::Conflict,
        Code::Unauthenticated,
        Code::TokenExpired,
        Code::TokenRevoked,
        Code::Forbidden,
        Code::RateLimited,
        Code::TooManyFollowers,
        Code::SecretInPlainField,
        Code::NoSecretsKey,
        Code::Unavailable,
        Code::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidField => "invalid_field",
            Code::CredentialsInUrl => "credentials_in_url",
            Code::InvalidJson => "invalid_json",
            Code::UnsupportedMediaType => "unsupported_media_type",
            Code::BodyTooLarge => "body_too_large",
            Code::RequestTimeout => "request_timeout",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::AlreadyFinished => "already_finished",
            Code::IdempotencyKeyReused => "idempotency_key_reused",
            Code::Conflict => "conflict",
            Code::Unauthenticated => "unauthenticated",
            Code::TokenExpired => "token_expired",
            Code::TokenRevoked => "token_revoked",
            Code::Forbidden => "forbidden",
            Code::RateLimited => "rate_limited",
            Code::TooManyFollowers => "too_many_followers",
            Code::SecretInPlainField => "secret_in_plain_field",
            Code::NoSecretsKey => "no_secrets_key",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            Code::InvalidField | Code::CredentialsInUrl | Code::InvalidJson | Code::SecretInPlainField => {
                StatusCode::BAD_REQUEST
            }
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::AlreadyFinished | Code::IdempotencyKeyReused | Code::Conflict => StatusCode::CONFLICT,
            Code::Unauthenticated | Code::TokenExpired | Code::TokenRevoked => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::TooManyFollowers | Code::Unavailable | Code::NoSecretsKey => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc(self) -> tonic::Code {
        match self {
            Code::InvalidField
            | Code::CredentialsInUrl
            | Code::InvalidJson
            | Code::UnsupportedMediaType
            | Code::SecretInPlainField => tonic::Code::InvalidArgument,
            Code::NoSecretsKey => tonic::Code::FailedPrecondition,
            Code::BodyTooLarge => tonic::Code::ResourceExhausted,
            Code::RequestTimeout => tonic::Code::DeadlineExceeded,
            Code::NotFound => tonic::Code::NotFound,
            Code::MethodNotAllowed => tonic::Code::Unimplemented,
            Code::AlreadyFinished | Code::IdempotencyKeyReused => tonic::Code::FailedPrecondition,
            Code::Conflict => tonic::Code::AlreadyExists,
            Code::Unauthenticated | Code::TokenExpired | Code::TokenRevoked => tonic::Code::Unauthenticated,
            Code::Forbidden => tonic::Code::PermissionDenied,
            Code::RateLimited | Code::TooManyFollowers => tonic::Code::ResourceExhausted,
            Code::Unavailable => tonic::Code::Unavailable,
            Code::Internal => tonic::Code::Internal,
        }
    }

    /// What a store error means to whoever asked, and what to tell them; errors
    /// that are Slipway's fault are logged here, once, and never show database text.
    pub fn of_store(e: &StoreError) -> (Code, &'static str) {
        match e {
            StoreError::NotFound => (Code::NotFound, "no job with that id"),
            StoreError::Unavailable(_) => {
                tracing::warn!(error = ?e, "database unavailable");
                (Code::Unavailable, "the database is unavailable; try again")
            }
            StoreError::CommitterStopped => (Code::Unavailable, "the orchestrator is stopping; try again"),
            StoreError::UnstorableText(_) => (Code::InvalidField, "a text of the request holds a NUL character"),
            e => {
                tracing::error!(error = ?e, "request failed");
                (Code::Internal, "internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_spelled_once_and_maps_to_both_transports() {
        let names: std::collections::BTreeSet<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), Code::ALL.len());
        for code in Code::ALL {
            let http = code.http_status();
            assert!(http.is_client_error() || http.is_server_error(), "{code:?}");
            assert_ne!(code.grpc(), tonic::Code::Ok, "{code:?}");
        }
    }
}
