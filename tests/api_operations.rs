//! Operating the API: OpenAPI document and Swagger UI, Prometheus metrics,
//! API keys, readiness, and back-pressure (503) while the broker is gone.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use chime_ingest::IngestConfig;
use chime_wire::Topics;
use common::api::{eventually, metric, start_ingest, Api};
use common::{bootstrap, init_logging, unique_prefix, Chime, Receiver, PARTITIONS};

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
            // A timer route's 404 ("no timer …") is an answer; only the
            // router's own 404 means the route is not served.
            if !path.contains("{id}")
                && a.body["error"]
                    .as_str()
                    .is_none_or(|e| e.starts_with("no route"))
            {
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
