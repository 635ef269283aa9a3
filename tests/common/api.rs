//! A client of chime's HTTP API for the API tests, and what they share:
//! awaiting a state, ids on a chosen partition, times, metrics, topic counts.

use std::time::{Duration, Instant};

use chrono::DateTime;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use chime_ingest::IngestConfig;
use chime_wire::partition::partition_for_key;

use super::bootstrap;

/// An HTTP client of one chime API, optionally with an API key.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub key: Option<String>,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            base: base.to_string(),
            http: reqwest::Client::new(),
            key: None,
        }
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            body,
            headers,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.send(reqwest::Method::DELETE, path, None).await
    }
}

pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: HeaderMap,
}

/// Polls `check` until it returns Some, or panics naming `what` after `timeout`.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status of `id` once it is in `state`.
pub async fn status_in(api: &Api, id: &str, state: &str) -> Value {
    eventually(
        &format!("{id} to be {state}"),
        Duration::from_secs(30),
        async || {
            let a = api.get(&format!("/v1/timers/{id}")).await;
            (a.status == 200 && a.body["state"] == state).then_some(a.body)
        },
    )
    .await
}

/// An id starting with `prefix` whose partition is `partition`.
pub fn id_on_partition(prefix: &str, partition: i32, partitions: i32) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|id| partition_for_key(id.as_bytes(), partitions) == partition)
        .expect("some id lands on every partition")
}

pub fn ms_of(rfc3339: &Value) -> u64 {
    let text = rfc3339.as_str().expect("a time string");
    DateTime::parse_from_rfc3339(text)
        .expect("RFC 3339")
        .timestamp_millis() as u64
}

pub fn rfc3339(ms: u64) -> String {
    chime_ingest::api::format_ms(ms)
}

/// How many records of `topic` have each of `keys`, reading to the end.
pub fn count_keys(topic: &str, keys: &[&str]) -> Vec<usize> {
    let consumer: BaseConsumer = chime_kafka::client_config(&bootstrap(), "test-counter")
        .set(
            "group.id",
            format!("counter-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in 0..partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        ends.push(high);
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let mut counts = vec![0; keys.len()];
    let mut positions = vec![0i64; partitions as usize];
    let deadline = Instant::now() + Duration::from_secs(30);
    // The consumer's position, not the last record's offset: a partition
    // written in transactions (the dispatchers' outcome records) ends with
    // a commit marker, which is never delivered as a record.
    let position = |p: i32| match consumer.position().ok()?.find_partition(topic, p)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    };
    while (0..partitions)
        .any(|p| positions[p as usize].max(position(p).unwrap_or(0)) < ends[p as usize])
    {
        assert!(
            Instant::now() < deadline,
            "could not read {topic} to its end"
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            positions[m.partition() as usize] = m.offset() + 1;
            if let Some(i) = keys.iter().position(|k| Some(k.as_bytes()) == m.key()) {
                counts[i] += 1;
            }
        }
    }
    counts
}

/// Sum of the samples of `name` whose labels contain every one of `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Ingest alone, in this process, on a loopback port.
pub async fn start_ingest(config: IngestConfig) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(chime_ingest::serve(listener, config, shutdown.clone()));
    (api, shutdown)
}
