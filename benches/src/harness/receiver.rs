//! The HTTP server on loopback that chime calls back: it records every
//! timer callback (id, attempt, arrival time) and counts probe and baseline
//! requests.
//!
//! * `/t` — a timer of this run; `chime-timer-id` is `<run id>-<index>`.
//! * `/probe` — warm-up timers, counted only.
//! * `/baseline` — raw HTTP POSTs of the HTTP ceiling, counted only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::any;
use axum::Router;
use chime_wire::callback_headers;
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use super::lateness::{new_histogram, Arrival};

/// Unix microseconds, now.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The plan the receiver checks arrivals against.
pub struct Expected {
    /// Timer ids are `<run_id>-<index>`.
    pub run_id: String,
    pub due_ms: Vec<u64>,
}

#[derive(Default)]
struct Record {
    arrivals: Vec<Arrival>,
    /// Timers seen at least once.
    seen: Vec<bool>,
    distinct: u64,
    /// Lateness of first arrivals so far, for the progress bar.
    live: Option<Histogram<u64>>,
}

struct Shared {
    expected: Mutex<Option<Arc<Expected>>>,
    record: Mutex<Record>,
    probes: AtomicU64,
    baseline_posts: AtomicU64,
}

/// A running receiver. Dropping it does not stop the server; `stop` does.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Receiver {
    pub async fn start() -> anyhow::Result<Receiver> {
        let shared = Arc::new(Shared {
            expected: Mutex::new(None),
            record: Mutex::new(Record::default()),
            probes: AtomicU64::new(0),
            baseline_posts: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/t", any(timer))
            .route("/probe", any(probe))
            .route("/baseline", any(baseline))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "bench receiver stopped");
            }
        });
        Ok(Receiver { addr, shared, stop })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// From now on, `/t` callbacks are settled against `expected`.
    pub fn expect(&self, expected: Arc<Expected>) {
        let mut record = lock(&self.shared.record);
        *record = Record {
            seen: vec![false; expected.due_ms.len()],
            live: Some(new_histogram()),
            ..Record::default()
        };
        *lock(&self.shared.expected) = Some(expected);
    }

    pub fn probes(&self) -> u64 {
        self.shared.probes.load(Ordering::Relaxed)
    }

    pub fn baseline_posts(&self) -> u64 {
        self.shared.baseline_posts.load(Ordering::Relaxed)
    }

    /// Distinct timers delivered so far, and the p99 / max lateness (ms) of
    /// their first arrivals.
    pub fn progress(&self) -> (u64, f64, f64) {
        let record = lock(&self.shared.record);
        let (p99, max) = record.live.as_ref().map_or((0.0, 0.0), |h| {
            (
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.max() as f64 / 1000.0,
            )
        });
        (record.distinct, p99, max)
    }

    /// Those of `indices` (into the expected plan) not called back yet.
    pub fn undelivered(&self, indices: &[usize]) -> Vec<usize> {
        let record = lock(&self.shared.record);
        indices
            .iter()
            .copied()
            .filter(|&i| !record.seen.get(i).copied().unwrap_or(false))
            .collect()
    }

    /// Every timer callback so far.
    pub fn arrivals(&self) -> Vec<Arrival> {
        lock(&self.shared.record).arrivals.clone()
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// A poisoned lock only means another request panicked mid-update of plain
/// counters; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn timer(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> StatusCode {
    let at_us = now_us();
    let attempt = header(&headers, callback_headers::ATTEMPT)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let expected = lock(&shared.expected).clone();
    let index = expected.as_ref().and_then(|e| {
        header(&headers, callback_headers::TIMER_ID)
            .and_then(|id| parse_index(id, &e.run_id))
            .filter(|&i| (i as usize) < e.due_ms.len())
    });
    let mut record = lock(&shared.record);
    record.arrivals.push(Arrival {
        index,
        at_us,
        attempt,
    });
    if let (Some(i), Some(e)) = (index, expected) {
        let i = i as usize;
        if !record.seen[i] {
            record.seen[i] = true;
            record.distinct += 1;
            if let Some(live) = record.live.as_mut() {
                live.saturating_record(at_us.saturating_sub(e.due_ms[i] * 1000));
            }
        }
    }
    StatusCode::OK
}

/// `<run_id>-<index>` → index.
pub fn parse_index(id: &str, run_id: &str) -> Option<u32> {
    id.strip_prefix(run_id)?.strip_prefix('-')?.parse().ok()
}

async fn probe(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.probes.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

async fn baseline(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.baseline_posts.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_only_for_this_run() {
        assert_eq!(parse_index("b1a2-17", "b1a2"), Some(17));
        assert_eq!(parse_index("b1a2-x", "b1a2"), None);
        assert_eq!(parse_index("other-17", "b1a2"), None);
        assert_eq!(parse_index("b1a217", "b1a2"), None);
    }

    #[tokio::test]
    async fn records_timer_callbacks_with_attempt_and_counts_the_rest() {
        let rx = Receiver::start().await.unwrap();
        rx.expect(Arc::new(Expected {
            run_id: "r".into(),
            due_ms: vec![0, 0],
        }));
        let http = reqwest::Client::new();
        for (id, attempt) in [("r-1", "2"), ("r-1", "3"), ("zzz", "1")] {
            let s = http
                .post(rx.url("/t"))
                .header(callback_headers::TIMER_ID, id)
                .header(callback_headers::ATTEMPT, attempt)
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(s, 200);
        }
        http.post(rx.url("/probe")).send().await.unwrap();
        http.post(rx.url("/baseline")).send().await.unwrap();
        let arrivals = rx.arrivals();
        assert_eq!(arrivals.len(), 3);
        assert_eq!(arrivals[0].index, Some(1));
        assert_eq!(arrivals[0].attempt, 2);
        assert_eq!(arrivals[2].index, None);
        assert_eq!(rx.progress().0, 1, "one distinct timer");
        assert_eq!(rx.undelivered(&[0, 1]), vec![0]);
        assert_eq!((rx.probes(), rx.baseline_posts()), (1, 1));
        rx.stop();
    }
}
