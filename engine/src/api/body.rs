//! Request bodies: JSON only (by exact media type), at most [`MAX_BODY_BYTES`],
//! arriving within [`BODY_TIMEOUT`], and parsed into the expected type with the
//! field at fault named for unknown fields and wrong types.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use super::{ApiError, MAX_BODY_BYTES};
use crate::error::Code;

/// How long a request body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads and parses a JSON body; nothing is done for a body that is refused.
pub async fn read_json<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    read_json_within(headers, body, MAX_BODY_BYTES).await
}

/// [`read_json`] for a route whose bodies may be up to `limit` bytes.
pub async fn read_json_within<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    parse(&read_bytes(headers, body, limit).await?)
}

/// [`read_json`] for a route whose body is optional: an empty one is `T::default()`.
pub async fn read_optional_json<T: DeserializeOwned + Default>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    let bytes = read_bytes(headers, body, MAX_BODY_BYTES).await?;
    if bytes.is_empty() { Ok(T::default()) } else { parse(&bytes) }
}

async fn read_bytes(headers: &HeaderMap, body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    if let Some(kind) = headers.get(header::CONTENT_TYPE) {
        let kind = kind.to_str().unwrap_or_default();
        if !is_json(kind) {
            return Err(ApiError::new(Code::UnsupportedMediaType, format!("send application/json, not `{kind}`")));
        }
    }
    // A body announced and never sent holds nothing for long.
    let read = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await.map_err(|_| {
        ApiError::new(Code::RequestTimeout, format!("the request body did not arrive within {BODY_TIMEOUT:?}"))
    })?;
    read.map_err(|_| ApiError::new(Code::BodyTooLarge, format!("the request body is larger than {limit} bytes")))
}

/// Whether a `Content-Type` is JSON: `application/json`, in any case, with or without
/// parameters (`; charset=utf-8`), and nothing else (`application/jsonp` is not).
fn is_json(content_type: &str) -> bool {
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    media_type.eq_ignore_ascii_case("application/json")
}

/// Parses the body, naming the field at fault for unknown fields and wrong types.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let request = parsed.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if !inner.is_data() {
            return ApiError::new(Code::InvalidJson, format!("the body is not valid JSON: {inner}"));
        }
        let message = inner.to_string();
        // The path names the unknown key itself; keep the key if the path is empty.
        let field = match unknown_field_in(&message) {
            Some(name) if path == "." => name.to_string(),
            _ => path,
        };
        ApiError::invalid(field, strip_position(&message))
    })?;
    de.end().map_err(|e| ApiError::new(Code::InvalidJson, format!("the body is not valid JSON: {e}")))?;
    Ok(request)
}

/// `unknown field `x`, expected …` → `x`.
fn unknown_field_in(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// serde's messages end with ` at line L column C`, which means nothing to a client
/// that sent one line of JSON.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobRequest;

    #[test]
    fn names_unknown_fields_and_wrong_types() {
        let e = parse::<JobRequest>(br#"{"repo":"git://h/r","imag":"x"}"#).unwrap_err();
        assert_eq!((e.code, e.field.as_deref()), (Code::InvalidField, Some("imag")));
        let e = parse::<JobRequest>(br#"{"run":{"timeout":3}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("run.timeout"));
        let e = parse::<JobRequest>(br#"{"env":{"A":1}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("env.A"));
        assert!(!e.message.contains("line"), "{}", e.message);
        let e = parse::<JobRequest>(br#"{"repo": "#).unwrap_err();
        assert_eq!(e.code, Code::InvalidJson);
        let e = parse::<JobRequest>(br#"{} {}"#).unwrap_err();
        assert_eq!(e.code, Code::InvalidJson);
    }
}
