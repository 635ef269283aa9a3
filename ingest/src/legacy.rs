//! The original service's API, kept working: `POST /timers {hours, minutes,
//! seconds, url}` → `200 {id, time_left}`, `GET /timers/{id}` →
//! `{id, time_left}`, and the fire is a `POST {url}/{id}` with an empty body.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use chime_wire::time::now_ms;
use chime_wire::{Callback, RetryPolicy, TimerCommand, TimerSpec, TimerStatus};

use crate::api::{check_spec, new_id, not_found, path_id, AppState};
use crate::body::parse_json;
use crate::error::{ApiError, ErrorBody};
use crate::IngestConfig;

/// A whole number, `null` or absent meaning 0.
fn legacy_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    chime_wire::command::opt_whole(d).map(Option::unwrap_or_default)
}

/// Body of the original `POST /timers`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLegacyTimer {
    #[serde(default, deserialize_with = "legacy_number")]
    pub hours: i64,
    #[serde(default, deserialize_with = "legacy_number")]
    pub minutes: i64,
    #[serde(default, deserialize_with = "legacy_number")]
    pub seconds: i64,
    /// The fire is a `POST {url}/{id}` with an empty body.
    pub url: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LegacyTimerCreated {
    pub id: String,
    /// Seconds until the timer fires.
    pub time_left: u64,
}

/// Answer of the original `GET /timers/{id}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LegacyTimerState {
    pub id: String,
    /// Whole seconds until the timer fires, rounded up; 0 once fired.
    pub time_left: u64,
}

/// The original service's create: `{hours, minutes, seconds, url}`; the fire
/// is a `POST {url}/{id}` with an empty body.
#[utoipa::path(
    post, path = "/timers", tag = "original API",
    request_body = CreateLegacyTimer,
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Kafka acknowledged the timer", body = LegacyTimerCreated),
        (status = 400, description = "A field is wrong; `field` names it", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 413, description = "Body or header count above its limit", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge in time", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn create_legacy_timer(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<LegacyTimerCreated>, ApiError> {
    let req: CreateLegacyTimer = parse_json(&headers, body, &state.config)?;
    let (spec, time_left) = legacy_timer(req, &state.config, now_ms(), new_id())?;
    state
        .log
        .append(&TimerCommand::Schedule(spec.clone()))
        .await?;
    Ok(Json(LegacyTimerCreated {
        id: spec.id,
        time_left,
    }))
}

/// Checks an original-API create and makes its timer `id`: fires in
/// `hours:minutes:seconds` with a `POST` of an empty body to the URL with
/// `/<id>` appended to its path (its query, if any, kept after that).
/// Returns the timer and its seconds left.
pub fn legacy_timer(
    req: CreateLegacyTimer,
    config: &IngestConfig,
    now: u64,
    id: String,
) -> Result<(TimerSpec, u64), ApiError> {
    let parts = [
        ("hours", req.hours, 3600u64),
        ("minutes", req.minutes, 60),
        ("seconds", req.seconds, 1),
    ];
    for (field, value, _) in parts {
        if value < 0 {
            return Err(ApiError::bad_field(field, "must not be negative"));
        }
    }
    let seconds_of = |value: i64, unit: u64| (value as u64).saturating_mul(unit);
    let seconds = parts.iter().fold(0u64, |sum, (_, v, unit)| {
        sum.saturating_add(seconds_of(*v, *unit))
    });
    let horizon_secs = config.horizon.as_secs();
    if seconds > horizon_secs {
        // Blame the field that contributes most (the larger unit on a tie).
        let (field, _, _) = parts
            .iter()
            .rev()
            .max_by_key(|(_, v, unit)| seconds_of(*v, *unit))
            .copied()
            .unwrap_or(parts[0]);
        return Err(ApiError::bad_field(
            field,
            format!(
                "the timer would be {seconds} s ahead, more than the horizon of {} days",
                horizon_secs / 86_400
            ),
        ));
    }
    let as_url_error = |e: ApiError| match e.body.field.as_deref() {
        Some("callback.url") => ApiError::bad_field(
            "url",
            e.body
                .error
                .strip_prefix("callback.url: ")
                .unwrap_or(&e.body.error)
                .to_string(),
        ),
        _ => e,
    };
    let checked = Callback {
        url: req.url,
        method: "POST".into(),
        headers: Default::default(),
        body: String::new(),
    };
    checked
        .validate()
        .map_err(ApiError::from)
        .map_err(as_url_error)?;
    let mut url = url::Url::parse(&checked.url)
        .map_err(|e| ApiError::bad_field("url", format!("is not a URL: {e}")))?;
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|_| ApiError::bad_field("url", "cannot take a path"))?
        .pop_if_empty()
        .push(&id);
    let spec = TimerSpec {
        fire_at_ms: now.saturating_add(seconds.saturating_mul(1000)),
        callback: Callback {
            url: url.into(),
            ..checked
        },
        id,
        attempt: 1,
        retry: RetryPolicy::default(),
        first_fire_at_ms: None,
        schedule_id: None,
        delivery: None,
    };
    check_spec(&spec, config).map_err(as_url_error)?;
    Ok((spec, seconds))
}

/// The original service's status: seconds left (rounded up), 0 once fired.
#[utoipa::path(
    get, path = "/timers/{id}", tag = "original API",
    params(("id" = String, Path, description = "The timer id")),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Seconds left", body = LegacyTimerState),
        (status = 400, description = "The id is not valid", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "Unknown, forgotten or cancelled", body = ErrorBody),
        (status = 503, description = "The timer's partition is loading or its owner cannot be reached", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn legacy_timer_status(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<LegacyTimerState>, ApiError> {
    let id = path_id(id)?;
    let time_left = match state.lookup.status(&id).await? {
        TimerStatus::Pending { fire_at_ms, .. } => {
            fire_at_ms.saturating_sub(now_ms()).div_ceil(1000)
        }
        TimerStatus::Fired { .. } => 0,
        _ => return Err(not_found(&id)),
    };
    Ok(Json(LegacyTimerState { id, time_left }))
}
