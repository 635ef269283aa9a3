//! Timer status over the HTTP API against the real broker: pending, fired,
//! cancelled and unknown (native and original API), and status answered by
//! the engine that owns the timer — also across processes and a handover.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use chime_wire::time::now_ms;
use chime_wire::Topics;
use common::api::{eventually, id_on_partition, metric, ms_of, rfc3339, status_in, Api};
use common::processes::{ChimeProcess, ENGINE_STATUS_LISTENING, INGEST_LISTENING};
use common::{bootstrap, init_logging, unique_prefix, Chime, Receiver};

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
async fn status_is_routed_to_the_owning_engine_process() {
    init_logging();
    const PARTS: i32 = 4;
    let prefix = unique_prefix("api-routing");
    let topics = Topics::new(&prefix);
    chime_kafka::admin::create_topics(&bootstrap(), &topics, PARTS)
        .await
        .unwrap();
    let boot = bootstrap();
    // Each process binds port 0 and says in its log which port it got.
    let engine = |name: &str| {
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
                "127.0.0.1:0",
                "--instance-id",
                name,
            ],
        )
    };
    let mut a = engine("a");
    let mut b = engine("b");
    let status_a = a.listening(ENGINE_STATUS_LISTENING).to_string();
    let status_b = b.listening(ENGINE_STATUS_LISTENING).to_string();
    let mut ingest = ChimeProcess::spawn(
        &format!("{prefix}-ingest"),
        &[
            "--kafka",
            &boot,
            "--topic-prefix",
            &prefix,
            "ingest",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let ingest_addr = ingest.listening(INGEST_LISTENING);
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
