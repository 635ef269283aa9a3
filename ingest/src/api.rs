//! The HTTP API. Every route is in [`routes`], which the OpenAPI document
//! ([`crate::docs`]) must cover (a test checks it).
//!
//! * `POST /v1/timers` — create (or re-schedule) a timer → `201 {id, fire_at}`.
//! * `GET /v1/timers/{id}` — the timer's state, answered by its owning engine.
//! * `DELETE /v1/timers/{id}` — cancel → `202` once Kafka acknowledged it.
//! * `POST /v1/timers/batch` — see [`crate::batch`].
//! * `POST /timers`, `GET /timers/{id}` — the original service's API.
//! * `/healthz`, `/readyz`, `/metrics` — see [`crate::ops`].

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::routing::{delete, get, post};
use axum::{middleware, Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use chime_kafka::KafkaProbe;
use chime_wire::time::now_ms;
use chime_wire::validate_id;
use chime_wire::{Callback, RetryPolicy, StatusSource, TimerCommand, TimerSpec, TimerStatus};

use crate::error::{ApiError, ErrorBody};
use crate::lookup::TimerLookup;
use crate::timer_log::TimerLog;
use crate::IngestConfig;

/// Longest a create with a client-chosen id waits to learn whether that id is
/// already pending; past it the create goes ahead (a re-schedule).
const DUPLICATE_CHECK_BUDGET: Duration = Duration::from_secs(1);

pub struct AppState {
    pub config: IngestConfig,
    pub log: TimerLog,
    pub lookup: TimerLookup,
    pub kafka: KafkaProbe,
    /// The engine in this process (`chime all`), if any.
    pub local_engine: Option<Arc<dyn StatusSource>>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

impl AppState {
    pub fn new(
        config: IngestConfig,
        local_engine: Option<Arc<dyn StatusSource>>,
    ) -> anyhow::Result<Self> {
        Ok(AppState {
            log: TimerLog::new(&config)?,
            lookup: TimerLookup::new(&config, local_engine.clone())?,
            kafka: KafkaProbe::new(&config.bootstrap, &config.topics.timers)?,
            local_engine,
            metrics: chime_telemetry::recorder(),
            config,
        })
    }
}

/// One route the API serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
}

impl Route {
    /// `/v1` and original-API routes need an API key when keys are configured;
    /// health, readiness, metrics and the docs stay open.
    pub fn needs_api_key(&self) -> bool {
        self.path.starts_with("/v1/") || self.path == "/timers" || self.path.starts_with("/timers/")
    }
}

/// The API's routes: a router (state not yet given) and the list of what it
/// serves, built together so the list cannot miss a route.
pub struct RouteTable {
    pub guarded: Router<Arc<AppState>>,
    pub open: Router<Arc<AppState>>,
    pub routes: Vec<Route>,
}

impl RouteTable {
    fn new() -> Self {
        RouteTable {
            guarded: Router::new(),
            open: Router::new(),
            routes: Vec::new(),
        }
    }

    fn get<H: Handler<T, Arc<AppState>>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add(Method::GET, path, get(h))
    }

    fn post<H: Handler<T, Arc<AppState>>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add(Method::POST, path, post(h))
    }

    fn delete<H: Handler<T, Arc<AppState>>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add(Method::DELETE, path, delete(h))
    }

    fn add(
        mut self,
        method: Method,
        path: &'static str,
        handler: axum::routing::MethodRouter<Arc<AppState>>,
    ) -> Self {
        let route = Route { method, path };
        if route.needs_api_key() {
            self.guarded = self.guarded.route(path, handler);
        } else {
            self.open = self.open.route(path, handler);
        }
        self.routes.push(route);
        self
    }
}

/// Every route of the API except the docs themselves (`/openapi.json`, `/docs`).
pub fn routes() -> RouteTable {
    RouteTable::new()
        .post("/v1/timers", create_timer)
        .post("/v1/timers/batch", crate::batch::create_batch)
        .get("/v1/timers/{id}", timer_status)
        .delete("/v1/timers/{id}", cancel_timer)
        .get("/v1/timers", crate::listing::list_timers)
        .post("/v1/schedules", crate::schedules::create_schedule)
        .get("/v1/schedules", crate::listing::list_schedules)
        .get("/v1/schedules/{id}", crate::schedules::schedule_status)
        .delete("/v1/schedules/{id}", crate::schedules::cancel_schedule)
        .post("/v1/schedules/{id}/pause", crate::schedules::pause_schedule)
        .post(
            "/v1/schedules/{id}/resume",
            crate::schedules::resume_schedule,
        )
        .post("/timers", create_legacy_timer)
        .get("/timers/{id}", legacy_timer_status)
        .get("/healthz", crate::ops::healthz)
        .get("/readyz", crate::ops::readyz)
        .get("/metrics", crate::ops::metrics)
}

pub fn router(state: Arc<AppState>) -> Router {
    let table = routes();
    let guarded = table.guarded.route_layer(middleware::from_fn_with_state(
        state.clone(),
        crate::guard::require_api_key,
    ));
    guarded
        .merge(table.open)
        .merge(crate::docs::swagger())
        .route_layer(middleware::from_fn(crate::guard::count_requests))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::guard::limit_headers,
        ))
        .layer(DefaultBodyLimit::max(state.config.max_request_bytes))
        .with_state(state)
}

/// Body of `POST /v1/timers` (and of each item of a batch).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTimer {
    /// Client-chosen id (≤ 256 bytes) for safe retries and later cancel;
    /// generated when absent. See "Creating with an existing id" in the docs.
    pub id: Option<String>,
    /// Absolute due time, RFC 3339 (e.g. `2026-11-28T14:03:07.250Z`);
    /// sub-millisecond parts round up. Give this or `delay_ms`.
    pub fire_at: Option<String>,
    /// Due time relative to now, in milliseconds (≥ 0).
    pub delay_ms: Option<i64>,
    #[schema(value_type = crate::docs::CallbackSchema)]
    pub callback: Callback,
    /// How failed callbacks are retried; the dispatcher's defaults when absent.
    #[serde(default)]
    #[schema(value_type = crate::docs::RetryPolicySchema)]
    pub retry: RetryPolicy,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TimerCreated {
    pub id: String,
    /// The due time, RFC 3339 with milliseconds, UTC.
    pub fire_at: String,
}

/// Body of the original `POST /timers`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLegacyTimer {
    #[serde(default)]
    pub hours: i64,
    #[serde(default)]
    pub minutes: i64,
    #[serde(default)]
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

/// Where a timer is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimerStateName {
    Pending,
    Fired,
    Cancelled,
}

/// Answer of `GET /v1/timers/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TimerState {
    pub id: String,
    pub state: TimerStateName,
    /// The due time (pending and fired timers), RFC 3339, UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fire_at: Option<String>,
    /// Milliseconds until the due time (0 once fired; absent when cancelled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_left_ms: Option<u64>,
    /// What will be called (pending timers).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::docs::CallbackSchema>)]
    pub callback: Option<Callback>,
    /// The retry policy given at create (pending timers, when one was given).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::docs::RetryPolicySchema>)]
    pub retry: Option<RetryPolicy>,
    /// When the engine fired it (fired timers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fired_at: Option<String>,
    /// How late the engine fired it, in milliseconds (fired timers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lateness_ms: Option<u64>,
    /// When it was cancelled (cancelled timers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<String>,
    /// What came of the callback: a fired timer's once the dispatcher
    /// finished it; a pending retry's attempts so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<crate::delivery::DeliveryView>,
}

/// Answer of the original `GET /timers/{id}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LegacyTimerState {
    pub id: String,
    /// Whole seconds until the timer fires, rounded up; 0 once fired.
    pub time_left: u64,
}

/// Answer of `DELETE /v1/timers/{id}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CancelAccepted {
    pub id: String,
    /// Always `true`: Kafka acknowledged the cancel command.
    pub cancel_accepted: bool,
}

/// Create a timer (or re-schedule a pending one).
///
/// Answered only after Kafka acknowledged the command. With an `id` that is
/// pending with the same spec (same callback and retry policy, and the same
/// `fire_at` when `fire_at` is given; the time is not compared for `delay_ms`),
/// nothing is written and the original answer is returned. With a different
/// spec the timer is re-scheduled.
#[utoipa::path(
    post, path = "/v1/timers", tag = "timers",
    request_body = CreateTimer,
    security((), ("api_key" = [])),
    responses(
        (status = 201, description = "Kafka acknowledged the timer", body = TimerCreated),
        (status = 400, description = "A field is wrong; `field` names it", body = ErrorBody),
        (status = 401, description = "API keys are configured and none or a wrong one was given", body = ErrorBody),
        (status = 413, description = "Body, callback body or header count above its limit; `limit` says it", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge in time; nothing was created", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn create_timer(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<TimerCreated>), ApiError> {
    let req: CreateTimer = parse_json(body, &state.config)?;
    let timer = new_timer(req, &state.config, now_ms())?;
    let created = schedule(&state, timer).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// A validated create, ready to be appended.
pub struct NewTimer {
    pub spec: TimerSpec,
    /// The client chose the id (so it may be a retry of an earlier create).
    pub id_given: bool,
    /// The time was given as `delay_ms` (so it is not compared with a pending one).
    pub by_delay: bool,
}

pub fn new_timer(req: CreateTimer, config: &IngestConfig, now: u64) -> Result<NewTimer, ApiError> {
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
    let horizon = config.horizon.as_millis() as u64;
    let by_delay = req.fire_at.is_none();
    if fire_at_ms > now.saturating_add(horizon) {
        let field = if by_delay { "delay_ms" } else { "fire_at" };
        return Err(ApiError::bad_field(
            field,
            format!("is more than {} days ahead", horizon / 86_400_000),
        ));
    }
    let id_given = req.id.is_some();
    let spec = TimerSpec {
        id: req.id.unwrap_or_else(new_id),
        fire_at_ms,
        callback: req.callback,
        attempt: 1,
        retry: req.retry,
        first_fire_at_ms: None,
        schedule_id: None,
        delivery: None,
    };
    check_spec(&spec, config)?;
    Ok(NewTimer {
        spec,
        id_given,
        by_delay,
    })
}

/// Appends the schedule command unless it duplicates the pending timer.
pub async fn schedule(state: &AppState, timer: NewTimer) -> Result<TimerCreated, ApiError> {
    if timer.id_given {
        if let Some(fire_at_ms) = pending_duplicate(state, &timer).await {
            return Ok(TimerCreated {
                id: timer.spec.id,
                fire_at: format_ms(fire_at_ms),
            });
        }
    }
    state
        .log
        .append(&TimerCommand::Schedule(timer.spec.clone()))
        .await?;
    Ok(TimerCreated {
        fire_at: format_ms(timer.spec.fire_at_ms),
        id: timer.spec.id,
    })
}

/// The due time of the pending timer `timer` repeats, if it does.
async fn pending_duplicate(state: &AppState, timer: &NewTimer) -> Option<u64> {
    let status = tokio::time::timeout(DUPLICATE_CHECK_BUDGET, state.lookup.status(&timer.spec.id))
        .await
        .ok()?
        .ok()?;
    let TimerStatus::Pending { fire_at_ms, spec } = status else {
        return None;
    };
    let Ok(TimerCommand::Schedule(existing)) = serde_json::from_str(&spec) else {
        return None;
    };
    let same = existing.callback == timer.spec.callback
        && existing.retry == timer.spec.retry
        && existing.attempt == 1
        && (timer.by_delay || fire_at_ms == timer.spec.fire_at_ms);
    same.then_some(fire_at_ms)
}

/// A timer's state, asked of the engine that owns its partition.
#[utoipa::path(
    get, path = "/v1/timers/{id}", tag = "timers",
    params(("id" = String, Path, description = "The timer id")),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Pending, fired (with lateness) or cancelled", body = TimerState),
        (status = 400, description = "The id is not valid", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "chime never saw the id, or has forgotten it (fired/cancelled timers are remembered for an hour)", body = ErrorBody),
        (status = 503, description = "The timer's partition is loading or its owner cannot be reached", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn timer_status(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<TimerState>, ApiError> {
    let id = path_id(id)?;
    let status = state.lookup.status(&id).await?;
    let now = now_ms();
    let mut answer = TimerState {
        id,
        state: TimerStateName::Pending,
        fire_at: None,
        time_left_ms: None,
        callback: None,
        retry: None,
        fired_at: None,
        lateness_ms: None,
        cancelled_at: None,
        delivery: None,
    };
    match status {
        TimerStatus::Pending { fire_at_ms, spec } => {
            answer.fire_at = Some(format_ms(fire_at_ms));
            answer.time_left_ms = Some(fire_at_ms.saturating_sub(now));
            if let Ok(TimerCommand::Schedule(spec)) = serde_json::from_str(&spec) {
                answer.callback = Some(spec.callback);
                answer.retry = (!spec.retry.is_default()).then_some(spec.retry);
                answer.delivery = spec.delivery.as_ref().map(Into::into);
            }
        }
        TimerStatus::Fired {
            fire_at_ms,
            fired_at_ms,
            delivery,
        } => {
            answer.delivery = delivery.as_ref().map(Into::into);
            answer.state = TimerStateName::Fired;
            answer.fire_at = Some(format_ms(fire_at_ms));
            answer.time_left_ms = Some(0);
            answer.fired_at = Some(format_ms(fired_at_ms));
            answer.lateness_ms = Some(fired_at_ms.saturating_sub(fire_at_ms));
        }
        TimerStatus::Cancelled { cancelled_at_ms } => {
            answer.state = TimerStateName::Cancelled;
            answer.cancelled_at = Some(format_ms(cancelled_at_ms));
        }
        TimerStatus::Unknown | TimerStatus::NotOwned | TimerStatus::Loading => {
            return Err(not_found(&answer.id))
        }
    }
    Ok(Json(answer))
}

/// Cancel a timer. Idempotent; cancelling a timer that already fired (or
/// never existed) is a harmless no-op.
#[utoipa::path(
    delete, path = "/v1/timers/{id}", tag = "timers",
    params(("id" = String, Path, description = "The timer id")),
    security((), ("api_key" = [])),
    responses(
        (status = 202, description = "Kafka acknowledged the cancel command", body = CancelAccepted),
        (status = 400, description = "The id is not valid", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge in time", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn cancel_timer(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<CancelAccepted>), ApiError> {
    let id = path_id(id)?;
    state
        .log
        .append(&TimerCommand::Cancel { id: id.clone() })
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(CancelAccepted {
            id,
            cancel_accepted: true,
        }),
    ))
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
        retry: RetryPolicy::default(),
        first_fire_at_ms: None,
        schedule_id: None,
        delivery: None,
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

/// The original service's status: seconds left (rounded up), 0 once fired.
#[utoipa::path(
    get, path = "/timers/{id}", tag = "original API",
    params(("id" = String, Path, description = "The timer id")),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Seconds left", body = LegacyTimerState),
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

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no timer {id:?}: never created, cancelled, or finished more than the retention ago"
        ),
    )
}

/// The `{id}` of a path, validated like a created id.
fn path_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_field("id", e.body_text()))?;
    validate_id(&id)?;
    Ok(id)
}

fn check_spec(spec: &TimerSpec, config: &IngestConfig) -> Result<(), ApiError> {
    validate_id(&spec.id)?;
    spec.callback.validate()?;
    spec.retry.validate()?;
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
pub fn parse_json<T: DeserializeOwned>(
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
pub fn field_of(path: &str, message: &str) -> String {
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

pub fn strip_position(message: &str) -> String {
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
