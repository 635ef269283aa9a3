//! Failover of an engine whose fires were emitted ahead of their due time
//! (the lead): the next owner must still be able to take such a fire back.

mod common;

use std::time::Duration;

use chime_check::{check, CheckConfig};
use chime_wire::time::now_ms;
use chime_wire::{TimerCommand, Topics};
use common::processes::{EngineProcess, FireWatcher, TimerProducer};
use common::Receiver;
use tokio_util::sync::CancellationToken;

/// A fire is emitted 15 s ahead by engine A, A is killed with -9, the cancel
/// arrives while engine B owns the partition: B revokes the held fire (it
/// knows it from A's changelog tombstone), the dispatcher drops it, and the
/// checker finds nothing fired after its cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_after_failover_still_revokes_a_fire_emitted_ahead() {
    common::init_logging();
    let prefix = common::unique_prefix("failover-revoke");
    let topics = Topics::new(&prefix);
    chime_kafka::admin::create_topics(&common::bootstrap(), &topics, 1)
        .await
        .expect("create topics");
    let mut receiver = Receiver::start().await;
    let stop = CancellationToken::new();
    let mut dispatcher = chime_dispatcher::DispatcherConfig::new(&common::bootstrap(), &prefix);
    dispatcher.addresses = chime_dispatcher::address::AddressPolicy {
        allow: chime_dispatcher::address::AddressPolicy::parse_allow("127.0.0.0/8")
            .expect("loopback CIDR"),
        ..Default::default()
    };
    dispatcher.session_timeout = Duration::from_secs(6);
    let dispatcher = tokio::spawn(chime_dispatcher::serve(dispatcher, stop.clone()));

    let lead = ["--lead-ms", "15000"];
    let a = EngineProcess::spawn_with(&prefix, "engine-a", &lead);
    let watcher = FireWatcher::start(&topics);
    let producer = TimerProducer::new(&topics);
    let due = now_ms() + 25_000;
    let victim = TimerCommand::Schedule(chime_wire::TimerSpec {
        id: "victim".into(),
        fire_at_ms: due,
        callback: chime_wire::Callback {
            url: receiver.url("/victim"),
            method: "POST".into(),
            headers: Default::default(),
            body: String::new(),
        },
        attempt: 1,
        retry: Default::default(),
        first_fire_at_ms: None,
        schedule_id: None,
        delivery: None,
    });
    producer.send_all(&[victim]).await;
    tokio::task::block_in_place(|| {
        watcher.wait_until("A emits the fire ahead", Duration::from_secs(20), |f| {
            f.iter().any(|f| f.id == "victim")
        })
    });
    assert!(now_ms() < due, "the fire must be emitted ahead of its time");

    a.kill9();
    let b = EngineProcess::spawn_with(&prefix, "engine-b", &lead);
    producer
        .send_all(&[TimerCommand::Cancel {
            id: "victim".into(),
        }])
        .await;

    // Past the due time (and some): no call came, and the audit agrees.
    let wait = Duration::from_millis(due + 3_000 - now_ms());
    assert!(
        receiver.next(wait).await.is_none(),
        "the revoked fire was called"
    );
    let mut config = CheckConfig::new(
        &common::bootstrap(),
        &prefix,
        Duration::from_secs(15),
        Duration::from_millis(10),
    );
    config.grace = Duration::ZERO;
    let report = tokio::task::spawn_blocking(move || check(&config))
        .await
        .expect("checker task")
        .expect("checker reads the topics");
    assert_eq!(report.revoked, 1, "one revoke record:\n{report}");
    assert!(report.is_clean(), "{report}");
    drop(b);
    stop.cancel();
    dispatcher
        .await
        .expect("dispatcher task")
        .expect("dispatcher ran cleanly");
}
