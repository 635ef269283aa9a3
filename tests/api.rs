//! The whole HTTP API against the real broker: status answered by the owning
//! engine (also across processes and a failover), cancel, idempotent create,
//! batch, OpenAPI + Swagger, metrics, API keys, and back-pressure when the
//! broker is gone.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::DateTime;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use chime_ingest::IngestConfig;
use chime_wire::partition::partition_for_key;
use chime_wire::time::now_ms;
use chime_wire::Topics;
use common::{bootstrap, init_logging, unique_prefix, Chime, Receiver, PARTITIONS};

/// An HTTP client of one chime API, optionally with an API key.
struct Api {
    base: String,
    http: reqwest::Client,
    key: Option<String>,
}

struct Answer {
    status: u16,
    body: Value,
    headers: HeaderMap,
}

impl Api {
    fn new(base: &str) -> Api {
        Api {
            base: base.to_string(),
            http: reqwest::Client::new(),
            key: None,
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
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

    async fn get(&self, path: &str) -> Answer {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> Answer {
        self.send(reqwest::Method::DELETE, path, None).await
    }
}

/// Polls `check` until it returns Some, or panics naming `what` after `timeout`.
async fn eventually<T>(
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
async fn status_in(api: &Api, id: &str, state: &str) -> Value {
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
fn id_on_partition(prefix: &str, partition: i32, partitions: i32) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|id| partition_for_key(id.as_bytes(), partitions) == partition)
        .expect("some id lands on every partition")
}

fn ms_of(rfc3339: &Value) -> u64 {
    let text = rfc3339.as_str().expect("a time string");
    DateTime::parse_from_rfc3339(text)
        .expect("RFC 3339")
        .timestamp_millis() as u64
}

fn rfc3339(ms: u64) -> String {
    chime_ingest::api::format_ms(ms)
}

/// How many records of `topic` have each of `keys`, reading to the end.
fn count_keys(topic: &str, keys: &[&str]) -> Vec<usize> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_pending_fired_cancelled_and_unknown() {
    let mut receiver = Receiver::start().await;
    let chime = Chime::start("api-status", &mut receiver).await;
    let api = Api::new(&chime.api);

    let created = api
        .post(
            "/v1/timers",
            json!({"id": "st-a", "delay_ms": 4000, "callback": {"url": receiver.url("/a"), "body": "x"}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let first = status_in(&api, "st-a", "pending").await;
    assert_eq!(first["id"], "st-a");
    assert_eq!(first["fire_at"], created.body["fire_at"]);
    assert_eq!(first["callback"]["url"], receiver.url("/a"));
    assert_eq!(first["callback"]["body"], "x");
    let first_left = first["time_left_ms"].as_u64().expect("time_left_ms");
    assert!(first_left <= 4000, "{first}");
    let legacy = api.get("/timers/st-a").await;
    assert_eq!(legacy.status, 200, "{}", legacy.body);
    let legacy_left = legacy.body["time_left"].as_u64().expect("time_left");
    assert!((1..=4).contains(&legacy_left), "{}", legacy.body);

    // time_left falls as time passes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = status_in(&api, "st-a", "pending").await;
    let second_left = second["time_left_ms"].as_u64().unwrap();
    assert!(
        first_left - second_left >= 1000,
        "{first_left} then {second_left}"
    );

    let got = receiver.expect(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].path, "/a");
    let fired = status_in(&api, "st-a", "fired").await;
    assert_eq!(fired["fire_at"], created.body["fire_at"]);
    assert_eq!(fired["time_left_ms"], 0);
    let lateness = fired["lateness_ms"].as_u64().expect("lateness_ms");
    assert_eq!(
        ms_of(&fired["fired_at"]) - ms_of(&fired["fire_at"]),
        lateness
    );
    let legacy = api.get("/timers/st-a").await;
    assert_eq!((legacy.status, &legacy.body["time_left"]), (200, &json!(0)));

    let other = api
        .post(
            "/v1/timers",
            json!({"id": "st-b", "delay_ms": 60000, "callback": {"url": receiver.url("/b")}}),
        )
        .await;
    assert_eq!(other.status, 201, "{}", other.body);
    status_in(&api, "st-b", "pending").await;
    let cancel = api.delete("/v1/timers/st-b").await;
    assert_eq!(cancel.status, 202, "{}", cancel.body);
    assert_eq!(cancel.body, json!({"id": "st-b", "cancel_accepted": true}));
    let cancelled = status_in(&api, "st-b", "cancelled").await;
    assert!(ms_of(&cancelled["cancelled_at"]) <= now_ms());

    for path in ["/v1/timers/never-created", "/timers/never-created"] {
        let unknown = api.get(path).await;
        assert_eq!(unknown.status, 404, "{path}: {}", unknown.body);
        assert!(unknown.body["error"]
            .as_str()
            .unwrap()
            .contains("never-created"));
    }
    let too_long = api.get(&format!("/v1/timers/{}", "x".repeat(300))).await;
    assert_eq!(
        (too_long.status, &too_long.body["field"]),
        (400, &json!("id"))
    );
    chime.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_and_create_with_an_existing_id() {
    let mut receiver = Receiver::start().await;
    let chime = Chime::start("api-cancel", &mut receiver).await;
    let api = Api::new(&chime.api);
    let create = async |id: &str, body: Value| {
        let mut body = body;
        body["id"] = json!(id);
        let a = api.post("/v1/timers", body).await;
        assert_eq!(a.status, 201, "{id}: {}", a.body);
        a.body
    };

    // Cancelled before its time: it never fires. A later timer on the same
    // partition firing shows the cancelled one's time has passed there.
    let c = "cancel-c";
    let d = id_on_partition(
        "cancel-d",
        partition_for_key(c.as_bytes(), PARTITIONS),
        PARTITIONS,
    );
    create(
        c,
        json!({"delay_ms": 2000, "callback": {"url": receiver.url("/c")}}),
    )
    .await;
    status_in(&api, c, "pending").await;
    assert_eq!(api.delete(&format!("/v1/timers/{c}")).await.status, 202);
    create(
        &d,
        json!({"delay_ms": 2500, "callback": {"url": receiver.url("/d")}}),
    )
    .await;
    let got = receiver.expect(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].path, "/d", "the cancelled timer fired");
    status_in(&api, c, "cancelled").await;

    // Cancel after the fire: a no-op (still fired, no second call).
    let e = "cancel-e";
    let f = id_on_partition(
        "cancel-f",
        partition_for_key(e.as_bytes(), PARTITIONS),
        PARTITIONS,
    );
    create(
        e,
        json!({"delay_ms": 0, "callback": {"url": receiver.url("/e")}}),
    )
    .await;
    assert_eq!(
        receiver.expect(1, Duration::from_secs(30)).await[0].path,
        "/e"
    );
    status_in(&api, e, "fired").await;
    assert_eq!(api.delete(&format!("/v1/timers/{e}")).await.status, 202);
    assert_eq!(
        api.delete(&format!("/v1/timers/{e}")).await.status,
        202,
        "idempotent"
    );
    create(
        &f,
        json!({"delay_ms": 0, "callback": {"url": receiver.url("/f")}}),
    )
    .await;
    assert_eq!(
        receiver.expect(1, Duration::from_secs(30)).await[0].path,
        "/f"
    );
    status_in(&api, e, "fired").await;

    // The same spec again: the original answer, nothing written.
    let at = rfc3339(now_ms() + 60_000);
    let spec = json!({"fire_at": at, "callback": {"url": receiver.url("/g")}});
    let g1 = create("cancel-g", spec.clone()).await;
    status_in(&api, "cancel-g", "pending").await;
    let g2 = create("cancel-g", spec).await;
    assert_eq!(g1, g2);
    let by_delay = json!({"delay_ms": 60000, "callback": {"url": receiver.url("/h")}});
    let h1 = create("cancel-h", by_delay.clone()).await;
    status_in(&api, "cancel-h", "pending").await;
    tokio::time::sleep(Duration::from_millis(20)).await; // a re-append would move fire_at
    let h2 = create("cancel-h", by_delay).await;
    assert_eq!(h1, h2, "a delay_ms retry keeps the original due time");
    assert_eq!(
        count_keys(&chime.topics.timers, &["cancel-g", "cancel-h"]),
        vec![1, 1],
        "a duplicate create appended a command"
    );

    // Another spec re-schedules.
    create(
        "cancel-i",
        json!({"delay_ms": 60000, "callback": {"url": receiver.url("/i-old")}}),
    )
    .await;
    status_in(&api, "cancel-i", "pending").await;
    let new_at = rfc3339(now_ms() + 1000);
    let moved = create(
        "cancel-i",
        json!({"fire_at": new_at, "callback": {"url": receiver.url("/i-new")}}),
    )
    .await;
    assert_eq!(moved["fire_at"], new_at);
    let got = receiver.expect(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].path, "/i-new");
    status_in(&api, "cancel-i", "fired").await;
    chime.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_of_a_thousand_with_bad_items() {
    let mut receiver = Receiver::start().await;
    let chime = Chime::start("api-batch", &mut receiver).await;
    let api = Api::new(&chime.api);
    let bad: [(usize, Value, &str); 4] = [
        (
            10,
            json!({"delay_ms": 500, "callback": {"url": "ftp://x/y"}}),
            "callback.url",
        ),
        (
            500,
            json!({"delay_ms": -1, "callback": {"url": receiver.url("/bad")}}),
            "delay_ms",
        ),
        (
            777,
            json!({"delay_ms": 500, "colour": "red", "callback": {"url": receiver.url("/bad")}}),
            "colour",
        ),
        (999, json!("not an object"), "body"),
    ];
    let timers: Vec<Value> = (0..1000)
        .map(|i| match bad.iter().find(|b| b.0 == i) {
            Some((_, item, _)) => item.clone(),
            None => json!({"id": format!("batch-{i}"), "delay_ms": 1000,
                           "callback": {"url": receiver.url(&format!("/batch/{i}"))}}),
        })
        .collect();
    let answer = api
        .post("/v1/timers/batch", json!({"timers": timers}))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["created"], 996);
    assert_eq!(answer.body["failed"], 4);
    let results = answer.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 1000);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i);
        match bad.iter().find(|b| b.0 == i) {
            Some((_, _, field)) => {
                assert_eq!(r["status"], 400, "{r}");
                assert_eq!(r["field"], *field, "{r}");
                assert!(r["error"].as_str().unwrap().starts_with(field), "{r}");
            }
            None => {
                assert_eq!(r["status"], 201, "{r}");
                assert_eq!(r["id"], format!("batch-{i}"));
            }
        }
    }
    let got = receiver.expect(996, Duration::from_secs(90)).await;
    let mut paths: Vec<String> = got.into_iter().map(|r| r.path).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 996, "each good item fired once");
    assert!(paths.iter().all(|p| p.starts_with("/batch/")));

    let too_many: Vec<Value> = (0..1001).map(|_| json!({})).collect();
    let refused = api
        .post("/v1/timers/batch", json!({"timers": too_many}))
        .await;
    assert_eq!(refused.status, 413, "{}", refused.body);
    assert_eq!(
        (&refused.body["field"], &refused.body["limit"]),
        (&json!("timers"), &json!(1000))
    );
    chime.stop().await;
}

/// Sum of the samples of `name` whose labels contain every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docs_openapi_and_metrics() {
    chime_telemetry::recorder();
    let mut receiver = Receiver::start().await;
    let chime = Chime::start("api-docs", &mut receiver).await;
    let api = Api::new(&chime.api);

    let docs = api.get("/docs/").await;
    assert_eq!(docs.status, 200);
    assert!(
        docs.body.as_str().unwrap_or("").contains("swagger-ui"),
        "{}",
        docs.body
    );
    let redirect = api.get("/docs").await; // reqwest follows the redirect to /docs/
    assert_eq!(redirect.status, 200);
    let doc = api.get("/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body["openapi"], "3.1.0");
    // Every route the router serves is documented with its method...
    for route in chime_ingest::api::routes().routes {
        let method = route.method.as_str().to_ascii_lowercase();
        assert!(
            doc.body["paths"][route.path][&method].is_object(),
            "{} {} is served but missing from /openapi.json",
            route.method,
            route.path
        );
    }
    // ...and every documented route is served (not a routing 404/405).
    for (path, item) in doc.body["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", "no-such-timer");
            let a = api
                .send(
                    method.to_uppercase().parse().unwrap(),
                    &concrete,
                    Some(json!({})),
                )
                .await;
            assert!(
                a.status != 405,
                "{method} {path} is documented but not served"
            );
            if !path.contains("{id}") {
                assert!(
                    a.status != 404,
                    "{method} {path} is documented but not served"
                );
            }
        }
    }
    for schema in [
        "CreateTimer",
        "TimerState",
        "ErrorBody",
        "CreateBatch",
        "BatchCreated",
        "Callback",
    ] {
        assert!(
            doc.body["components"]["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }

    let before = api.get("/metrics").await.body.as_str().unwrap().to_string();
    let created = api
        .post(
            "/v1/timers",
            json!({"delay_ms": 0, "callback": {"url": receiver.url("/m")}}),
        )
        .await;
    assert_eq!(created.status, 201);
    api.post(
        "/v1/timers",
        json!({"delay_ms": 600000, "callback": {"url": receiver.url("/later")}}),
    )
    .await;
    receiver.expect(1, Duration::from_secs(30)).await;
    let series: [(&str, &[&str]); 5] = [
        (
            "chime_http_requests_total",
            &["route=\"/v1/timers\"", "method=\"POST\"", "status=\"201\""],
        ),
        ("chime_kafka_produce_seconds_count", &["outcome=\"ok\""]),
        ("chime_engine_fire_lateness_seconds_count", &[]),
        ("chime_engine_commit_seconds_count", &[]),
        ("chime_dispatcher_outcomes_total", &["class=\"delivered\""]),
    ];
    let after = eventually(
        "every series to move",
        Duration::from_secs(30),
        async || {
            let now = api.get("/metrics").await.body.as_str().unwrap().to_string();
            let moved = series
                .iter()
                .all(|(name, labels)| metric(&now, name, labels) > metric(&before, name, labels));
            // The far timer is pending once the engine applied it.
            (moved && metric(&now, "chime_engine_pending_timers", &[]) >= 1.0).then_some(now)
        },
    )
    .await;
    assert!(
        after.contains("chime_engine_partitions{state=\"live\"}"),
        "{after}"
    );
    assert!(
        after.contains("chime_engine_fire_lateness_seconds_bucket"),
        "a histogram: {after}"
    );
    chime.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_keys_guard_the_api_but_not_health() {
    init_logging();
    let prefix = unique_prefix("api-keys");
    chime_kafka::admin::create_topics(&bootstrap(), &Topics::new(&prefix), PARTITIONS)
        .await
        .unwrap();
    let mut config = IngestConfig::new(&bootstrap(), &prefix);
    config.api_keys = vec!["first-key".into(), "second-key".into()];
    let (api, shutdown) = start_ingest(config).await;
    let mut api = Api::new(&api);
    let body = json!({"delay_ms": 600000, "callback": {"url": "http://127.0.0.1:9/x"}});

    let missing = api.post("/v1/timers", body.clone()).await;
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert!(missing.body["error"]
        .as_str()
        .unwrap()
        .contains("Authorization"));
    for (method, path) in [
        ("GET", "/v1/timers/x"),
        ("DELETE", "/v1/timers/x"),
        ("GET", "/timers/x"),
    ] {
        let a = api.send(method.parse().unwrap(), path, None).await;
        assert_eq!(a.status, 401, "{method} {path}");
    }
    let legacy = api
        .post(
            "/timers",
            json!({"seconds": 1, "url": "http://127.0.0.1:9"}),
        )
        .await;
    assert_eq!(legacy.status, 401);
    api.key = Some("wrong-key".into());
    let wrong = api.post("/v1/timers", body.clone()).await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    api.key = Some("second-key".into());
    let right = api.post("/v1/timers", body.clone()).await;
    assert_eq!(right.status, 201, "{}", right.body);

    api.key = None;
    for path in ["/healthz", "/metrics", "/openapi.json", "/docs/"] {
        assert_eq!(api.get(path).await.status, 200, "{path} stays open");
    }
    let ready = eventually("/readyz", Duration::from_secs(20), async || {
        let a = api.get("/readyz").await;
        (a.status == 200).then_some(a)
    })
    .await;
    assert_eq!(ready.body["status"], "ready");

    // Too many headers: 413 naming the limit, whatever the key.
    let mut request = api.http.get(format!("{}/healthz", api.base));
    for i in 0..80 {
        request = request.header(format!("x-h{i}"), "1");
    }
    let crowded = request.send().await.unwrap();
    assert_eq!(crowded.status(), 413);
    let body: Value = crowded.json().await.unwrap();
    assert_eq!(
        (&body["field"], &body["limit"]),
        (&json!("headers"), &json!(64))
    );
    shutdown.cancel();
}

/// Ingest alone, in this process, on a loopback port.
async fn start_ingest(config: IngestConfig) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(chime_ingest::serve(listener, config, shutdown.clone()));
    (api, shutdown)
}

/// A `chime` child process, killed if the test ends without stopping it.
struct ChimeProcess {
    child: Child,
    log: PathBuf,
}

impl ChimeProcess {
    fn spawn(name: &str, args: &[&str]) -> ChimeProcess {
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_chime"))
            .args(args)
            .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
            .env("CHIME_CALLBACK_ALLOW", "127.0.0.0/8")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn chime");
        ChimeProcess { child, log }
    }

    /// SIGTERM, then wait for a clean exit.
    fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "engine did not stop; log {:?}",
                self.log
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ChimeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_is_routed_to_the_owning_engine_process() {
    init_logging();
    const PARTS: i32 = 4;
    let prefix = unique_prefix("api-routing");
    let topics = Topics::new(&prefix);
    chime_kafka::admin::create_topics(&bootstrap(), &topics, PARTS)
        .await
        .unwrap();
    let boot = bootstrap();
    let status_a = free_port();
    let status_b = free_port();
    let engine = |name: &str, status: &str| {
        ChimeProcess::spawn(
            &format!("{prefix}-{name}"),
            &[
                "--kafka",
                &boot,
                "--topic-prefix",
                &prefix,
                "engine",
                "--session-timeout-ms",
                "6000",
                "--status-listen",
                status,
                "--instance-id",
                name,
            ],
        )
    };
    let mut a = engine("a", &status_a);
    let _b = engine("b", &status_b);
    let ingest_addr = free_port();
    let _ingest = ChimeProcess::spawn(
        &format!("{prefix}-ingest"),
        &[
            "--kafka",
            &boot,
            "--topic-prefix",
            &prefix,
            "ingest",
            "--listen",
            &ingest_addr,
        ],
    );
    let api = Api::new(&format!("http://{ingest_addr}"));
    let http = reqwest::Client::new();
    eventually(
        "the ingest process to listen",
        Duration::from_secs(30),
        async || {
            let r = http
                .get(format!("http://{ingest_addr}/healthz"))
                .send()
                .await;
            r.is_ok_and(|r| r.status() == 200).then_some(())
        },
    )
    .await;

    let fire_at = rfc3339(now_ms() + 600_000);
    let pending: Vec<String> = (0..PARTS)
        .map(|p| id_on_partition("route-p", p, PARTS))
        .collect();
    let cancelled: Vec<String> = (0..PARTS)
        .map(|p| id_on_partition("route-c", p, PARTS))
        .collect();
    for id in pending.iter().chain(&cancelled) {
        let body =
            json!({"id": id, "fire_at": fire_at, "callback": {"url": "http://127.0.0.1:9/x"}});
        let created = api.post("/v1/timers", body).await;
        assert_eq!(created.status, 201, "{}", created.body);
    }
    for id in &cancelled {
        assert_eq!(api.delete(&format!("/v1/timers/{id}")).await.status, 202);
    }

    // Who owns what, asked of each engine directly.
    let owned_by = async |engine: &str| -> Vec<i32> {
        let mut owned = Vec::new();
        for (p, id) in pending.iter().enumerate() {
            let url = format!("http://{engine}/internal/v1/partitions/{p}/timers/{id}");
            if let Ok(r) = http.get(url).send().await {
                if r.json::<Value>()
                    .await
                    .ok()
                    .is_some_and(|b| b["state"] == "pending")
                {
                    owned.push(p as i32);
                }
            }
        }
        owned
    };
    let all_answered = async || {
        for id in &pending {
            let a = api.get(&format!("/v1/timers/{id}")).await;
            if a.status != 200 || a.body["state"] != "pending" || a.body["fire_at"] != fire_at {
                return false;
            }
        }
        for id in &cancelled {
            if api.get(&format!("/v1/timers/{id}")).await.body["state"] != "cancelled" {
                return false;
            }
        }
        true
    };
    let (owned_a, owned_b) = eventually(
        "both engines to own partitions",
        Duration::from_secs(90),
        async || {
            let (oa, ob) = (owned_by(&status_a).await, owned_by(&status_b).await);
            (!oa.is_empty() && !ob.is_empty() && oa.len() + ob.len() == PARTS as usize)
                .then_some((oa, ob))
        },
    )
    .await;
    eventually(
        "ingest to answer for every partition",
        Duration::from_secs(30),
        async || all_answered().await.then_some(()),
    )
    .await;
    tracing::info!(
        ?owned_a,
        ?owned_b,
        "ingest answered for partitions of both engines"
    );

    // Engine a stops; its partitions move to b, which answers for them too.
    a.terminate();
    eventually(
        "b to own every partition",
        Duration::from_secs(60),
        async || (owned_by(&status_b).await.len() == PARTS as usize).then_some(()),
    )
    .await;
    eventually(
        "ingest to answer after the move",
        Duration::from_secs(30),
        async || all_answered().await.then_some(()),
    )
    .await;
    // The engine's own operations endpoints: ready, and its pending gauge.
    eventually(
        "engine b ready with 4 pending timers",
        Duration::from_secs(30),
        async || {
            let ready = http.get(format!("http://{status_b}/readyz")).send().await;
            let metrics = http.get(format!("http://{status_b}/metrics")).send().await;
            let text = metrics.ok()?.text().await.ok()?;
            (ready.is_ok_and(|r| r.status() == 200)
                && metric(&text, "chime_engine_pending_timers", &[]) == PARTS as f64)
                .then_some(())
        },
    )
    .await;
}

/// The throwaway broker of the outage test, stopped when the test ends.
struct OutageBroker {
    env: Vec<(String, String)>,
}

impl OutageBroker {
    const BOOTSTRAP: &str = "127.0.0.1:18092";

    fn new() -> OutageBroker {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let cache = root.join(".cache");
        OutageBroker {
            env: vec![
                (
                    "CHIME_KAFKA_HOME".into(),
                    cache.join("kafka-outage").display().to_string(),
                ),
                (
                    "CHIME_KAFKA_JARS".into(),
                    cache.join("kafka/jars").display().to_string(),
                ),
                ("CHIME_KAFKA_PORT".into(), "18092".into()),
                ("CHIME_KAFKA_CONTROLLER_PORT".into(), "18093".into()),
                ("CHIME_KAFKA_HEAP".into(), "256m".into()),
            ],
        }
    }

    fn run(&self, command: &str) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka");
        let out = Command::new(script)
            .arg(command)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run scripts/kafka");
        assert!(
            out.status.success(),
            "scripts/kafka {command}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OutageBroker {
    fn drop(&mut self) {
        self.run("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_outage_gives_503_and_recovers() {
    init_logging();
    let broker = OutageBroker::new();
    tokio::task::block_in_place(|| broker.run("start"));
    let prefix = unique_prefix("api-outage");
    chime_kafka::admin::create_topics(OutageBroker::BOOTSTRAP, &Topics::new(&prefix), 1)
        .await
        .unwrap();
    let mut config = IngestConfig::new(OutageBroker::BOOTSTRAP, &prefix);
    let ack_timeout = Duration::from_secs(2);
    config.ack_timeout = ack_timeout;
    let (api, _stop) = start_ingest(config).await;
    let api = Api::new(&api);
    let body = json!({"delay_ms": 600000, "callback": {"url": "http://127.0.0.1:9/x"}});

    let healthy = async |what: &str| {
        eventually(what, Duration::from_secs(90), async || {
            let ready = api.get("/readyz").await.status == 200;
            (ready && api.post("/v1/timers", body.clone()).await.status == 201).then_some(())
        })
        .await
    };
    healthy("ready and creating before the outage").await;

    tokio::task::block_in_place(|| broker.run("stop"));
    let started = Instant::now();
    let refused = api.post("/v1/timers", body.clone()).await;
    let took = started.elapsed();
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        took < ack_timeout + Duration::from_secs(2),
        "answered after {took:?}"
    );
    assert_eq!(
        refused
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert!(
        refused.body["error"].as_str().unwrap().contains("Kafka"),
        "{}",
        refused.body
    );
    eventually("/readyz to fail", Duration::from_secs(20), async || {
        let a = api.get("/readyz").await;
        (a.status == 503).then_some(a.body)
    })
    .await;

    tokio::task::block_in_place(|| broker.run("start"));
    healthy("ready and creating after the broker came back").await;
}
