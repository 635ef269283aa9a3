//! What every chime role reports through, whichever roles share a process:
//! one Prometheus recorder ([`metrics`]) and one log subscriber ([`init_logging`]).

pub mod metrics;

pub use metrics::recorder;

/// Logs to stderr, filtered by `RUST_LOG` (default: info, librdkafka warnings);
/// `CHIME_LOG_FORMAT=json` for one JSON object per line.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,librdkafka=warn,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("CHIME_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
