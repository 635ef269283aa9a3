//! The dispatcher against the real broker and real HTTP receivers on
//! loopback: retries that are timers, dead letters, per-host isolation,
//! kill -9, the address guard, and the documented signature check.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use chime_dispatcher::DispatcherConfig;
use chime_wire::time::now_ms;
use chime_wire::{Callback, DeadLetter, RetryPolicy, TimerCommand, TimerSpec, Topics};
use common::processes::dispatcher_process;
use common::{bootstrap, init_logging, read_topic, unique_prefix, Chime, Received, Receiver};

type Answer = Pin<Box<dyn Future<Output = StatusCode> + Send>>;

/// A receiver whose answer to its n-th request (from 1) is chosen by a script.
/// Requests are recorded when they arrive, before the script answers.
struct Scripted {
    addr: std::net::SocketAddr,
    rx: mpsc::UnboundedReceiver<Received>,
}

impl Scripted {
    async fn start(script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Scripted {
        Scripted::bind("127.0.0.1:0", script).await
    }

    async fn bind(
        addr: &str,
        script: impl Fn(usize) -> Answer + Send + Sync + 'static,
    ) -> Scripted {
        let (tx, rx) = mpsc::unbounded_channel();
        let script = Arc::new(script);
        let count = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let (tx, script, count) = (tx.clone(), script.clone(), count.clone());
            async move {
                let _ = tx.send(Received {
                    method: String::new(),
                    path: uri.path().to_string(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                        .collect(),
                    body: String::from_utf8_lossy(&body).into(),
                    at_ms: now_ms(),
                });
                script(count.fetch_add(1, Ordering::SeqCst) + 1).await
            }
        });
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Scripted { addr, rx }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn expect(&mut self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(r)) => got.push(r),
                _ => panic!(
                    "expected {n} requests within {timeout:?}, got {}: {got:?}",
                    got.len()
                ),
            }
        }
        got
    }

    /// Requests that arrived and were not yet taken.
    fn drain(&mut self) -> Vec<Received> {
        std::iter::from_fn(|| self.rx.try_recv().ok()).collect()
    }
}

fn answer(status: StatusCode) -> Answer {
    Box::pin(async move { status })
}

/// A dispatcher alone on fresh topics; fire records are produced straight to
/// `<prefix>.fires`, as the engine would.
struct Rig {
    topics: Topics,
    producer: FutureProducer,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Rig {
    async fn start(test: &str, configure: impl FnOnce(&mut DispatcherConfig)) -> Rig {
        let prefix = unique_prefix(test);
        let mut rig = Rig::topics_only(&prefix).await;
        let mut config = DispatcherConfig::new(&bootstrap(), &prefix);
        config.session_timeout = Duration::from_secs(6);
        configure(&mut config);
        let shutdown = rig.shutdown.clone();
        rig.task = Some(tokio::spawn(chime_dispatcher::serve(config, shutdown)));
        rig
    }

    async fn topics_only(prefix: &str) -> Rig {
        init_logging();
        let topics = Topics::new(prefix);
        chime_kafka::admin::create_topics(&bootstrap(), &topics, common::PARTITIONS)
            .await
            .expect("create topics");
        Rig {
            topics,
            producer: chime_kafka::producer_config(&bootstrap(), "test-fires")
                .create()
                .unwrap(),
            shutdown: CancellationToken::new(),
            task: None,
        }
    }

    /// Produces a fire record for `spec` (to `partition`, or by key).
    async fn fire(&self, spec: &TimerSpec, partition: Option<i32>) {
        let value = TimerCommand::Schedule(spec.clone()).encode();
        let mut record = FutureRecord::to(&self.topics.fires)
            .key(spec.id.as_str())
            .payload(&value);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("fire record acknowledged");
    }

    async fn dead_letters(&self, n: usize) -> BTreeMap<String, DeadLetter> {
        let topic = self.topics.dead_letters.clone();
        let records =
            tokio::task::spawn_blocking(move || read_topic(&topic, n, Duration::from_secs(40)))
                .await
                .unwrap();
        assert_eq!(records.len(), n, "dead letters: {records:?}");
        records
            .into_iter()
            .map(|(k, v)| {
                let letter: DeadLetter = serde_json::from_str(&v.expect("a value")).unwrap();
                (k.expect("a key"), letter)
            })
            .collect()
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await
                .expect("dispatcher task")
                .expect("dispatcher ran cleanly");
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn timer(id: &str, url: String) -> TimerSpec {
    TimerSpec {
        id: id.into(),
        fire_at_ms: now_ms(),
        callback: Callback {
            url,
            method: "POST".into(),
            headers: Default::default(),
            body: format!("body of {id}"),
        },
        attempt: 1,
        retry: RetryPolicy::default(),
        first_fire_at_ms: None,
        schedule_id: None,
        delivery: None,
    }
}

/// The documented idempotency key, computed by python3 from the formula in
/// docs/receivers.md rather than by the code under test.
fn documented_key(id: &str, first_fire_at_ms: u64) -> String {
    let script = "import hashlib,sys; print(hashlib.sha256(sys.argv[1].encode() + b'\\x00' + sys.argv[2].encode()).hexdigest()[:32])";
    let out = std::process::Command::new("python3")
        .args(["-c", script, id, &first_fire_at_ms.to_string()])
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_503s_then_success_retries_as_timers_with_one_idempotency_key() {
    let mut probe = Receiver::start().await;
    let chime = Chime::start("dispatch-retry", &mut probe).await;
    let mut rx = Scripted::start(|n| {
        answer(if n <= 2 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        })
    })
    .await;
    // Backoffs of 1.25–2.5 s and 2.5–5 s: above the 1 s wait-in-place limit,
    // so both retries must go through chime.timers.
    let (status, body) = chime
        .post(
            "/v1/timers",
            serde_json::json!({
                "id": "flaky-1",
                "delay_ms": 0,
                "callback": {"url": rx.url("/flaky"), "body": "pay"},
                "retry": {"max_attempts": 5, "initial_backoff_ms": 2500}
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let calls = rx.expect(3, Duration::from_secs(40)).await;
    let first_fire_at: u64 = calls[0]
        .header("chime-fire-at-ms")
        .unwrap()
        .parse()
        .unwrap();
    let key = documented_key("flaky-1", first_fire_at);
    for (i, call) in calls.iter().enumerate() {
        assert_eq!(
            call.header("chime-attempt"),
            Some((i + 1).to_string().as_str()),
            "{call:?}"
        );
        assert_eq!(
            call.header("idempotency-key"),
            Some(key.as_str()),
            "{call:?}"
        );
        assert_eq!(call.header("chime-timer-id"), Some("flaky-1"));
        assert_eq!(call.body, "pay");
        let due: u64 = call.header("chime-fire-at-ms").unwrap().parse().unwrap();
        assert!(call.at_ms >= due, "called before its due time: {call:?}");
    }
    let gap = |a: &Received, b: &Received| b.at_ms - a.at_ms;
    assert!(gap(&calls[0], &calls[1]) >= 1250, "first backoff too short");
    assert!(
        gap(&calls[1], &calls[2]) >= 2500,
        "second backoff too short"
    );

    // The retries are schedule records on <prefix>.timers: attempts 2 and 3,
    // carrying the first due time. (Also there: the probes and their outcome
    // records, the create, and its outcome.)
    let topic = chime.topics.timers.clone();
    let records = tokio::task::spawn_blocking(move || {
        read_topic(
            &topic,
            2 * common::PARTITIONS as usize + 4,
            Duration::from_secs(20),
        )
    })
    .await
    .unwrap();
    let mut retry_attempts: Vec<u32> = records
        .iter()
        .filter(|(k, _)| k.as_deref() == Some("flaky-1"))
        .filter_map(|(_, v)| match serde_json::from_str(v.as_deref()?).ok()? {
            TimerCommand::Schedule(s) if s.attempt > 1 => {
                assert_eq!(s.first_fire_at_ms, Some(first_fire_at), "{s:?}");
                assert_eq!(
                    s.retry.max_attempts,
                    Some(5),
                    "policy travels with the retry"
                );
                Some(s.attempt)
            }
            _ => None,
        })
        .collect();
    retry_attempts.sort();
    assert_eq!(retry_attempts, vec![2, 3], "retry timers: {records:?}");
    assert!(rx.drain().is_empty(), "no call after the success");
    chime.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_error_dead_letters_at_once_and_silence_times_out_until_attempts_run_out() {
    let mut rejecting = Scripted::start(|_| answer(StatusCode::BAD_REQUEST)).await;
    let mut silent = Scripted::start(|_| {
        Box::pin(async {
            std::future::pending::<()>().await;
            StatusCode::OK
        })
    })
    .await;
    let rig = Rig::start("dispatch-dead", |c| {
        c.addresses.allow = vec!["127.0.0.0/8".parse().unwrap()];
        c.request_timeout = Duration::from_millis(300);
        c.shutdown_grace = Duration::from_millis(500);
    })
    .await;
    let policy = RetryPolicy {
        max_attempts: Some(3),
        initial_backoff_ms: Some(100),
        ..RetryPolicy::default()
    };
    let mut bad = timer("bad-request", rejecting.url("/strict"));
    bad.retry = policy.clone();
    let mut hang = timer("no-answer", silent.url("/void"));
    hang.retry = policy;
    rig.fire(&bad, None).await;
    rig.fire(&hang, None).await;

    let letters = rig.dead_letters(2).await;
    let rejected = &letters["bad-request"];
    assert_eq!(rejected.attempts, Some(1), "{rejected:?}");
    assert_eq!(rejected.last_status, Some(400), "{rejected:?}");
    assert!(rejected.reason.contains("400"), "{rejected:?}");
    assert_eq!(rejected.source_topic, rig.topics.fires);
    assert_eq!(rejecting.drain().len(), 1, "a 400 is not retried");

    let timed_out = &letters["no-answer"];
    assert_eq!(timed_out.attempts, Some(3), "{timed_out:?}");
    assert_eq!(timed_out.last_status, None, "{timed_out:?}");
    assert!(timed_out.reason.contains("timed out"), "{timed_out:?}");
    let attempts: Vec<_> = silent
        .drain()
        .iter()
        .map(|r| r.header("chime-attempt").unwrap_or("?").to_string())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_does_not_delay_calls_to_another() {
    let slow_done = Arc::new(AtomicUsize::new(0));
    let done = slow_done.clone();
    let mut slow = Scripted::start(move |_| {
        let done = done.clone();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            done.fetch_add(1, Ordering::SeqCst);
            StatusCode::OK
        })
    })
    .await;
    let mut fast = Scripted::start(|_| answer(StatusCode::OK)).await;
    // Four call slots in all, two per destination: without the per-host limit
    // the slow endpoint's calls would hold every slot for 10 s.
    let rig = Rig::start("dispatch-slow", |c| {
        c.addresses.allow = vec!["127.0.0.0/8".parse().unwrap()];
        c.max_in_flight = 4;
        c.max_in_flight_per_host = 2;
        c.request_timeout = Duration::from_secs(30);
        c.shutdown_grace = Duration::from_millis(200);
    })
    .await;
    // One partition, slow ones first: the dispatcher takes them in this order.
    for i in 0..6 {
        rig.fire(&timer(&format!("slow-{i}"), slow.url("/slow")), Some(0))
            .await;
    }
    for i in 0..3 {
        rig.fire(&timer(&format!("fast-{i}"), fast.url("/fast")), Some(0))
            .await;
    }
    let calls = fast.expect(3, Duration::from_secs(9)).await;
    assert_eq!(
        slow_done.load(Ordering::SeqCst),
        0,
        "the fast calls waited for a slow call to finish: {calls:?}"
    );
    let slow_calls = slow.drain();
    assert!(
        slow_calls.len() <= 2,
        "per-host limit exceeded: {slow_calls:?}"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_calls_in_flight_loses_no_fire() {
    const FIRES: usize = 40;
    let prefix = unique_prefix("dispatch-kill");
    let rig = Rig::topics_only(&prefix).await;
    // While `slow`, the receiver holds each call 5 s, so the kill lands with
    // calls in flight. The path names the timer: /kill/<id>.
    let slow = Arc::new(AtomicBool::new(true));
    let slow_flag = slow.clone();
    let mut rx = Scripted::start(move |_| {
        let slow = slow_flag.clone();
        Box::pin(async move {
            if slow.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            StatusCode::OK
        })
    })
    .await;
    let mut ids = HashSet::new();
    for i in 0..FIRES {
        let id = format!("kill-{i}");
        rig.fire(&timer(&id, rx.url(&format!("/kill/{id}"))), None)
            .await;
        ids.insert(id);
    }

    let mut first = dispatcher_process(&prefix);
    let before_kill = rx.expect(5, Duration::from_secs(40)).await;
    first.kill9();
    let killed_ms = now_ms();
    slow.store(false, Ordering::SeqCst);
    // A 5 s call cannot have been answered yet: these were in flight.
    assert!(
        before_kill.iter().all(|r| killed_ms < r.at_ms + 5000),
        "calls finished before the kill; nothing was in flight"
    );

    let mut second = dispatcher_process(&prefix);
    // Delivered = arrived at the receiver after the first process was dead,
    // i.e. sent by the restarted dispatcher (answered 200 at once).
    let mut delivered = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(45);
    while delivered.len() < FIRES && Instant::now() < deadline {
        if let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(200), rx.rx.recv()).await {
            if r.at_ms > killed_ms {
                delivered.insert(r.path.trim_start_matches("/kill/").to_string());
            }
        }
    }
    second.kill9();
    let missing: Vec<_> = ids.difference(&delivered).collect();
    assert!(missing.is_empty(), "fires lost across kill -9: {missing:?}");
    for r in &before_kill {
        let id = r.path.trim_start_matches("/kill/");
        assert!(
            delivered.contains(id),
            "{id} was in flight at the kill and not re-delivered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_addresses_are_refused_by_default_and_allowed_when_listed() {
    let mut rx = Scripted::start(|_| answer(StatusCode::OK)).await;
    let port = rx.addr.port();
    let targets = [
        ("literal-loopback", rx.url("/hook")),
        ("named-loopback", format!("http://localhost:{port}/hook")),
        ("private", "http://10.20.30.40:8080/hook".to_string()),
        (
            "metadata",
            "http://169.254.169.254/latest/meta-data/".to_string(),
        ),
    ];

    let guarded = Rig::start("dispatch-ssrf", |_| {}).await;
    for (id, url) in &targets {
        guarded.fire(&timer(id, url.clone()), None).await;
    }
    let letters = guarded.dead_letters(targets.len()).await;
    for (id, _) in &targets {
        let letter = &letters[*id];
        assert!(
            letter.reason.starts_with("callback address refused"),
            "{id}: {letter:?}"
        );
        assert_eq!(letter.attempts, Some(1), "refusal is permanent: {letter:?}");
    }
    assert!(letters["named-loopback"]
        .reason
        .contains("localhost resolves to 127.0.0.1"));
    assert!(letters["metadata"].reason.contains("169.254.169.254"));
    assert!(
        rx.drain().is_empty(),
        "a refused callback must not be called"
    );
    guarded.stop().await;

    let allowed = Rig::start("dispatch-ssrf-allow", |c| {
        c.addresses.allow = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    for (id, url) in &targets[..2] {
        allowed.fire(&timer(id, url.clone()), None).await;
    }
    let calls = rx.expect(2, Duration::from_secs(40)).await;
    let mut ids: Vec<_> = calls
        .iter()
        .map(|c| c.header("chime-timer-id").unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["literal-loopback", "named-loopback"]);
    allowed.stop().await;
}

/// Runs the Python snippet of docs/receivers.md on one request.
fn documented_verify(secret: &str, header: &str, body: &str) -> bool {
    let doc = include_str!("../docs/receivers.md");
    let start = doc
        .find("```python\n")
        .expect("a python snippet in docs/receivers.md")
        + 10;
    let len = doc[start..].find("```").expect("the snippet ends");
    let program = format!(
        "{}\nimport os, sys\nsys.exit(0 if verify(os.environb[b'SECRET'], os.environ['HEADER'], os.environb[b'BODY']) else 1)\n",
        &doc[start..start + len]
    );
    let status = std::process::Command::new("python3")
        .args(["-c", &program])
        .env("SECRET", secret)
        .env("HEADER", header)
        .env("BODY", body)
        .status()
        .expect("python3 runs");
    match status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!("the snippet crashed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_verifies_with_the_documented_snippet_and_tampering_fails() {
    const SECRET: &str = "correct horse battery staple";
    let mut rx = Scripted::start(|_| answer(StatusCode::OK)).await;
    let rig = Rig::start("dispatch-sign", |c| {
        c.addresses.allow = vec!["127.0.0.0/8".parse().unwrap()];
        c.signing_secret = Some(chime_dispatcher::signing::SigningSecret(SECRET.into()));
    })
    .await;
    let mut spec = timer("signed-1", rx.url("/signed"));
    spec.callback.body = r#"{"invoice": 981, "amount": "12.50"}"#.into();
    rig.fire(&spec, None).await;
    let call = rx.expect(1, Duration::from_secs(40)).await.remove(0);
    let header = call.header("chime-signature").expect("a signature header");
    assert!(header.starts_with("t="), "{header}");

    assert!(
        documented_verify(SECRET, header, &call.body),
        "genuine call rejected"
    );
    let tampered = call.body.replace("12.50", "1250.00");
    assert!(
        !documented_verify(SECRET, header, &tampered),
        "tampered body accepted"
    );
    assert!(
        !documented_verify("another secret", header, &call.body),
        "wrong secret accepted"
    );
    let forged_time = header.replacen("t=", "t=1", 1);
    assert!(
        !documented_verify(SECRET, &forged_time, &call.body),
        "altered time accepted"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_calls_in_flight_finish_and_commits_them() {
    const FIRES: usize = 10;
    let prefix = unique_prefix("dispatch-term");
    let rig = Rig::topics_only(&prefix).await;
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    let mut rx = Scripted::start(move |_| {
        let count = count.clone();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            count.fetch_add(1, Ordering::SeqCst);
            StatusCode::OK
        })
    })
    .await;
    for i in 0..FIRES {
        rig.fire(&timer(&format!("term-{i}"), rx.url("/term")), None)
            .await;
    }
    let mut child = dispatcher_process(&prefix);
    rx.expect(FIRES, Duration::from_secs(40)).await;
    assert_eq!(
        answered.load(Ordering::SeqCst),
        0,
        "all calls still in flight"
    );
    let status = tokio::task::spawn_blocking(move || child.terminate())
        .await
        .unwrap();
    assert!(status.success(), "dispatcher exited with {status}");
    assert_eq!(
        answered.load(Ordering::SeqCst),
        FIRES,
        "calls in flight were cut off"
    );

    // Committed: the group's offsets stand at the end of every partition.
    let fires = rig.topics.fires.clone();
    let group = format!("{prefix}-dispatcher");
    let gaps = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer =
            chime_kafka::consumer_config(&bootstrap(), "test-offsets", &group)
                .create()
                .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..common::PARTITIONS {
            tpl.add_partition(&fires, p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        (0..common::PARTITIONS)
            .filter_map(|p| {
                let (_, high) = consumer
                    .fetch_watermarks(&fires, p, Duration::from_secs(10))
                    .unwrap();
                let at = committed.find_partition(&fires, p).unwrap().offset();
                let done = high == 0 || at == rdkafka::Offset::Offset(high);
                (!done).then_some((p, at, high))
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(
        gaps.is_empty(),
        "uncommitted after shutdown (partition, committed, end): {gaps:?}"
    );
}

/// A partition handed over past the poller's patience (its calls still in
/// flight) and then assigned back to the same dispatcher starts clean: the
/// fires that come after are called back. The cluster tests found the
/// opposite: the returning assignment reused the old bookkeeping, whose
/// waits were already abandoned, and 6,996 callbacks were never made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_assigned_back_during_a_slow_handover_lose_no_fire() {
    let prefix = unique_prefix("dispatch-back");
    let rig = Rig::topics_only(&prefix).await;
    // The first call for each /hang/ path is held until released; every
    // other call is answered at once. Arrivals are recorded by path.
    let (release, released) = tokio::sync::watch::channel(false);
    let seen = Arc::new(std::sync::Mutex::new(HashSet::<String>::new()));
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<String>();
    let app = axum::Router::new().fallback(move |uri: Uri| {
        let (seen, arrived_tx, mut released) = (seen.clone(), arrived_tx.clone(), released.clone());
        async move {
            let path = uri.path().to_string();
            let first = seen.lock().unwrap().insert(path.clone());
            let _ = arrived_tx.send(path.clone());
            if first && path.starts_with("/hang/") {
                let _ = released.wait_for(|r| *r).await;
            }
            StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut arrivals = Vec::new();
    let mut wait_arrivals =
        async |arrivals: &mut Vec<String>, what: &str, done: &dyn Fn(&[String]) -> bool| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !done(arrivals) {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, arrived.recv()).await {
                    Ok(Some(path)) => arrivals.push(path),
                    _ => panic!("waited 60 s for {what}; calls so far: {arrivals:?}"),
                }
            }
        };

    let start = |instance: &str| {
        let mut config = DispatcherConfig::new(&bootstrap(), &prefix);
        config.instance_id = instance.into();
        config.addresses.allow = vec!["127.0.0.0/8".parse().unwrap()];
        config.session_timeout = Duration::from_secs(6);
        // Patience (grace + 1 s) runs out long before the held calls end.
        config.shutdown_grace = Duration::from_millis(500);
        config.request_timeout = Duration::from_secs(120);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(chime_dispatcher::serve(config, shutdown.clone()));
        (shutdown, task)
    };
    for p in 0..common::PARTITIONS {
        let id = format!("hang-{p}");
        rig.fire(&timer(&id, format!("{base}/hang/{id}")), Some(p))
            .await;
    }
    let (stop_a, a) = start("back-a");
    let hung = common::PARTITIONS as usize;
    wait_arrivals(&mut arrivals, "a call per partition, held", &|a| {
        a.len() >= hung
    })
    .await;

    // B joins: A hands some partitions over with their calls still held,
    // B calls those fires again (answered at once) and commits them.
    let (stop_b, b) = start("back-b");
    wait_arrivals(&mut arrivals, "a held fire called again by b", &|a| {
        a.len() > hung
    })
    .await;
    // B leaves: its partitions go back to A, whose old calls are still held.
    stop_b.cancel();
    b.await.expect("b's task").expect("b ran cleanly");

    let mut next = HashSet::new();
    for p in 0..common::PARTITIONS {
        for i in 0..3 {
            let id = format!("next-{p}-{i}");
            let mut spec = timer(&id, format!("{base}/next/{id}"));
            spec.fire_at_ms = now_ms() + 1_500;
            rig.fire(&spec, Some(p)).await;
            next.insert(format!("/next/{id}"));
        }
    }
    wait_arrivals(
        &mut arrivals,
        "every fire after the partitions came back",
        &|a| next.iter().all(|n| a.contains(n)),
    )
    .await;

    let _ = release.send(true);
    stop_a.cancel();
    a.await.expect("a's task").expect("a ran cleanly");
}
