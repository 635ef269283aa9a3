//! Ownership that survives kill -9: real engine processes are killed, stopped
//! and restarted while timers are due; the checker (which reads the topics
//! alone) must then find every timer fired exactly once and none early.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chime_check::{check, CheckConfig, CheckReport};
use chime_wire::time::now_ms;
use chime_wire::{TimerCommand, Topics};
use common::processes::{schedule, EngineProcess, FireWatcher, TimerProducer, SESSION_TIMEOUT_MS};

const PARTITIONS: i32 = 6;
const TIMERS: usize = 10_000;
const SPAN_MS: u64 = 20_000;

async fn topics_for(test: &str) -> (String, Topics) {
    common::init_logging();
    let prefix = common::unique_prefix(test);
    let topics = Topics::new(&prefix);
    chime_kafka::admin::create_topics(&common::bootstrap(), &topics, PARTITIONS)
        .await
        .expect("create topics");
    (prefix, topics)
}

/// `n` timers due evenly over `SPAN_MS`, starting `lead_in_ms` from now.
fn spread(n: usize, lead_in_ms: u64) -> Vec<TimerCommand> {
    let start = now_ms() + lead_in_ms;
    (0..n)
        .map(|i| schedule(&format!("t{i}"), start + i as u64 * SPAN_MS / n as u64))
        .collect()
}

fn distinct_ids(fires: &[common::processes::SeenFire]) -> usize {
    fires
        .iter()
        .map(|f| f.id.as_str())
        .collect::<HashSet<_>>()
        .len()
}

async fn audit(prefix: &str) -> CheckReport {
    // The engines run with the default lead and tick (EngineProcess).
    let mut config = CheckConfig::new(
        &common::bootstrap(),
        prefix,
        chime_engine::DEFAULT_LEAD,
        Duration::from_millis(10),
    );
    config.grace = Duration::ZERO;
    // The engine may emit a fire up to its lead before the timer is due, and
    // with no grace the checker expects a timer only once it is due: right
    // after the last fire record is seen, its timer may not be due yet.
    // Audit again until every fired timer is due (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let config = config.clone();
        let report = tokio::task::spawn_blocking(move || check(&config))
            .await
            .expect("checker task")
            .expect("checker reads the topics");
        if report.expected >= report.fires || Instant::now() >= deadline {
            return report;
        }
        tokio::time::sleep(chime_engine::DEFAULT_LEAD).await;
    }
}

fn assert_exactly_once(report: &CheckReport, n: usize) {
    assert!(report.is_clean(), "checker found problems:\n{report}");
    assert_eq!(report.expected, n, "{report}");
    assert_eq!(report.fires, n, "one fire record per timer:\n{report}");
    assert_eq!(report.pending, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_kill9_fires_every_timer_exactly_once() {
    let (prefix, topics) = topics_for("restart").await;
    let watcher = FireWatcher::start(&topics);
    let engine = EngineProcess::spawn(&prefix, "solo");
    TimerProducer::new(&topics)
        .send_all(&spread(TIMERS, 3_000))
        .await;

    watcher.wait_until("40% fired", Duration::from_secs(60), |s| {
        s.len() >= TIMERS * 4 / 10
    });
    engine.kill9();
    let engine = EngineProcess::spawn(&prefix, "solo");
    watcher.wait_until("every timer fired", Duration::from_secs(90), |s| {
        distinct_ids(s) >= TIMERS
    });
    engine.terminate();
    assert_exactly_once(&audit(&prefix).await, TIMERS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_after_kill9_of_one_of_three_engines_fires_every_timer_exactly_once() {
    let (prefix, topics) = topics_for("failover").await;
    let watcher = FireWatcher::start(&topics);
    let a = EngineProcess::spawn(&prefix, "a");
    let b = EngineProcess::spawn(&prefix, "b");
    let c = EngineProcess::spawn(&prefix, "c");
    TimerProducer::new(&topics)
        .send_all(&spread(TIMERS, 3_000))
        .await;

    watcher.wait_until("40% fired", Duration::from_secs(60), |s| {
        s.len() >= TIMERS * 4 / 10
    });
    b.kill9();
    watcher.wait_until("every timer fired", Duration::from_secs(90), |s| {
        distinct_ids(s) >= TIMERS
    });
    a.terminate();
    c.terminate();
    assert_exactly_once(&audit(&prefix).await, TIMERS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_partitions_over_without_duplicates_or_a_long_pause() {
    let (prefix, pause_ms) = graceful_handover("graceful").await;
    // Timers that came due after the SIGTERM waited at most for the handover:
    // the leaving engine's revocation plus the new owner's rebuild, well under
    // the session timeout a crash would cost.
    assert!(
        pause_ms < SESSION_TIMEOUT_MS / 2,
        "firing paused {pause_ms} ms after SIGTERM (session timeout {SESSION_TIMEOUT_MS} ms)"
    );
    assert_exactly_once(&audit(&prefix).await, TIMERS);
}

/// Two engines; SIGTERM one mid-way. Returns the prefix and the worst
/// lateness of timers due after the SIGTERM.
async fn graceful_handover(test: &str) -> (String, u64) {
    let (prefix, topics) = topics_for(test).await;
    let watcher = FireWatcher::start(&topics);
    let a = EngineProcess::spawn(&prefix, "a");
    let b = EngineProcess::spawn(&prefix, "b");
    TimerProducer::new(&topics)
        .send_all(&spread(TIMERS, 3_000))
        .await;

    watcher.wait_until("40% fired", Duration::from_secs(60), |s| {
        s.len() >= TIMERS * 4 / 10
    });
    let stopped_at = now_ms();
    b.terminate();
    watcher.wait_until("every timer fired", Duration::from_secs(90), |s| {
        distinct_ids(s) >= TIMERS
    });
    a.terminate();
    let worst = watcher
        .snapshot()
        .iter()
        .filter(|f| f.fire_at_ms >= stopped_at)
        .map(|f| f.fired_at_ms.saturating_sub(f.fire_at_ms))
        .max()
        .unwrap_or(0);
    (prefix, worst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_reschedule_hold_across_a_restart() {
    let (prefix, topics) = topics_for("cancel").await;
    let watcher = FireWatcher::start(&topics);
    let producer = TimerProducer::new(&topics);
    let engine = EngineProcess::spawn(&prefix, "solo");
    let now = now_ms();
    let cancelled_early = now + 5_000;
    let moved_from = now + 4_000;
    let moved_to = now + 6_000;
    producer
        .send_all(&[
            schedule("cancelled-before-restart", cancelled_early),
            schedule("moved", moved_from),
            schedule("cancelled-after-restart", now + 7_000),
            schedule("sentinel", now + 9_000),
        ])
        .await;
    producer
        .send_all(&[
            TimerCommand::Cancel {
                id: "cancelled-before-restart".into(),
            },
            schedule("moved", moved_to),
        ])
        .await;
    // Restart while everything is still pending: the cancel and the
    // re-schedule must survive through the changelog.
    watcher.wait_until("a quiet moment", Duration::from_secs(30), |_| {
        now_ms() > now + 1_500
    });
    engine.kill9();
    let engine = EngineProcess::spawn(&prefix, "solo");
    producer
        .send_all(&[TimerCommand::Cancel {
            id: "cancelled-after-restart".into(),
        }])
        .await;
    watcher.wait_until("the sentinel fired", Duration::from_secs(60), |s| {
        s.iter().any(|f| f.id == "sentinel")
    });
    engine.terminate();

    let fires = watcher.per_id();
    assert!(!fires.contains_key("cancelled-before-restart"), "{fires:?}");
    assert!(!fires.contains_key("cancelled-after-restart"), "{fires:?}");
    let moved = &fires["moved"];
    assert_eq!(moved.len(), 1, "re-scheduled timer fires once: {moved:?}");
    assert_eq!(moved[0].fire_at_ms, moved_to, "at its new time");
    // The engine emits up to its lead ahead; the dispatcher holds it till due.
    let lead = chime_engine::DEFAULT_LEAD.as_millis() as u64;
    assert!(moved[0].fired_at_ms + lead >= moved_to, "not early");
    let report = audit(&prefix).await;
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_resumed_after_its_partitions_moved_commits_nothing() {
    let (prefix, topics) = topics_for("zombie").await;
    let watcher = FireWatcher::start(&topics);
    let zombie = EngineProcess::spawn(&prefix, "zombie");
    let survivor = EngineProcess::spawn(&prefix, "survivor");
    TimerProducer::new(&topics)
        .send_all(&spread(TIMERS, 3_000))
        .await;

    watcher.wait_until("25% fired", Duration::from_secs(60), |s| {
        s.len() >= TIMERS / 4
    });
    let paused_at = now_ms();
    zombie.pause();
    // The survivor owns every partition once it fires on all of them for
    // timers due after the zombie's session expired.
    let expired = paused_at + SESSION_TIMEOUT_MS;
    watcher.wait_until(
        "survivor firing every partition",
        Duration::from_secs(60),
        |s| {
            s.iter()
                .filter(|f| f.fire_at_ms > expired)
                .map(|f| f.partition)
                .collect::<HashSet<_>>()
                .len()
                == PARTITIONS as usize
        },
    );
    zombie.resume();
    watcher.wait_until("every timer fired", Duration::from_secs(90), |s| {
        distinct_ids(s) >= TIMERS
    });
    zombie.terminate();
    survivor.terminate();
    assert_exactly_once(&audit(&prefix).await, TIMERS);
}

/// An engine alone in its group, paused past its session timeout: its
/// session expires, and once resumed it must join the group again by itself
/// (it rejoins as soon as the group coordinator answers) and fire every
/// timer, those due while it was stopped included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_paused_past_its_session_rejoins_and_fires_everything() {
    let (prefix, topics) = topics_for("paused-alone").await;
    let watcher = FireWatcher::start(&topics);
    let engine = EngineProcess::spawn(&prefix, "sleeper");
    TimerProducer::new(&topics)
        .send_all(&spread(TIMERS, 3_000))
        .await;
    watcher.wait_until("25% fired", Duration::from_secs(60), |s| {
        s.len() >= TIMERS / 4
    });
    engine.pause();
    tokio::time::sleep(Duration::from_millis(SESSION_TIMEOUT_MS + 3_000)).await;
    engine.resume();
    watcher.wait_until("every timer fired", Duration::from_secs(90), |s| {
        distinct_ids(s) >= TIMERS
    });
    let said = |message: &str| {
        engine
            .log_lines()
            .iter()
            .any(|l| l["fields"]["message"].as_str() == Some(message))
    };
    assert!(
        said("group session expired; rejoining once the group coordinator answers"),
        "the pause was meant to outlast the session"
    );
    assert!(said("group coordinator answers; rejoining"));
    // Alone in its group, the engine's old member id was dropped by the
    // coordinator during the pause; the rejoined engine still tells the
    // group (on a thread of its own, so its log line may trail the fires).
    let told = Instant::now() + Duration::from_secs(10);
    while !said("the expired session's member id had already left the group") {
        assert!(
            Instant::now() < told,
            "the engine never removed its expired session's member id"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    engine.terminate();
    assert_exactly_once(&audit(&prefix).await, TIMERS);
}

/// Two engines started with the same instance id (a configuration mistake),
/// as static members. The group fences one of them out for good: it stops
/// with an error naming the id, and the other fires every timer once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_instance_id_stops_an_engine_naming_the_id() {
    let (prefix, topics) = topics_for("twins").await;
    let watcher = FireWatcher::start(&topics);
    let static_member = ["--static-membership", "true"];
    let mut twins = [
        EngineProcess::spawn_with(&prefix, "twin", &static_member),
        EngineProcess::spawn_with(&prefix, "twin", &static_member),
    ];
    TimerProducer::new(&topics)
        .send_all(&spread(TIMERS, 3_000))
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let stopped = loop {
        if let Some(i) = (0..2).find(|&i| twins[i].exited().is_some()) {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "both engines named twin still run after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let status = twins[stopped].exited().expect("exited above");
    assert!(
        !status.success(),
        "the fenced engine exits with a failure: {status}"
    );
    let said = twins[stopped].log_text();
    assert!(
        said.contains("another process joined with instance id \"twin\"")
            || said.contains("another engine runs with instance id \"twin\""),
        "its last words name the duplicate id:\n{said}"
    );
    let [a, b] = twins;
    let survivor = if stopped == 0 { b } else { a };
    watcher.wait_until("every timer fired", Duration::from_secs(90), |s| {
        distinct_ids(s) >= TIMERS
    });
    survivor.terminate();
    assert_exactly_once(&audit(&prefix).await, TIMERS);
}
