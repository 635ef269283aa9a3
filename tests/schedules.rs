//! Schedules end to end through the real broker and real HTTP receivers on
//! loopback: create over REST, occurrences with their headers, pause, resume
//! and cancel, what each callback answered (for timers and occurrences),
//! listing what is pending page by page, and field-named 400s.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use chrono::{DateTime, Datelike, Timelike};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use chime_wire::time::now_ms;
use common::{Chime, Received, Receiver};

const WAIT: Duration = Duration::from_secs(30);

/// A receiver that answers by path: `/fail…` 500, `/gone…` 404, `/once…`
/// 500 the first time and 200 after, else 200.
struct ByPath {
    addr: std::net::SocketAddr,
    rx: mpsc::UnboundedReceiver<Received>,
}

impl ByPath {
    async fn start() -> ByPath {
        let (tx, rx) = mpsc::unbounded_channel();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let (tx, seen) = (tx.clone(), seen.clone());
            async move {
                let path = uri.path().to_string();
                let first = seen.lock().unwrap().insert(path.clone());
                let _ = tx.send(Received {
                    method: String::new(),
                    path: path.clone(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                        .collect(),
                    body: String::from_utf8_lossy(&body).into(),
                    at_ms: now_ms(),
                });
                if path.starts_with("/fail") || (path.starts_with("/once") && first) {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else if path.starts_with("/gone") {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::OK
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        ByPath { addr, rx }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next request matching `pred` within `timeout` (others are dropped).
    async fn next_where(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Received) -> bool,
    ) -> Option<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(r)) if pred(&r) => return Some(r),
                Ok(Some(_)) => {}
                _ => return None,
            }
        }
    }
}

async fn get(chime: &Chime, path: &str) -> (u16, Value) {
    let r = chime
        .http
        .get(format!("{}{path}", chime.api))
        .send()
        .await
        .expect("ingest answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn send(chime: &Chime, method: reqwest::Method, path: &str) -> (u16, Value) {
    let r = chime
        .http
        .request(method, format!("{}{path}", chime.api))
        .send()
        .await
        .expect("ingest answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls `path` until `check` accepts the 200 answer, or panics after `WAIT`.
async fn eventually(
    chime: &Chime,
    what: &str,
    path: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = get(chime, path).await;
        if status == 200 && check(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: last answer {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ms(rfc3339: &Value) -> u64 {
    DateTime::parse_from_rfc3339(rfc3339.as_str().expect("a time"))
        .expect("RFC 3339")
        .timestamp_millis() as u64
}

fn header_u64(r: &Received, name: &str) -> u64 {
    r.header(name)
        .unwrap_or_else(|| panic!("{name} missing: {r:?}"))
        .parse()
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_every_second_schedule_fires_pauses_resumes_and_cancels() {
    let mut probe = Receiver::start().await;
    let chime = Chime::start("sched-rest", &mut probe).await;
    let mut rx = ByPath::start().await;

    let (status, created) = chime
        .post(
            "/v1/schedules",
            json!({"id": "beat", "every_ms": 1000, "callback": {"url": rx.url("/beat"), "body": "b"}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["id"], "beat");
    let next: Vec<u64> = created["next_due"]
        .as_array()
        .unwrap()
        .iter()
        .map(ms)
        .collect();
    assert_eq!(next.len(), 5, "{created}");
    assert!(next.windows(2).all(|w| w[1] - w[0] == 1000), "{created}");

    // Three occurrences: one a second, never early, each with its own id and
    // idempotency key, naming the schedule.
    let mut dues = Vec::new();
    let mut keys = HashSet::new();
    for _ in 0..3 {
        let call = rx.next_where(WAIT, |_| true).await.expect("an occurrence");
        assert_eq!(call.path, "/beat");
        assert_eq!(call.body, "b");
        assert_eq!(call.header("chime-schedule-id"), Some("beat"));
        let due = header_u64(&call, "chime-occurrence-at-ms");
        assert_eq!(header_u64(&call, "chime-fire-at-ms"), due);
        assert_eq!(
            call.header("chime-timer-id"),
            Some(format!("beat%40{due}").as_str())
        );
        assert_eq!(call.header("chime-attempt"), Some("1"));
        assert!(call.at_ms >= due, "{} ms early", due - call.at_ms);
        assert!(keys.insert(call.header("idempotency-key").unwrap().to_string()));
        dues.push(due);
    }
    assert_eq!(
        dues[0], next[0],
        "the first occurrence is the first announced"
    );
    assert!(dues.windows(2).all(|w| w[1] - w[0] == 1000), "{dues:?}");

    // The status says what each occurrence's callback answered.
    let status = eventually(
        &chime,
        "three delivered occurrences",
        "/v1/schedules/beat",
        |s| {
            s["occurrences_fired"].as_u64() >= Some(3)
                && s["last_occurrence"]["delivery"]["state"] == "delivered"
        },
    )
    .await;
    assert_eq!(status["state"], "active");
    assert_eq!(status["every_ms"], 1000);
    assert_eq!(status["callback"]["url"], rx.url("/beat"));
    assert_eq!(status["last_occurrence"]["delivery"]["last_status"], 200);
    assert_eq!(status["last_occurrence"]["delivery"]["attempts"], 1);
    assert!(status["last_occurrence"]["delivery"]["delivered_at"].is_string());
    assert_eq!(status["next_due"].as_array().unwrap().len(), 5);
    assert!(ms(&status["next_due"][0]) > ms(&status["last_occurrence"]["due_at"]));
    let occurrence = status["last_occurrence"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(occurrence.starts_with("beat@"));

    // Pause: nothing due after the engine applied it is called.
    let (code, body) = send(&chime, reqwest::Method::POST, "/v1/schedules/beat/pause").await;
    assert_eq!(
        (code, &body),
        (202, &json!({"id": "beat", "accepted": "pause"}))
    );
    let paused = eventually(&chime, "paused", "/v1/schedules/beat", |s| {
        s["state"] == "paused"
    })
    .await;
    let paused_at = ms(&paused["paused_at"]);
    assert!(paused["next_due"].as_array().unwrap().is_empty());
    // An occurrence emitted ahead (within the engine's lead) is revoked, but
    // a revoke does not stop a call already under way.
    let lead = chime_engine::DEFAULT_LEAD.as_millis() as u64;
    let late = rx
        .next_where(Duration::from_secs(3), |r| {
            header_u64(r, "chime-occurrence-at-ms") > paused_at + lead
        })
        .await;
    assert!(late.is_none(), "called while paused: {late:?}");

    // Resume: it fires again from the next occurrence after now; those due
    // while paused are skipped.
    let resumed_at = now_ms();
    let (code, _) = send(&chime, reqwest::Method::POST, "/v1/schedules/beat/resume").await;
    assert_eq!(code, 202);
    let call = rx
        .next_where(WAIT, |r| {
            header_u64(r, "chime-occurrence-at-ms") >= resumed_at
        })
        .await
        .expect("fires again after resume");
    assert_eq!(call.header("chime-schedule-id"), Some("beat"));
    let status = eventually(&chime, "active again", "/v1/schedules/beat", |s| {
        s["state"] == "active"
    })
    .await;
    assert!(
        status["occurrences_skipped"].as_u64() >= Some(2),
        "{status}"
    );

    // Listed among the schedules.
    let (code, page) = get(&chime, "/v1/schedules?state=active").await;
    assert_eq!(code, 200, "{page}");
    assert!(page["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == "beat"));

    // Cancel ends it.
    let (code, body) = send(&chime, reqwest::Method::DELETE, "/v1/schedules/beat").await;
    assert_eq!(
        (code, &body),
        (202, &json!({"id": "beat", "accepted": "cancel"}))
    );
    let cancelled = eventually(&chime, "cancelled", "/v1/schedules/beat", |s| {
        s["state"] == "cancelled"
    })
    .await;
    let ended_at = ms(&cancelled["ended_at"]);
    let late = rx
        .next_where(Duration::from_secs(3), |r| {
            header_u64(r, "chime-occurrence-at-ms") > ended_at + lead
        })
        .await;
    assert!(late.is_none(), "called after cancel: {late:?}");
    // The schedule is not a timer, and its occurrences are not pending timers.
    assert_eq!(get(&chime, "/v1/timers/beat").await.0, 404);
    chime.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_each_callback_answered_is_in_the_status() {
    let mut probe = Receiver::start().await;
    let chime = Chime::start("sched-outcomes", &mut probe).await;
    let rx = ByPath::start().await;

    // A timer delivered at once.
    let (code, body) = chime
        .post(
            "/v1/timers",
            json!({"id": "ok-1", "delay_ms": 0, "callback": {"url": rx.url("/ok")}}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    // A timer whose callback fails once and is retried in place.
    let (code, body) = chime
        .post(
            "/v1/timers",
            json!({"id": "once-1", "delay_ms": 0, "callback": {"url": rx.url("/once")},
                   "retry": {"initial_backoff_ms": 200}}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    // A timer whose callback fails twice: a retry (a timer) between.
    let (code, body) = chime
        .post(
            "/v1/timers",
            json!({"id": "fail-1", "delay_ms": 0, "callback": {"url": rx.url("/fail")},
                   "retry": {"max_attempts": 2, "initial_backoff_ms": 4000}}),
        )
        .await;
    assert_eq!(code, 201, "{body}");

    let ok = eventually(&chime, "ok-1 delivered", "/v1/timers/ok-1", |s| {
        s["delivery"]["state"] == "delivered"
    })
    .await;
    assert_eq!(ok["state"], "fired");
    assert_eq!(ok["delivery"]["attempts"], 1);
    assert_eq!(ok["delivery"]["last_status"], 200);
    assert!(ms(&ok["delivery"]["delivered_at"]) >= ms(&ok["fire_at"]));
    // The original API keeps its exact shape.
    let (code, legacy) = get(&chime, "/timers/ok-1").await;
    assert_eq!((code, legacy), (200, json!({"id": "ok-1", "time_left": 0})));

    let once = eventually(&chime, "once-1 delivered", "/v1/timers/once-1", |s| {
        s["delivery"]["state"] == "delivered"
    })
    .await;
    assert_eq!(once["delivery"]["attempts"], 2, "{once}");
    assert_eq!(once["delivery"]["last_status"], 200);

    let retrying = eventually(&chime, "fail-1 retrying", "/v1/timers/fail-1", |s| {
        s["delivery"]["state"] == "retrying"
    })
    .await;
    assert_eq!(retrying["state"], "pending", "a retry is a pending timer");
    assert_eq!(retrying["delivery"]["attempts"], 1);
    assert_eq!(retrying["delivery"]["last_status"], 500);
    assert!(retrying["delivery"]["last_error"]
        .as_str()
        .unwrap()
        .contains("500"));
    let dead = eventually(&chime, "fail-1 dead-lettered", "/v1/timers/fail-1", |s| {
        s["delivery"]["state"] == "dead_lettered"
    })
    .await;
    assert_eq!(dead["state"], "fired");
    assert_eq!(dead["delivery"]["attempts"], 2);
    assert_eq!(dead["delivery"]["last_status"], 500);
    assert!(dead["delivery"]["last_error"]
        .as_str()
        .unwrap()
        .contains("gave up after 2 attempts"));
    assert!(dead["delivery"]["dead_lettered_at"].is_string());

    // An occurrence whose callback answers 404: dead-lettered at once, and
    // its schedule says so.
    let (code, body) = chime
        .post(
            "/v1/schedules",
            json!({"id": "gone", "cron": "* * * * * *", "max_count": 2, "callback": {"url": rx.url("/gone")}}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let status = eventually(
        &chime,
        "both occurrences dead-lettered",
        "/v1/schedules/gone",
        |s| {
            s["state"] == "completed"
                && s["recent_occurrences"].as_array().is_some_and(|o| {
                    o.len() == 2 && o.iter().all(|o| o["delivery"]["state"] == "dead_lettered")
                })
        },
    )
    .await;
    assert_eq!(status["occurrences_fired"], 2);
    assert_eq!(status["last_occurrence"]["delivery"]["last_status"], 404);
    assert!(status["next_due"].as_array().unwrap().is_empty());
    chime.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weekdays_at_nine_in_paris_listing_and_bad_input() {
    let mut probe = Receiver::start().await;
    let chime = Chime::start("sched-list", &mut probe).await;
    let url = probe.url("/never");

    let (code, created) = chime
        .post(
            "/v1/schedules",
            json!({"id": "report", "cron": "0 9 * * MON-FRI", "time_zone": "Europe/Paris",
                   "callback": {"url": url}}),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    let paris = chime_wire::recurrence::parse_zone("Europe/Paris").unwrap();
    for due in created["next_due"].as_array().unwrap() {
        let local = DateTime::parse_from_rfc3339(due.as_str().unwrap())
            .unwrap()
            .with_timezone(&paris);
        assert_eq!(
            (local.hour(), local.minute(), local.second()),
            (9, 0, 0),
            "{local}"
        );
        assert!(local.weekday().number_from_monday() <= 5, "{local}");
    }
    // Creating it again with the same spec writes nothing and answers the same.
    let (code, again) = chime
        .post(
            "/v1/schedules",
            json!({"id": "report", "cron": "0 9 * * MON-FRI", "time_zone": "Europe/Paris",
                   "callback": {"url": url}}),
        )
        .await;
    assert_eq!((code, &again["next_due"]), (201, &created["next_due"]));
    let status = eventually(&chime, "report listed", "/v1/schedules/report", |s| {
        s["state"] == "active"
    })
    .await;
    assert_eq!(status["next_due"], created["next_due"]);
    assert_eq!(status["time_zone"], "Europe/Paris");
    let (code, _) = chime
        .post(
            "/v1/schedules",
            json!({"id": "beat", "every_ms": 30000, "callback": {"url": url}}),
        )
        .await;
    assert_eq!(code, 201);

    // Pending timers on every partition, listed two at a time.
    let now = now_ms();
    let mut ids = BTreeSet::new();
    for i in 0..9 {
        let id = format!("later-{i}");
        let (code, body) = chime
            .post(
                "/v1/timers",
                json!({"id": id, "fire_at": chime_ingest::api::format_ms(now + 600_000 + i * 1000),
                       "callback": {"url": url}}),
            )
            .await;
        assert_eq!(code, 201, "{body}");
        ids.insert(id);
    }
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    let deadline = Instant::now() + WAIT;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/timers?state=pending&limit=2&cursor={c}"),
            None => "/v1/timers?state=pending&limit=2".to_string(),
        };
        let (code, page) = get(&chime, &path).await;
        if code == 503 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(code, 200, "{page}");
        let timers = page["timers"].as_array().unwrap();
        assert!(timers.len() <= 2);
        for t in timers {
            assert_eq!(t["callback"]["url"], url);
            listed.push(t["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(unique.len(), listed.len(), "each once: {listed:?}");
    if unique != ids {
        // The creates were acknowledged; the engine may not have applied the
        // last ones when the walk passed their partition. Walk again.
        let all = eventually(&chime, "every timer listed", "/v1/timers?limit=1000", |p| {
            p["timers"].as_array().unwrap().len() == ids.len()
        })
        .await;
        let again: BTreeSet<String> = all["timers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(again, ids);
    }
    let (code, page) = get(&chime, "/v1/schedules?limit=1").await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(page["schedules"].as_array().unwrap().len(), 1);
    let mut names: Vec<String> = vec![page["schedules"][0]["id"].as_str().unwrap().into()];
    let mut cursor = page["next_cursor"].as_str().map(str::to_string);
    while let Some(c) = cursor {
        let (code, page) = get(&chime, &format!("/v1/schedules?limit=1&cursor={c}")).await;
        assert_eq!(code, 200, "{page}");
        names.extend(
            page["schedules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["id"].as_str().unwrap().to_string()),
        );
        cursor = page["next_cursor"].as_str().map(str::to_string);
    }
    names.sort();
    assert_eq!(names, ["beat", "report"]);

    // Bad input: a 400 naming the field.
    for (body, field) in [
        (
            json!({"cron": "0 9 * * MON-FRY", "callback": {"url": url}}),
            "cron",
        ),
        (
            json!({"cron": "0 9 * * *", "time_zone": "Europe/Pariss", "callback": {"url": url}}),
            "time_zone",
        ),
        (
            json!({"every_ms": 999, "callback": {"url": url}}),
            "every_ms",
        ),
        (
            json!({"every_ms": 1000, "start_at": "2030-01-02T00:00:00Z", "end_at": "2030-01-01T00:00:00Z",
                "callback": {"url": url}}),
            "end_at",
        ),
        (
            json!({"every_ms": 1000, "catch_up": {"policy": "some"}, "callback": {"url": url}}),
            "catch_up.policy",
        ),
        (json!({"callback": {"url": url}}), "cron"),
    ] {
        let (code, answer) = chime.post("/v1/schedules", body.clone()).await;
        assert_eq!(
            (code, &answer["field"]),
            (400, &json!(field)),
            "{body}: {answer}"
        );
    }
    for (path, field) in [
        ("/v1/timers?state=fired", "state"),
        ("/v1/timers?limit=0", "limit"),
        ("/v1/timers?cursor=nonsense", "cursor"),
        ("/v1/schedules?state=sleeping", "state"),
    ] {
        let (code, answer) = get(&chime, path).await;
        assert_eq!(
            (code, &answer["field"]),
            (400, &json!(field)),
            "{path}: {answer}"
        );
    }
    assert_eq!(get(&chime, "/v1/schedules/never-made").await.0, 404);

    // A bad recurring record produced straight to Kafka is dead-lettered
    // with the field, and the partition goes on.
    let producer: rdkafka::producer::FutureProducer =
        chime_kafka::producer_config(&common::bootstrap(), "test")
            .create()
            .unwrap();
    let bad =
        json!({"op": "recurring", "id": "bad", "cron": "0 25 * * *", "callback": {"url": url}})
            .to_string();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&chime.topics.timers)
                .key("bad")
                .payload(&bad),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");
    let topic = chime.topics.dead_letters.clone();
    let letters = tokio::task::spawn_blocking(move || common::read_topic(&topic, 1, WAIT))
        .await
        .unwrap();
    let letter: Value = serde_json::from_str(letters[0].1.as_deref().unwrap()).unwrap();
    assert!(
        letter["reason"].as_str().unwrap().contains("cron"),
        "{letter}"
    );
    chime.stop().await;
}
