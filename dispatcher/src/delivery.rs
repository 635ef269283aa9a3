//! One fire record → its HTTP call(s), and what must be written for it: a
//! retry timer into `chime.timers` or a dead letter (committed by
//! [`crate::commit`] together with the fire record's offset).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{BorrowedMessage, Message};

use chime_kafka::MessageHeaders;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use chime_wire::time::now_ms;
use chime_wire::{
    lossy, DeadLetter, Delivery as DeliveryReport, DeliveryResult, FiresRecord, Outcome,
    TimerCommand, TimerSpec,
};

use crate::address::{refusal_in, AddressPolicy, GuardedResolver};
use crate::hosts::HostLimits;
use crate::retry::{classify, random_unit, CallResult, RetryDefaults};
use crate::signing::{idempotency_key, Signer};
use crate::DispatcherConfig;
use chime_wire::callback_headers as header;

/// At most this much of an error answer's body is kept for the dead letter.
const EXCERPT_BYTES: usize = 256;
/// An answer body is read (so the connection can be reused) up to this size.
const DRAIN_BYTES: usize = 64 * 1024;

/// A fire record as the dispatcher sees it.
pub struct FireRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Option<String>,
    /// The timer, or why the record is not one.
    pub timer: Result<TimerSpec, String>,
    /// For a revoke record (the engine took back a fire it emitted ahead of
    /// its time): the id whose held fire must not be called.
    pub revokes: Option<String>,
}

impl FireRecord {
    pub fn from_message(m: &BorrowedMessage<'_>) -> Self {
        let mut revokes = None;
        let timer = match FiresRecord::decode(m.key(), m.payload(), &MessageHeaders(m)) {
            Ok(FiresRecord::Fire(fire)) => Ok(fire.spec),
            Ok(FiresRecord::Revoke(revoke)) => {
                revokes = Some(revoke.id);
                Err("a revoke, not a fire".to_string())
            }
            Err(e) => Err(format!("undecodable fire record: {e}")),
        };
        FireRecord {
            partition: m.partition(),
            offset: m.offset(),
            key: lossy(m.key()),
            value: if timer.is_ok() {
                None
            } else {
                lossy(m.payload())
            },
            timer,
            revokes,
        }
    }
}

/// A record to write in the transaction that commits the fire record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// How a fire record was settled.
#[derive(Debug)]
pub enum Settled {
    /// Done, with what to write for it: a retry timer, or a dead letter and
    /// the outcome record, or the outcome record alone.
    Done(Vec<OutputRecord>),
    /// Shutdown came first; the record stays uncommitted for the next owner.
    Abandoned,
}

pub struct Delivery {
    http: reqwest::Client,
    addresses: Arc<AddressPolicy>,
    hosts: Arc<HostLimits>,
    calls: Arc<Semaphore>,
    signer: Option<Signer>,
    retry: RetryDefaults,
    wait_in_place_below: Duration,
    timers: String,
    dead_letters: String,
    fires: String,
}

impl Delivery {
    pub fn new(config: &DispatcherConfig) -> anyhow::Result<Self> {
        let addresses = Arc::new(config.addresses.clone());
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(config.max_in_flight_per_host)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_nodelay(true)
            // A proxy would resolve (and reach) what the guard never saw.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                policy: addresses.clone(),
            }))
            // A redirect could point a callback anywhere; callers get the 3xx.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("chime/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Delivery {
            http,
            addresses,
            hosts: HostLimits::new(config.max_in_flight_per_host),
            calls: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            signer: config
                .signing_secret
                .as_ref()
                .map(|s| Signer::new(&s.0))
                .transpose()?,
            retry: config.retry,
            wait_in_place_below: config.wait_in_place_below,
            timers: config.topics.timers.clone(),
            dead_letters: config.topics.dead_letters.clone(),
            fires: config.topics.fires.clone(),
        })
    }

    /// Calls the timer's callback no earlier than its due time, retrying in
    /// place while the backoff is short. `abandon` ends every wait (due time,
    /// backoff, a free slot) but not a call already made.
    /// Delivers one fire. `revoked` ends the wait for the due time: the engine
    /// took the fire back (a cancel came after it was emitted ahead of time).
    pub async fn deliver(
        &self,
        fire: FireRecord,
        abandon: &CancellationToken,
        revoked: &CancellationToken,
    ) -> Settled {
        let mut spec = match &fire.timer {
            Ok(spec) => spec.clone(),
            Err(reason) => {
                return Settled::Done(vec![self.dead_letter(&fire, None, reason.clone(), None)])
            }
        };
        let first_fire_at = spec.first_fire_at_ms.unwrap_or(spec.fire_at_ms);
        let key = idempotency_key(&spec.id, first_fire_at);
        let policy = self.retry.apply(&spec.retry);
        // The contract: never before the due time. A fire emitted ahead of
        // its time is held here, and a revoke ends the hold for good.
        let wait = spec.fire_at_ms.saturating_sub(now_ms());
        if wait > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                _ = abandon.cancelled() => return Settled::Abandoned,
                _ = revoked.cancelled() => {
                    tracing::debug!(id = %spec.id, "held fire revoked");
                    return Settled::Done(Vec::new());
                }
            }
        }
        loop {
            let wait = spec.fire_at_ms.saturating_sub(now_ms());
            if wait > 0 && !wait_or_abandon(Duration::from_millis(wait), abandon).await {
                return Settled::Abandoned;
            }
            let Some(result) = self.attempt(&spec, &key, abandon).await else {
                return Settled::Abandoned;
            };
            metrics::counter!("chime_dispatcher_outcomes_total", "class" => result.class())
                .increment(1);
            let (status, error, retry_after_ms) = match result {
                CallResult::Delivered { status } => {
                    let delivered =
                        self.outcome(&fire, &spec, DeliveryResult::Delivered, Some(status), None);
                    return Settled::Done(vec![delivered]);
                }
                CallResult::Permanent { status, error } => {
                    return self.give_up(&fire, &spec, error, status);
                }
                CallResult::Retryable {
                    status,
                    error,
                    retry_after_ms,
                } => (status, error, retry_after_ms),
            };
            if spec.attempt >= policy.max_attempts {
                let reason = format!("gave up after {} attempts; last: {error}", spec.attempt);
                return self.give_up(&fire, &spec, reason, status);
            }
            let backoff = policy
                .backoff_ms(spec.attempt, random_unit())
                .max(retry_after_ms.unwrap_or(0));
            let next_at = now_ms().saturating_add(backoff);
            let deadline = first_fire_at.saturating_add(policy.deadline_ms);
            if next_at > deadline {
                let reason = format!(
                    "retry deadline passed ({} ms after the first due time) after {} attempts; last: {error}",
                    policy.deadline_ms, spec.attempt
                );
                return self.give_up(&fire, &spec, reason, status);
            }
            tracing::debug!(id = %spec.id, attempt = spec.attempt, backoff, %error, "callback failed; will retry");
            // A retry timer carries the failed attempts, for status answers.
            spec.delivery = Some(DeliveryReport {
                result: DeliveryResult::Retrying,
                attempts: spec.attempt,
                status,
                error: Some(DeliveryReport::short_error(&error)),
                at_ms: now_ms(),
            });
            spec.attempt += 1;
            spec.fire_at_ms = next_at;
            spec.first_fire_at_ms = Some(first_fire_at);
            if Duration::from_millis(backoff) >= self.wait_in_place_below {
                // A long backoff becomes a timer, so no dispatcher sleeps on it.
                return Settled::Done(vec![OutputRecord {
                    topic: self.timers.clone(),
                    key: Some(spec.id.clone().into_bytes()),
                    payload: TimerCommand::Schedule(spec).encode(),
                }]);
            }
        }
    }

    /// One call, once a slot at the destination and a global slot are free.
    /// None if abandoned while waiting for them.
    async fn attempt(
        &self,
        spec: &TimerSpec,
        key: &str,
        abandon: &CancellationToken,
    ) -> Option<CallResult> {
        let url = match url::Url::parse(&spec.callback.url) {
            Ok(u) => u,
            Err(e) => {
                return Some(CallResult::Permanent {
                    status: None,
                    error: format!("callback.url is not a URL: {e}"),
                })
            }
        };
        if let Err(refused) = self.addresses.check_url(&url) {
            return Some(CallResult::Permanent {
                status: None,
                error: refused.to_string(),
            });
        }
        let destination = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or(0)
        );
        // The destination's slot first: a call waiting on a busy host holds
        // none of the slots other hosts need.
        let _host = tokio::select! {
            p = self.hosts.acquire(&destination) => p,
            _ = abandon.cancelled() => return None,
        };
        let _slot = tokio::select! {
            p = self.calls.acquire() => p.expect("the call semaphore is never closed"),
            _ = abandon.cancelled() => return None,
        };
        Some(match self.call(spec, url, key).await {
            Ok(r) => r,
            Err(e) => e,
        })
    }

    async fn call(
        &self,
        spec: &TimerSpec,
        url: url::Url,
        key: &str,
    ) -> Result<CallResult, CallResult> {
        let permanent = |error: String| CallResult::Permanent {
            status: None,
            error,
        };
        let cb = &spec.callback;
        let method = reqwest::Method::from_bytes(cb.method.as_bytes())
            .map_err(|e| permanent(format!("callback.method: {e}")))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &cb.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| permanent(format!("callback.headers.{name}: {e}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| permanent(format!("callback.headers.{name}: {e}")))?;
            headers.insert(name, value);
        }
        let id: String = url::form_urlencoded::byte_serialize(spec.id.as_bytes()).collect();
        let id = HeaderValue::from_str(&id)
            .map_err(|e| permanent(format!("timer id as a header: {e}")))?;
        headers.insert(header::TIMER_ID, id);
        headers.insert(header::FIRE_AT_MS, HeaderValue::from(spec.fire_at_ms));
        headers.insert(header::ATTEMPT, HeaderValue::from(spec.attempt));
        if let Some(schedule) = &spec.schedule_id {
            let schedule: String =
                url::form_urlencoded::byte_serialize(schedule.as_bytes()).collect();
            let schedule = HeaderValue::from_str(&schedule)
                .map_err(|e| permanent(format!("schedule id as a header: {e}")))?;
            headers.insert(header::SCHEDULE_ID, schedule);
            let due = spec.first_fire_at_ms.unwrap_or(spec.fire_at_ms);
            headers.insert(header::OCCURRENCE_AT_MS, HeaderValue::from(due));
        }
        headers.insert(
            header::IDEMPOTENCY_KEY,
            HeaderValue::from_str(key).map_err(|e| permanent(e.to_string()))?,
        );
        if let Some(signer) = &self.signer {
            let signature = signer.sign(now_ms(), cb.body.as_bytes());
            headers.insert(
                header::SIGNATURE,
                HeaderValue::from_str(&signature).map_err(|e| permanent(e.to_string()))?,
            );
        }
        // An empty body goes out with no framing header at all unless asked
        // for; a POST, PUT or PATCH says `content-length: 0` (RFC 9110 §8.6).
        if cb.body.is_empty()
            && [
                reqwest::Method::POST,
                reqwest::Method::PUT,
                reqwest::Method::PATCH,
            ]
            .contains(&method)
        {
            headers.insert(reqwest::header::CONTENT_LENGTH, HeaderValue::from(0));
        }
        let response = self
            .http
            .request(method, url)
            .headers(headers)
            .body(cb.body.clone())
            .send()
            .await
            .map_err(|e| failed_call(&e))?;
        let status = response.status();
        let answer_headers = response.headers().clone();
        let excerpt = drain(response, !status.is_success()).await;
        Ok(classify(status, &answer_headers, &excerpt))
    }

    /// A firing given up on: its dead letter, and its outcome record.
    fn give_up(
        &self,
        fire: &FireRecord,
        spec: &TimerSpec,
        reason: String,
        status: Option<u16>,
    ) -> Settled {
        let outcome = self.outcome(
            fire,
            spec,
            DeliveryResult::DeadLettered,
            status,
            Some(DeliveryReport::short_error(&reason)),
        );
        Settled::Done(vec![
            self.dead_letter(fire, Some(spec), reason, status),
            outcome,
        ])
    }

    /// The outcome record of a finished firing, for the engine that owns the
    /// timer (or the occurrence's schedule). `spec` is the last attempt's;
    /// the outcome names the due time of `fire`, the record the engine
    /// emitted (retries in place move the spec's).
    fn outcome(
        &self,
        fire: &FireRecord,
        spec: &TimerSpec,
        result: DeliveryResult,
        status: Option<u16>,
        error: Option<String>,
    ) -> OutputRecord {
        let id = spec.schedule_id.clone().unwrap_or_else(|| spec.id.clone());
        let outcome = Outcome {
            timer_id: (id != spec.id).then(|| spec.id.clone()),
            fire_at_ms: fire
                .timer
                .as_ref()
                .map_or(spec.fire_at_ms, |emitted| emitted.fire_at_ms),
            first_fire_at_ms: spec.first_fire_at_ms,
            delivery: DeliveryReport {
                result,
                attempts: spec.attempt,
                status,
                error,
                at_ms: now_ms(),
            },
            id,
        };
        OutputRecord {
            topic: self.timers.clone(),
            key: Some(outcome.id.clone().into_bytes()),
            payload: TimerCommand::Outcome(outcome).encode(),
        }
    }

    fn dead_letter(
        &self,
        fire: &FireRecord,
        last: Option<&TimerSpec>,
        reason: String,
        last_status: Option<u16>,
    ) -> OutputRecord {
        tracing::warn!(partition = fire.partition, offset = fire.offset, %reason, "dead-lettering fire");
        let letter = DeadLetter {
            reason,
            source_topic: self.fires.clone(),
            partition: fire.partition,
            offset: fire.offset,
            key: fire.key.clone(),
            value: fire.value.clone().or_else(|| {
                fire.timer.as_ref().ok().map(|s| {
                    String::from_utf8_lossy(&TimerCommand::Schedule(s.clone()).encode())
                        .into_owned()
                })
            }),
            attempts: last.map(|s| s.attempt),
            last_status,
            dead_at_ms: now_ms(),
        };
        OutputRecord {
            topic: self.dead_letters.clone(),
            key: fire.key.clone().map(String::into_bytes),
            payload: letter.encode(),
        }
    }
}

/// A call that got no answer: a refused address is permanent; a timeout or a
/// connection error is worth a retry.
fn failed_call(e: &reqwest::Error) -> CallResult {
    if let Some(refused) = refusal_in(e) {
        return CallResult::Permanent {
            status: None,
            error: refused.to_string(),
        };
    }
    let what = if e.is_timeout() {
        "callback timed out"
    } else if e.is_connect() {
        "callback connection failed"
    } else {
        "callback failed"
    };
    let mut error = format!("{what}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        error.push_str(": ");
        error.push_str(&s.to_string());
        source = s.source();
    }
    CallResult::Retryable {
        status: None,
        error,
        retry_after_ms: None,
    }
}

/// Reads the answer body (up to a limit) so the connection goes back to the
/// pool; returns its start as text when `keep` (for an error message).
async fn drain(mut response: reqwest::Response, keep: bool) -> String {
    let mut read = 0;
    let mut excerpt = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        if keep && excerpt.len() < EXCERPT_BYTES {
            let take = (EXCERPT_BYTES - excerpt.len()).min(chunk.len());
            excerpt.extend_from_slice(&chunk[..take]);
        }
        read += chunk.len();
        if read > DRAIN_BYTES {
            break;
        }
    }
    String::from_utf8_lossy(&excerpt).trim().to_string()
}

/// Sleeps `d`; false if abandoned first.
async fn wait_or_abandon(d: Duration, abandon: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = abandon.cancelled() => false,
    }
}
