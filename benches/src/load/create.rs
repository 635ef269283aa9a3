//! Creating the run's timers: one REST call each, REST batches, or records
//! produced straight to `<prefix>.timers`. Each returns once every create was
//! acknowledged (HTTP 201 / Kafka ack).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat};
use futures::stream::{self, StreamExt, TryStreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use chime_wire::TimerCommand;

/// How timers are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// `POST /v1/timers`, one timer per request.
    Rest,
    /// `POST /v1/timers/batch`.
    Batch,
    /// Produce to `<prefix>.timers` directly (key = id, murmur2).
    Kafka,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Rest => "rest",
            Via::Batch => "batch",
            Via::Kafka => "kafka",
        }
    }

    /// A guess of the creation rate, so the first timer is due only after
    /// all are created. `--lead-ms` overrides the lead it gives.
    pub fn assumed_rate_per_s(self) -> u64 {
        match self {
            Via::Rest => 2_000,
            Via::Batch => 20_000,
            Via::Kafka => 80_000,
        }
    }
}

/// The timers of one run: `<run_id>-<i>` is due at `due_ms[i]` and calls `callback_url`.
pub struct Plan {
    pub run_id: String,
    pub due_ms: Vec<u64>,
    pub callback_url: String,
}

impl Plan {
    pub fn id(&self, i: usize) -> String {
        format!("{}-{i}", self.run_id)
    }

    /// The `schedule` record for timer `i`, built from its documented JSON
    /// form so optional fields added to the contract keep their defaults.
    pub fn command(&self, i: usize) -> TimerCommand {
        let json = serde_json::json!({
            "op": "schedule",
            "id": self.id(i),
            "fire_at_ms": self.due_ms[i],
            "callback": {"url": self.callback_url},
        });
        serde_json::from_value(json).expect("a schedule command in its documented form")
    }

    /// The `POST /v1/timers` body for timer `i`.
    pub fn rest_body(&self, i: usize) -> serde_json::Value {
        serde_json::json!({
            "id": self.id(i),
            "fire_at": rfc3339_ms(self.due_ms[i]),
            "callback": {"url": self.callback_url},
        })
    }
}

fn rfc3339_ms(ms: u64) -> String {
    DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Where creates go and how hard to push.
pub struct Target<'a> {
    pub api: &'a str,
    pub bootstrap: &'a str,
    pub timers_topic: &'a str,
    /// REST requests in flight at once.
    pub concurrency: usize,
    pub batch_size: usize,
    /// Sent as `Authorization: Bearer <key>`.
    pub api_key: Option<&'a str>,
}

/// Creates every timer of `plan`; `created` counts acknowledged creates.
pub async fn create_all(
    via: Via,
    plan: &Plan,
    target: &Target<'_>,
    created: &AtomicU64,
) -> anyhow::Result<()> {
    match via {
        Via::Rest => create_rest(plan, target, created).await,
        Via::Batch => create_batch(plan, target, created).await,
        Via::Kafka => create_kafka(plan, target, created).await,
    }
}

/// A client for chime's REST API, sending the API key if there is one.
pub fn rest_client(api_key: Option<&str>, pool: usize) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = api_key {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
            .context("--api-key: not a valid header value")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(pool)
        .timeout(Duration::from_secs(30))
        .build()?)
}

async fn create_rest(plan: &Plan, target: &Target<'_>, created: &AtomicU64) -> anyhow::Result<()> {
    let http = rest_client(target.api_key, target.concurrency)?;
    let url = format!("{}/v1/timers", target.api);
    stream::iter(0..plan.due_ms.len())
        .map(|i| {
            let request = http.post(&url).json(&plan.rest_body(i));
            let url = &url;
            async move {
                let response = request
                    .send()
                    .await
                    .with_context(|| format!("POST {url}"))?;
                let status = response.status();
                if status.as_u16() != 201 {
                    let body = response.text().await.unwrap_or_default();
                    anyhow::bail!("POST {url} answered {status}: {body}");
                }
                created.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        })
        .buffer_unordered(target.concurrency)
        .try_collect::<()>()
        .await
}

async fn create_batch(plan: &Plan, target: &Target<'_>, created: &AtomicU64) -> anyhow::Result<()> {
    let http = rest_client(target.api_key, target.concurrency)?;
    let url = format!("{}/v1/timers/batch", target.api);
    let indices: Vec<usize> = (0..plan.due_ms.len()).collect();
    // Fewer batches in flight than single requests: each carries many timers.
    let in_flight = target.concurrency.clamp(1, 8);
    stream::iter(indices.chunks(target.batch_size.max(1)))
        .map(|chunk| {
            let timers: Vec<serde_json::Value> = chunk.iter().map(|&i| plan.rest_body(i)).collect();
            let request = http
                .post(&url)
                .json(&serde_json::json!({ "timers": timers }));
            let url = &url;
            async move {
                let response = request
                    .send()
                    .await
                    .with_context(|| format!("POST {url}"))?;
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                if status.as_u16() == 404 || status.as_u16() == 405 {
                    anyhow::bail!(
                        "POST {url} answered {status}: this chime has no batch endpoint; \
                         use --via rest or --via kafka"
                    );
                }
                if !status.is_success() {
                    anyhow::bail!("POST {url} answered {status}: {body}");
                }
                let failed = batch_failures(&body);
                anyhow::ensure!(
                    failed.is_empty(),
                    "POST {url}: {} of {} timers were refused, e.g. {}",
                    failed.len(),
                    chunk.len(),
                    failed[0]
                );
                created.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                Ok(())
            }
        })
        .buffer_unordered(in_flight)
        .try_collect::<()>()
        .await
}

/// Items of a batch answer that carry an `error`, whatever the envelope
/// (`{"results": [...]}`, `{"timers": [...]}` or a bare array).
fn batch_failures(body: &str) -> Vec<String> {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let items = json
        .as_array()
        .or_else(|| json.get("results").and_then(|r| r.as_array()))
        .or_else(|| json.get("timers").and_then(|r| r.as_array()));
    items
        .into_iter()
        .flatten()
        .filter(|item| item.get("error").is_some_and(|e| !e.is_null()))
        .map(|item| item.to_string())
        .collect()
}

/// Outstanding deliveries before the producer waits for acknowledgements.
const MAX_UNACKED: usize = 100_000;

async fn create_kafka(plan: &Plan, target: &Target<'_>, created: &AtomicU64) -> anyhow::Result<()> {
    let producer: FutureProducer = chime_kafka::producer_config(target.bootstrap, "chime-bench")
        // Batch like a bulk loader would; durability settings stay as chime's.
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("creating the Kafka producer")?;
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::new();
    for i in 0..plan.due_ms.len() {
        let key = plan.id(i);
        let value = plan.command(i).encode();
        loop {
            let record = FutureRecord::to(target.timers_topic)
                .key(key.as_bytes())
                .payload(&value);
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push_back(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    let oldest = pending
                        .pop_front()
                        .context("queue full with nothing in flight")?;
                    settle(oldest, created).await?;
                }
                Err((e, _)) => return Err(e).context("producing a timer"),
            }
        }
        if pending.len() >= MAX_UNACKED {
            let oldest = pending.pop_front().context("nothing in flight")?;
            settle(oldest, created).await?;
        }
    }
    for delivery in pending {
        settle(delivery, created).await?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

async fn settle(delivery: DeliveryFuture, created: &AtomicU64) -> anyhow::Result<()> {
    match delivery.await {
        Ok(Ok(_)) => {
            created.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Ok(Err((e, _))) => Err(e).context("Kafka refused a timer"),
        Err(_) => anyhow::bail!("the producer dropped a delivery"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_failures_are_found_in_any_envelope() {
        assert!(batch_failures(r#"{"results":[{"id":"a"},{"id":"b","error":null}]}"#).is_empty());
        assert_eq!(batch_failures(r#"[{"id":"a","error":"bad"}]"#).len(), 1);
        assert_eq!(
            batch_failures(r#"{"timers":[{"error":"x"},{"error":"y"}]}"#).len(),
            2
        );
    }

    #[test]
    fn records_follow_the_documented_format_and_decode() {
        let plan = Plan {
            run_id: "r".into(),
            due_ms: vec![1_795_831_387_250],
            callback_url: "http://127.0.0.1:9/t".into(),
        };
        let value = plan.command(0).encode();
        let decoded = TimerCommand::decode(Some(b"r-0"), Some(&value)).unwrap();
        assert_eq!(decoded, plan.command(0));
        assert_eq!(plan.rest_body(0)["fire_at"], "2026-11-28T02:03:07.250Z");
    }
}
