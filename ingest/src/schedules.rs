//! Schedules over REST: recurring timers.
//!
//! * `POST /v1/schedules` — create (or replace) → `201 {id, next_due}`.
//! * `GET /v1/schedules/{id}` — its state, next due times, recent occurrences
//!   and what each occurrence's callback answered; asked of the owning engine.
//! * `DELETE /v1/schedules/{id}` — cancel → `202`.
//! * `POST /v1/schedules/{id}/pause`, `…/resume` → `202`.
//!
//! Listing (`GET /v1/schedules`) is in [`crate::listing`]. The record each
//! command appends to `chime.timers` is [`chime_wire::schedule`]'s.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::Json;
use chrono::DateTime;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use chime_wire::recurrence::Recurrence;
use chime_wire::schedule::{occurrence_id, CatchUp, OccurrenceRecord, ScheduleState};
use chime_wire::time::now_ms;
use chime_wire::{
    validate_id, Callback, FieldError, RetryPolicy, ScheduleSpec, ScheduleStatus, TimerCommand,
};

use crate::api::{format_ms, AppState};
use crate::body::parse_json;
use crate::delivery::DeliveryView;
use crate::error::{ApiError, ErrorBody};
use crate::IngestConfig;

/// How many next due times a status or create answer shows.
pub const NEXT_DUE_SHOWN: usize = 5;
/// Longest a create with a client-chosen id waits to learn whether the same
/// schedule already exists.
const DUPLICATE_CHECK_BUDGET: Duration = Duration::from_secs(1);

/// Body of `POST /v1/schedules`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    /// Client-chosen id (≤ 235 bytes); generated when absent. Schedules and
    /// timers share ids: a schedule replaces a pending timer with its id,
    /// and a timer created with a schedule's id replaces the schedule.
    pub id: Option<String>,
    /// A cron expression: `minute hour day-of-month month day-of-week`, or
    /// six fields with seconds first (`*/10 * * * * *`). Names (`MON-FRI`,
    /// `JAN`), `L`, `W`, `#` and `@daily`-style nicknames work. Give this or
    /// `every_ms`.
    pub cron: Option<String>,
    /// The IANA time zone `cron` is read in, e.g. `Europe/Paris`; `UTC` when absent.
    pub time_zone: Option<String>,
    /// Instead of `cron`: every this many milliseconds (at least 1000),
    /// counted from `start_at` (default: now + every_ms).
    #[serde(default, deserialize_with = "chime_wire::command::opt_whole")]
    pub every_ms: Option<u64>,
    /// RFC 3339; no occurrence before it. For `every_ms`, the first occurrence.
    pub start_at: Option<String>,
    /// RFC 3339; no occurrence after it.
    pub end_at: Option<String>,
    /// The schedule ends after this many occurrences fired (≥ 1).
    #[serde(default, deserialize_with = "chime_wire::command::opt_whole")]
    pub max_count: Option<u64>,
    /// What happens to occurrences missed while chime could not fire them.
    #[serde(default, deserialize_with = "chime_wire::command::optional_object")]
    #[schema(value_type = Option<CatchUpSchema>)]
    pub catch_up: Option<CatchUp>,
    #[serde(deserialize_with = "chime_wire::command::object")]
    #[schema(value_type = crate::docs::CallbackSchema)]
    pub callback: Callback,
    /// How each occurrence's failed callbacks are retried.
    #[serde(default, deserialize_with = "chime_wire::command::null_or_object")]
    #[schema(value_type = crate::docs::RetryPolicySchema)]
    pub retry: RetryPolicy,
}

/// Which missed occurrences fire once the schedule can fire again. Overdue
/// occurrences all fire when the oldest is at most `window_ms` late (a
/// failover or a short outage loses nothing); past that the policy decides.
#[derive(Serialize, ToSchema)]
#[schema(as = CatchUp)]
pub struct CatchUpSchema {
    /// `latest` (default): only the most recent missed occurrence; `all`:
    /// every one (at most the 1000 most recent); `none`: none.
    pub policy: Option<CatchUpPolicyName>,
    /// Default 60000 (one minute).
    pub window_ms: Option<u64>,
}

/// `latest`, `all` or `none`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUpPolicyName {
    Latest,
    All,
    None,
}

/// Answer of `POST /v1/schedules`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleCreated {
    pub id: String,
    /// The first due times, RFC 3339 with milliseconds, UTC.
    pub next_due: Vec<String>,
}

/// Answer of a schedule command (cancel, pause, resume).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScheduleCommandAccepted {
    pub id: String,
    /// `cancel`, `pause` or `resume`: Kafka acknowledged the command. It is a
    /// no-op if no such schedule exists (or it is already in that state).
    pub accepted: String,
}

/// Where a schedule is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleStateName {
    Active,
    Paused,
    /// Its end time or count was reached.
    Completed,
    Cancelled,
}

/// One occurrence fired, and what came of its callback.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OccurrenceView {
    /// The occurrence's timer id, `<schedule id>@<due unix ms>`: the
    /// `chime-timer-id` its callback carries.
    pub id: String,
    /// Its due time.
    pub due_at: String,
    /// When the engine released it (at its due time, or later if late).
    pub fired_at: String,
    pub lateness_ms: u64,
    /// What its callback answered, once the dispatcher finished it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryView>,
}

/// Answer of `GET /v1/schedules/{id}` (and an item of `GET /v1/schedules`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleView {
    pub id: String,
    pub state: ScheduleStateName,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    /// No occurrence before it (for `every_ms`: the first occurrence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u64>,
    #[schema(value_type = CatchUpSchema)]
    pub catch_up: CatchUp,
    #[schema(value_type = crate::docs::CallbackSchema)]
    pub callback: Callback,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::docs::RetryPolicySchema>)]
    pub retry: Option<RetryPolicy>,
    /// When the schedule was created (the command's time).
    pub created_at: String,
    /// The next due times (active schedules).
    pub next_due: Vec<String>,
    /// Occurrences fired so far.
    pub occurrences_fired: u64,
    /// Occurrences skipped: missed beyond the catch-up policy, or due while paused.
    pub occurrences_skipped: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<String>,
    /// When it completed or was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// The latest occurrence fired, with what its callback answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_occurrence: Option<OccurrenceView>,
    /// The latest occurrences fired (up to 10), newest first.
    pub recent_occurrences: Vec<OccurrenceView>,
}

impl ScheduleView {
    /// The view of a schedule's state as its engine keeps it, at `now`.
    pub fn of(state: &ScheduleState) -> ScheduleView {
        let spec = &state.spec;
        let status = match (state.ended, state.paused_at_ms) {
            (Some(e), _) if e.cancelled => ScheduleStateName::Cancelled,
            (Some(_), _) => ScheduleStateName::Completed,
            (None, Some(_)) => ScheduleStateName::Paused,
            (None, None) => ScheduleStateName::Active,
        };
        let next_due = if status == ScheduleStateName::Active {
            upcoming(state).into_iter().map(format_ms).collect()
        } else {
            Vec::new()
        };
        let recent: Vec<OccurrenceView> = state
            .recent
            .iter()
            .rev()
            .map(|o| occurrence_view(&spec.id, o))
            .collect();
        ScheduleView {
            id: spec.id.clone(),
            state: status,
            cron: spec.cron.clone(),
            time_zone: spec
                .cron
                .as_ref()
                .map(|_| spec.time_zone.clone().unwrap_or_else(|| "UTC".into())),
            every_ms: spec.every_ms,
            start_at: spec.start_at_ms.map(format_ms),
            end_at: spec.end_at_ms.map(format_ms),
            max_count: spec.max_count,
            catch_up: spec.catch_up,
            callback: spec.callback.clone(),
            retry: (!spec.retry.is_default()).then(|| spec.retry.clone()),
            created_at: format_ms(state.created_at_ms),
            next_due,
            occurrences_fired: state.fired,
            occurrences_skipped: state.skipped,
            paused_at: state.paused_at_ms.map(format_ms),
            ended_at: state.ended.map(|e| format_ms(e.at_ms)),
            last_occurrence: recent.first().cloned(),
            recent_occurrences: recent,
        }
    }
}

fn occurrence_view(schedule_id: &str, o: &OccurrenceRecord) -> OccurrenceView {
    OccurrenceView {
        id: occurrence_id(schedule_id, o.due_ms),
        due_at: format_ms(o.due_ms),
        fired_at: format_ms(o.fired_at_ms),
        lateness_ms: o.fired_at_ms.saturating_sub(o.due_ms),
        delivery: o.delivery.as_ref().map(Into::into),
    }
}

/// The next due times of an active schedule: from its next occurrence, within
/// its end and count.
fn upcoming(state: &ScheduleState) -> Vec<u64> {
    let spec = &state.spec;
    let Some(next) = state.next_at_ms else {
        return Vec::new();
    };
    let Ok(recurrence) = spec.recurrence(spec.start_at_ms.unwrap_or(state.created_at_ms)) else {
        return Vec::new();
    };
    let left = spec
        .max_count
        .map_or(NEXT_DUE_SHOWN as u64, |max| max.saturating_sub(state.fired));
    within(&recurrence, next, spec.end_at_ms, left)
}

/// Up to `n` (at most [`NEXT_DUE_SHOWN`]) occurrences at or after `from`, none after `end`.
fn within(recurrence: &Recurrence, from: u64, end: Option<u64>, n: u64) -> Vec<u64> {
    recurrence
        .upcoming(from, NEXT_DUE_SHOWN.min(n as usize))
        .into_iter()
        .filter(|&at| end.is_none_or(|end| at <= end))
        .collect()
}

/// A validated create: the command's spec, and the first due times.
pub struct NewSchedule {
    pub spec: ScheduleSpec,
    pub next_due: Vec<u64>,
    pub id_given: bool,
}

/// Checks a create and builds its `recurring` command's spec. Every error
/// names the request's field (`cron`, `time_zone`, `every_ms`, `start_at`,
/// `end_at`, `max_count`, `catch_up.window_ms`, `callback.url`, …).
pub fn new_schedule(
    req: CreateSchedule,
    config: &IngestConfig,
    now: u64,
) -> Result<NewSchedule, ApiError> {
    let horizon = config.horizon.as_millis() as u64;
    let latest = now.saturating_add(horizon);
    let start_at_ms = req
        .start_at
        .as_deref()
        .map(|t| parse_time("start_at", t))
        .transpose()?;
    let end_at_ms = req
        .end_at
        .as_deref()
        .map(|t| parse_time("end_at", t))
        .transpose()?;
    if start_at_ms.is_some_and(|s| s > latest) {
        return Err(ApiError::bad_field(
            "start_at",
            format!("is more than {} days ahead", horizon / 86_400_000),
        ));
    }
    if req.every_ms.is_some_and(|e| e > horizon) {
        return Err(ApiError::bad_field(
            "every_ms",
            format!("is more than {} days", horizon / 86_400_000),
        ));
    }
    if req.catch_up.is_some_and(|c| c.window_ms > horizon) {
        return Err(ApiError::bad_field(
            "catch_up.window_ms",
            format!("is more than {} days", horizon / 86_400_000),
        ));
    }
    let id_given = req.id.is_some();
    let spec = ScheduleSpec {
        id: req
            .id
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
        cron: req.cron,
        time_zone: req.time_zone,
        every_ms: req.every_ms,
        start_at_ms,
        end_at_ms,
        max_count: req.max_count,
        catch_up: req.catch_up.unwrap_or_default(),
        callback: req.callback,
        retry: req.retry,
    };
    spec.validate().map_err(rest_field)?;
    let limit = config.max_callback_body_bytes;
    if spec.callback.body.len() > limit {
        return Err(ApiError::too_large(
            Some("callback.body"),
            "callback.body",
            limit,
        ));
    }
    if end_at_ms.is_some_and(|end| end < now) {
        return Err(ApiError::bad_field("end_at", "is in the past"));
    }
    // The first occurrences, as the engine will compute them (an interval
    // counts from now + every_ms unless start_at says otherwise).
    let anchor = now.saturating_add(spec.every_ms.unwrap_or(0));
    let recurrence = spec.recurrence(anchor).map_err(rest_field)?;
    let begin = start_at_ms.unwrap_or(now).max(now);
    let next_due = within(
        &recurrence,
        begin,
        end_at_ms,
        spec.max_count.unwrap_or(u64::MAX),
    );
    match next_due.first() {
        None if end_at_ms.is_some() => Err(ApiError::bad_field(
            "end_at",
            "no occurrence between the start and end_at",
        )),
        Some(&first) if first <= latest => Ok(NewSchedule {
            spec,
            next_due,
            id_given,
        }),
        _ => {
            let field = if spec.cron.is_some() {
                "cron"
            } else {
                "start_at"
            };
            Err(ApiError::bad_field(
                field,
                format!(
                    "the first occurrence is more than {} days ahead",
                    horizon / 86_400_000
                ),
            ))
        }
    }
}

/// A wire field error, named as the REST request names the field.
fn rest_field(e: FieldError) -> ApiError {
    let field = match e.field.as_str() {
        "start_at_ms" => "start_at".to_string(),
        "end_at_ms" => "end_at".to_string(),
        _ => e.field,
    };
    let message = e.message.replace("start_at_ms", "start_at");
    ApiError::bad_field(field, message)
}

/// An RFC 3339 time as unix ms, sub-millisecond parts rounded up.
fn parse_time(field: &str, text: &str) -> Result<u64, ApiError> {
    let at = DateTime::parse_from_rfc3339(text).map_err(|e| {
        ApiError::bad_field(
            field,
            format!("{text:?} is not an RFC 3339 time ({e}); e.g. 2026-11-28T09:00:00+01:00"),
        )
    })?;
    let ms = at.timestamp_millis();
    let ms = if at.timestamp_subsec_nanos() % 1_000_000 != 0 {
        ms + 1
    } else {
        ms
    };
    u64::try_from(ms).map_err(|_| ApiError::bad_field(field, "is before 1970"))
}

/// Create a schedule: a recurring timer (or replace what has its id).
///
/// Answered only after Kafka acknowledged the command. With an `id` whose
/// schedule is active or paused with the same spec, nothing is written and
/// its next due times are returned.
#[utoipa::path(
    post, path = "/v1/schedules", tag = "schedules",
    request_body = CreateSchedule,
    security((), ("api_key" = [])),
    responses(
        (status = 201, description = "Kafka acknowledged the schedule", body = ScheduleCreated),
        (status = 400, description = "A field is wrong (an invalid cron, an unknown time zone, an interval under 1000 ms, an end before the start, …); `field` names it", body = ErrorBody),
        (status = 401, description = "API keys are configured and none or a wrong one was given", body = ErrorBody),
        (status = 413, description = "Body, callback body or header count above its limit; `limit` says it", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge in time; nothing was created", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn create_schedule(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<ScheduleCreated>), ApiError> {
    let req: CreateSchedule = parse_json(&headers, body, &state.config)?;
    let now = now_ms();
    let schedule = new_schedule(req, &state.config, now)?;
    if schedule.id_given {
        if let Some(existing) = same_schedule(&state, &schedule.spec).await {
            return Ok((StatusCode::CREATED, Json(existing)));
        }
    }
    // The record's timestamp is the time the engine counts the schedule
    // from: the same `now` the answer's due times were computed with.
    state
        .log
        .append_at(&TimerCommand::Recurring(schedule.spec.clone()), Some(now))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ScheduleCreated {
            id: schedule.spec.id,
            next_due: schedule.next_due.into_iter().map(format_ms).collect(),
        }),
    ))
}

/// The answer for `spec` if a schedule with its id and the same spec is
/// active or paused (a retried create).
async fn same_schedule(state: &AppState, spec: &ScheduleSpec) -> Option<ScheduleCreated> {
    let status = tokio::time::timeout(DUPLICATE_CHECK_BUDGET, state.lookup.schedule(&spec.id))
        .await
        .ok()?
        .ok()?;
    let ScheduleStatus::Known { schedule } = status else {
        return None;
    };
    let existing: ScheduleState = serde_json::from_str(&schedule).ok()?;
    let same = existing.ended.is_none() && existing.spec.same_as(spec, spec.start_at_ms.is_some());
    same.then(|| ScheduleCreated {
        id: spec.id.clone(),
        next_due: upcoming(&existing).into_iter().map(format_ms).collect(),
    })
}

/// A schedule's state, asked of the engine that owns its partition.
#[utoipa::path(
    get, path = "/v1/schedules/{id}", tag = "schedules",
    params(("id" = String, Path, description = "The schedule id")),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Active, paused, completed or cancelled, with the next due times and what recent occurrences' callbacks answered", body = ScheduleView),
        (status = 400, description = "The id is not valid", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such schedule (or it ended more than an hour ago)", body = ErrorBody),
        (status = 503, description = "The schedule's partition is loading or its owner cannot be reached", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn schedule_status(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ScheduleView>, ApiError> {
    let id = path_id(id)?;
    match state.lookup.schedule(&id).await? {
        ScheduleStatus::Known { schedule } => {
            let schedule: ScheduleState = serde_json::from_str(&schedule).map_err(|e| {
                ApiError::unavailable(format!("the engine's answer is unreadable: {e}"), 1)
            })?;
            Ok(Json(ScheduleView::of(&schedule)))
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no schedule {id:?}: never created, or ended more than the retention ago"),
        )),
    }
}

/// Cancel a schedule: no occurrence fires after the engine applied it.
/// Idempotent. (An occurrence whose callback is being retried goes on;
/// cancel its occurrence id with `DELETE /v1/timers/{id}` to stop it.)
#[utoipa::path(
    delete, path = "/v1/schedules/{id}", tag = "schedules",
    params(("id" = String, Path, description = "The schedule id")),
    security((), ("api_key" = [])),
    responses(
        (status = 202, description = "Kafka acknowledged the cancel command", body = ScheduleCommandAccepted),
        (status = 400, description = "The id is not valid", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge in time", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn cancel_schedule(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<ScheduleCommandAccepted>), ApiError> {
    let id = path_id(id)?;
    command(&state, TimerCommand::Cancel { id }, "cancel").await
}

/// Pause a schedule: nothing fires until it is resumed.
#[utoipa::path(
    post, path = "/v1/schedules/{id}/pause", tag = "schedules",
    params(("id" = String, Path, description = "The schedule id")),
    security((), ("api_key" = [])),
    responses(
        (status = 202, description = "Kafka acknowledged the pause command", body = ScheduleCommandAccepted),
        (status = 400, description = "The id is not valid", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge in time", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn pause_schedule(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<ScheduleCommandAccepted>), ApiError> {
    let id = path_id(id)?;
    command(&state, TimerCommand::Pause { id }, "pause").await
}

/// Resume a paused schedule from its next occurrence after now (those due
/// while it was paused are skipped).
#[utoipa::path(
    post, path = "/v1/schedules/{id}/resume", tag = "schedules",
    params(("id" = String, Path, description = "The schedule id")),
    security((), ("api_key" = [])),
    responses(
        (status = 202, description = "Kafka acknowledged the resume command", body = ScheduleCommandAccepted),
        (status = 400, description = "The id is not valid", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge in time", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn resume_schedule(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<ScheduleCommandAccepted>), ApiError> {
    let id = path_id(id)?;
    command(&state, TimerCommand::Resume { id }, "resume").await
}

async fn command(
    state: &AppState,
    command: TimerCommand,
    name: &str,
) -> Result<(StatusCode, Json<ScheduleCommandAccepted>), ApiError> {
    state.log.append(&command).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ScheduleCommandAccepted {
            id: command.id().to_string(),
            accepted: name.to_string(),
        }),
    ))
}

/// The `{id}` of a path, validated like a created id.
fn path_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_field("id", e.body_text()))?;
    validate_id(&id)?;
    Ok(id)
}

#[cfg(test)]
mod tests;
