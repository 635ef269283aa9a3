//! Schedules that survive kill -9: every-second schedules (an interval and a
//! cron one), produced straight to `chime.timers`, keep firing while real
//! `chime engine` processes are killed, restarted and replaced. Read from
//! `chime.fires` (read_committed), every occurrence from the first to the
//! last is there exactly once: none missed, none twice; and `chime check`
//! says so from the topics alone.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use chime_check::{check, CheckConfig, CheckReport};
use chime_ingest::lookup::assigned_partitions;
use chime_wire::partition::partition_for_key;
use chime_wire::schedule::ScheduleSpec;
use chime_wire::time::now_ms;
use chime_wire::{TimerCommand, Topics};
use common::processes::{EngineProcess, FireWatcher, SeenFire, TimerProducer};

const PARTITIONS: i32 = 6;

async fn topics_for(test: &str) -> (String, Topics) {
    common::init_logging();
    let prefix = common::unique_prefix(test);
    let topics = Topics::new(&prefix);
    chime_kafka::admin::create_topics(&common::bootstrap(), &topics, PARTITIONS)
        .await
        .expect("create topics");
    (prefix, topics)
}

fn recurring(id: &str, how: serde_json::Value) -> TimerCommand {
    let mut json = serde_json::json!({
        "id": id,
        "callback": {"url": "http://127.0.0.1:9/unused"},
    });
    for (k, v) in how.as_object().expect("an object") {
        json[k] = v.clone();
    }
    let spec: ScheduleSpec = serde_json::from_value(json).expect("a schedule spec");
    TimerCommand::Recurring(spec)
}

async fn audit(prefix: &str) -> CheckReport {
    let mut config = CheckConfig::new(
        &common::bootstrap(),
        prefix,
        chime_engine::DEFAULT_LEAD,
        std::time::Duration::from_millis(10),
    );
    config.grace = Duration::ZERO;
    tokio::task::spawn_blocking(move || check(&config))
        .await
        .expect("checker task")
        .expect("checker reads the topics")
}

/// Which engine instance owns `partition` of the timers topic, as the
/// engines' consumer group says (None while it is rebalancing).
fn owner_of(prefix: &str, partition: i32) -> Option<String> {
    let client: BaseConsumer = chime_kafka::client_config(&common::bootstrap(), "test-group")
        .create()
        .expect("a client");
    let group = format!("{prefix}-engine");
    let groups = client
        .fetch_group_list(Some(&group), Duration::from_secs(5))
        .ok()?;
    let topic = format!("{prefix}.timers");
    for g in groups.groups() {
        for member in g.members() {
            let parts = assigned_partitions(member.assignment()?, &topic).ok()?;
            if parts.contains(&partition) {
                let instance = member.client_id().strip_prefix("chime-engine-")?;
                return Some(instance.split('@').next()?.to_string());
            }
        }
    }
    None
}

/// Two schedule ids on the same partition.
fn same_partition_ids() -> (String, String, i32) {
    let p = partition_for_key(b"tick-every", PARTITIONS);
    let cron = (0..)
        .map(|i| format!("tick-cron-{i}"))
        .find(|id| partition_for_key(id.as_bytes(), PARTITIONS) == p)
        .expect("an id on every partition");
    ("tick-every".into(), cron, p)
}

/// The due times of schedule `id`'s occurrences seen, in the order seen.
fn dues(fires: &[SeenFire], id: &str) -> Vec<u64> {
    let prefix = format!("{id}@");
    fires
        .iter()
        .filter(|f| f.id.starts_with(&prefix))
        .map(|f| {
            assert_eq!(f.id, format!("{prefix}{}", f.fire_at_ms), "occurrence id");
            f.fire_at_ms
        })
        .collect()
}

/// How many occurrences of `id` are due after `t`.
fn after(fires: &[SeenFire], id: &str, t: u64) -> usize {
    dues(fires, id).into_iter().filter(|&d| d > t).count()
}

/// Every second from the first to the last, each exactly once.
fn assert_every_second_once(fires: &[SeenFire], id: &str) -> Vec<u64> {
    let seen = dues(fires, id);
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for d in &seen {
        *counts.entry(*d).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "{id}: fired more than once: {twice:?}");
    let sorted: Vec<u64> = counts.keys().copied().collect();
    let missing: Vec<u64> = sorted
        .windows(2)
        .filter(|w| w[1] - w[0] != 1000)
        .map(|w| w[0] + 1000)
        .collect();
    assert!(
        missing.is_empty(),
        "{id}: occurrences missed after {missing:?}"
    );
    sorted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_second_schedules_fire_each_occurrence_once_across_kill9_and_failover() {
    let (prefix, topics) = topics_for("sched-kill").await;
    let watcher = FireWatcher::start(&topics);
    let engine = EngineProcess::spawn(&prefix, "solo");
    let created = now_ms();
    let (every_id, cron_id, partition) = same_partition_ids();
    TimerProducer::new(&topics)
        .send_all(&[
            recurring(&every_id, serde_json::json!({"every_ms": 1000})),
            recurring(&cron_id, serde_json::json!({"cron": "* * * * * *"})),
        ])
        .await;
    let ids = [every_id.as_str(), cron_id.as_str()];
    watcher.wait_until("five occurrences each", Duration::from_secs(60), |s| {
        ids.iter().all(|id| dues(s, id).len() >= 5)
    });

    // kill -9, and the same engine comes back (fencing its predecessor).
    let killed_at = now_ms();
    engine.kill9();
    let engine = EngineProcess::spawn(&prefix, "solo");
    watcher.wait_until(
        "five occurrences each after the restart",
        Duration::from_secs(60),
        |s| ids.iter().all(|id| after(s, id, killed_at + 4_000) >= 5),
    );

    // A second engine joins; the one owning the schedules' partition is
    // killed, and the other takes it over.
    let other = EngineProcess::spawn(&prefix, "other");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let owner = loop {
        let owners: Vec<Option<String>> = (0..PARTITIONS).map(|p| owner_of(&prefix, p)).collect();
        let both = ["solo", "other"]
            .iter()
            .all(|e| owners.iter().any(|o| o.as_deref() == Some(*e)));
        if both && owners.iter().all(Option::is_some) {
            break owners[partition as usize].clone().expect("an owner");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second engine never got partitions: {owners:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let failed_at = now_ms();
    let survivor = if owner == "solo" {
        engine.kill9();
        other
    } else {
        other.kill9();
        engine
    };
    watcher.wait_until(
        "five occurrences each after the failover",
        Duration::from_secs(60),
        |s| ids.iter().all(|id| after(s, id, failed_at + 7_000) >= 5),
    );

    // Cancel ends them; then the checker, from the topics alone, finds every
    // occurrence each state counts in chime.fires once, none missed, none
    // after the cancel.
    TimerProducer::new(&topics)
        .send_all(&ids.map(|id| TimerCommand::Cancel { id: id.to_string() }))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let report = loop {
        let report = audit(&prefix).await;
        if report.is_clean() || std::time::Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    survivor.terminate();
    assert!(report.is_clean(), "checker found problems:\n{report}");
    assert_eq!(report.schedules, 2, "{report}");

    let fires = watcher.snapshot();
    for id in ids {
        let dues = assert_every_second_once(&fires, id);
        let first = dues[0];
        assert!(
            first > created && first <= created + 2_000,
            "{id}: first occurrence {first}, created at {created}"
        );
        assert!(
            *dues.last().unwrap() > failed_at + 7_000,
            "{id}: went on after the failover"
        );
    }
}
