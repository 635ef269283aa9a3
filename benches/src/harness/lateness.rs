//! Lateness of callbacks: what the receiver records per callback, and the
//! percentiles every report prints (an HDR histogram in microseconds).

use hdrhistogram::Histogram;
use serde::Serialize;

/// One callback the receiver saw for a timer of this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Index of the planned timer, or `None` for an id this run never created.
    pub index: Option<u32>,
    /// When the request reached the receiver, unix microseconds.
    pub at_us: u64,
    /// The `chime-attempt` header (0 if absent or unreadable).
    pub attempt: u32,
}

/// Lateness percentiles, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// Lateness is recorded in microseconds, up to an hour, to 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}
