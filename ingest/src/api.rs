//! The HTTP API.
//!
//! * `POST /v1/timers` — create (or re-schedule) a timer: `{id?, fire_at | delay_ms,
//!   callback: {url, method?, headers?, body?}}` → `201 {id, fire_at}`.
//! * `POST /timers` — the original service's API: `{hours, minutes, seconds, url}`
//!   → `{id, time_left}`; the fire is a `POST {url}/{id}`.
//! * `GET /healthz` — the process is alive.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use chime_wire::record::validate_id;
use chime_wire::time::now_ms;
use chime_wire::{Callback, TimerCommand, TimerSpec};

use crate::error::ApiError;
use crate::timer_log::TimerLog;
use crate::IngestConfig;

pub struct AppState {
    pub config: IngestConfig,
    pub log: TimerLog,
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_request_bytes;
    Router::new()
        .route("/v1/timers", post(create_timer))
        .route("/timers", post(create_legacy_timer))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Body of `POST /v1/timers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTimer {
    /// Client-chosen id (safe retries, later cancel); generated when absent.
    pub id: Option<String>,
    /// Absolute due time, RFC 3339 (e.g. `2026-11-28T14:03:07.250Z`).
    pub fire_at: Option<String>,
    /// Due time relative to now, in milliseconds.
    pub delay_ms: Option<i64>,
    pub callback: Callback,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TimerCreated {
    pub id: String,
    /// The due time, RFC 3339 with milliseconds, UTC.
    pub fire_at: String,
}

/// Body of the original `POST /timers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateLegacyTimer {
    #[serde(default)]
    pub hours: i64,
    #[serde(default)]
    pub minutes: i64,
    #[serde(default)]
    pub seconds: i64,
    pub url: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LegacyTimerCreated {
    pub id: String,
    /// Seconds until the timer fires.
    pub time_left: u64,
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn create_timer(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<TimerCreated>), ApiError> {
    let req: CreateTimer = parse_json(body, &state.config)?;
    let now = now_ms();
    let fire_at_ms = match (&req.fire_at, req.delay_ms) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_field(
                "fire_at",
                "give either fire_at or delay_ms, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::bad_field(
                "fire_at",
                "missing: give fire_at (RFC 3339) or delay_ms",
            ))
        }
        (Some(at), None) => parse_fire_at(at)?,
        (None, Some(delay)) if delay < 0 => {
            return Err(ApiError::bad_field("delay_ms", "must not be negative"))
        }
        (None, Some(delay)) => now.saturating_add(delay as u64),
    };
    let horizon = state.config.horizon.as_millis() as u64;
    if fire_at_ms > now.saturating_add(horizon) {
        let field = if req.fire_at.is_some() {
            "fire_at"
        } else {
            "delay_ms"
        };
        return Err(ApiError::bad_field(
            field,
            format!("is more than {} days ahead", horizon / 86_400_000),
        ));
    }
    let id = match req.id {
        Some(id) => id,
        None => new_id(),
    };
    let spec = TimerSpec {
        id,
        fire_at_ms,
        callback: req.callback,
        attempt: 1,
    };
    check_spec(&spec, &state.config)?;
    state
        .log
        .append(&TimerCommand::Schedule(spec.clone()))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(TimerCreated {
            id: spec.id,
            fire_at: format_ms(fire_at_ms),
        }),
    ))
}

async fn create_legacy_timer(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<LegacyTimerCreated>, ApiError> {
    let req: CreateLegacyTimer = parse_json(body, &state.config)?;
    for (field, value) in [
        ("hours", req.hours),
        ("minutes", req.minutes),
        ("seconds", req.seconds),
    ] {
        if value < 0 {
            return Err(ApiError::bad_field(field, "must not be negative"));
        }
    }
    let seconds = (req.hours as u64)
        .saturating_mul(3600)
        .saturating_add((req.minutes as u64).saturating_mul(60))
        .saturating_add(req.seconds as u64);
    if seconds.saturating_mul(1000) > state.config.horizon.as_millis() as u64 {
        return Err(ApiError::bad_field("hours", "the timer is too far ahead"));
    }
    let id = new_id();
    let spec = TimerSpec {
        fire_at_ms: now_ms().saturating_add(seconds * 1000),
        callback: Callback {
            url: format!("{}/{id}", req.url.trim_end_matches('/')),
            method: "POST".into(),
            headers: Default::default(),
            body: String::new(),
        },
        id,
        attempt: 1,
    };
    check_spec(&spec, &state.config).map_err(|e| match e.body.field.as_deref() {
        Some("callback.url") => ApiError::bad_field("url", e.body.error),
        _ => e,
    })?;
    state
        .log
        .append(&TimerCommand::Schedule(spec.clone()))
        .await?;
    Ok(Json(LegacyTimerCreated {
        id: spec.id,
        time_left: seconds,
    }))
}

fn check_spec(spec: &TimerSpec, config: &IngestConfig) -> Result<(), ApiError> {
    validate_id(&spec.id)?;
    spec.callback.validate()?;
    let limit = config.max_callback_body_bytes;
    if spec.callback.body.len() > limit {
        return Err(ApiError::too_large(
            Some("callback.body"),
            "callback.body",
            limit,
        ));
    }
    Ok(())
}

/// Parses a JSON body, naming the field at fault on error.
fn parse_json<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    config: &IngestConfig,
) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(None, "the request body", config.max_request_bytes)
        } else {
            ApiError::bad_field("body", rejection.body_text())
        }
    })?;
    // serde would also read a struct from a JSON array; the API takes objects.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_field("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        ApiError::bad_field(field_of(&path, &message), strip_position(&message))
    })
}

/// The field a serde error is about: its path, plus the field named in a
/// "missing field `x`" / "unknown field `x`" message.
fn field_of(path: &str, message: &str) -> String {
    let path = match path {
        "." | "?" => "",
        p => p,
    };
    if message.starts_with("unknown field `") && !path.is_empty() {
        return path.to_string(); // the path already ends at the unknown field
    }
    let named = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("unknown field `"))
        .and_then(|rest| rest.split('`').next());
    match (path, named) {
        ("", Some(name)) => name.to_string(),
        (p, Some(name)) => format!("{p}.{name}"),
        ("", None) => "body".to_string(),
        (p, None) => p.to_string(),
    }
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Parses an RFC 3339 time to unix ms, rounding sub-millisecond parts up (a
/// timer never fires early).
fn parse_fire_at(text: &str) -> Result<u64, ApiError> {
    let at = DateTime::parse_from_rfc3339(text).map_err(|e| {
        ApiError::bad_field(
            "fire_at",
            format!("{text:?} is not an RFC 3339 time ({e}); e.g. 2026-11-28T14:03:07.250Z"),
        )
    })?;
    let ms = at.timestamp_millis();
    let ms = if at.timestamp_subsec_nanos() % 1_000_000 != 0 {
        ms + 1
    } else {
        ms
    };
    u64::try_from(ms).map_err(|_| ApiError::bad_field("fire_at", "is before 1970"))
}

pub fn format_ms(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
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
    }

    #[test]
    fn fire_at_rounds_up_and_rejects_garbage() {
        assert_eq!(parse_fire_at("1970-01-01T00:00:01.250Z").unwrap(), 1250);
        assert_eq!(parse_fire_at("1970-01-01T00:00:01.2501Z").unwrap(), 1251);
        assert_eq!(parse_fire_at("1970-01-01T01:00:00+01:00").unwrap(), 0);
        assert!(parse_fire_at("tomorrow").is_err());
        assert!(parse_fire_at("1969-12-31T23:59:59Z").is_err());
        assert_eq!(format_ms(1250), "1970-01-01T00:00:01.250Z");
    }
}
