//! chime ingest: the REST API. Every create and cancel is appended to
//! `chime.timers` and acknowledged to the client only after Kafka acknowledged
//! it (acks=all); status questions are routed to the engine that owns the
//! timer's partition.
//!
//! * [`api`] — the native `/v1` API and the original service's `/timers` API.
//! * [`batch`] — `POST /v1/timers/batch`.
//! * [`delivery`] — what came of a callback, as status answers show it.
//! * [`lookup`] — finding a timer's owning engine and asking it.
//! * [`schedules`] — `/v1/schedules`: recurring timers.
//! * [`listing`] — `GET /v1/timers` and `GET /v1/schedules`: what is pending, by page.
//! * [`guard`] — API keys, the header-count limit, request metrics.
//! * [`browser`] — CORS and the DNS-rebinding guard: which web pages may call.
//! * [`http_errors`] — JSON bodies for the router's and the server's own errors.
//! * [`recent`] — creates acknowledged a moment ago, for idempotent retries.
//! * [`fuzzing`] — the properties the fuzz targets and property tests check.
//! * [`ops`] — `/healthz`, `/readyz`, `/metrics`.
//! * [`docs`] — the OpenAPI document and Swagger UI at `/docs`.
//! * [`error`] — the one JSON error shape every 4xx/5xx uses.
//! * [`timer_log`] — the producer side of `chime.timers`.

pub mod api;
pub mod batch;
pub mod body;
pub mod browser;
pub mod delivery;
pub mod docs;
pub mod error;
pub mod fuzzing;
pub mod guard;
pub mod http_errors;
pub mod legacy;
pub mod listing;
pub mod lookup;
pub mod ops;
pub mod recent;
pub mod schedules;
pub mod timer_log;

use std::sync::Arc;
use std::time::Duration;

use chime_wire::StatusSource;
use chime_wire::Topics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How far ahead a timer may be set, in days.
pub const HORIZON_DAYS: u64 = 3660;

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub bootstrap: String,
    pub topics: Topics,
    /// The engines' consumer group, whose members advertise their status address.
    pub engine_group: String,
    /// Largest request body accepted (413 above it).
    pub max_request_bytes: usize,
    /// Largest callback body accepted (413 above it).
    pub max_callback_body_bytes: usize,
    /// Most request headers accepted (413 above it).
    pub max_headers: usize,
    /// Most timers in one batch request (413 above it).
    pub max_batch: usize,
    /// How far ahead a timer may be set.
    pub horizon: Duration,
    /// How long a create waits for Kafka's acknowledgement before answering 503.
    pub ack_timeout: Duration,
    /// When non-empty, `/v1` and original-API requests need `Authorization:
    /// Bearer <one of these>`.
    pub api_keys: Vec<String>,
    /// Browser origins allowed to call cross-origin (`*`: any); none by default.
    pub cors_origins: Vec<String>,
    /// Answer only to `Host: localhost` or a loopback address (set by
    /// [`serve`] when it listens on a loopback address).
    pub loopback_only_hosts: bool,
}

impl IngestConfig {
    pub fn new(bootstrap: &str, topic_prefix: &str) -> Self {
        IngestConfig {
            bootstrap: bootstrap.to_string(),
            topics: Topics::new(topic_prefix),
            engine_group: format!("{topic_prefix}-engine"),
            max_request_bytes: 1024 * 1024,
            max_callback_body_bytes: 64 * 1024,
            max_headers: 64,
            max_batch: 1000,
            // 3,660 days: ten years of 366 days, so ten calendar years always fit.
            horizon: Duration::from_secs(HORIZON_DAYS * 24 * 3600),
            ack_timeout: Duration::from_secs(5),
            api_keys: Vec::new(),
            cors_origins: Vec::new(),
            loopback_only_hosts: false,
        }
    }
}

/// Serves the API on `listener` until `shutdown`; status questions go to the
/// engines of the group over HTTP.
pub async fn serve(
    listener: TcpListener,
    config: IngestConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with_engine(listener, config, None, shutdown).await
}

/// Like [`serve`], with an engine in this process (`chime all`): its
/// partitions are answered in-process, the rest by the group's other engines.
pub async fn serve_with_engine(
    listener: TcpListener,
    config: IngestConfig,
    local_engine: Option<Arc<dyn StatusSource>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut config = config;
    let addr = listener.local_addr()?;
    config.loopback_only_hosts = addr.ip().is_loopback();
    let state = Arc::new(api::AppState::new(config, local_engine)?);
    let app = api::router(state);
    tracing::info!(%addr, "ingest listening");
    axum::serve(http_errors::JsonListener(listener), app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
