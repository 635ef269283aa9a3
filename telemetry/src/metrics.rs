//! The process's one Prometheus recorder, installed on first use by whichever
//! role asks first (the binary asks at start), rendered at `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Bucket bounds, in seconds, of every histogram (latencies and lateness).
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The handle of the process-wide recorder, installing it if none is yet.
pub fn recorder() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics will be empty");
            }
            describe();
            handle
        })
        .clone()
}

/// The `# HELP` text of every series chime records (docs/api.md, "Metrics").
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "chime_http_requests_total",
        "HTTP requests answered by the REST API, by route, method and status"
    );
    describe_histogram!(
        "chime_kafka_produce_seconds",
        Unit::Seconds,
        "Time from producing a command to Kafka's acknowledgement, by outcome"
    );
    describe_gauge!(
        "chime_engine_pending_timers",
        "Timers pending in the engine's timing wheel, by partition"
    );
    describe_gauge!(
        "chime_engine_partitions",
        "Partitions this engine owns, by state (live, loading)"
    );
    describe_histogram!(
        "chime_engine_fire_lateness_seconds",
        Unit::Seconds,
        "How late the engine emitted each fire after its due time"
    );
    describe_histogram!(
        "chime_engine_commit_seconds",
        Unit::Seconds,
        "Duration of each engine transaction commit"
    );
    describe_counter!(
        "chime_dispatcher_outcomes_total",
        "Callback attempts by class (delivered, retryable, permanent)"
    );
}
