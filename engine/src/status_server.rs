//! The engine's small internal HTTP endpoint: only the owner of a timer's
//! partition knows its state, so ingest asks the owner over HTTP.
//!
//! * `GET /internal/v1/partitions/{partition}/timers/{id}` → [`TimerStatusBody`]
//!   (always 200; the `state` says whether this engine owns the partition).
//! * `GET /readyz` — Kafka reachable, joined the group, every owned partition Live.
//! * `GET /metrics` — Prometheus text, when the process installed a recorder.
//!
//! The address is advertised through the consumer group: it is the part after
//! [`ADDRESS_SEPARATOR`] in the member's `client.id` (see
//! [`crate::EngineConfig::client_id`]), which ingest reads from the group
//! description.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{EngineStatus, TimerStatus};

/// Separates the instance name from the status address in an engine's client id.
pub const ADDRESS_SEPARATOR: char = '@';

/// The status address an engine advertised in its `client.id`, if any.
pub fn advertised_address(client_id: &str) -> Option<&str> {
    let rest = client_id.strip_prefix("chime-engine-")?;
    let (_, address) = rest.rsplit_once(ADDRESS_SEPARATOR)?;
    (!address.is_empty()).then_some(address)
}

/// The path ingest asks for a timer's status.
pub fn timer_path(partition: i32, id: &str) -> String {
    format!(
        "/internal/v1/partitions/{partition}/timers/{}",
        percent_encode(id)
    )
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// [`TimerStatus`] on the wire between engine and ingest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TimerStatusBody {
    NotOwned,
    Loading,
    Unknown,
    /// `spec` is the schedule command's JSON text.
    Pending {
        fire_at_ms: u64,
        spec: String,
    },
    Fired {
        fire_at_ms: u64,
        fired_at_ms: u64,
    },
    Cancelled {
        cancelled_at_ms: u64,
    },
}

impl From<TimerStatus> for TimerStatusBody {
    fn from(status: TimerStatus) -> Self {
        match status {
            TimerStatus::NotOwned => TimerStatusBody::NotOwned,
            TimerStatus::Loading => TimerStatusBody::Loading,
            TimerStatus::Unknown => TimerStatusBody::Unknown,
            TimerStatus::Pending { fire_at_ms, spec } => TimerStatusBody::Pending {
                fire_at_ms,
                spec: String::from_utf8_lossy(&spec).into_owned(),
            },
            TimerStatus::Fired {
                fire_at_ms,
                fired_at_ms,
            } => TimerStatusBody::Fired {
                fire_at_ms,
                fired_at_ms,
            },
            TimerStatus::Cancelled { cancelled_at_ms } => {
                TimerStatusBody::Cancelled { cancelled_at_ms }
            }
        }
    }
}

impl From<TimerStatusBody> for TimerStatus {
    fn from(body: TimerStatusBody) -> Self {
        match body {
            TimerStatusBody::NotOwned => TimerStatus::NotOwned,
            TimerStatusBody::Loading => TimerStatus::Loading,
            TimerStatusBody::Unknown => TimerStatus::Unknown,
            TimerStatusBody::Pending { fire_at_ms, spec } => TimerStatus::Pending {
                fire_at_ms,
                spec: Bytes::from(spec),
            },
            TimerStatusBody::Fired {
                fire_at_ms,
                fired_at_ms,
            } => TimerStatus::Fired {
                fire_at_ms,
                fired_at_ms,
            },
            TimerStatusBody::Cancelled { cancelled_at_ms } => {
                TimerStatus::Cancelled { cancelled_at_ms }
            }
        }
    }
}

/// "Is Kafka reachable?", answered by a metadata fetch with a short timeout
/// and remembered briefly so a busy `/readyz` does not load the broker.
pub struct KafkaProbe {
    client: Arc<BaseConsumer>,
    topic: String,
    last: Mutex<Option<(Instant, bool)>>,
}

impl KafkaProbe {
    const TIMEOUT: Duration = Duration::from_secs(1);
    const REMEMBER: Duration = Duration::from_secs(1);

    /// A probe asking for the metadata of `topic`.
    pub fn new(bootstrap: &str, topic: &str) -> anyhow::Result<Self> {
        let client: BaseConsumer =
            chime_wire::kafka::client_config(bootstrap, "chime-readiness").create()?;
        Ok(KafkaProbe {
            client: Arc::new(client),
            topic: topic.to_string(),
            last: Mutex::new(None),
        })
    }

    /// Ok, or why Kafka is not reachable.
    pub async fn check(&self) -> Result<(), String> {
        let remembered = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, ok)) = remembered {
            if at.elapsed() < Self::REMEMBER {
                return if ok {
                    Ok(())
                } else {
                    Err("Kafka is not reachable".into())
                };
            }
        }
        let client = self.client.clone();
        let topic = self.topic.clone();
        let result = tokio::task::spawn_blocking(move || {
            client
                .fetch_metadata(Some(&topic), Self::TIMEOUT)
                .map_err(|e| format!("Kafka is not reachable: {e}"))
                .and_then(|m| match m.topics().first().and_then(|t| t.error()) {
                    Some(e) => Err(format!("Kafka metadata for {topic}: {e:?}")),
                    None => Ok(()),
                })
        })
        .await
        .unwrap_or_else(|e| Err(format!("readiness probe failed: {e}")));
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), result.is_ok()));
        result
    }
}

/// Publishes the engine's gauges (pending timers per partition, partitions
/// loading and live) just before a scrape. Partitions that moved away are set
/// to 0 so a stale count does not linger.
#[derive(Default)]
pub struct EngineGauges {
    reported: Mutex<BTreeSet<i32>>,
}

impl EngineGauges {
    pub fn publish(&self, status: &EngineStatus) {
        let pending = status.pending_per_partition();
        let loading = status.lock().loading.len();
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        let now: BTreeSet<i32> = pending.iter().map(|(p, _)| *p).collect();
        for gone in reported.difference(&now) {
            metrics::gauge!("chime_engine_pending_timers", "partition" => gone.to_string())
                .set(0.0);
        }
        for (p, n) in &pending {
            metrics::gauge!("chime_engine_pending_timers", "partition" => p.to_string())
                .set(*n as f64);
        }
        metrics::gauge!("chime_engine_partitions", "state" => "live").set(pending.len() as f64);
        metrics::gauge!("chime_engine_partitions", "state" => "loading").set(loading as f64);
        *reported = now;
    }
}

struct ServerState {
    status: EngineStatus,
    probe: KafkaProbe,
    metrics: Option<PrometheusHandle>,
    gauges: EngineGauges,
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
        gauges: EngineGauges::default(),
    });
    Router::new()
        .route(
            "/internal/v1/partitions/{partition}/timers/{id}",
            get(timer_status),
        )
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
) -> Json<TimerStatusBody> {
    Json(state.status.timer(partition, &id).into())
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
    state.gauges.publish(&state.status);
    (
        [("content-type", "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_address_is_after_the_separator() {
        assert_eq!(
            advertised_address("chime-engine-abc@127.0.0.1:4000"),
            Some("127.0.0.1:4000")
        );
        assert_eq!(advertised_address("chime-engine-abc"), None);
        assert_eq!(advertised_address("chime-engine-abc@"), None);
        assert_eq!(advertised_address("other@127.0.0.1:1"), None);
    }

    #[test]
    fn ids_are_percent_encoded_in_the_path() {
        assert_eq!(
            timer_path(3, "a/b c"),
            "/internal/v1/partitions/3/timers/a%2Fb%20c"
        );
    }

    #[test]
    fn status_round_trips_through_json() {
        let status = TimerStatus::Pending {
            fire_at_ms: 5,
            spec: Bytes::from_static(b"{\"op\":\"schedule\"}"),
        };
        let body: TimerStatusBody = status.clone().into();
        let json = serde_json::to_string(&body).unwrap();
        let back: TimerStatusBody = serde_json::from_str(&json).unwrap();
        assert_eq!(TimerStatus::from(back), status);
    }
}
