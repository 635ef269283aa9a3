//! Throughput of the per-timer work outside the wheel itself:
//! * `codec`: encoding a timer command and decoding it back (a fire record
//!   carries the same bytes, so this is also fire-record encode/decode);
//! * `engine_apply`: what the engine does per input record without I/O —
//!   decode and check, then schedule into `chime_wheel::TimingWheel`;
//! * `ingest_create`: `POST /v1/timers` (and `/v1/timers/batch` where the
//!   server has it) answered 201 — so acknowledged by the local broker —
//!   against an in-process ingest on its own topics.
//!
//! `cargo bench -p chime-benches --bench records`; the ingest group needs the
//! broker on 127.0.0.1:9092 (`CHIME_KAFKA_BOOTSTRAP`) and skips itself without one.

use std::time::Duration;

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, SamplingMode,
    Throughput,
};
use futures::stream::{self, StreamExt};

use chime_wheel::TimingWheel;
use chime_wire::TimerCommand;

const BASE_MS: u64 = 1_795_831_387_250;

fn group<'a>(c: &'a mut Criterion, name: &str, elements: u64) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(elements));
    g
}

/// A realistic schedule command: generated-style id, loopback URL, small body.
fn command(i: u64) -> TimerCommand {
    let json = serde_json::json!({
        "op": "schedule",
        "id": format!("{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        "fire_at_ms": BASE_MS + (i * 7919) % 3_600_000,
        "callback": {
            "url": "http://127.0.0.1:9000/hooks/due",
            "body": format!("{{\"order\":{i}}}"),
        },
    });
    serde_json::from_value(json).expect("a valid schedule command")
}

/// (key, value) records as they arrive from Kafka.
fn records(n: u64) -> Vec<(Bytes, Bytes)> {
    (0..n)
        .map(|i| {
            let c = command(i);
            (Bytes::from(c.id().to_string()), Bytes::from(c.encode()))
        })
        .collect()
}

fn codec(c: &mut Criterion) {
    const N: u64 = 10_000;
    let commands: Vec<TimerCommand> = (0..N).map(command).collect();
    let encoded = records(N);
    let mut g = group(c, "codec", N);
    g.bench_function("encode", |b| {
        b.iter(|| {
            for c in &commands {
                black_box(c.encode());
            }
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| {
            for (k, v) in &encoded {
                black_box(TimerCommand::decode(Some(k), Some(v)).expect("valid record"));
            }
        })
    });
    g.finish();
}

fn engine_apply(c: &mut Criterion) {
    const N: u64 = 100_000;
    let input = records(N);
    let mut g = group(c, "engine_apply", N);
    g.bench_function("decode+schedule", |b| {
        b.iter_batched(
            || TimingWheel::<Bytes, Bytes>::new(BASE_MS),
            |mut wheel| {
                for (key, value) in &input {
                    if let Ok(TimerCommand::Schedule(spec)) =
                        TimerCommand::decode(Some(key), Some(value))
                    {
                        wheel.schedule(key.clone(), spec.fire_at_ms, value.clone());
                    }
                }
                wheel
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// An ingest server on its own topics, in this process.
struct Ingest {
    runtime: tokio::runtime::Runtime,
    api: String,
    http: reqwest::Client,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Ingest {
    fn start() -> Option<Ingest> {
        let bootstrap =
            std::env::var("CHIME_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let prefix = format!(
            "bench-ingest-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let shutdown = tokio_util::sync::CancellationToken::new();
        let api = runtime.block_on(async {
            let topics = chime_wire::Topics::new(&prefix);
            if let Err(e) = chime_kafka::admin::create_topics(&bootstrap, &topics, 12).await {
                eprintln!("ingest_create skipped: no broker at {bootstrap}: {e}");
                return None;
            }
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
            let api = format!("http://{}", listener.local_addr().ok()?);
            tokio::spawn(chime_ingest::serve(
                listener,
                chime_ingest::IngestConfig::new(&bootstrap, &prefix),
                shutdown.clone(),
            ));
            Some(api)
        })?;
        Some(Ingest {
            runtime,
            api,
            http: reqwest::Client::new(),
            shutdown,
        })
    }

    fn body(i: u64) -> serde_json::Value {
        serde_json::json!({
            "delay_ms": 3_600_000 + i % 1000,
            "callback": {"url": "http://127.0.0.1:9/hook", "body": "{\"order\":1}"}
        })
    }

    /// `n` single creates, `in_flight` at a time; panics on any non-201.
    async fn singles(&self, n: u64, in_flight: usize) {
        let url = format!("{}/v1/timers", self.api);
        stream::iter(0..n)
            .for_each_concurrent(in_flight, |i| {
                let request = self.http.post(&url).json(&Self::body(i)).send();
                async move {
                    let status = request.await.expect("ingest answers").status();
                    assert_eq!(status, 201, "create refused");
                }
            })
            .await;
    }

    /// A batch of `n`; `None` if the server has no batch endpoint.
    async fn batch(&self, n: u64) -> Option<()> {
        let timers: Vec<_> = (0..n).map(Self::body).collect();
        let response = self
            .http
            .post(format!("{}/v1/timers/batch", self.api))
            .json(&serde_json::json!({ "timers": timers }))
            .send()
            .await
            .expect("ingest answers");
        match response.status().as_u16() {
            404 | 405 => None,
            s => {
                assert!((200..300).contains(&s), "batch refused: {s}");
                Some(())
            }
        }
    }
}

fn ingest_create(c: &mut Criterion) {
    let Some(ingest) = Ingest::start() else {
        return;
    };
    const SINGLES: u64 = 2_000;
    let mut g = group(c, "ingest_create", SINGLES);
    g.bench_function("single_64_in_flight", |b| {
        b.iter(|| ingest.runtime.block_on(ingest.singles(SINGLES, 64)))
    });
    const BATCH: u64 = 1_000;
    if ingest.runtime.block_on(ingest.batch(1)).is_some() {
        g.throughput(Throughput::Elements(BATCH));
        g.bench_function("batch_of_1000", |b| {
            b.iter(|| ingest.runtime.block_on(ingest.batch(BATCH)))
        });
    } else {
        eprintln!("ingest_create/batch skipped: POST /v1/timers/batch answered 404");
    }
    g.finish();
    ingest.shutdown.cancel();
}

criterion_group!(benches, codec, engine_apply, ingest_create);
criterion_main!(benches);
