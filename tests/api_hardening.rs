//! Regression tests for the outside pass over the API (issue #12): one test
//! per finding, each against the real broker and real loopback receivers —
//! cross-site requests, callback headers that steer the request, addresses
//! the callback guard missed, the OpenAPI document, idempotent `delay_ms`
//! retries, JSON error bodies, trailing bytes, the timer `batch`, the Bearer
//! scheme's case, the time window, the original API's URL and fields, and
//! the metrics' `# HELP` lines and batch item field names.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use chime_ingest::IngestConfig;
use chime_wire::time::now_ms;
use chime_wire::{Callback, DeadLetter, RetryPolicy, TimerCommand, TimerSpec, Topics};
use common::api::{count_keys, eventually};
use common::{bootstrap, init_logging, read_topic, unique_prefix, Chime, Receiver, PARTITIONS};

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

/// One request to the API at `base`, with the given headers and raw body.
async fn send(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let http = reqwest::Client::new();
    let mut request = http.request(method.parse().unwrap(), format!("{base}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.expect("the API answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        headers,
        body,
    }
}

const JSON: (&str, &str) = ("content-type", "application/json");

async fn post_json(base: &str, path: &str, body: &Value) -> Answer {
    send(base, "POST", path, &[JSON], Some(&body.to_string())).await
}

/// The answer is a JSON error naming `field`.
fn assert_error(a: &Answer, status: u16, field: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.body["field"], field, "{}", a.body);
    assert!(a.body["error"].is_string(), "{}", a.body);
    assert_eq!(
        a.headers.get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/json"),
        "a JSON error"
    );
}

/// Ingest alone (no engine, no dispatcher) on fresh topics and a loopback port.
async fn start_ingest(test: &str, configure: impl FnOnce(&mut IngestConfig)) -> Ingest {
    init_logging();
    let prefix = unique_prefix(test);
    let topics = Topics::new(&prefix);
    chime_kafka::admin::create_topics(&bootstrap(), &topics, PARTITIONS)
        .await
        .expect("create topics");
    let mut config = IngestConfig::new(&bootstrap(), &prefix);
    configure(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(chime_ingest::serve(listener, config, shutdown.clone()));
    Ingest {
        base: format!("http://{addr}"),
        addr,
        topics,
        shutdown,
    }
}

struct Ingest {
    base: String,
    addr: std::net::SocketAddr,
    topics: Topics,
    shutdown: CancellationToken,
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn status_in(base: &str, id: &str, state: &str) -> Value {
    eventually(
        &format!("{id} to be {state}"),
        Duration::from_secs(30),
        async || {
            let a = send(base, "GET", &format!("/v1/timers/{id}"), &[], None).await;
            (a.status == 200 && a.body["state"] == state).then_some(a.body)
        },
    )
    .await
}

fn create_body(id: &str, url: &str) -> Value {
    json!({"id": id, "delay_ms": 600000, "callback": {"url": url}})
}

/// Finding 2: no content type but JSON, no cross-origin writes unless the
/// origin is configured, pre-flights answered deliberately, and no
/// DNS-rebinding through a foreign Host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_requests_are_refused() {
    let open = start_ingest("hard-csrf", |_| {}).await;
    let body = create_body("csrf-1", "http://127.0.0.1:9/x").to_string();
    let base = &open.base;

    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ] {
        let a = send(
            base,
            "POST",
            "/v1/timers",
            &[("content-type", content_type)],
            Some(&body),
        )
        .await;
        assert_error(&a, 415, "content-type");
    }
    let none = send(base, "POST", "/v1/timers", &[], Some(&body)).await;
    assert_error(&none, 415, "content-type");
    for path in ["/v1/timers/batch", "/timers"] {
        let a = send(
            base,
            "POST",
            path,
            &[("content-type", "text/plain")],
            Some("{}"),
        )
        .await;
        assert_error(&a, 415, "content-type");
    }

    // A page on another origin: refused, pre-flight included, for every route.
    let evil = ("origin", "http://evil.example");
    let a = send(base, "POST", "/v1/timers", &[evil, JSON], Some(&body)).await;
    assert_error(&a, 403, "origin");
    assert!(a.headers.get("access-control-allow-origin").is_none());
    let a = send(base, "DELETE", "/v1/timers/csrf-1", &[evil], None).await;
    assert_error(&a, 403, "origin");
    let preflight = send(
        base,
        "OPTIONS",
        "/v1/timers",
        &[
            evil,
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ],
        None,
    )
    .await;
    assert_error(&preflight, 403, "origin");
    assert!(preflight
        .headers
        .get("access-control-allow-origin")
        .is_none());

    // DNS rebinding: a foreign name pointed at 127.0.0.1, same-origin to itself.
    let rebound = format!("evil.example:{}", open.addr.port());
    let rebound_origin = format!("http://{rebound}");
    let a = send(
        base,
        "POST",
        "/v1/timers",
        &[("host", &rebound), ("origin", &rebound_origin), JSON],
        Some(&body),
    )
    .await;
    assert_error(&a, 403, "host");

    // The Swagger UI's own origin (same host and port) may write.
    let own = format!("http://127.0.0.1:{}", open.addr.port());
    let a = send(
        base,
        "POST",
        "/v1/timers",
        &[("origin", &own), JSON],
        Some(&body),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(
        count_keys(&open.topics.timers, &["csrf-1"]),
        vec![1],
        "only the same-origin create was written"
    );

    // A configured origin gets CORS answers.
    let cors = start_ingest("hard-cors", |c| {
        c.cors_origins = chime_ingest::browser::parse_origins("https://app.example");
    })
    .await;
    let app = ("origin", "https://app.example");
    let preflight = send(
        &cors.base,
        "OPTIONS",
        "/v1/timers",
        &[app, ("access-control-request-method", "POST")],
        None,
    )
    .await;
    assert_eq!(preflight.status, 204);
    let h = |name: &str| {
        preflight
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(
        h("access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    assert!(h("access-control-allow-methods").unwrap().contains("POST"));
    assert!(h("access-control-allow-headers")
        .unwrap()
        .contains("content-type"));
    let a = send(&cors.base, "POST", "/v1/timers", &[app, JSON], Some(&body)).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(
        a.headers.get("access-control-allow-origin").unwrap(),
        "https://app.example"
    );
    let other = send(
        &cors.base,
        "POST",
        "/v1/timers",
        &[("origin", "https://other.example"), JSON],
        Some(&body),
    )
    .await;
    assert_error(&other, 403, "origin");
}

/// Finding 3: headers that steer the callback request, and CONNECT, are
/// refused at create time with a field-named 400, in any letter case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_headers_that_steer_the_request_are_refused() {
    let ingest = start_ingest("hard-headers", |_| {}).await;
    for name in [
        "Host",
        "connection",
        "Proxy-Authorization",
        "UPGRADE",
        "TE",
        "Transfer-Encoding",
        "Content-Length",
        "Keep-Alive",
        "Expect",
        "X-Forwarded-Host",
    ] {
        let body = json!({"delay_ms": 1000, "callback": {
            "url": "http://127.0.0.1:9/x", "headers": {name: "100"}}});
        let a = post_json(&ingest.base, "/v1/timers", &body).await;
        assert_error(&a, 400, &format!("callback.headers.{name}"));
        let batch = post_json(&ingest.base, "/v1/timers/batch", &json!({"timers": [body]})).await;
        assert_eq!(batch.status, 200);
        assert_eq!(
            batch.body["results"][0]["field"],
            format!("callback.headers.{name}")
        );
    }
    for method in ["CONNECT", "connect", "TRACE"] {
        let body = json!({"delay_ms": 1000, "callback": {
            "url": "http://127.0.0.1:9/x", "method": method}});
        let a = post_json(&ingest.base, "/v1/timers", &body).await;
        assert_error(&a, 400, "callback.method");
    }
    for url in [
        "http://127.0.0.1:9/a b",
        "http://127.0.0.1:9/\r\nx: y",
        "http:127.0.0.1:9/",
    ] {
        let body = json!({"delay_ms": 1000, "callback": {"url": url}});
        let a = post_json(&ingest.base, "/v1/timers", &body).await;
        assert_error(&a, 400, "callback.url");
    }
    // Ordinary headers still pass.
    let body = json!({"delay_ms": 1000, "callback": {"url": "http://127.0.0.1:9/x",
        "method": "PUT", "headers": {"Authorization": "Bearer t", "Content-Type": "text/plain"}}});
    assert_eq!(
        post_json(&ingest.base, "/v1/timers", &body).await.status,
        201
    );
}

/// Finding 4: the documentation ranges and the IPv4-compatible spelling of
/// loopback were not refused. A dispatcher with the default policy
/// dead-letters both as refused, calling neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_the_guard_missed_are_refused() {
    init_logging();
    let mut receiver = Receiver::start().await;
    let port = receiver.addr.port();
    let prefix = unique_prefix("hard-ssrf");
    let topics = Topics::new(&prefix);
    chime_kafka::admin::create_topics(&bootstrap(), &topics, PARTITIONS)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let mut config = chime_dispatcher::DispatcherConfig::new(&bootstrap(), &prefix);
    config.session_timeout = Duration::from_secs(6);
    let task = tokio::spawn(chime_dispatcher::serve(config, shutdown.clone()));
    let targets = [
        (
            "v4-compatible",
            format!("http://[::127.0.0.1]:{port}/x"),
            "loopback",
        ),
        (
            "test-net-1",
            format!("http://192.0.2.2:{port}/x"),
            "documentation (TEST-NET-1)",
        ),
        (
            "benchmarking",
            format!("http://198.18.0.1:{port}/x"),
            "benchmarking",
        ),
    ];
    let producer: FutureProducer = chime_kafka::producer_config(&bootstrap(), "test-fires")
        .create()
        .unwrap();
    for (id, url, _) in &targets {
        let spec = TimerSpec {
            id: id.to_string(),
            fire_at_ms: now_ms(),
            callback: Callback {
                url: url.clone(),
                method: "POST".into(),
                headers: Default::default(),
                body: String::new(),
            },
            attempt: 1,
            retry: RetryPolicy::default(),
            first_fire_at_ms: None,
            schedule_id: None,
            delivery: None,
        };
        let value = TimerCommand::Schedule(spec).encode();
        producer
            .send(
                FutureRecord::to(&topics.fires).key(*id).payload(&value),
                Duration::from_secs(10),
            )
            .await
            .expect("fire record acknowledged");
    }
    let topic = topics.dead_letters.clone();
    let records =
        tokio::task::spawn_blocking(move || read_topic(&topic, 3, Duration::from_secs(60)))
            .await
            .unwrap();
    let letters: BTreeMap<String, DeadLetter> = records
        .into_iter()
        .map(|(k, v)| (k.unwrap(), serde_json::from_str(&v.unwrap()).unwrap()))
        .collect();
    for (id, _, class) in &targets {
        let letter = letters
            .get(*id)
            .unwrap_or_else(|| panic!("{id}: no dead letter in {letters:?}"));
        assert!(
            letter.reason.starts_with("callback address refused") && letter.reason.contains(class),
            "{id}: {letter:?}"
        );
        assert_eq!(letter.attempts, Some(1), "refused at once: {letter:?}");
    }
    assert!(receiver.next(Duration::from_millis(200)).await.is_none());
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// Finding 5: the served document matches the answers (a real batch answer
/// fits `BatchItemResult`), `null` is accepted where it is documented as
/// nullable, and id limits and the status routes' 400 are documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_api() {
    let ingest = start_ingest("hard-openapi", |_| {}).await;
    let doc = send(&ingest.base, "GET", "/openapi.json", &[], None)
        .await
        .body;
    let schemas = &doc["components"]["schemas"];

    // A real batch answer: one success, one failure; each item must fit
    // exactly one variant of the documented oneOf.
    let batch = post_json(
        &ingest.base,
        "/v1/timers/batch",
        &json!({"timers": [
            {"delay_ms": 1000, "callback": {"url": "http://127.0.0.1:9/a"}},
            {"delay_ms": -1, "callback": {"url": "http://127.0.0.1:9/b"}},
        ]}),
    )
    .await;
    assert_eq!(batch.status, 200, "{}", batch.body);
    let variants = schemas["BatchItemResult"]["oneOf"]
        .as_array()
        .expect("a oneOf");
    for item in batch.body["results"].as_array().unwrap() {
        let fitting: Vec<&Value> = variants.iter().filter(|v| fits(item, v)).collect();
        assert_eq!(
            fitting.len(),
            1,
            "{item} fits {} variants of {variants:?}",
            fitting.len()
        );
    }

    // Everything the document marks nullable takes null.
    let with_nulls = json!({"id": null, "fire_at": null, "delay_ms": 1000, "retry": null,
        "callback": {"url": "http://127.0.0.1:9/n", "method": null, "headers": null, "body": null}});
    let a = post_json(&ingest.base, "/v1/timers", &with_nulls).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let callback = &schemas["Callback"]["properties"];
    for field in ["method", "headers", "body"] {
        assert!(
            nullable(&callback[field]),
            "callback.{field} is documented nullable"
        );
    }
    assert!(
        nullable(&schemas["RetryPolicy"]),
        "retry is documented nullable"
    );
    let legacy =
        json!({"hours": null, "minutes": null, "seconds": 1, "url": "http://127.0.0.1:9/l"});
    assert_eq!(
        post_json(&ingest.base, "/timers", &legacy).await.status,
        200
    );

    // Id limits, and the 400 of every route with an id.
    let id = &schemas["CreateTimer"]["properties"]["id"]["anyOf"][0];
    assert_eq!(
        (id["minLength"].as_u64(), id["maxLength"].as_u64()),
        (Some(1), Some(256))
    );
    for (path, method) in [
        ("/v1/timers/{id}", "get"),
        ("/v1/timers/{id}", "delete"),
        ("/timers/{id}", "get"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(
            op["responses"]["400"].is_object(),
            "{method} {path} documents 400"
        );
        assert_eq!(
            op["parameters"][0]["schema"]["maxLength"], 256,
            "{method} {path}"
        );
    }
    assert!(doc["paths"]["/v1/timers"]["post"]["responses"]["415"].is_object());
}

/// A minimal JSON Schema check for the batch item variants: required keys
/// present, no other keys, `const` and integer bounds honoured.
fn fits(item: &Value, schema: &Value) -> bool {
    let (Some(obj), Some(props)) = (item.as_object(), schema["properties"].as_object()) else {
        return false;
    };
    let required = schema["required"].as_array().into_iter().flatten();
    required
        .clone()
        .all(|r| obj.contains_key(r.as_str().unwrap()))
        && obj.iter().all(|(k, v)| {
            let Some(p) = props.get(k) else { return false };
            (p.get("const").is_none() || p["const"] == *v)
                && p["minimum"]
                    .as_i64()
                    .is_none_or(|m| v.as_i64().is_some_and(|x| x >= m))
                && p["maximum"]
                    .as_i64()
                    .is_none_or(|m| v.as_i64().is_some_and(|x| x <= m))
        })
}

fn nullable(schema: &Value) -> bool {
    schema["type"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t == "null"))
}

/// Finding 6: a retried `delay_ms` create with the same id and spec keeps
/// the original due time — right after the first answer, and a while later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_delay_create_keeps_its_due_time() {
    let mut receiver = Receiver::start().await;
    let chime = Chime::start("hard-retry", &mut receiver).await;
    let spec =
        |id: &str| json!({"id": id, "delay_ms": 60000, "callback": {"url": receiver.url("/r")}});

    // At once: the engine may not have read the first create yet.
    let first = chime.post("/v1/timers", spec("retry-now")).await;
    assert_eq!(first.0, 201, "{}", first.1);
    tokio::time::sleep(Duration::from_millis(5)).await; // a re-append would move fire_at
    let again = chime.post("/v1/timers", spec("retry-now")).await;
    assert_eq!(again, first, "an immediate retry keeps the due time");

    // A while later, once the timer is pending.
    let first = chime.post("/v1/timers", spec("retry-later")).await;
    status_in(&chime.api, "retry-later", "pending").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = chime.post("/v1/timers", spec("retry-later")).await;
    assert_eq!(again, first, "a later retry keeps the due time");
    let pending = status_in(&chime.api, "retry-later", "pending").await;
    assert_eq!(pending["fire_at"], first.1["fire_at"]);

    // A changed callback is a re-schedule, not a retry.
    let moved = chime
        .post(
            "/v1/timers",
            json!({"id": "retry-later", "delay_ms": 60000, "callback": {"url": receiver.url("/other")}}),
        )
        .await;
    assert_eq!(moved.0, 201);
    assert_ne!(moved.1["fire_at"], first.1["fire_at"]);
    assert_eq!(
        count_keys(&chime.topics.timers, &["retry-now", "retry-later"]),
        vec![1, 2],
        "retries appended nothing; the re-schedule did"
    );
    chime.stop().await;
}

/// Finding 7: 404, 405, 431 (and the server's own 400) have JSON bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_a_json_body() {
    let ingest = start_ingest("hard-json", |_| {}).await;
    let a = send(&ingest.base, "GET", "/no/such/route", &[], None).await;
    assert_eq!(a.status, 404);
    assert!(a.body["error"].as_str().unwrap().contains("/no/such/route"));
    let a = send(&ingest.base, "PUT", "/v1/timers", &[JSON], Some("{}")).await;
    assert_eq!(a.status, 405);
    assert!(a.body["error"].is_string(), "{}", a.body);
    assert!(a.headers["allow"].to_str().unwrap().contains("POST"));

    // More header fields than the HTTP server parses: its own 431.
    let (head, body) = raw_request(
        ingest.addr,
        &format!(
            "GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n{}\r\n",
            (0..120)
                .map(|i| format!("x-h{i}: 1\r\n"))
                .collect::<String>()
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let json: Value = serde_json::from_str(&body).expect(&body);
    assert_eq!(json["field"], "headers");

    let (head, body) =
        raw_request(ingest.addr, "GET /healthz HTTP/1.1\r\nbad header\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(serde_json::from_str::<Value>(&body).expect(&body)["error"].is_string());
}

/// Sends raw bytes, reads the answer to its end; (head, body).
async fn raw_request(addr: std::net::SocketAddr, request: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_string(), body.to_string())
}

/// Finding 8: bytes after the JSON object are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_bytes_after_the_json_are_refused() {
    let ingest = start_ingest("hard-trailing", |_| {}).await;
    let one = create_body("trail-1", "http://127.0.0.1:9/x").to_string();
    for body in [
        format!("{one} xyz"),
        format!("{one}{one}"),
        format!("{one}\n]"),
    ] {
        let a = send(&ingest.base, "POST", "/v1/timers", &[JSON], Some(&body)).await;
        assert_error(&a, 400, "body");
    }
    let legacy = r#"{"seconds": 1, "url": "http://127.0.0.1:9/l"} 1"#;
    assert_error(
        &send(&ingest.base, "POST", "/timers", &[JSON], Some(legacy)).await,
        400,
        "body",
    );
    let a = send(
        &ingest.base,
        "POST",
        "/v1/timers",
        &[JSON],
        Some(&format!("{one}\n")),
    )
    .await;
    assert_eq!(a.status, 201, "trailing whitespace is fine: {}", a.body);
    assert_eq!(count_keys(&ingest.topics.timers, &["trail-1"]), vec![1]);
}

/// Finding 9: the timer whose id is `batch` can be read and cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_timer_batch_can_be_read_and_cancelled() {
    let mut receiver = Receiver::start().await;
    let chime = Chime::start("hard-batch-id", &mut receiver).await;
    let created = chime
        .post(
            "/v1/timers",
            json!({"id": "batch", "delay_ms": 60000, "callback": {"url": receiver.url("/b")}}),
        )
        .await;
    assert_eq!(created.0, 201, "{}", created.1);
    let pending = status_in(&chime.api, "batch", "pending").await;
    assert_eq!(pending["id"], "batch");
    let a = send(&chime.api, "DELETE", "/v1/timers/batch", &[], None).await;
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.body["id"], "batch");
    status_in(&chime.api, "batch", "cancelled").await;
    chime.stop().await;
}

/// Finding 10: the Bearer scheme is case-insensitive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let ingest = start_ingest("hard-bearer", |c| c.api_keys = vec!["k".into()]).await;
    let body = create_body("bearer-1", "http://127.0.0.1:9/x").to_string();
    for scheme in ["Bearer k", "bearer k", "BEARER  k"] {
        let a = send(
            &ingest.base,
            "POST",
            "/v1/timers",
            &[JSON, ("authorization", scheme)],
            Some(&body),
        )
        .await;
        assert_eq!(a.status, 201, "{scheme}: {}", a.body);
    }
    let a = send(
        &ingest.base,
        "POST",
        "/v1/timers",
        &[JSON, ("authorization", "Basic k")],
        Some(&body),
    )
    .await;
    assert_eq!(a.status, 401);
}

/// Finding 11: a `fire_at` far in the past is refused, and the horizon the
/// code enforces is the one the docs state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_window_is_enforced_and_documented() {
    let ingest = start_ingest("hard-window", |_| {}).await;
    let at = |ms: u64| chime_ingest::api::format_ms(ms);
    let day = 86_400_000u64;
    let now = now_ms();
    let create =
        |fire_at: String| json!({"fire_at": fire_at, "callback": {"url": "http://127.0.0.1:9/w"}});
    for past in ["1970-01-01T00:00:00Z".to_string(), at(now - 2 * 3_600_000)] {
        let a = post_json(&ingest.base, "/v1/timers", &create(past)).await;
        assert_error(&a, 400, "fire_at");
        assert!(
            a.body["error"].as_str().unwrap().contains("in the past"),
            "{}",
            a.body
        );
    }
    let recent = post_json(&ingest.base, "/v1/timers", &create(at(now - 60_000))).await;
    assert_eq!(
        recent.status, 201,
        "a minute ago fires at once: {}",
        recent.body
    );

    let days = chime_ingest::HORIZON_DAYS;
    assert_eq!(days, 3660);
    let inside = post_json(
        &ingest.base,
        "/v1/timers",
        &create(at(now + (days - 1) * day)),
    )
    .await;
    assert_eq!(inside.status, 201, "{}", inside.body);
    let beyond = post_json(
        &ingest.base,
        "/v1/timers",
        &create(at(now + (days + 1) * day)),
    )
    .await;
    assert_error(&beyond, 400, "fire_at");
    assert!(beyond.body["error"].as_str().unwrap().contains("3660 days"));
    let beyond = post_json(
        &ingest.base,
        "/v1/timers",
        &json!({"delay_ms": days * day + 1, "callback": {"url": "http://127.0.0.1:9/w"}}),
    )
    .await;
    assert_error(&beyond, 400, "delay_ms");
    for (name, doc) in [
        ("docs/api.md", include_str!("../docs/api.md")),
        ("README.md", include_str!("../README.md")),
    ] {
        assert!(doc.contains("3,660 days"), "{name} states the horizon");
        assert!(
            !doc.contains("10 years ahead"),
            "{name} no longer says 10 years"
        );
    }
}

/// Finding 12: the original API blames the field that is too large, keeps
/// a URL's query after the id, and its fire POST says `content-length: 0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_original_api_builds_the_right_call() {
    let mut receiver = Receiver::start().await;
    let chime = Chime::start("hard-legacy", &mut receiver).await;
    for (field, body) in [
        (
            "seconds",
            json!({"seconds": 999_999_999_999i64, "url": receiver.url("/l")}),
        ),
        (
            "minutes",
            json!({"minutes": 999_999_999i64, "seconds": 5, "url": receiver.url("/l")}),
        ),
        (
            "hours",
            json!({"hours": 99_999_999, "url": receiver.url("/l")}),
        ),
    ] {
        let (status, answer) = chime.post("/timers", body).await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (400, Some(field)),
            "{answer}"
        );
    }
    let (status, answer) = chime
        .post(
            "/timers",
            json!({"seconds": 0, "url": receiver.url("/q?a=1")}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["id"].as_str().unwrap().to_string();
    let call = receiver.expect(1, Duration::from_secs(30)).await.remove(0);
    assert_eq!(call.path, format!("/q/{id}"), "the id ends the path");
    assert_eq!(call.method, "POST");
    assert_eq!(
        call.header("content-length"),
        Some("0"),
        "{:?}",
        call.headers
    );
    assert_eq!(call.body, "");
    let (_, answer) = chime
        .post(
            "/timers",
            json!({"minutes": 5, "url": receiver.url("/q?a=1")}),
        )
        .await;
    let id = answer["id"].as_str().unwrap();
    let state = status_in(&chime.api, id, "pending").await;
    assert_eq!(
        state["callback"]["url"],
        receiver.url(&format!("/q/{id}?a=1"))
    );
    chime.stop().await;
}

/// Finding 13: `/metrics` has `# HELP` lines, and a batch item that is not
/// an object is named `timers[i]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_help_and_batch_item_names() {
    let ingest = start_ingest("hard-help", |_| {}).await;
    let _ = send(&ingest.base, "GET", "/healthz", &[], None).await;
    let metrics = send(&ingest.base, "GET", "/metrics", &[], None).await;
    let text = metrics.body.as_str().unwrap();
    for series in ["chime_http_requests_total", "chime_kafka_produce_seconds"] {
        let _ = post_json(
            &ingest.base,
            "/v1/timers",
            &create_body("help-1", "http://127.0.0.1:9/h"),
        )
        .await;
        let text = send(&ingest.base, "GET", "/metrics", &[], None).await.body;
        let text = text.as_str().unwrap();
        assert!(
            text.contains(&format!("# HELP {series} ")),
            "{series}: {text}"
        );
        assert!(text.contains(&format!("# TYPE {series} ")), "{series}");
    }
    assert!(text.contains("# HELP"), "{text}");
    let a = post_json(
        &ingest.base,
        "/v1/timers/batch",
        &json!({"timers": [{"delay_ms": 1, "callback": {"url": "http://127.0.0.1:9/h"}}, "x", 3]}),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["results"][0]["status"], 201);
    for i in [1, 2] {
        assert_eq!(
            a.body["results"][i]["field"],
            format!("timers[{i}]"),
            "{}",
            a.body
        );
        assert_eq!(a.body["results"][i]["status"], 400);
    }
}
