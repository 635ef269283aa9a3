//! A rolling restart, as a deploy does it: two `chime all` processes under
//! a steady load; one is stopped with SIGTERM and started again with the
//! same instance id a few seconds later, then the other. A graceful stop
//! hands its partitions over — the engine commits what it owes, the
//! dispatcher calls its held fires when due, finishes its calls in flight
//! and commits them before the next owner starts — so every timer is called
//! back exactly once: none lost, none twice, and the checker finds the
//! topics clean. No timing is asserted.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chime_check::{check, CheckConfig};
use chime_wire::time::now_ms;
use chime_wire::{Callback, TimerCommand, TimerSpec, Topics};
use common::processes::{ChimeProcess, TimerProducer};
use common::Receiver;

const PARTITIONS: i32 = 6;
/// Timers created per second, each due this long after its creation, so
/// timers come due (and input arrives) all through every restart.
const RATE_PER_S: usize = 300;
const DUE_AFTER_MS: u64 = 1_500;
/// How long a stopped process stays down before it is started again.
const DOWN_FOR: Duration = Duration::from_secs(3);
/// Load kept up after a restarted process is back, before the next step.
const SETTLE_LOAD: Duration = Duration::from_secs(3);
/// Generous deadlines for a loaded two-core machine.
const JOIN_WITHIN: Duration = Duration::from_secs(120);
const DELIVER_WITHIN: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_sigterm_restart_calls_every_timer_back_exactly_once() {
    rolling_restart("rolling", &[]).await;
}

/// The same with static membership (`CHIME_STATIC_MEMBERSHIP`): a stopped
/// member leaves the group too, and comes back under its instance id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_sigterm_restart_with_static_membership_calls_every_timer_back_exactly_once() {
    rolling_restart("rolling-static", &["--static-membership", "true"]).await;
}

/// The same with cooperative rebalancing (`CHIME_REBALANCE=cooperative`):
/// only the partitions that move are handed over, in two rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_sigterm_restart_with_cooperative_rebalancing_calls_every_timer_back_exactly_once()
{
    rolling_restart("rolling-coop", &["--rebalance", "cooperative"]).await;
}

/// `group_args`: how both processes join their groups.
async fn rolling_restart(test: &str, group_args: &[&str]) {
    common::init_logging();
    let prefix = common::unique_prefix(test);
    let topics = Topics::new(&prefix);
    chime_kafka::admin::create_topics(&common::bootstrap(), &topics, PARTITIONS)
        .await
        .expect("create topics");
    let mut receiver = Receiver::start().await;
    let mut counts = Callbacks::default();
    let mut nodes = [
        Node::start(&prefix, "a", group_args),
        Node::start(&prefix, "b", group_args),
    ];
    wait_settled(&mut nodes, "both processes sharing every partition").await;
    warm_up(&topics, &mut receiver, &mut counts).await;

    let load = Load::start(&topics, receiver.url("/t"));
    load.wait_for(RATE_PER_S * 2, "two seconds of load").await;
    let mut restarts = Vec::new();
    for victim in 0..nodes.len() {
        let stopped_at = now_ms();
        nodes[victim].stop();
        tokio::time::sleep(DOWN_FOR).await;
        nodes[victim].start_again();
        let what = format!(
            "{} back and both sharing every partition",
            nodes[victim].name
        );
        wait_settled(&mut nodes, &what).await;
        let acked = load.acked_count();
        load.wait_for(
            acked + RATE_PER_S * SETTLE_LOAD.as_secs() as usize,
            "load after the restart",
        )
        .await;
        restarts.push((nodes[victim].name.clone(), stopped_at, now_ms()));
    }
    let timers = load.stop().await;

    // Every timer called back; then stop both, so no callback can come later
    // than what is counted.
    let deadline = Instant::now() + DELIVER_WITHIN;
    loop {
        counts.drain(&mut receiver).await;
        let missing = timers.iter().filter(|(id, _)| counts.of(id) == 0).count();
        if missing == 0 {
            break;
        }
        for node in &mut nodes {
            node.ensure_running();
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} timers not called back within {DELIVER_WITHIN:?} of the load's end; \
             logs: {}",
            timers.len(),
            logs(&nodes)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for node in &mut nodes {
        node.stop();
    }
    counts.drain_to_end(&mut receiver).await;

    // The restarts happened under load: timers were due during each.
    for (name, from, to) in &restarts {
        let due = timers
            .iter()
            .filter(|(_, d)| (from..=to).contains(&d))
            .count();
        assert!(due > 0, "no timer was due while {name} restarted");
    }
    let twice: Vec<String> = timers
        .iter()
        .filter(|(id, _)| counts.of(id) > 1)
        .map(|(id, _)| counts.describe(id))
        .collect();
    assert!(
        twice.is_empty(),
        "{} of {} timers were called back more than once, e.g. {:?}; restarts (name, stopped, \
         back, unix ms): {restarts:?}; logs: {}",
        twice.len(),
        timers.len(),
        &twice[..twice.len().min(5)],
        logs(&nodes)
    );
    assert_eq!(counts.strangers, 0, "callbacks for ids never created");

    let mut config = CheckConfig::new(
        &common::bootstrap(),
        &prefix,
        chime_engine::DEFAULT_LEAD,
        Duration::from_millis(10),
    );
    config.grace = Duration::ZERO;
    let report = tokio::task::spawn_blocking(move || check(&config))
        .await
        .expect("checker task")
        .expect("checker reads the topics");
    assert!(report.is_clean(), "checker found problems:\n{report}");
    assert_eq!(report.fires, report.expected, "{report}");
    assert!(report.expected >= timers.len(), "{report}");
}

/// One `chime all` process with a stable instance id.
struct Node {
    name: String,
    args: Vec<String>,
    log_name: String,
    process: ChimeProcess,
}

impl Node {
    fn start(prefix: &str, instance: &str, group_args: &[&str]) -> Node {
        let partitions = PARTITIONS.to_string();
        let mut args: Vec<String> = [
            "--topic-prefix",
            prefix,
            "all",
            "--instance-id",
            instance,
            "--listen",
            "127.0.0.1:0",
            "--partitions",
            &partitions,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(group_args.iter().map(|s| s.to_string()));
        let log_name = format!("{prefix}-{instance}");
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = ChimeProcess::spawn(&log_name, &refs);
        Node {
            name: instance.to_string(),
            args,
            log_name,
            process,
        }
    }

    /// SIGTERM, and a clean exit.
    fn stop(&mut self) {
        let status = self.process.terminate();
        assert!(
            status.success(),
            "{} exited with {status} on SIGTERM; log {:?}",
            self.name,
            self.process.log
        );
    }

    /// The same arguments, instance id included; the log goes on.
    fn start_again(&mut self) {
        let refs: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.process = ChimeProcess::spawn(&self.log_name, &refs);
    }

    fn ensure_running(&mut self) {
        if let Some(status) = self.process.exited() {
            panic!(
                "{} exited on its own ({status}); log {:?}",
                self.name, self.process.log
            );
        }
    }

    /// The partitions this process's engine and dispatcher own now, from
    /// their assignment and revocation log lines.
    fn owned(&self) -> (BTreeSet<i32>, BTreeSet<i32>) {
        let (mut engine, mut dispatcher) = (BTreeSet::new(), BTreeSet::new());
        for line in self.process.log_lines() {
            let fields = &line["fields"];
            let parts = partitions(&fields["partitions"]);
            let is_engine = fields["role"] == "engine";
            match fields["message"].as_str().unwrap_or("") {
                "partitions assigned" if is_engine => engine.extend(parts),
                "partitions revoked" if is_engine => parts.iter().for_each(|p| {
                    engine.remove(p);
                }),
                "dispatcher partitions assigned" => dispatcher.extend(parts),
                "dispatcher partitions revoked; handing over" => parts.iter().for_each(|p| {
                    dispatcher.remove(p);
                }),
                _ => {}
            }
        }
        (engine, dispatcher)
    }
}

/// `[0, 3]` as logged (a Debug-formatted list) → the partitions.
fn partitions(field: &serde_json::Value) -> Vec<i32> {
    field
        .as_str()
        .unwrap_or("")
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

fn logs(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| n.process.log.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until, in both groups, each process owns some partitions and
/// together they own each partition once.
async fn wait_settled(nodes: &mut [Node], what: &str) {
    let deadline = Instant::now() + JOIN_WITHIN;
    loop {
        for node in nodes.iter_mut() {
            node.ensure_running();
        }
        let owned: Vec<_> = nodes.iter().map(Node::owned).collect();
        let split = |sets: Vec<&BTreeSet<i32>>| {
            let total: usize = sets.iter().map(|s| s.len()).sum();
            let union: BTreeSet<i32> = sets.iter().flat_map(|s| s.iter().copied()).collect();
            sets.iter().all(|s| !s.is_empty())
                && total == PARTITIONS as usize
                && union.len() == PARTITIONS as usize
        };
        if split(owned.iter().map(|o| &o.0).collect())
            && split(owned.iter().map(|o| &o.1).collect())
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {JOIN_WITHIN:?} waiting for {what}: (engine, dispatcher) partitions \
             per process {owned:?}; logs: {}",
            logs(nodes)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn timer(id: String, fire_at_ms: u64, url: String) -> TimerCommand {
    TimerCommand::Schedule(TimerSpec {
        id,
        fire_at_ms,
        callback: Callback {
            url,
            method: "POST".into(),
            headers: Default::default(),
            body: String::new(),
        },
        attempt: 1,
        retry: Default::default(),
        first_fire_at_ms: None,
        schedule_id: None,
        delivery: None,
    })
}

/// A timer due at once on every partition, each called back: every
/// partition is live and its dispatcher calls.
async fn warm_up(topics: &Topics, receiver: &mut Receiver, counts: &mut Callbacks) {
    let probes: Vec<TimerCommand> = (0..PARTITIONS)
        .map(|p| {
            let id = (0..)
                .map(|i| format!("probe-{p}-{i}"))
                .find(|id| chime_wire::partition::partition_for_key(id.as_bytes(), PARTITIONS) == p)
                .expect("an id for every partition");
            timer(id, now_ms(), receiver.url("/probe"))
        })
        .collect();
    TimerProducer::new(topics).send_all(&probes).await;
    let deadline = Instant::now() + JOIN_WITHIN;
    while probes.iter().any(|p| counts.of(p.id()) == 0) {
        assert!(
            Instant::now() < deadline,
            "probe timers not all called back within {JOIN_WITHIN:?}"
        );
        counts.drain(receiver).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Timers created at a steady rate by direct produce, each due
/// [`DUE_AFTER_MS`] later; only acknowledged ones are counted.
struct Load {
    acked: Arc<Mutex<Vec<(String, u64)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(topics: &Topics, url: String) -> Load {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let producer = TimerProducer::new(topics);
        let (a, s) = (acked.clone(), stop.clone());
        let task = tokio::spawn(async move {
            const EVERY: Duration = Duration::from_millis(50);
            let per_batch = RATE_PER_S * EVERY.as_millis() as usize / 1000;
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut next = 0usize;
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                let due = now_ms() + DUE_AFTER_MS;
                let batch: Vec<TimerCommand> = (next..next + per_batch)
                    .map(|i| timer(format!("r-{i}"), due, url.clone()))
                    .collect();
                next += per_batch;
                producer.send_all(&batch).await; // panics unless acknowledged
                a.lock()
                    .unwrap()
                    .extend(batch.iter().map(|c| (c.id().to_string(), due)));
            }
        });
        Load { acked, stop, task }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `n` timers were acknowledged.
    async fn wait_for(&self, n: usize, what: &str) {
        let deadline = Instant::now() + JOIN_WITHIN;
        while self.acked_count() < n {
            assert!(!self.task.is_finished(), "the load stopped");
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops creating; every acknowledged timer (id, due ms).
    async fn stop(self) -> Vec<(String, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the load ran to its end");
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

/// Callbacks per timer id, with their arrival times and attempts.
#[derive(Default)]
struct Callbacks {
    by_id: HashMap<String, Vec<(u64, String)>>,
    strangers: usize,
}

impl Callbacks {
    fn of(&self, id: &str) -> usize {
        self.by_id.get(id).map_or(0, Vec::len)
    }

    fn describe(&self, id: &str) -> String {
        format!("{id}: {:?}", self.by_id.get(id))
    }

    fn add(&mut self, r: common::Received) {
        match r.header("chime-timer-id") {
            Some(id) if r.path == "/t" || r.path == "/probe" => {
                let attempt = r.header("chime-attempt").unwrap_or("?").to_string();
                self.by_id
                    .entry(id.to_string())
                    .or_default()
                    .push((r.at_ms, attempt));
            }
            _ => self.strangers += 1,
        }
    }

    /// What has arrived so far.
    async fn drain(&mut self, receiver: &mut Receiver) {
        while let Some(r) = receiver.next(Duration::from_millis(1)).await {
            self.add(r);
        }
    }

    /// Everything, once no process can call any more: until the receiver
    /// has been quiet for a second.
    async fn drain_to_end(&mut self, receiver: &mut Receiver) {
        while let Some(r) = receiver.next(Duration::from_secs(1)).await {
            self.add(r);
        }
    }
}
