//! Test harness: a chime deployment on the real local broker, isolated by its
//! own topic prefix and group ids, and an HTTP receiver on loopback.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use chime_dispatcher::DispatcherConfig;
use chime_engine::EngineConfig;
use chime_ingest::IngestConfig;
use chime_wire::time::now_ms;
use chime_wire::Topics;

pub mod api;
pub mod cluster;
pub mod load;
pub mod processes;

pub const PARTITIONS: i32 = 3;

pub fn bootstrap() -> String {
    std::env::var("CHIME_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A unique topic prefix for one test.
pub fn unique_prefix(test: &str) -> String {
    format!(
        "test-{test}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// One request the receiver saw.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
    pub at_ms: u64,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// An HTTP server on 127.0.0.1 that records every request and answers 200.
pub struct Receiver {
    pub addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(Received {
                        method: method.to_string(),
                        path: uri.path().to_string(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| {
                                (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into())
                            })
                            .collect(),
                        body: String::from_utf8_lossy(&body).into(),
                        at_ms: now_ms(),
                    });
                    StatusCode::OK
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { addr, rx }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next request, or None if none arrives within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Received> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Exactly `n` requests within `timeout`, or a panic saying how many came.
    pub async fn expect(&mut self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(r) => got.push(r),
                None => panic!(
                    "expected {n} callbacks within {timeout:?}, got {}: {got:?}",
                    got.len()
                ),
            }
        }
        got
    }
}

/// chime running in this process (ingest, engine, dispatcher) on its own topics.
pub struct Chime {
    pub prefix: String,
    pub topics: Topics,
    pub api: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Chime {
    /// Starts every role and waits until a timer on every partition fires.
    pub async fn start(test: &str, receiver: &mut Receiver) -> Chime {
        Chime::start_with_engine(test, receiver, |_| {}).await
    }

    /// [`Chime::start`], with the engine's settings adjusted by `configure`.
    pub async fn start_with_engine(
        test: &str,
        receiver: &mut Receiver,
        configure: impl FnOnce(&mut EngineConfig),
    ) -> Chime {
        init_logging();
        let prefix = unique_prefix(test);
        let topics = Topics::new(&prefix);
        chime_kafka::admin::create_topics(&bootstrap(), &topics, PARTITIONS)
            .await
            .expect("create topics");
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", listener.local_addr().unwrap());
        let mut engine = EngineConfig::new(&bootstrap(), &prefix);
        engine.session_timeout = Duration::from_secs(6);
        configure(&mut engine);
        // As in `chime all`, ingest asks the engine in-process for status.
        let engine_status = chime_engine::EngineStatus::default();
        let tasks = vec![
            tokio::spawn(chime_ingest::serve_with_engine(
                listener,
                IngestConfig::new(&bootstrap(), &prefix),
                Some(std::sync::Arc::new(engine_status.clone())),
                shutdown.clone(),
            )),
            tokio::spawn(chime_engine::serve(engine, engine_status, shutdown.clone())),
            tokio::spawn(chime_dispatcher::serve(
                loopback_dispatcher(&prefix),
                shutdown.clone(),
            )),
        ];
        let chime = Chime {
            prefix,
            topics,
            api,
            http: reqwest::Client::new(),
            shutdown,
            tasks,
        };
        chime.wait_live(receiver).await;
        chime
    }

    /// Fires one probe timer per partition and waits for every callback, so a
    /// test starts with every role assigned and every partition Live.
    async fn wait_live(&self, receiver: &mut Receiver) {
        let mut ids = Vec::new();
        for p in 0..PARTITIONS {
            let id = (0..)
                .map(|i| format!("probe-{i}"))
                .find(|id| chime_wire::partition::partition_for_key(id.as_bytes(), PARTITIONS) == p)
                .unwrap();
            let (status, body) = self
                .post(
                    "/v1/timers",
                    serde_json::json!({"id": id, "delay_ms": 0, "callback": {"url": receiver.url("/probe")}}),
                )
                .await;
            assert_eq!(status, 201, "probe create failed: {body}");
            ids.push(id);
        }
        let got = receiver.expect(ids.len(), Duration::from_secs(60)).await;
        for r in got {
            assert_eq!(r.path, "/probe", "unexpected request while starting: {r:?}");
        }
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.post_raw(path, body.to_string()).await
    }

    pub async fn post_raw(&self, path: &str, body: String) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.api))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("ingest answers");
        let status = r.status().as_u16();
        let json = r.json().await.unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for t in std::mem::take(&mut self.tasks) {
            t.await.expect("role task").expect("role ran cleanly");
        }
    }
}

impl Drop for Chime {
    /// A failed test still stops its roles, so the runtime can shut down.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A dispatcher config that may call the tests' receivers on 127.0.0.0/8
/// (refused by default as non-public addresses).
fn loopback_dispatcher(prefix: &str) -> DispatcherConfig {
    let mut config = DispatcherConfig::new(&bootstrap(), prefix);
    config.addresses.allow = vec!["127.0.0.0/8".parse().expect("a CIDR")];
    config
}

/// Reads `topic` from the beginning (read_committed) until `n` records were
/// seen or `timeout` passed; returns (key, value) pairs.
pub fn read_topic(
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Vec<(Option<String>, Option<String>)> {
    let consumer: BaseConsumer = chime_kafka::consumer_config(
        &bootstrap(),
        "test-reader",
        &format!("reader-{}", uuid::Uuid::new_v4().simple()),
    )
    .create()
    .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push((
                m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
            ));
        }
    }
    out
}
