//! A steady load of timers for the cluster tests, and what came of it.
//!
//! [`Load::start`] creates timers at a fixed rate, each due `lead_in` after
//! it is created, most by producing to `<prefix>.timers` as any client would
//! and some through ingest's REST API, and remembers which creates were
//! acknowledged (Kafka's ack, or `201`). [`CallbackLog`] is the receiver
//! their callbacks go to: it records the arrival of every call, per timer id.
//! [`Outcome`] puts the two together: what was lost, early or called twice,
//! the longest pause in callbacks, and the lateness of the timers due in a
//! window.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use chime_wire::time::now_ms;
use chime_wire::{TimerCommand, Topics};

/// One callback as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub id: String,
    /// The due time the dispatcher sent (`chime-fire-at-ms`).
    pub fire_at_ms: u64,
    pub at_ms: u64,
}

/// An HTTP receiver on 127.0.0.1 that answers 200 and records every call.
#[derive(Clone)]
pub struct CallbackLog {
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl CallbackLog {
    pub async fn start() -> CallbackLog {
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let log = calls.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap| {
            let at_ms = now_ms();
            let log = log.clone();
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                log.lock().unwrap().push(Call {
                    id: header("chime-timer-id"),
                    fire_at_ms: header("chime-fire-at-ms").parse().unwrap_or(0),
                    at_ms,
                });
                StatusCode::OK
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        CallbackLog { addr, calls }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Ids called back at least once.
    pub fn called(&self) -> std::collections::HashSet<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.id.clone())
            .collect()
    }

    /// Waits until every id of `ids` was called back; panics at `timeout`
    /// naming a few that were not.
    pub async fn wait_for(&self, what: &str, ids: &[String], timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let called = self.called();
            let missing: Vec<&String> = ids.iter().filter(|id| !called.contains(*id)).collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited {timeout:?} for {what}: {} of {} not called back, e.g. {:?}",
                missing.len(),
                ids.len(),
                &missing[..missing.len().min(5)]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A schedule command for `id` due at `fire_at_ms` calling `url`.
pub fn schedule_to(id: &str, fire_at_ms: u64, url: &str) -> TimerCommand {
    TimerCommand::Schedule(chime_wire::TimerSpec {
        id: id.to_string(),
        fire_at_ms,
        callback: chime_wire::Callback {
            url: url.to_string(),
            method: "POST".into(),
            headers: Default::default(),
            body: String::new(),
        },
        attempt: 1,
        retry: Default::default(),
        first_fire_at_ms: None,
        schedule_id: None,
        delivery: None,
    })
}

/// How a create was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Kafka,
    Rest,
}

/// One create and its answer.
#[derive(Debug, Clone)]
pub struct Created {
    pub id: String,
    pub due_ms: u64,
    pub via: Via,
    pub sent_ms: u64,
    /// When Kafka's acknowledgement or the `201` came; `None` if neither.
    pub acked_ms: Option<u64>,
    /// The REST status (`None` for Kafka creates, or when no answer came),
    /// and whether a `503` carried `Retry-After`.
    pub status: Option<u16>,
    pub retry_after: bool,
    pub error: Option<String>,
}

/// What the load is asked to do.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Timers created (and so due) per second.
    pub rate: u64,
    /// How far ahead of its due time each timer is created.
    pub lead_in: Duration,
    /// One create in this many goes through ingest (0: none).
    pub rest_every: u64,
    /// Ingest's base URL, when `rest_every` > 0.
    pub api: Option<String>,
}

/// Creates timers in the background until stopped.
pub struct Load {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<Created>>,
    pub started_ms: u64,
}

impl Load {
    pub fn start(bootstrap: &str, topics: &Topics, callback_url: &str, spec: LoadSpec) -> Load {
        let producer: FutureProducer = chime_kafka::producer_config(bootstrap, "test-load")
            .set("message.timeout.ms", "120000")
            .create()
            .expect("load producer");
        let topic = topics.timers.clone();
        let url = callback_url.to_string();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let started_ms = now_ms();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client");
            let created: Arc<Mutex<Vec<Created>>> = Arc::default();
            let mut answers = tokio::task::JoinSet::new();
            let step = Duration::from_millis(10);
            let mut tick = tokio::time::interval(step);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n: u64 = 0;
            let lead_in = spec.lead_in.as_millis() as u64;
            while !token.is_cancelled() {
                tick.tick().await;
                // Due times advance with the wall clock, spaced evenly.
                let elapsed = now_ms().saturating_sub(started_ms);
                let target = elapsed * spec.rate / 1000;
                while n < target {
                    let due_ms = started_ms + n * 1000 / spec.rate + lead_in;
                    let rest = spec.rest_every > 0 && n.is_multiple_of(spec.rest_every);
                    let id = format!("{}{n}", if rest { "r" } else { "k" });
                    n += 1;
                    let sent_ms = now_ms();
                    let mut record = Created {
                        id: id.clone(),
                        due_ms,
                        via: if rest { Via::Rest } else { Via::Kafka },
                        sent_ms,
                        acked_ms: None,
                        status: None,
                        retry_after: false,
                        error: None,
                    };
                    let created = created.clone();
                    if rest {
                        let body = serde_json::json!({
                            "id": id,
                            "fire_at": rfc3339(due_ms),
                            "callback": {"url": url},
                        });
                        let request = http
                            .post(format!("{}/v1/timers", spec.api.as_deref().unwrap()))
                            .json(&body)
                            .send();
                        answers.spawn(async move {
                            match request.await {
                                Ok(r) => {
                                    record.status = Some(r.status().as_u16());
                                    record.retry_after = r.headers().contains_key("retry-after");
                                    if r.status().as_u16() == 201 {
                                        record.acked_ms = Some(now_ms());
                                    }
                                }
                                Err(e) => record.error = Some(e.to_string()),
                            }
                            created.lock().unwrap().push(record);
                        });
                    } else {
                        let value = schedule_to(&id, due_ms, &url).encode();
                        let sent = producer
                            .send_result(FutureRecord::to(&topic).key(id.as_str()).payload(&value));
                        match sent {
                            Ok(ack) => {
                                answers.spawn(async move {
                                    match ack.await {
                                        Ok(Ok(_)) => record.acked_ms = Some(now_ms()),
                                        Ok(Err((e, _))) => record.error = Some(e.to_string()),
                                        Err(e) => record.error = Some(e.to_string()),
                                    }
                                    created.lock().unwrap().push(record);
                                });
                            }
                            Err((e, _)) => {
                                record.error = Some(e.to_string());
                                created.lock().unwrap().push(record);
                            }
                        }
                    }
                }
                while answers.try_join_next().is_some() {}
            }
            while answers.join_next().await.is_some() {}
            let mut created = std::mem::take(&mut *created.lock().unwrap());
            created.sort_by_key(|c| c.due_ms);
            created
        });
        Load {
            stop,
            task,
            started_ms,
        }
    }

    /// Stops creating, waits for every answer, and returns every create.
    pub async fn finish(self) -> Vec<Created> {
        self.stop.cancel();
        self.task.await.expect("load task")
    }
}

fn rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .expect("a time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Lateness percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub count: usize,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(mut values: Vec<u64>) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        values.sort_unstable();
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        Percentiles {
            count: values.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: values[values.len() - 1],
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {} / p99 {} / max {} ms ({} timers)",
            self.p50, self.p99, self.max, self.count
        )
    }
}

/// The creates and the callbacks of a run, side by side.
pub struct Outcome {
    pub created: Vec<Created>,
    pub calls: Vec<Call>,
    /// First call per id.
    first: HashMap<String, Call>,
    /// Calls per id.
    counts: HashMap<String, usize>,
}

impl Outcome {
    pub fn new(created: Vec<Created>, mut calls: Vec<Call>) -> Outcome {
        calls.sort_by_key(|c| c.at_ms);
        let mut first = HashMap::new();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for c in &calls {
            first.entry(c.id.clone()).or_insert_with(|| c.clone());
            *counts.entry(c.id.clone()).or_default() += 1;
        }
        Outcome {
            created,
            calls,
            first,
            counts,
        }
    }

    pub fn acknowledged(&self) -> impl Iterator<Item = &Created> {
        self.created.iter().filter(|c| c.acked_ms.is_some())
    }

    /// Acknowledged creates with no callback.
    pub fn lost(&self) -> Vec<&Created> {
        self.acknowledged()
            .filter(|c| !self.first.contains_key(&c.id))
            .collect()
    }

    /// Calls that came before the timer's due time.
    pub fn early(&self) -> Vec<&Call> {
        self.calls
            .iter()
            .filter(|c| c.fire_at_ms == 0 || c.at_ms < c.fire_at_ms)
            .collect()
    }

    /// Ids called back more than once (allowed: delivery is at least once).
    pub fn called_twice(&self) -> usize {
        self.counts.values().filter(|n| **n > 1).count()
    }

    /// REST answers other than 201, and 503 with Retry-After.
    /// Creates ingest answered with something other than 201, or 503 with
    /// Retry-After. A create that got no answer (a broken connection) is
    /// not one: it may or may not exist, and is counted apart.
    pub fn bad_answers(&self) -> Vec<&Created> {
        self.created
            .iter()
            .filter(|c| c.via == Via::Rest)
            .filter(|c| match c.status {
                Some(201) | None => false,
                Some(503) => !c.retry_after,
                Some(_) => true,
            })
            .collect()
    }

    /// Lateness of the first call of the acknowledged timers due in
    /// `[from_ms, to_ms)`.
    pub fn lateness(&self, from_ms: u64, to_ms: u64) -> Percentiles {
        Percentiles::of(
            self.acknowledged()
                .filter(|c| c.due_ms >= from_ms && c.due_ms < to_ms)
                .filter_map(|c| self.first.get(&c.id))
                .map(|call| call.at_ms.saturating_sub(call.fire_at_ms))
                .collect(),
        )
    }

    /// The longest time without any callback arriving, among calls that
    /// arrived in `[from_ms, to_ms)` (and from the last one before): the
    /// pause in callbacks. Timers fall due every fraction of a millisecond,
    /// so with nothing held up the longest gap is a few milliseconds.
    pub fn longest_pause(&self, from_ms: u64, to_ms: u64) -> u64 {
        longest_gap(self.calls.iter().map(|c| c.at_ms), from_ms, to_ms)
    }

    /// [`Outcome::longest_pause`] among the calls of timers whose ids
    /// `select` picks.
    pub fn longest_pause_of(&self, from_ms: u64, to_ms: u64, select: impl Fn(&str) -> bool) -> u64 {
        longest_gap(
            self.calls.iter().filter(|c| select(&c.id)).map(|c| c.at_ms),
            from_ms,
            to_ms,
        )
    }

    /// The first call of `id`.
    pub fn first_call(&self, id: &str) -> Option<&Call> {
        self.first.get(id)
    }
}

/// The longest gap between consecutive times of `sorted` that ends in
/// `[from, to)`.
fn longest_gap(sorted: impl Iterator<Item = u64>, from: u64, to: u64) -> u64 {
    let mut previous: Option<u64> = None;
    let mut longest = 0;
    for at in sorted {
        if at >= to {
            break;
        }
        if let Some(p) = previous {
            if at >= from {
                longest = longest.max(at - p);
            }
        }
        previous = Some(at);
    }
    longest
}
