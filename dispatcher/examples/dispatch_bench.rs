//! Dispatcher figures for docs/performance.md: deliveries per second to a fast
//! local receiver, and the latency the dispatcher adds (receiver arrival −
//! fire record produced) at a steady rate.
//!
//! Needs the broker on 127.0.0.1:9092 (`scripts/kafka start`). Settings by
//! environment: `BENCH_BACKLOG` (records for the throughput run, 50000),
//! `BENCH_RATE` (records/s for the latency run, 2000), `BENCH_SECONDS` (10),
//! `BENCH_PER_HOST` (per-host call limit, the dispatcher's default 64).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::StatusCode;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio_util::sync::CancellationToken;

use chime_dispatcher::DispatcherConfig;
use chime_wire::{Callback, RetryPolicy, TimerCommand, TimerSpec, Topics};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (arrival µs, produced µs) per request the receiver got.
type Arrivals = Arc<Mutex<Vec<(u64, u64)>>>;

async fn receiver() -> (String, Arrivals) {
    let arrivals: Arrivals = Arc::default();
    let seen = arrivals.clone();
    let app = axum::Router::new().fallback(move |body: Bytes| {
        let seen = seen.clone();
        async move {
            let at = now_us();
            let sent = std::str::from_utf8(&body)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            seen.lock().unwrap().push((at, sent));
            StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, arrivals)
}

fn fire(i: u64, url: &str) -> (String, Vec<u8>) {
    let id = format!("bench-{i}");
    let spec = TimerSpec {
        id: id.clone(),
        fire_at_ms: now_us() / 1000,
        callback: Callback {
            url: url.to_string(),
            method: "POST".into(),
            headers: Default::default(),
            body: now_us().to_string(),
        },
        attempt: 1,
        retry: RetryPolicy::default(),
        first_fire_at_ms: None,
        schedule_id: None,
        delivery: None,
    };
    (id, TimerCommand::Schedule(spec).encode())
}

async fn wait_for(arrivals: &Arrivals, n: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let got = arrivals.lock().unwrap().len();
        if got >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bootstrap =
        std::env::var("CHIME_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let backlog = env_or("BENCH_BACKLOG", 50_000);
    let rate = env_or("BENCH_RATE", 2_000);
    let seconds = env_or("BENCH_SECONDS", 10);
    let prefix = format!(
        "bench-dispatch-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let topics = Topics::new(&prefix);
    chime_kafka::admin::create_topics(&bootstrap, &topics, 12).await?;
    let (url, arrivals) = receiver().await;
    let producer: FutureProducer =
        chime_kafka::producer_config(&bootstrap, "bench-fires").create()?;

    // Throughput: a backlog of due fires, then the dispatcher starts.
    for i in 0..backlog {
        let (id, value) = fire(i, &url);
        loop {
            match producer.send_result(FutureRecord::to(&topics.fires).key(&id).payload(&value)) {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    let mut config = DispatcherConfig::new(&bootstrap, &prefix);
    config.addresses.allow = vec!["127.0.0.0/8".parse()?];
    config.max_in_flight_per_host = env_or("BENCH_PER_HOST", 64) as usize;
    let shutdown = CancellationToken::new();
    let dispatcher = tokio::spawn(chime_dispatcher::serve(config, shutdown.clone()));
    let got = wait_for(&arrivals, backlog as usize, Duration::from_secs(300)).await;
    let (first, last) = {
        let a = arrivals.lock().unwrap();
        let first = a.iter().map(|x| x.0).min().unwrap_or(0);
        let last = a.iter().map(|x| x.0).max().unwrap_or(0);
        (first, last)
    };
    let secs = (last - first) as f64 / 1e6;
    println!(
        "throughput: {got} deliveries in {secs:.2} s (first to last arrival) = {:.0}/s",
        got as f64 / secs
    );

    // Latency: a steady rate of fires due on arrival; arrival − produce.
    arrivals.lock().unwrap().clear();
    let total = rate * seconds;
    let start = Instant::now();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let (id, value) = fire(backlog + i, &url);
        let _ = producer.send_result(FutureRecord::to(&topics.fires).key(&id).payload(&value));
    }
    let got = wait_for(&arrivals, total as usize, Duration::from_secs(60)).await;
    let mut latencies: Vec<u64> = arrivals
        .lock()
        .unwrap()
        .iter()
        .map(|(at, sent)| at.saturating_sub(*sent))
        .collect();
    latencies.sort_unstable();
    println!(
        "latency at {rate}/s for {seconds} s: {got}/{total} delivered; produce→arrival p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    shutdown.cancel();
    dispatcher.await??;
    Ok(())
}
