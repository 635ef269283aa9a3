//! chime ingest: the REST API. Every create is appended to `chime.timers` and
//! acknowledged to the client only after Kafka acknowledged it (acks=all).
//!
//! * [`api`] — the native `/v1` API and the original service's `/timers` API.
//! * [`error`] — the one JSON error shape every 4xx/5xx uses.
//! * [`timer_log`] — the producer side of `chime.timers`.

pub mod api;
pub mod error;
pub mod timer_log;

use std::sync::Arc;
use std::time::Duration;

use chime_wire::Topics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub bootstrap: String,
    pub topics: Topics,
    /// Largest request body accepted (413 above it).
    pub max_request_bytes: usize,
    /// Largest callback body accepted (413 above it).
    pub max_callback_body_bytes: usize,
    /// How far ahead a timer may be set.
    pub horizon: Duration,
    /// How long a create waits for Kafka's acknowledgement before answering 503.
    pub ack_timeout: Duration,
}

impl IngestConfig {
    pub fn new(bootstrap: &str, topic_prefix: &str) -> Self {
        IngestConfig {
            bootstrap: bootstrap.to_string(),
            topics: Topics::new(topic_prefix),
            max_request_bytes: 1024 * 1024,
            max_callback_body_bytes: 64 * 1024,
            horizon: Duration::from_secs(10 * 366 * 24 * 3600),
            ack_timeout: Duration::from_secs(5),
        }
    }
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    config: IngestConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let log = timer_log::TimerLog::new(&config)?;
    let app = api::router(Arc::new(api::AppState { config, log }));
    tracing::info!(addr = %listener.local_addr()?, "ingest listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
