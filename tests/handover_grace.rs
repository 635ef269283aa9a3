//! A dispatcher handover that outlives its grace (`CHIME_SHUTDOWN_GRACE_MS`)
//! gives up waiting once — one warning per partition — and then waits
//! quietly for what it cannot stop, instead of spinning: found by
//! `chime-bench faults --fault broker-kill`, where the dispatchers, unable
//! to commit while the broker was away, logged the warning two million
//! times each in 17 s and took the CPU the recovery needed.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;

use chime_wire::time::now_ms;
use chime_wire::{Callback, RetryPolicy, TimerCommand, TimerSpec, Topics};
use common::processes::ChimeProcess;

const GRACE_OVER: &str =
    "handover grace over; what is still waiting is re-delivered by the next owner";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_past_its_grace_warns_once_and_does_not_spin() {
    common::init_logging();
    let prefix = common::unique_prefix("handover-grace");
    let topics = Topics::new(&prefix);
    chime_kafka::admin::create_topics(&common::bootstrap(), &topics, common::PARTITIONS)
        .await
        .expect("create topics");

    // A receiver that holds every call 4 s: the SIGTERM lands with a call in
    // flight that outlasts the 300 ms grace.
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(move || {
        let arrived_tx = arrived_tx.clone();
        async move {
            let _ = arrived_tx.send(now_ms());
            tokio::time::sleep(Duration::from_secs(4)).await;
            StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/slow", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let fire = TimerCommand::Schedule(TimerSpec {
        id: "slow".into(),
        fire_at_ms: now_ms(),
        callback: Callback {
            url,
            method: "POST".into(),
            headers: Default::default(),
            body: String::new(),
        },
        attempt: 1,
        retry: RetryPolicy::default(),
        first_fire_at_ms: None,
        schedule_id: None,
        delivery: None,
    });
    let producer: FutureProducer = chime_kafka::producer_config(&common::bootstrap(), "test-fires")
        .create()
        .unwrap();
    let value = fire.encode();
    producer
        .send(
            FutureRecord::to(&topics.fires).key("slow").payload(&value),
            Duration::from_secs(10),
        )
        .await
        .expect("fire record acknowledged");

    let mut child = ChimeProcess::spawn(
        &format!("{prefix}-dispatcher"),
        &[
            "--topic-prefix",
            &prefix,
            "dispatcher",
            "--shutdown-grace-ms",
            "300",
            "--request-timeout-ms",
            "10000",
        ],
    );
    tokio::time::timeout(Duration::from_secs(60), arrived.recv())
        .await
        .expect("the call arrives within 60 s");
    let stopped = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = child.terminate();
        (status, child)
    })
    .await
    .unwrap();
    let (status, child) = status;
    assert!(status.success(), "dispatcher exited with {status}");

    let warnings = child
        .log_lines()
        .iter()
        .filter(|l| l["fields"]["message"] == GRACE_OVER)
        .count();
    assert!(
        (1..=common::PARTITIONS as usize).contains(&warnings),
        "{warnings} grace warnings in the {:?} after SIGTERM (one per partition expected); log {:?}",
        stopped.elapsed(),
        child.log
    );
}
