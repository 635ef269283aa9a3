//! Cancel, idempotent create and re-schedule by id, and batch create, over
//! the HTTP API against the real broker.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use chime_wire::partition::partition_for_key;
use chime_wire::time::now_ms;
use common::api::{count_keys, id_on_partition, rfc3339, status_in, Api};
use common::{Chime, Receiver, PARTITIONS};

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
        (999, json!("not an object"), "timers[999]"),
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
