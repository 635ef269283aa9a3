//! The engine's small internal HTTP endpoint: only the owner of a timer's
//! partition knows its state, so ingest asks the owner over HTTP.
//!
//! * `GET /internal/v1/partitions/{partition}/timers/{id}` → [`TimerStatus`] as JSON
//!   (always 200; the `state` says whether this engine owns the partition).
//! * `GET /internal/v1/partitions/{partition}/schedules/{id}` → [`ScheduleStatus`].
//! * `GET /internal/v1/partitions/{partition}/timers?after_due_ms=&after_id=&limit=`
//!   and `…/schedules?after_id=&limit=` → a [`ListAnswer`]: a page of the
//!   partition's pending timers or schedules.
//! * `GET /readyz` — Kafka reachable, joined the group, every owned partition Live.
//! * `GET /metrics` — Prometheus text, when the process installed a recorder.
//!
//! The address is advertised through the consumer group, in the member's
//! `client.id` (see [`chime_wire::status`]), which ingest reads from the
//! group description.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chime_kafka::KafkaProbe;
use chime_wire::status::{LIST_SCHEDULES_ROUTE, LIST_TIMERS_ROUTE, SCHEDULE_ROUTE, TIMER_ROUTE};
use chime_wire::{ListAnswer, ListKind, ListQuery, ScheduleStatus, StatusSource, TimerStatus};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::EngineStatus;

struct ServerState {
    status: EngineStatus,
    probe: KafkaProbe,
    metrics: Option<PrometheusHandle>,
}

/// The internal router (exposed for tests).
pub fn router(
    status: EngineStatus,
    probe: KafkaProbe,
    metrics: Option<PrometheusHandle>,
) -> Router {
    let state = Arc::new(ServerState {
        status,
        probe,
        metrics,
    });
    Router::new()
        .route(TIMER_ROUTE, get(timer_status))
        .route(SCHEDULE_ROUTE, get(schedule_status))
        .route(LIST_TIMERS_ROUTE, get(list_timers))
        .route(LIST_SCHEDULES_ROUTE, get(list_schedules))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

/// Serves the status endpoint on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    status: EngineStatus,
    probe: KafkaProbe,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "engine status endpoint listening");
    axum::serve(listener, router(status, probe, metrics))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

async fn timer_status(
    State(state): State<Arc<ServerState>>,
    Path((partition, id)): Path<(i32, String)>,
) -> Json<TimerStatus> {
    Json(state.status.timer(partition, &id))
}

async fn schedule_status(
    State(state): State<Arc<ServerState>>,
    Path((partition, id)): Path<(i32, String)>,
) -> Json<ScheduleStatus> {
    Json(state.status.schedule(partition, &id))
}

async fn list_timers(
    State(state): State<Arc<ServerState>>,
    Path(partition): Path<i32>,
    Query(query): Query<ListQuery>,
) -> Json<ListAnswer> {
    Json(
        state
            .status
            .list(partition, ListKind::PendingTimers, &query),
    )
}

async fn list_schedules(
    State(state): State<Arc<ServerState>>,
    Path(partition): Path<i32>,
    Query(query): Query<ListQuery>,
) -> Json<ListAnswer> {
    Json(state.status.list(partition, ListKind::Schedules, &query))
}

async fn readyz(State(state): State<Arc<ServerState>>) -> Response {
    let verdict = match state.probe.check().await {
        Err(reason) => Err(reason),
        Ok(()) if !state.status.is_ready() => {
            Err("the engine has not joined its group or is still loading partitions".into())
        }
        Ok(()) => Ok(()),
    };
    match verdict {
        Ok(()) => Json(serde_json::json!({"status": "ready"})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not ready", "error": reason})),
        )
            .into_response(),
    }
}

async fn metrics_text(State(state): State<Arc<ServerState>>) -> Response {
    let Some(handle) = &state.metrics else {
        return (StatusCode::NOT_FOUND, "no metrics recorder installed\n").into_response();
    };
    state.status.publish_gauges();
    (
        [("content-type", "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}
