//! One fire record → one HTTP call, and what happens with its outcome.

use std::time::Duration;

use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use chime_wire::record::{lossy, DeadLetter};
use chime_wire::time::now_ms;
use chime_wire::{TimerCommand, TimerSpec};

use crate::DispatcherConfig;

/// Request header naming the timer (percent-encoded if not plain ASCII).
pub const HEADER_TIMER_ID: &str = "chime-timer-id";
/// Request header with the timer's due time, unix milliseconds.
pub const HEADER_FIRE_AT: &str = "chime-fire-at-ms";
/// Request header with the attempt number, from 1.
pub const HEADER_ATTEMPT: &str = "chime-attempt";

/// A fire record as the dispatcher sees it.
pub struct FireRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Option<String>,
    /// The timer, or why the record is not one.
    pub timer: Result<TimerSpec, String>,
}

impl FireRecord {
    pub fn from_message(m: &BorrowedMessage<'_>) -> Self {
        let timer = match TimerCommand::decode(m.key(), m.payload()) {
            Ok(TimerCommand::Schedule(spec)) => Ok(spec),
            Ok(TimerCommand::Cancel { .. }) => Err("a cancel is not a fire record".to_string()),
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
        }
    }
}

/// How a fire record was settled.
#[derive(Debug)]
pub enum Outcome {
    /// The callback answered 2xx.
    Delivered,
    /// Given up on, and written to the dead-letter topic.
    DeadLettered,
    /// Could not even be dead-lettered; must not be committed.
    Failed(anyhow::Error),
}

pub struct Delivery {
    http: reqwest::Client,
    producer: FutureProducer,
    dead_letters: String,
    fires: String,
}

impl Delivery {
    pub fn new(config: &DispatcherConfig, producer: FutureProducer) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(256)
            // A redirect could point a callback anywhere; callers get the 3xx.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("chime/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Delivery {
            http,
            producer,
            dead_letters: config.topics.dead_letters.clone(),
            fires: config.topics.fires.clone(),
        })
    }

    pub async fn deliver(&self, fire: FireRecord) -> Outcome {
        let spec = match &fire.timer {
            Ok(spec) => spec,
            Err(reason) => return self.dead_letter(&fire, reason.clone(), None, None).await,
        };
        // The contract: never before the due time.
        let wait = spec.fire_at_ms.saturating_sub(now_ms());
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        match self.call(spec).await {
            Ok(status) if status.is_success() => Outcome::Delivered,
            Ok(status) => {
                let reason = format!("callback answered {status}");
                self.dead_letter(&fire, reason, Some(spec.attempt), Some(status.as_u16()))
                    .await
            }
            Err(e) => {
                let reason = format!("callback failed: {e}");
                self.dead_letter(&fire, reason, Some(spec.attempt), None)
                    .await
            }
        }
    }

    async fn call(&self, spec: &TimerSpec) -> anyhow::Result<reqwest::StatusCode> {
        let cb = &spec.callback;
        let method = reqwest::Method::from_bytes(cb.method.as_bytes())?;
        let mut headers = HeaderMap::new();
        for (name, value) in &cb.headers {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes())?,
                HeaderValue::from_str(value)?,
            );
        }
        let id: String = url::form_urlencoded::byte_serialize(spec.id.as_bytes()).collect();
        headers.insert(HEADER_TIMER_ID, HeaderValue::from_str(&id)?);
        headers.insert(HEADER_FIRE_AT, HeaderValue::from(spec.fire_at_ms));
        headers.insert(HEADER_ATTEMPT, HeaderValue::from(spec.attempt));
        let response = self
            .http
            .request(method, &cb.url)
            .headers(headers)
            .body(cb.body.clone())
            .send()
            .await?;
        Ok(response.status())
    }

    async fn dead_letter(
        &self,
        fire: &FireRecord,
        reason: String,
        attempts: Option<u32>,
        last_status: Option<u16>,
    ) -> Outcome {
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
            attempts,
            last_status,
            dead_at_ms: now_ms(),
        }
        .encode();
        let mut record = FutureRecord::to(&self.dead_letters).payload(&letter);
        if let Some(k) = &fire.key {
            record = record.key(k.as_str());
        }
        match self.producer.send(record, Duration::from_secs(30)).await {
            Ok(_) => Outcome::DeadLettered,
            Err((e, _)) => Outcome::Failed(e.into()),
        }
    }
}
