//! Reading request bodies: JSON only (`application/json`, so a browser page
//! cannot send one cross-origin without a CORS pre-flight), one object, no
//! trailing bytes, and every error naming the field at fault.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::IngestConfig;

/// Parses a request's JSON body, naming the field at fault on error: the
/// body must be `application/json` (415 otherwise: a browser page cannot
/// send that cross-origin without a CORS pre-flight) within the size limit.
pub fn parse_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    config: &IngestConfig,
) -> Result<T, ApiError> {
    require_json(headers)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(None, "the request body", config.max_request_bytes)
        } else {
            ApiError::bad_field("body", rejection.body_text())
        }
    })?;
    parse_body(&body)
}

/// `Content-Type` must be `application/json` (any parameters, any case).
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let media_type = given
        .as_deref()
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if media_type.is_some_and(|m| m.eq_ignore_ascii_case("application/json")) {
        return Ok(());
    }
    let mut e = ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        match given {
            Some(t) => format!("content-type: {t:?} is not application/json"),
            None => "content-type: missing; send the body as application/json".to_string(),
        },
    );
    e.body.field = Some("content-type".into());
    Err(e)
}

/// Parses one JSON object — nothing before or after it — into `T`, naming
/// the field at fault on error. Pure: the fuzz targets call it directly.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // serde would also read a struct from a JSON array; the API takes objects.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_field("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        ApiError::bad_field(field_of(&path, &message), strip_position(&message))
    })?;
    de.end().map_err(|_| {
        ApiError::bad_field(
            "body",
            "unexpected data after the JSON object (send exactly one object)",
        )
    })?;
    Ok(value)
}

/// The field a serde error is about: its path, plus the field named in a
/// "missing field `x`" / "unknown field `x`" message.
pub fn field_of(path: &str, message: &str) -> String {
    let path = match path {
        "." | "?" => "",
        p => p.trim_end_matches('.'), // a key `""` shows as a trailing dot
    };
    if message.starts_with("unknown field `") && !path.is_empty() {
        return path.to_string(); // the path already ends at the unknown field
    }
    let named = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("unknown field `"))
        .and_then(|rest| rest.split('`').next())
        .filter(|name| !name.is_empty()); // `{"": 1}` names no field: its parent
    match (path, named) {
        ("", Some(name)) => name.to_string(),
        (p, Some(name)) => format!("{p}.{name}"),
        ("", None) => "body".to_string(),
        (p, None) => p.to_string(),
    }
}

pub fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths() {
        assert_eq!(field_of(".", "missing field `callback`"), "callback");
        assert_eq!(field_of("callback", "missing field `url`"), "callback.url");
        assert_eq!(
            field_of("colour", "unknown field `colour`, expected one of"),
            "colour"
        );
        assert_eq!(
            field_of("callback.colour", "unknown field `colour`, expected one of"),
            "callback.colour"
        );
        assert_eq!(field_of("?", "EOF while parsing a value"), "body");
        assert_eq!(field_of("delay_ms", "invalid type: string"), "delay_ms");
        assert_eq!(field_of(".", "expected value"), "body");
        // Found by fuzzing: an unknown field with an empty name.
        assert_eq!(field_of("", "unknown field ``, expected one of"), "body");
        assert_eq!(
            field_of("callback", "unknown field ``, expected"),
            "callback"
        );
    }
}
