//! The HTTP API. Every route is in [`routes`], which the OpenAPI document
//! ([`crate::docs`]) must cover (a test checks it).
//!
//! * `POST /v1/timers` — create (or re-schedule) a timer → `201 {id, fire_at}`.
//! * `GET /v1/timers/{id}` — the timer's state, answered by its owning engine.
//! * `DELETE /v1/timers/{id}` — cancel → `202` once Kafka acknowledged it.
//! * `POST /v1/timers/batch` — see [`crate::batch`].
//! * `POST /timers`, `GET /timers/{id}` — the original service's API.
//! * `/healthz`, `/readyz`, `/metrics` — see [`crate::ops`].
//!
//! Around them: the browser rules ([`crate::browser`]), JSON bodies for the
//! router's own 404/405 ([`crate::http_errors`]), the header-count limit, API
//! keys and request counting ([`crate::guard`]). Request bodies must be
//! `application/json` and one JSON object with nothing after it
//! ([`parse_body`], which the fuzz targets call directly).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::{delete, get, post};
use axum::{middleware, Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use chime_kafka::KafkaProbe;
use chime_wire::time::now_ms;
use chime_wire::validate_id;
use chime_wire::{Callback, RetryPolicy, StatusSource, TimerCommand, TimerSpec, TimerStatus};

use crate::body::parse_json;
use crate::error::{ApiError, ErrorBody};
use crate::lookup::TimerLookup;
use crate::recent::RecentCreates;
use crate::timer_log::TimerLog;
use crate::IngestConfig;

/// Longest a create with a client-chosen id waits to learn whether that id is
/// already pending; past it the create goes ahead (a re-schedule).
const DUPLICATE_CHECK_BUDGET: Duration = Duration::from_secs(1);

/// How far in the past a `fire_at` may be (it then fires at once). Older
/// times are refused: they are mistakes (seconds for milliseconds, a zero
/// date), and would fire at once with an absurd lateness.
pub const MAX_PAST: Duration = Duration::from_secs(3600);

pub struct AppState {
    pub config: IngestConfig,
    pub log: TimerLog,
    pub lookup: TimerLookup,
    pub kafka: KafkaProbe,
    /// The engine in this process (`chime all`), if any.
    pub local_engine: Option<Arc<dyn StatusSource>>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Creates acknowledged in the last minute (see [`crate::recent`]).
    pub recent: RecentCreates,
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
            recent: RecentCreates::default(),
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
        // The static batch path would shadow the timer whose id is `batch`.
        .get("/v1/timers/batch", batch_timer_status)
        .delete("/v1/timers/batch", cancel_batch_timer)
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
        .post("/timers", crate::legacy::create_legacy_timer)
        .get("/timers/{id}", crate::legacy::legacy_timer_status)
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
        .layer(middleware::from_fn(crate::http_errors::json_fallbacks))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::guard::limit_headers,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::browser::guard,
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
    #[serde(default, deserialize_with = "chime_wire::command::opt_whole")]
    pub delay_ms: Option<i64>,
    #[serde(deserialize_with = "chime_wire::command::object")]
    #[schema(value_type = crate::docs::CallbackSchema)]
    pub callback: Callback,
    /// How failed callbacks are retried; the dispatcher's defaults when absent.
    #[serde(default, deserialize_with = "chime_wire::command::null_or_object")]
    #[schema(value_type = crate::docs::RetryPolicySchema)]
    pub retry: RetryPolicy,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TimerCreated {
    pub id: String,
    /// The due time, RFC 3339 with milliseconds, UTC.
    pub fire_at: String,
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
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<TimerCreated>), ApiError> {
    let req: CreateTimer = parse_json(&headers, body, &state.config)?;
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
        (Some(at), None) => {
            let at = parse_fire_at(at)?;
            let oldest = now.saturating_sub(MAX_PAST.as_millis() as u64);
            if at < oldest {
                return Err(ApiError::bad_field(
                    "fire_at",
                    format!(
                        "is more than {} minutes in the past",
                        MAX_PAST.as_secs() / 60
                    ),
                ));
            }
            at
        }
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
            format!(
                "is more than {} days ahead (the horizon)",
                horizon / 86_400_000
            ),
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

/// Appends the schedule command unless it repeats a create of the same id
/// and spec (see [`duplicate_of`]).
pub async fn schedule(state: &AppState, timer: NewTimer) -> Result<TimerCreated, ApiError> {
    if timer.id_given {
        if let Some(fire_at_ms) = duplicate_of(state, &timer).await {
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
    state.recent.remember(&timer.spec, now_ms());
    Ok(TimerCreated {
        fire_at: format_ms(timer.spec.fire_at_ms),
        id: timer.spec.id,
    })
}

/// The due time of the create `timer` repeats, if it repeats one: the same
/// callback and retry policy and, unless the time was given as `delay_ms`,
/// the same due time — either as the pending timer the owning engine reports,
/// or as a create this ingest acknowledged in the last minute that the
/// engine has not shown to be fired or cancelled since (it may not have read
/// it yet; see [`crate::recent`]).
async fn duplicate_of(state: &AppState, timer: &NewTimer) -> Option<u64> {
    let spec = &timer.spec;
    // As the owner knows it now: a create it has not applied yet is in
    // `recent`, so waiting for the owner to catch up would only add latency.
    let status = tokio::time::timeout(DUPLICATE_CHECK_BUDGET, state.lookup.status_now(&spec.id))
        .await
        .ok()
        .and_then(Result::ok);
    let remembered = state.recent.get(&spec.id, now_ms());
    match status {
        Some(TimerStatus::Pending {
            fire_at_ms,
            spec: pending,
        }) => {
            if let Ok(TimerCommand::Schedule(existing)) = serde_json::from_str(&pending) {
                let same = existing.callback == spec.callback
                    && existing.retry == spec.retry
                    && existing.attempt == 1
                    && (timer.by_delay || fire_at_ms == spec.fire_at_ms);
                if same {
                    return Some(fire_at_ms);
                }
            }
        }
        // The remembered create has fired, or was cancelled after it: a new timer.
        Some(TimerStatus::Fired { fire_at_ms, .. })
            if remembered.is_some_and(|r| r.fire_at_ms == fire_at_ms) =>
        {
            return None
        }
        Some(TimerStatus::Cancelled { cancelled_at_ms })
            if remembered.is_some_and(|r| cancelled_at_ms >= r.acked_at_ms) =>
        {
            return None
        }
        _ => {}
    }
    let remembered = remembered?;
    let same = remembered.fingerprint == state.recent.fingerprint(spec)
        && (timer.by_delay || remembered.fire_at_ms == spec.fire_at_ms);
    same.then_some(remembered.fire_at_ms)
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
    status_of(&state, path_id(id)?).await
}

/// The state of the timer whose id is `batch` (`GET /v1/timers/{id}` for
/// that id, which the batch route's path would otherwise shadow).
#[utoipa::path(
    get, path = "/v1/timers/batch", tag = "timers",
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Pending, fired (with lateness) or cancelled", body = TimerState),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No timer with the id `batch`, or forgotten", body = ErrorBody),
        (status = 503, description = "The timer's partition is loading or its owner cannot be reached", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn batch_timer_status(
    State(state): State<Arc<AppState>>,
) -> Result<Json<TimerState>, ApiError> {
    status_of(&state, "batch".to_string()).await
}

async fn status_of(state: &AppState, id: String) -> Result<Json<TimerState>, ApiError> {
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
        TimerStatus::Unknown { .. } => return Err(not_found(&answer.id)),
        // The lookup answers these itself (503); kept exact should it not.
        TimerStatus::NotOwned | TimerStatus::Loading => {
            return Err(ApiError::unavailable(
                "the timer's partition is moving between engines or loading; retry shortly",
                1,
            ))
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
    cancel(&state, path_id(id)?).await
}

/// Cancel the timer whose id is `batch` (`DELETE /v1/timers/{id}` for that id).
#[utoipa::path(
    delete, path = "/v1/timers/batch", tag = "timers",
    security((), ("api_key" = [])),
    responses(
        (status = 202, description = "Kafka acknowledged the cancel command", body = CancelAccepted),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge in time", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn cancel_batch_timer(
    State(state): State<Arc<AppState>>,
) -> Result<(StatusCode, Json<CancelAccepted>), ApiError> {
    cancel(&state, "batch".to_string()).await
}

async fn cancel(
    state: &AppState,
    id: String,
) -> Result<(StatusCode, Json<CancelAccepted>), ApiError> {
    state
        .log
        .append(&TimerCommand::Cancel { id: id.clone() })
        .await?;
    state.recent.forget(&id);
    Ok((
        StatusCode::ACCEPTED,
        Json(CancelAccepted {
            id,
            cancel_accepted: true,
        }),
    ))
}

pub(crate) fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no timer {id:?}: never created, cancelled, or finished more than the retention ago"
        ),
    )
}

/// The `{id}` of a path, validated like a created id.
pub(crate) fn path_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_field("id", e.body_text()))?;
    validate_id(&id)?;
    Ok(id)
}

pub(crate) fn check_spec(spec: &TimerSpec, config: &IngestConfig) -> Result<(), ApiError> {
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

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
