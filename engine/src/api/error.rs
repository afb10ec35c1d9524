//! HTTP errors: JSON `{"error": {"code", "message", "field"}}` with a stable code
//! from the engine's one vocabulary ([`Code`]), which also gives the status.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub use crate::error::Code;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), field: None }
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
        let body = json!({ "error": { "code": self.code.as_str(), "message": self.message, "field": self.field } });
        (self.code.http_status(), Json(body)).into_response()
    }
}
