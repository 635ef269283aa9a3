//! The whole path through real Kafka: HTTP create → chime.timers → engine →
//! chime.fires → dispatcher → HTTP callback on loopback.

mod common;

use std::time::Duration;

use common::{Chime, Receiver};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use chime_wire::time::now_ms;

const CALLBACK_WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_timer_reaches_receiver_with_method_headers_and_body_not_early() {
    let mut rx = Receiver::start().await;
    let chime = Chime::start("delay", &mut rx).await;
    let before = now_ms();
    let (status, created) = chime
        .post(
            "/v1/timers",
            serde_json::json!({
                "id": "order-42",
                "delay_ms": 500,
                "callback": {
                    "url": rx.url("/hooks/order"),
                    "method": "PUT",
                    "headers": {"x-tenant": "acme"},
                    "body": "{\"order\":42}"
                }
            }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["id"], "order-42");
    let fire_at = chrono::DateTime::parse_from_rfc3339(created["fire_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis() as u64;
    assert!(fire_at >= before + 500 && fire_at <= now_ms() + 500);

    let got = rx.expect(1, CALLBACK_WAIT).await.remove(0);
    assert_eq!(got.method, "PUT");
    assert_eq!(got.path, "/hooks/order");
    assert_eq!(got.header("x-tenant"), Some("acme"));
    assert_eq!(got.body, "{\"order\":42}");
    assert_eq!(got.header("chime-timer-id"), Some("order-42"));
    assert_eq!(got.header("chime-attempt"), Some("1"));
    assert!(
        got.at_ms >= fire_at,
        "arrived {} ms early",
        fire_at - got.at_ms
    );
    chime.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_api_posts_to_url_slash_id_after_the_delay() {
    let mut rx = Receiver::start().await;
    let chime = Chime::start("legacy", &mut rx).await;
    let before = now_ms();
    let (status, created) = chime
        .post(
            "/timers",
            serde_json::json!({"hours": 0, "minutes": 0, "seconds": 1, "url": rx.url("/done")}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["time_left"], 1);
    let id = created["id"].as_str().unwrap().to_string();
    let got = rx.expect(1, CALLBACK_WAIT).await.remove(0);
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, format!("/done/{id}"));
    assert!(
        got.at_ms >= before + 1000,
        "fired {} ms after create",
        got.at_ms - before
    );
    chime.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_produced_straight_to_kafka_fires() {
    let mut rx = Receiver::start().await;
    let chime = Chime::start("direct", &mut rx).await;
    // A plain producer, as any team's service would have: only the address.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .create()
        .unwrap();
    let fire_at = now_ms() + 300;
    let value = serde_json::json!({
        "op": "schedule",
        "id": "direct-1",
        "fire_at_ms": fire_at,
        "callback": {"url": rx.url("/direct"), "body": "from kafka"}
    })
    .to_string();
    producer
        .send(
            FutureRecord::to(&chime.topics.timers)
                .key("direct-1")
                .payload(&value),
            Duration::from_secs(10),
        )
        .await
        .expect("produce");
    let got = rx.expect(1, CALLBACK_WAIT).await.remove(0);
    assert_eq!(got.path, "/direct");
    assert_eq!(got.body, "from kafka");
    assert!(got.at_ms >= fire_at);
    chime.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_name_the_field() {
    let mut rx = Receiver::start().await;
    let chime = Chime::start("invalid", &mut rx).await;
    let url = rx.url("/never");
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("bad JSON", "{\"delay_ms\": 5,".into(), 400, "body"),
        ("not an object", "[1,2]".into(), 400, "body"),
        (
            "missing callback",
            serde_json::json!({"delay_ms": 5}).to_string(),
            400,
            "callback",
        ),
        (
            "missing callback.url",
            serde_json::json!({"delay_ms": 5, "callback": {}}).to_string(),
            400,
            "callback.url",
        ),
        (
            "missing time",
            serde_json::json!({"callback": {"url": url}}).to_string(),
            400,
            "fire_at",
        ),
        (
            "unknown field",
            serde_json::json!({"delay_ms": 5, "colour": "red", "callback": {"url": url}})
                .to_string(),
            400,
            "colour",
        ),
        (
            "unknown callback field",
            serde_json::json!({"delay_ms": 5, "callback": {"url": url, "verb": "GET"}})
                .to_string(),
            400,
            "callback.verb",
        ),
        (
            "negative delay",
            serde_json::json!({"delay_ms": -5, "callback": {"url": url}}).to_string(),
            400,
            "delay_ms",
        ),
        (
            "delay of the wrong type",
            serde_json::json!({"delay_ms": "soon", "callback": {"url": url}}).to_string(),
            400,
            "delay_ms",
        ),
        (
            "bad fire_at",
            serde_json::json!({"fire_at": "tomorrow", "callback": {"url": url}}).to_string(),
            400,
            "fire_at",
        ),
        (
            "non-http URL",
            serde_json::json!({"delay_ms": 5, "callback": {"url": "ftp://example.com/x"}})
                .to_string(),
            400,
            "callback.url",
        ),
        (
            "relative URL",
            serde_json::json!({"delay_ms": 5, "callback": {"url": "/x"}}).to_string(),
            400,
            "callback.url",
        ),
        (
            "oversized callback body",
            serde_json::json!({"delay_ms": 5, "callback": {"url": url, "body": "x".repeat(70_000)}})
                .to_string(),
            413,
            "callback.body",
        ),
        (
            "original API without url",
            serde_json::json!({"seconds": 1}).to_string(),
            400,
            "url",
        ),
    ];
    for (what, body, want_status, want_field) in cases {
        let path = if what.starts_with("original") {
            "/timers"
        } else {
            "/v1/timers"
        };
        let (status, err) = chime.post_raw(path, body).await;
        assert_eq!(status, want_status, "{what}: {err}");
        assert_eq!(err["field"], want_field, "{what}: {err}");
        assert!(
            err["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {err}"
        );
    }
    let (status, err) = chime
        .post_raw("/v1/timers", "x".repeat(2 * 1024 * 1024))
        .await;
    assert_eq!(status, 413, "oversized request: {err}");
    assert_eq!(err["limit"], 1024 * 1024);
    assert!(
        rx.next(Duration::from_millis(500)).await.is_none(),
        "no invalid timer may fire"
    );
    chime.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_record_is_dead_lettered_and_the_partition_goes_on() {
    let mut rx = Receiver::start().await;
    let chime = Chime::start("garbage", &mut rx).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .create()
        .unwrap();
    let send = |key: &'static str, value: String| {
        let producer = producer.clone();
        let topic = chime.topics.timers.clone();
        async move {
            producer
                .send(
                    FutureRecord::to(&topic)
                        .partition(0)
                        .key(key)
                        .payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .expect("produce");
        }
    };
    send("junk", "this is not json".to_string()).await;
    let after = serde_json::json!({
        "op": "schedule", "id": "after-junk", "fire_at_ms": now_ms() + 100,
        "callback": {"url": rx.url("/after")}
    });
    send("after-junk", after.to_string()).await;

    let got = rx.expect(1, CALLBACK_WAIT).await.remove(0);
    assert_eq!(got.path, "/after", "the timer behind the garbage fires");

    let letters = common::read_topic(&chime.topics.dead_letters, 1, CALLBACK_WAIT);
    assert_eq!(letters.len(), 1, "one dead letter");
    let (key, value) = &letters[0];
    assert_eq!(key.as_deref(), Some("junk"));
    let letter: serde_json::Value = serde_json::from_str(value.as_deref().unwrap()).unwrap();
    assert_eq!(letter["value"], "this is not json");
    assert_eq!(letter["source_topic"], chime.topics.timers);
    assert_eq!(letter["partition"], 0);
    assert!(
        letter["reason"]
            .as_str()
            .unwrap()
            .contains("not a timer command"),
        "{letter}"
    );
    chime.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_created_in_reverse_order_fire_in_time_order() {
    let mut rx = Receiver::start().await;
    let chime = Chime::start("order", &mut rx).await;
    let base = now_ms() + 1_000;
    let mut want = Vec::new();
    for i in (0..6u64).rev() {
        let fire_at = base + i * 300;
        let at = chrono::DateTime::from_timestamp_millis(fire_at as i64)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let id = format!("t{i}");
        let (status, body) = chime
            .post(
                "/v1/timers",
                serde_json::json!({"id": id, "fire_at": at, "callback": {"url": rx.url(&format!("/{id}"))}}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        want.push((format!("/{id}"), fire_at));
    }
    want.reverse();
    let got = rx.expect(6, CALLBACK_WAIT).await;
    let order: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    let want_order: Vec<&str> = want.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(order, want_order);
    for (r, (_, fire_at)) in got.iter().zip(&want) {
        assert!(r.at_ms >= *fire_at, "{} arrived early", r.path);
    }
    chime.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_inside_the_lead_revokes_the_held_fire() {
    let mut rx = Receiver::start().await;
    // A long lead, so the cancel surely lands after the fire was emitted.
    let chime = Chime::start_with_engine("revoke", &mut rx, |engine| {
        engine.lead = Duration::from_millis(2_000);
    })
    .await;
    let due = now_ms() + 3_000;
    let at = |ms: u64| {
        chrono::DateTime::from_timestamp_millis(ms as i64)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    for (id, fire_at) in [("held", due), ("kept", due + 300)] {
        let (status, body) = chime
            .post(
                "/v1/timers",
                serde_json::json!({"id": id, "fire_at": at(fire_at), "callback": {"url": rx.url(&format!("/{id}"))}}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    // Wait until the engine has emitted "held" ahead of its time...
    let deadline = std::time::Instant::now() + CALLBACK_WAIT;
    loop {
        let state: serde_json::Value = chime
            .http
            .get(format!("{}/v1/timers/held", chime.api))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if state["state"] == "fired" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never emitted: {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(now_ms() < due, "emitted ahead of its time, still before it");
    // ...then cancel it: the dispatcher holding it must not call.
    let r = chime
        .http
        .delete(format!("{}/v1/timers/held", chime.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let got = rx.expect(1, CALLBACK_WAIT).await.remove(0);
    assert_eq!(got.path, "/kept", "the revoked fire was called");
    assert!(
        got.at_ms >= due + 300,
        "held fires are called on time, not early"
    );
    assert!(
        rx.next(Duration::from_millis(300)).await.is_none(),
        "nothing else arrives"
    );
    chime.stop().await;
}

/// Read-your-writes: a status asked right after the 201 finds the timer,
/// though the engine applies the create a few milliseconds later (it used to
/// answer 404 in 28 of 30 tries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_is_found_right_after_its_create() {
    let mut probe = Receiver::start().await;
    let chime = Chime::start("read-your-writes", &mut probe).await;
    let http = reqwest::Client::new();
    for i in 0..30 {
        let id = format!("ryw-{i}");
        let (status, body) = chime
            .post(
                "/v1/timers",
                serde_json::json!({"id": id, "delay_ms": 600_000,
                    "callback": {"url": probe.url("/never")}}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        for path in [format!("/v1/timers/{id}"), format!("/timers/{id}")] {
            let answer = http
                .get(format!("{}{path}", chime.api))
                .send()
                .await
                .expect("ingest answers");
            assert_eq!(answer.status(), 200, "GET {path} right after the create");
        }
    }
    // An id never created is still a 404 (after the engine caught up).
    let answer = http
        .get(format!("{}/v1/timers/never-created", chime.api))
        .send()
        .await
        .expect("ingest answers");
    assert_eq!(answer.status(), 404);
    chime.stop().await;
}

/// A record can reach `chime.timers` twice (a producer's resend after a
/// timeout, docs/kafka-notes.md). A copy of a create read after its timer
/// fired does not fire it again, and one read after its cancel does not
/// bring the timer back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_written_twice_fires_once_and_stays_cancelled() {
    let mut rx = Receiver::start().await;
    let chime = Chime::start("replay", &mut rx).await;
    // Three ids on one partition: their records are applied, and their
    // fires made, in the order they are produced here.
    let partition = 0;
    let ids: Vec<String> = (0..)
        .map(|i| format!("replay-{i}"))
        .filter(|id| {
            chime_wire::partition::partition_for_key(id.as_bytes(), common::PARTITIONS) == partition
        })
        .take(3)
        .collect();
    let (fired, cancelled, last) = (&ids[0], &ids[1], &ids[2]);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .create()
        .unwrap();
    let send = |id: &str, value: String, stamped: u64| {
        let producer = producer.clone();
        let (topic, id) = (chime.topics.timers.clone(), id.to_string());
        async move {
            producer
                .send(
                    FutureRecord::to(&topic)
                        .partition(partition)
                        .key(&id)
                        .payload(&value)
                        .timestamp(stamped as i64),
                    Duration::from_secs(10),
                )
                .await
                .expect("produce");
        }
    };
    let base = rx.url("");
    let schedule = |id: &str, fire_at: u64| {
        serde_json::json!({
            "op": "schedule", "id": id, "fire_at_ms": fire_at,
            "callback": {"url": format!("{base}/{id}")}
        })
        .to_string()
    };

    let created = now_ms();
    let fired_create = schedule(fired, created + 200);
    send(fired, fired_create.clone(), created).await;
    let got = rx.expect(1, CALLBACK_WAIT).await.remove(0);
    assert_eq!(got.path, format!("/{fired}"));

    // A timer created and cancelled, then both creates again as copies
    // (same record, same timestamp), then a last timer due a second after
    // the cancelled one would have been.
    let stamped = now_ms();
    let cancelled_create = schedule(cancelled, stamped + 2_000);
    send(cancelled, cancelled_create.clone(), stamped).await;
    let cancel = serde_json::json!({"op": "cancel", "id": cancelled}).to_string();
    send(cancelled, cancel, stamped + 1).await;
    send(fired, fired_create, created).await;
    send(cancelled, cancelled_create, stamped).await;
    send(last, schedule(last, stamped + 3_000), now_ms()).await;

    // A copy fired again would be called at once, a revived timer two
    // seconds in: either would come before the last timer.
    let got = rx.expect(1, CALLBACK_WAIT).await.remove(0);
    assert_eq!(got.path, format!("/{last}"), "a copy was called");
    chime.stop().await;
}
