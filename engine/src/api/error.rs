//! HTTP errors: JSON `{"error": {"code", "message", "field"}}` with a stable code
//! from the engine's one vocabulary ([`Code`]), which also gives the status.

use axum::Json;
use axum::response::{IntoResponse, Response};

use super::openapi::{ErrorBody, ErrorDetail};

pub use crate::error::Code;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub field: Option<String>,
    /// Sent as `Retry-After` (whole seconds, at least one).
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), field: None, retry_after: None }
    }

    pub fn retry_after(self, wait: std::time::Duration) -> Self {
        ApiError { retry_after: Some(wait), ..self }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError { field: Some(field.into()), ..ApiError::new(Code::InvalidField, message) }
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(Code::NotFound, format!("no {what} with that id"))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let (code, message) = Code::of_store(&e);
        ApiError::new(code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            ErrorBody { error: ErrorDetail { code: self.code.as_str(), message: self.message, field: self.field } };
        let status = self.code.http_status();
        let mut response = (status, Json(body)).into_response();
        if status == axum::http::StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, "Bearer".parse().expect("a header value"));
        }
        if let Some(wait) = self.retry_after {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.max(1).into());
        }
        response
    }
}
