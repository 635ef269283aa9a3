//! Operations endpoints: liveness, readiness, Prometheus metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::AppState;

/// Answer of `/healthz` and `/readyz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, `ready` or `not ready`.
    pub status: String,
    /// Why it is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The process lives.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        error: None,
    })
}

/// Kafka is reachable and, with an engine in this process, it has joined its
/// group and every partition it owns is Live.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Not ready, and why", body = Health),
    ))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let verdict = match state.kafka.check().await {
        Err(reason) => Err(reason),
        Ok(()) if state.local_engine.as_ref().is_some_and(|e| !e.is_ready()) => Err(
            "the engine in this process has not joined its group or is still loading partitions"
                .to_string(),
        ),
        Ok(()) => Ok(()),
    };
    match verdict {
        Ok(()) => Json(Health {
            status: "ready".into(),
            error: None,
        })
        .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "not ready".into(),
                error: Some(reason),
            }),
        )
            .into_response(),
    }
}

/// Prometheus text: `chime_http_requests_total`, `chime_kafka_produce_seconds`,
/// `chime_engine_pending_timers`, `chime_engine_partitions`,
/// `chime_engine_fire_lateness_seconds`, `chime_engine_commit_seconds`,
/// `chime_dispatcher_outcomes_total` (the series of the roles in this process).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Some(engine) = &state.local_engine {
        engine.publish_gauges();
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
