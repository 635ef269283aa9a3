//! The soak's clients: every planned create and cancel sent at its time,
//! through ingest's REST API or straight to `<prefix>.timers`, and what
//! came back. Only an answer of 201 (202 for a cancel) or a Kafka
//! acknowledgement is an acknowledgement; an error answer, a timeout or a
//! broken connection leaves the outcome unknown (it may exist), and a
//! request that never left (ingest down, too many in flight, refused
//! connection, full producer queue) is not sent.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientContext;
use tokio::sync::Semaphore;

use chime_wire::time::now_ms;
use chime_wire::TimerCommand;

use super::fleet::IngestUrls;
use super::plan::{Path, PlannedTimer};
use crate::load::create::Plan;

/// REST requests in flight to one ingest at most; more are not sent.
const MAX_IN_FLIGHT_PER_INGEST: usize = 256;
/// How long a REST request may take (ingest answers 503 after its 5 s ack
/// timeout).
const REST_TIMEOUT: Duration = Duration::from_secs(8);
/// How long a produced record may wait for its acknowledgement.
const PRODUCE_TIMEOUT_MS: u64 = 10_000;

pub const PLANNED: u8 = 0;
pub const ACKNOWLEDGED: u8 = 1;
pub const UNKNOWN: u8 = 2;
pub const NOT_SENT: u8 = 3;
/// A cancel not sent because its timer's create was not acknowledged.
pub const SKIPPED: u8 = 4;

/// Why outcomes were not acknowledgements.
#[derive(Default)]
pub struct Reasons {
    pub error_status: AtomicU64,
    pub timeout: AtomicU64,
    pub broken: AtomicU64,
    pub kafka_error: AtomicU64,
    pub ingest_down: AtomicU64,
    pub ingest_busy: AtomicU64,
    pub refused: AtomicU64,
    pub queue_full: AtomicU64,
}

/// What became of every create and cancel, by timer index.
pub struct Outcomes {
    pub create: Vec<AtomicU8>,
    pub cancel: Vec<AtomicU8>,
    /// When the cancel was acknowledged (unix ms; 0 if it was not).
    pub cancel_acked_ms: Vec<AtomicU64>,
    pub reasons: Reasons,
    in_flight: AtomicU64,
}

impl Outcomes {
    pub fn new(n: usize) -> Outcomes {
        let bytes = || (0..n).map(|_| AtomicU8::new(PLANNED)).collect();
        Outcomes {
            create: bytes(),
            cancel: bytes(),
            cancel_acked_ms: (0..n).map(|_| AtomicU64::new(0)).collect(),
            reasons: Reasons::default(),
            in_flight: AtomicU64::new(0),
        }
    }

    pub fn create_of(&self, i: usize) -> u8 {
        self.create[i].load(Ordering::Acquire)
    }

    pub fn cancel_of(&self, i: usize) -> u8 {
        self.cancel[i].load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// One request's fate.
enum Fate {
    Acknowledged,
    Unknown,
    NotSent,
}

/// Sends creates and cancels as the plan says (`start_ms` is the plan's
/// time zero), recording outcomes; returns once everything was sent (the
/// answers may still be outstanding: see [`Outcomes::in_flight`]).
pub async fn run(
    timers: &[PlannedTimer],
    ids: Arc<Plan>,
    start_ms: u64,
    ingests: Arc<IngestUrls>,
    producer: Producer,
    timers_topic: &str,
    outcomes: Arc<Outcomes>,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(MAX_IN_FLIGHT_PER_INGEST)
        .timeout(REST_TIMEOUT)
        .build()?;
    let gates = [
        Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_INGEST)),
        Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_INGEST)),
    ];
    let client = Client {
        http,
        gates,
        ingests,
        producer,
        topic: timers_topic.to_string(),
        ids,
        outcomes,
    };
    let mut cancels: Vec<(u64, Path, usize)> = timers
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.cancel.map(|(at, path)| (at, path, i)))
        .collect();
    cancels.sort_unstable_by_key(|&(at, _, i)| (at, i));
    let (mut next_create, mut next_cancel) = (0, 0);
    while next_create < timers.len() || next_cancel < cancels.len() {
        let now = now_ms().saturating_sub(start_ms);
        while next_create < timers.len() && timers[next_create].create_at <= now {
            client.create(next_create, timers[next_create].create_via)?;
            next_create += 1;
        }
        while next_cancel < cancels.len() && cancels[next_cancel].0 <= now {
            let (_, path, i) = cancels[next_cancel];
            client.cancel(i, path)?;
            next_cancel += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

struct Client {
    http: reqwest::Client,
    gates: [Arc<Semaphore>; 2],
    ingests: Arc<IngestUrls>,
    producer: Producer,
    topic: String,
    ids: Arc<Plan>,
    outcomes: Arc<Outcomes>,
}

impl Client {
    fn create(&self, i: usize, via: Path) -> anyhow::Result<()> {
        let outcomes = self.outcomes.clone();
        let record = move |fate: Fate| {
            let outcome = match fate {
                Fate::Acknowledged => ACKNOWLEDGED,
                Fate::Unknown => UNKNOWN,
                Fate::NotSent => NOT_SENT,
            };
            outcomes.create[i].store(outcome, Ordering::Release);
        };
        match via {
            Path::Rest(ingest) => {
                let body = self.ids.rest_body(i);
                self.rest(
                    ingest,
                    reqwest::Method::POST,
                    "/v1/timers".into(),
                    Some(body),
                    201,
                    record,
                );
            }
            Path::Kafka => {
                let command = self.ids.command(i);
                self.produce(&command, record)?;
            }
        }
        Ok(())
    }

    /// Sends the cancel of timer `i`, unless its create was not acknowledged
    /// (a cancel that could precede its schedule in the log would cancel
    /// nothing, and the timer would rightly fire).
    fn cancel(&self, i: usize, via: Path) -> anyhow::Result<()> {
        if self.outcomes.create_of(i) != ACKNOWLEDGED {
            self.outcomes.cancel[i].store(SKIPPED, Ordering::Release);
            return Ok(());
        }
        let outcomes = self.outcomes.clone();
        let record = move |fate: Fate| {
            let outcome = match fate {
                Fate::Acknowledged => {
                    outcomes.cancel_acked_ms[i].store(now_ms(), Ordering::Release);
                    ACKNOWLEDGED
                }
                Fate::Unknown => UNKNOWN,
                Fate::NotSent => NOT_SENT,
            };
            outcomes.cancel[i].store(outcome, Ordering::Release);
        };
        let id = self.ids.id(i);
        match via {
            Path::Rest(ingest) => {
                let path = format!("/v1/timers/{id}");
                self.rest(ingest, reqwest::Method::DELETE, path, None, 202, record);
            }
            Path::Kafka => self.produce(&TimerCommand::Cancel { id }, record)?,
        }
        Ok(())
    }

    /// One REST request to ingest `ingest`, answered `ok` when acknowledged.
    fn rest(
        &self,
        ingest: usize,
        method: reqwest::Method,
        path: String,
        body: Option<serde_json::Value>,
        ok: u16,
        record: impl FnOnce(Fate) + Send + 'static,
    ) {
        let reasons = &self.outcomes.reasons;
        let Some(base) = self.ingests.get(ingest) else {
            reasons.ingest_down.fetch_add(1, Ordering::Relaxed);
            return record(Fate::NotSent);
        };
        let Ok(permit) = self.gates[ingest].clone().try_acquire_owned() else {
            reasons.ingest_busy.fetch_add(1, Ordering::Relaxed);
            return record(Fate::NotSent);
        };
        let mut request = self.http.request(method, format!("{base}{path}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let outcomes = self.outcomes.clone();
        outcomes.in_flight.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            let reasons = &outcomes.reasons;
            let fate = match request.send().await {
                Ok(r) if r.status().as_u16() == ok => Fate::Acknowledged,
                Ok(_) => {
                    reasons.error_status.fetch_add(1, Ordering::Relaxed);
                    Fate::Unknown
                }
                // No connection: no request reached ingest.
                Err(e) if e.is_connect() => {
                    reasons.refused.fetch_add(1, Ordering::Relaxed);
                    Fate::NotSent
                }
                Err(e) if e.is_timeout() => {
                    reasons.timeout.fetch_add(1, Ordering::Relaxed);
                    Fate::Unknown
                }
                Err(_) => {
                    reasons.broken.fetch_add(1, Ordering::Relaxed);
                    Fate::Unknown
                }
            };
            record(fate);
            drop(permit);
            outcomes.in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// One record produced to the timers topic (key = id, murmur2).
    fn produce(
        &self,
        command: &TimerCommand,
        record: impl FnOnce(Fate) + Send + 'static,
    ) -> anyhow::Result<()> {
        let value = command.encode();
        let sent = self.producer.send_result(
            FutureRecord::to(&self.topic)
                .key(command.id())
                .payload(&value),
        );
        let delivery = match sent {
            Ok(delivery) => delivery,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                self.outcomes
                    .reasons
                    .queue_full
                    .fetch_add(1, Ordering::Relaxed);
                record(Fate::NotSent);
                return Ok(());
            }
            Err((e, _)) => return Err(e).context("producing to the timers topic"),
        };
        let outcomes = self.outcomes.clone();
        outcomes.in_flight.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            let fate = match delivery.await {
                Ok(Ok(_)) => Fate::Acknowledged,
                _ => {
                    outcomes.reasons.kafka_error.fetch_add(1, Ordering::Relaxed);
                    Fate::Unknown
                }
            };
            record(fate);
            outcomes.in_flight.fetch_sub(1, Ordering::AcqRel);
        });
        Ok(())
    }
}

/// The soak's producer logs nothing: the broker going away is the point of
/// the exercise, and every record's fate is counted from its delivery.
pub struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, _: RDKafkaLogLevel, _: &str, _: &str) {}
    fn error(&self, _: KafkaError, _: &str) {}
}

pub type Producer = FutureProducer<Quiet>;

/// The soak's direct producer: chime's settings (acks=all, idempotent,
/// murmur2), giving up on a record after 10 s.
pub fn producer(bootstrap: &str) -> anyhow::Result<Producer> {
    chime_kafka::producer_config(bootstrap, "chime-soak")
        .set("message.timeout.ms", PRODUCE_TIMEOUT_MS.to_string())
        .create_with_context(Quiet)
        .context("creating the soak's producer")
}
