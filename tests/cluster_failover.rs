//! chime across broker failures on the local three-node cluster
//! (`scripts/kafka cluster`, started by the harness): real brokers killed and
//! restarted under a steady load of 2,000 timers a second, real chime
//! processes (two engines, two dispatchers, ingest), real callbacks on
//! loopback.
//!
//! Each test asserts behaviour only: every acknowledged timer (Kafka's ack,
//! or ingest's `201`) is called back, none before its due time, the checker
//! (which reads `chime.fires` read_committed, as `chime check` does) finds
//! nothing lost, fired twice or early, ingest answers only `201` or `503`
//! with `Retry-After`, and no chime process exits. How long things paused is
//! measured and printed (run with `--nocapture`), never asserted: the
//! figures in docs/operations.md come from these runs.
//!
//! Every test puts the cluster back as it found it (every node up, every
//! replica in sync) before it ends.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chime_check::{check, CheckConfig, CheckReport};
use chime_wire::partition::partition_for_key;
use chime_wire::time::now_ms;
use chime_wire::Topics;
use common::cluster::{wait_for, Cluster, Node, NODES, SETTLE};
use common::load::{CallbackLog, Load, LoadSpec, Outcome};
use common::processes::{ChimeProcess, FireWatcher, INGEST_LISTENING};

const PARTITIONS: i32 = 6;
/// Timers due per second: 2,000, or `CHIME_CLUSTER_TEST_RATE`.
fn rate() -> u64 {
    std::env::var("CHIME_CLUSTER_TEST_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2_000)
}
/// How far ahead of its due time each timer is created.
const LEAD_IN: Duration = Duration::from_secs(4);
/// One create in this many goes through ingest; the rest are produced.
const REST_EVERY: u64 = 10;
/// Load before the fault, so the figures have a normal cadence to compare with.
const WARM_UP: Duration = Duration::from_secs(8);
/// The longest the test waits for the callbacks after the load stopped:
/// generous, for a machine so loaded that chime falls behind the load.
const DRAIN: Duration = Duration::from_secs(300);

/// Every callback goes to the one receiver: the dispatchers may call it as
/// often at once as anything (`CHIME_MAX_IN_FLIGHT`, 1024), not only the
/// default 64 per host, which with a receiver slowed by a busy machine would
/// cap delivery below the load.
const PER_HOST: (&str, &str) = ("CHIME_MAX_IN_FLIGHT_PER_HOST", "1024");

/// The engines' transaction timeout: 10 s, not chime's
/// default 3 s. With 3 s, a transaction held up by a broker failover (its
/// records waiting for a new leader, its coordinator moving) can outlive the
/// timeout; the coordinator then aborts it and bumps the producer's epoch,
/// librdkafka reports that as "fenced by a newer instance", and the engine,
/// taking it for another engine with its instance id, exits. Seen once in
/// three broker kills (docs/operations.md, "chime across broker failures").
const TRANSACTION_TIMEOUT: (&str, &str) = ("CHIME_TRANSACTION_TIMEOUT_MS", "10000");

/// The engines' lead and tick (chime's defaults), for the checker.
const LEAD: Duration = chime_engine::DEFAULT_LEAD;
const TICK: Duration = Duration::from_millis(10);

/// The stable names of one deployment's processes (so their transactional
/// ids, and with them their coordinators, are known in advance).
#[derive(Debug, Clone)]
struct Names {
    prefix: String,
    engines: [String; 2],
    dispatchers: [String; 2],
}

impl Names {
    fn new(test: &str) -> Names {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..6];
        Names {
            prefix: common::unique_prefix(test),
            engines: [format!("engine-a-{tag}"), format!("engine-b-{tag}")],
            dispatchers: [format!("dispatcher-a-{tag}"), format!("dispatcher-b-{tag}")],
        }
    }

    fn engine_group(&self) -> String {
        format!("{}-engine", self.prefix)
    }

    fn dispatcher_group(&self) -> String {
        format!("{}-dispatcher", self.prefix)
    }

    /// The transactional ids of the engines, then of the dispatchers.
    fn transactional_ids(&self) -> Vec<String> {
        let engines = self
            .engines
            .iter()
            .map(|i| format!("{}-{i}", self.engine_group()));
        let dispatchers = self
            .dispatchers
            .iter()
            .map(|i| format!("{}-{i}", self.dispatcher_group()));
        engines.chain(dispatchers).collect()
    }
}

/// chime on the cluster: two engines, two dispatchers and one ingest, each
/// its own `chime` process with chime's default settings.
struct Deployment {
    bootstrap: String,
    names: Names,
    topics: Topics,
    /// Ingest's base URL, of each ingest.
    apis: Vec<String>,
    processes: Vec<ChimeProcess>,
}

impl Deployment {
    /// Starts the processes on existing topics (`env` adds settings) and
    /// waits until a timer on every partition was called back.
    async fn start(
        cluster: &Cluster,
        names: Names,
        callbacks: &CallbackLog,
        env: &[(&str, &str)],
    ) -> Deployment {
        let bootstrap = cluster.bootstrap().to_string();
        let mut env = env.to_vec();
        env.push(("CHIME_KAFKA_BOOTSTRAP", &bootstrap));
        env.push(PER_HOST);
        env.push(TRANSACTION_TIMEOUT);
        let prefix = names.prefix.as_str();
        let mut processes = Vec::new();
        for instance in names.engines.iter() {
            processes.push(ChimeProcess::spawn_env(
                &format!("{prefix}-{instance}"),
                &[
                    "--topic-prefix",
                    prefix,
                    "--instance-id",
                    instance,
                    "engine",
                ],
                &env,
            ));
        }
        for instance in names.dispatchers.iter() {
            processes.push(ChimeProcess::spawn_env(
                &format!("{prefix}-{instance}"),
                &[
                    "--topic-prefix",
                    prefix,
                    "--instance-id",
                    instance,
                    "dispatcher",
                ],
                &env,
            ));
        }
        let mut ingest = ChimeProcess::spawn_env(
            &format!("{prefix}-ingest"),
            &[
                "--topic-prefix",
                prefix,
                "ingest",
                "--listen",
                "127.0.0.1:0",
            ],
            &env,
        );
        let api = format!("http://{}", ingest.listening(INGEST_LISTENING));
        processes.push(ingest);
        let d = Deployment {
            bootstrap,
            topics: Topics::new(prefix),
            names,
            apis: vec![api],
            processes,
        };
        d.wait_live(callbacks).await;
        d
    }

    /// Two `chime all` processes (each ingest, engine and dispatcher), named
    /// after the engines of `names`; waits as [`Deployment::start`].
    async fn start_all(
        cluster: &Cluster,
        names: Names,
        callbacks: &CallbackLog,
        env: &[(&str, &str)],
    ) -> Deployment {
        let bootstrap = cluster.bootstrap().to_string();
        let mut env = env.to_vec();
        env.push(("CHIME_KAFKA_BOOTSTRAP", &bootstrap));
        env.push(PER_HOST);
        env.push(TRANSACTION_TIMEOUT);
        let prefix = names.prefix.as_str();
        let partitions = PARTITIONS.to_string();
        let mut processes = Vec::new();
        let mut apis = Vec::new();
        for instance in names.engines.iter() {
            let mut p = ChimeProcess::spawn_env(
                &format!("{prefix}-{instance}"),
                &[
                    "--topic-prefix",
                    prefix,
                    "--instance-id",
                    instance,
                    "all",
                    "--listen",
                    "127.0.0.1:0",
                    "--partitions",
                    &partitions,
                ],
                &env,
            );
            apis.push(format!("http://{}", p.listening(INGEST_LISTENING)));
            processes.push(p);
        }
        let d = Deployment {
            bootstrap,
            topics: Topics::new(prefix),
            names,
            apis,
            processes,
        };
        d.wait_live(callbacks).await;
        d
    }

    /// Creates a timer due now on every partition (through ingest, retrying
    /// its 503s) and waits for every callback: every role has joined and
    /// every partition is live.
    async fn wait_live(&self, callbacks: &CallbackLog) {
        let http = reqwest::Client::new();
        let mut ids = Vec::new();
        for p in 0..PARTITIONS {
            let id = (0..)
                .map(|i| format!("probe-{p}-{i}"))
                .find(|id| partition_for_key(id.as_bytes(), PARTITIONS) == p)
                .unwrap();
            let body = serde_json::json!({"id": id, "delay_ms": 0, "callback": {"url": callbacks.url("/probe")}});
            wait_for("ingest accepts a probe timer", SETTLE, || async {
                let r = http
                    .post(format!("{}/v1/timers", self.apis[0]))
                    .json(&body)
                    .send()
                    .await?;
                let status = r.status().as_u16();
                Ok(((status == 201).then_some(()), format!("status {status}")))
            })
            .await;
            ids.push(id);
        }
        callbacks
            .wait_for(
                "a probe timer on every partition",
                &ids,
                Duration::from_secs(90),
            )
            .await;
    }

    fn topic_names(&self) -> [&str; 4] {
        [
            &self.topics.timers,
            &self.topics.changelog,
            &self.topics.fires,
            &self.topics.dead_letters,
        ]
    }

    /// The steady load: `RATE` timers a second, one in `REST_EVERY` through ingest.
    fn load(&self, callbacks: &CallbackLog) -> Load {
        Load::start(
            &self.bootstrap,
            &self.topics,
            &callbacks.url("/due"),
            LoadSpec {
                rate: rate(),
                lead_in: LEAD_IN,
                rest_every: REST_EVERY,
                api: Some(self.apis[0].clone()),
            },
        )
    }

    /// Panics if any chime process has exited.
    fn assert_all_running(&mut self) {
        for p in &mut self.processes {
            if let Some(status) = p.exited() {
                panic!("{} exited ({status}); its log: {:?}", p.name, p.log);
            }
        }
    }
}

/// Topics laid out as `chime topics` does on this cluster: replication
/// factor 3 (min(3, brokers)), `min.insync.replicas=2`.
async fn chime_topics(cluster: &Cluster, names: &Names) {
    let layout = chime_kafka::admin::Layout {
        partitions: PARTITIONS,
        replication_factor: None,
    };
    chime_kafka::admin::ensure_topics(cluster.bootstrap(), &Topics::new(&names.prefix), layout)
        .await
        .expect("create chime's topics");
    let topics = Topics::new(&names.prefix);
    let parts = cluster
        .wait_in_sync(
            &[
                &topics.timers,
                &topics.changelog,
                &topics.fires,
                &topics.dead_letters,
            ],
            SETTLE,
        )
        .await;
    for p in parts.iter().flatten() {
        assert_eq!(p.replicas.len(), 3, "replication factor 3: {p:?}");
    }
}

/// Runs the checker (grace 0) until it finds every timer in the log fired,
/// for at most a minute (a create that was not acknowledged may still have
/// been written, and fire a moment after the acknowledged ones).
async fn audit(bootstrap: &str, prefix: &str) -> CheckReport {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut config = CheckConfig::new(bootstrap, prefix, LEAD, TICK);
        config.grace = Duration::ZERO;
        let report = tokio::task::spawn_blocking(move || check(&config))
            .await
            .expect("checker task")
            .expect("the checker reads the topics");
        let waiting = !report.missing.is_empty() || !report.overdue.is_empty();
        if !waiting || tokio::time::Instant::now() >= deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Stops the load, waits for every acknowledged timer's callback and fire
/// record, audits, and asserts what every test asserts.
async fn finish(
    mut d: Deployment,
    load: Load,
    callbacks: &CallbackLog,
    watcher: &FireWatcher,
) -> (Outcome, CheckReport) {
    let created = load.finish().await;
    let acked: Vec<String> = created
        .iter()
        .filter(|c| c.acked_ms.is_some())
        .map(|c| c.id.clone())
        .collect();
    callbacks
        .wait_for("every acknowledged timer called back", &acked, DRAIN)
        .await;
    let acked_set: HashSet<&str> = acked.iter().map(String::as_str).collect();
    let want = acked_set.len();
    tokio::task::block_in_place(|| {
        watcher.wait_until(
            "a fire record for every acknowledged timer",
            DRAIN,
            |fires| {
                fires
                    .iter()
                    .filter(|f| acked_set.contains(f.id.as_str()))
                    .map(|f| f.id.as_str())
                    .collect::<HashSet<_>>()
                    .len()
                    >= want
            },
        )
    });
    let report = audit(&d.bootstrap, &d.names.prefix).await;
    d.assert_all_running();
    let outcome = Outcome::new(created, callbacks.calls());

    assert!(report.is_clean(), "the checker found problems:\n{report}");
    assert_eq!(report.pending, 0, "{report}");
    assert!(
        report.fires >= want && report.expected >= want,
        "every acknowledged timer ({want}) is in the log and fired:\n{report}"
    );
    // Twice into fires is the checker's verdict (read_committed): the
    // watcher, a group member, re-reads from the start after losing its
    // membership in a failover, and so may see a record twice.
    let lost = outcome.lost();
    assert!(
        lost.is_empty(),
        "acknowledged but never called back: {:?}",
        &lost[..lost.len().min(5)]
    );
    let early = outcome.early();
    assert!(
        early.is_empty(),
        "called before due: {:?}",
        &early[..early.len().min(5)]
    );
    let bad = outcome.bad_answers();
    assert!(
        bad.is_empty(),
        "ingest answered other than 201 or 503 with Retry-After: {:?}",
        &bad[..bad.len().min(5)]
    );
    drop(d);
    (outcome, report)
}

/// One line of figures for a fault.
struct Figures {
    fault: String,
    pause_ms: u64,
    lateness: common::load::Percentiles,
    /// The engines' side, from the fire records (their `chime-fired-at-ms`):
    /// the longest time no fire was emitted, and how late the fires of the
    /// timers due meanwhile were emitted.
    fire_pause_ms: u64,
    fire_lateness: common::load::Percentiles,
}

/// The fire records of the timers due in `[from, to)` that `select` picks:
/// the longest gap between their emissions (ending in the window) and the
/// lateness of their emission.
fn fire_figures(
    fires: &[common::processes::SeenFire],
    from: u64,
    to: u64,
    select: impl Fn(&str) -> bool,
) -> (u64, common::load::Percentiles) {
    let mut emitted: Vec<u64> = fires
        .iter()
        .filter(|f| select(&f.id) && !f.id.starts_with("probe"))
        .map(|f| f.fired_at_ms)
        .collect();
    emitted.sort_unstable();
    let mut pause = 0;
    for w in emitted.windows(2) {
        if w[1] >= from && w[1] < to {
            pause = pause.max(w[1] - w[0]);
        }
    }
    let lateness = common::load::Percentiles::of(
        fires
            .iter()
            .filter(|f| select(&f.id) && f.fire_at_ms >= from && f.fire_at_ms < to)
            .map(|f| f.fired_at_ms.saturating_sub(f.fire_at_ms))
            .collect(),
    );
    (pause, lateness)
}

impl Figures {
    /// Adds the engines' side of the window `[from, to)` for the timers `select` picks.
    fn with_fires(
        mut self,
        watcher: &FireWatcher,
        from: u64,
        to: u64,
        select: impl Fn(&str) -> bool,
    ) -> Figures {
        let (pause, lateness) = fire_figures(&watcher.snapshot(), from, to, select);
        self.fire_pause_ms = pause;
        self.fire_lateness = lateness;
        self
    }
}

/// Deletes a passed test's topics (a failed test keeps them to look at).
async fn delete_topics(cluster: &Cluster, names: &Names) {
    let t = Topics::new(&names.prefix);
    cluster
        .delete_topics(&[&t.timers, &t.changelog, &t.fires, &t.dead_letters])
        .await;
}

/// Prints the figures of a run: the faults, the counts, the checker's report.
fn print_figures(
    test: &str,
    faults: &[Figures],
    outcome: &Outcome,
    report: &CheckReport,
    notes: &[String],
) {
    let acknowledged = outcome.acknowledged().count();
    let refused = outcome
        .created
        .iter()
        .filter(|c| c.status == Some(503))
        .count();
    let unanswered = outcome.created.len() - acknowledged - refused;
    eprintln!("==== {test} ====");
    eprintln!(
        "load: {} timers/s for {} s, created {} s ahead, 1 in {REST_EVERY} through ingest; {} partitions, replication 3",
        rate(),
        outcome.created.len() as u64 / rate(),
        LEAD_IN.as_secs(),
        PARTITIONS
    );
    eprintln!(
        "creates: {} acknowledged, {refused} refused with 503, {unanswered} unacknowledged otherwise",
        acknowledged
    );
    for note in notes {
        eprintln!("{note}");
    }
    eprintln!(
        "| fault | pause in callbacks | callback lateness of the timers due meanwhile (p50 / p99 / max) | pause in fire records | fire lateness (p50 / p99 / max) |"
    );
    eprintln!("| --- | --- | --- | --- | --- |");
    for f in faults {
        eprintln!(
            "| {} | {:.1} s | {} / {} / {} ms ({} timers) | {:.1} s | {} / {} / {} ms |",
            f.fault,
            f.pause_ms as f64 / 1000.0,
            f.lateness.p50,
            f.lateness.p99,
            f.lateness.max,
            f.lateness.count,
            f.fire_pause_ms as f64 / 1000.0,
            f.fire_lateness.p50,
            f.fire_lateness.p99,
            f.fire_lateness.max,
        );
    }
    eprintln!(
        "lost {} / duplicated in fires {} / early {}; callbacks made twice (allowed) {}; checker: {} expected, {} fire records, lateness p50 {} p99 {} max {} ms",
        outcome.lost().len(),
        report.duplicates.len(),
        report.early.len() + outcome.early().len(),
        outcome.called_twice(),
        report.expected,
        report.fires,
        report.lateness_ms.p50,
        report.lateness_ms.p99,
        report.lateness_ms.max
    );
    eprintln!("load average: {}", load_average());
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

async fn sleep_until_ms(at_ms: u64) {
    let now = now_ms();
    if at_ms > now {
        tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
    }
}

/// The row for the warm-up, before any fault: the same load, nothing wrong.
fn before_the_fault(
    outcome: &Outcome,
    watcher: &FireWatcher,
    load_started_ms: u64,
    fault_ms: u64,
) -> Figures {
    let from = load_started_ms + LEAD_IN.as_millis() as u64 + 1_000;
    Figures {
        fault: "none (the warm-up before the fault)".into(),
        pause_ms: outcome.longest_pause(from, fault_ms),
        lateness: outcome.lateness(from, fault_ms),
        fire_pause_ms: 0,
        fire_lateness: Default::default(),
    }
    .with_fires(watcher, from, fault_ms, |_| true)
}

/// kill -9 the broker that leads the most chime partitions while 2,000
/// timers a second come due, and leave it down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_kill_loses_nothing_and_fires_nothing_twice() {
    common::init_logging();
    let cluster = Cluster::start().await;
    cluster.restore().await;
    let names = Names::new("cl-kill");
    chime_topics(&cluster, &names).await;
    let callbacks = CallbackLog::start().await;
    let d = Deployment::start(&cluster, names, &callbacks, &[]).await;
    let watcher = FireWatcher::start_on(cluster.bootstrap(), &d.topics);
    let load = d.load(&callbacks);
    let started = load.started_ms;
    tokio::time::sleep(WARM_UP).await;

    let (victim, led) = cluster
        .busiest_node(&d.topic_names())
        .await
        .expect("leaders");
    let controller = cluster.active_controller().await;
    let killed_at = now_ms();
    cluster.kill(victim).await;
    cluster.wait_leaders(&d.topic_names(), SETTLE).await;
    let elected_ms = now_ms() - killed_at;
    // The load goes on with the node down for 15 s more.
    sleep_until_ms(killed_at + 15_000).await;
    let names = d.names.clone();
    let (outcome, report) = finish(d, load, &callbacks, &watcher).await;

    let window = killed_at + 10_000;
    let faults = [
        before_the_fault(&outcome, &watcher, started, killed_at),
        Figures {
            fault: format!(
                "kill -9 node {victim} (led {led} of {} chime partitions{})",
                4 * PARTITIONS,
                if controller == Some(victim) {
                    "; the active controller"
                } else {
                    ""
                }
            ),
            pause_ms: outcome.longest_pause(killed_at, window),
            lateness: outcome.lateness(killed_at, window),
            fire_pause_ms: 0,
            fire_lateness: Default::default(),
        }
        .with_fires(&watcher, killed_at, window, |_| true),
    ];
    print_figures(
        "broker kill",
        &faults,
        &outcome,
        &report,
        &[
            format!("new leaders for all chime partitions {elected_ms} ms after the kill"),
            "timers due meanwhile: due in the 10 s after the kill".into(),
        ],
    );
    cluster.restore().await;
    delete_topics(&cluster, &names).await;
}

/// Restart every broker in turn (SIGTERM, start, wait until every replica is
/// in sync again), the active controller last, under the same load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_nothing_and_fires_nothing_twice() {
    common::init_logging();
    let cluster = Cluster::start().await;
    cluster.restore().await;
    let names = Names::new("cl-roll");
    chime_topics(&cluster, &names).await;
    let callbacks = CallbackLog::start().await;
    let d = Deployment::start(&cluster, names, &callbacks, &[]).await;
    let watcher = FireWatcher::start_on(cluster.bootstrap(), &d.topics);
    let load = d.load(&callbacks);
    let started = load.started_ms;
    tokio::time::sleep(WARM_UP).await;

    let controller = cluster.active_controller().await;
    let mut order: Vec<Node> = NODES
        .iter()
        .copied()
        .filter(|n| Some(*n) != controller)
        .collect();
    order.extend(controller);
    let mut restarts = Vec::new();
    for node in order {
        let stopped_at = now_ms();
        cluster.restart(node).await;
        let up_ms = now_ms() - stopped_at;
        let all = cluster.topic_names().await.expect("topics");
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        cluster.wait_in_sync(&all, SETTLE).await;
        let in_sync_at = now_ms();
        restarts.push((node, stopped_at, up_ms, in_sync_at));
    }
    let last_in_sync = restarts.last().map(|r| r.3).unwrap();
    sleep_until_ms(last_in_sync + 5_000).await;
    let names = d.names.clone();
    let (outcome, report) = finish(d, load, &callbacks, &watcher).await;

    let mut faults = vec![before_the_fault(&outcome, &watcher, started, restarts[0].1)];
    let mut notes = Vec::new();
    for (node, stopped_at, up_ms, in_sync_at) in &restarts {
        faults.push(
            Figures {
                fault: format!(
                    "restart node {node}{}",
                    if controller == Some(*node) {
                        " (the active controller)"
                    } else {
                        ""
                    }
                ),
                pause_ms: outcome.longest_pause(*stopped_at, *in_sync_at),
                lateness: outcome.lateness(*stopped_at, *in_sync_at),
                fire_pause_ms: 0,
                fire_lateness: Default::default(),
            }
            .with_fires(&watcher, *stopped_at, *in_sync_at, |_| true),
        );
        notes.push(format!(
            "node {node}: stopped and started again in {up_ms} ms, every replica in sync {} ms after the stop",
            in_sync_at - stopped_at
        ));
    }
    notes.push(
        "timers due meanwhile: due from the node's stop until every replica was in sync again"
            .into(),
    );
    faults.push(
        Figures {
            fault: "the whole rolling restart".into(),
            pause_ms: outcome.longest_pause(restarts[0].1, last_in_sync),
            lateness: outcome.lateness(restarts[0].1, last_in_sync),
            fire_pause_ms: 0,
            fire_lateness: Default::default(),
        }
        .with_fires(&watcher, restarts[0].1, last_in_sync, |_| true),
    );
    print_figures("rolling restart", &faults, &outcome, &report, &notes);
    cluster.restore().await;
    delete_topics(&cluster, &names).await;
}

/// Who coordinates what: the leaders of Kafka's internal topics.
#[derive(Debug)]
struct Coordinators {
    offsets: Vec<common::cluster::PartitionState>,
    transactions: Vec<common::cluster::PartitionState>,
}

impl Coordinators {
    /// Makes sure both internal topics exist (a transactional producer's
    /// initialisation and a group's offset look-up create them) and reads
    /// their leaders.
    async fn read(cluster: &Cluster) -> Coordinators {
        let bootstrap = cluster.bootstrap().to_string();
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            use rdkafka::producer::{BaseProducer, Producer};
            let producer: BaseProducer = chime_kafka::producer_config(&bootstrap, "test-init")
                .set("transactional.id", "chime-test-coordinators")
                .create()
                .expect("producer");
            producer
                .init_transactions(Duration::from_secs(60))
                .expect("init transactions");
            let consumer: BaseConsumer =
                chime_kafka::consumer_config(&bootstrap, "test-init", "chime-test-coordinators")
                    .create()
                    .expect("consumer");
            // Only the look-up of the group's coordinator matters here.
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition("chime-test-coordinators", 0);
            let _ = consumer.committed_offsets(tpl, Duration::from_secs(60));
        })
        .await
        .expect("init task");
        let mut seen = cluster
            .wait_in_sync(&["__consumer_offsets", "__transaction_state"], SETTLE)
            .await;
        let transactions = seen.pop().unwrap();
        let offsets = seen.pop().unwrap();
        Coordinators {
            offsets,
            transactions,
        }
    }

    fn leader(parts: &[common::cluster::PartitionState], key: &str) -> Option<Node> {
        let p = common::cluster::coordinator_partition(key, parts.len() as i32);
        parts
            .iter()
            .find(|s| s.partition == p)
            .and_then(|s| s.leader)
    }

    fn group(&self, group: &str) -> Option<Node> {
        Coordinators::leader(&self.offsets, group)
    }

    fn transactions(&self, transactional_id: &str) -> Option<Node> {
        Coordinators::leader(&self.transactions, transactional_id)
    }

    /// Names whose engines' coordinators (group and transactions) are on
    /// `engines_on` nodes, and whose dispatchers' are on `dispatchers_on`.
    fn names(&self, test: &str, engines_on: &[Node], dispatchers_on: &[Node]) -> Names {
        let on = |nodes: &[Node], n: Option<Node>| n.is_some_and(|n| nodes.contains(&n));
        let fits = |names: &Names| {
            let ids = names.transactional_ids();
            (on(engines_on, self.group(&names.engine_group()))
                && on(dispatchers_on, self.group(&names.dispatcher_group()))
                && ids[..2]
                    .iter()
                    .all(|id| on(engines_on, self.transactions(id)))
                && ids[2..]
                    .iter()
                    .all(|id| on(dispatchers_on, self.transactions(id))))
            .then_some(())
        };
        let (names, ()) = self
            .find_names(test, fits)
            .unwrap_or_else(|| panic!("no names whose coordinators are on the nodes asked"));
        names
    }

    /// Names whose every coordinator (both groups, all four transactional
    /// ids) is one node, and that node: one of `preferred` if any name
    /// fits, else any node. The node is chosen from the names rather than
    /// the names from a node, because a node may lead few partitions of an
    /// internal topic (one that was restarted leads nothing until the
    /// preferred-leader election), which made a fixed node's names rare.
    fn names_on_one_node(&self, test: &str, preferred: &[Node]) -> (Names, Node) {
        let one_node = |names: &Names| -> Option<Node> {
            let first = self.group(&names.engine_group())?;
            let all_there = self.group(&names.dispatcher_group()) == Some(first)
                && names
                    .transactional_ids()
                    .iter()
                    .all(|id| self.transactions(id) == Some(first));
            all_there.then_some(first)
        };
        for candidates in [preferred, &NODES[..]] {
            let fits = |names: &Names| one_node(names).filter(|n| candidates.contains(n));
            if let Some(found) = self.find_names(test, fits) {
                return found;
            }
        }
        panic!("no names whose coordinators are all on one node: {self:?}");
    }

    /// The first of many random names that `fits`, with what it found.
    fn find_names<T>(&self, test: &str, fits: impl Fn(&Names) -> Option<T>) -> Option<(Names, T)> {
        (0..200_000).find_map(|_| {
            let names = Names::new(test);
            fits(&names).map(|found| (names, found))
        })
    }
}

/// chime's four topics created by hand, partition `p` on the nodes
/// `replicas(p)`, with `min.insync.replicas=1` (and the changelog compacted).
async fn placed_topics(cluster: &Cluster, names: &Names, replicas: impl Fn(i32) -> Vec<Node>) {
    let topics = Topics::new(&names.prefix);
    let assignment: Vec<Vec<Node>> = (0..PARTITIONS).map(replicas).collect();
    for topic in [&topics.timers, &topics.fires, &topics.dead_letters] {
        cluster
            .create_topic_assigned(topic, &assignment, &[("min.insync.replicas", "1")])
            .await;
    }
    cluster
        .create_topic_assigned(
            &topics.changelog,
            &assignment,
            &[
                ("min.insync.replicas", "1"),
                ("cleanup.policy", "compact"),
                ("delete.retention.ms", "86400000"),
            ],
        )
        .await;
}

/// A node to kill that is not the active controller (whose death would add
/// a controller election to what is measured), and the other two.
async fn victim_and_pair(cluster: &Cluster) -> (Node, [Node; 2]) {
    let controller = active_controller(cluster).await;
    let victim = *NODES.iter().rev().find(|n| **n != controller).unwrap();
    let pair: Vec<Node> = NODES.iter().copied().filter(|n| *n != victim).collect();
    (victim, [pair[0], pair[1]])
}

async fn active_controller(cluster: &Cluster) -> Node {
    wait_for("an active controller", SETTLE, || async {
        Ok((cluster.active_controller().await, "none".to_string()))
    })
    .await
}

/// One partition briefly without a leader holds up only itself. Partition 0
/// of every chime topic has its only replica on one node, every other
/// partition its only replica on one of the other two, and every coordinator of
/// chime's groups and transactions is on those two as well; the lone node
/// is killed, and started again 10 s later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaderless_partition_holds_up_only_itself() {
    common::init_logging();
    let cluster = Cluster::start().await;
    cluster.restore().await;
    let (victim, pair) = victim_and_pair(&cluster).await;
    let coordinators = Coordinators::read(&cluster).await;
    let names = coordinators.names("cl-alone", &pair, &pair);
    // Kafka wants every partition of a topic to have as many replicas, so
    // all have one: partition 0 on the victim, the others on the pair.
    placed_topics(&cluster, &names, |p| {
        if p == 0 {
            vec![victim]
        } else {
            vec![pair[(p % 2) as usize]]
        }
    })
    .await;
    let callbacks = CallbackLog::start().await;
    // Partition 0 has one replica: the roles are told to accept that.
    let d = Deployment::start(
        &cluster,
        names,
        &callbacks,
        &[("CHIME_REPLICATION_FACTOR", "1")],
    )
    .await;
    let watcher = FireWatcher::start_on(cluster.bootstrap(), &d.topics);
    let load = d.load(&callbacks);
    let started = load.started_ms;
    tokio::time::sleep(WARM_UP).await;

    let killed_at = now_ms();
    cluster.kill(victim).await;
    let timers = d.topics.timers.clone();
    let gone = cluster
        .wait_partition(&timers, 0, "no leader", SETTLE, |p| p.leader.is_none())
        .await;
    let leaderless_ms = now_ms() - killed_at;
    sleep_until_ms(killed_at + 10_000).await;
    let restarted_at = now_ms();
    cluster.restart(victim).await;
    cluster.wait_in_sync(&d.topic_names(), SETTLE).await;
    let back_at = now_ms();
    sleep_until_ms(back_at + 5_000).await;
    let names = d.names.clone();
    let (outcome, report) = finish(d, load, &callbacks, &watcher).await;

    let zero = |id: &str| partition_for_key(id.as_bytes(), PARTITIONS) == 0;
    let others = |id: &str| !zero(id);
    let available = Figures {
        fault: format!(
            "partitions 1-{} (available), while partition 0 was out",
            PARTITIONS - 1
        ),
        pause_ms: outcome.longest_pause_of(killed_at, back_at, others),
        lateness: lateness_of(&outcome, killed_at, back_at, others),
        fire_pause_ms: 0,
        fire_lateness: Default::default(),
    }
    .with_fires(&watcher, killed_at, back_at, others);
    let alone = Figures {
        fault: "partition 0 (no leader)".into(),
        pause_ms: outcome.longest_pause_of(killed_at, back_at + 30_000, zero),
        lateness: lateness_of(&outcome, killed_at, back_at, zero),
        fire_pause_ms: 0,
        fire_lateness: Default::default(),
    }
    .with_fires(&watcher, killed_at, back_at + 30_000, zero);
    print_figures(
        "leaderless partition",
        &[before_the_fault(&outcome, &watcher, started, killed_at), available, alone],
        &outcome,
        &report,
        &[
            format!(
                "node {victim} (partition 0's only replica) killed; metadata showed partition 0 without a leader {leaderless_ms} ms later ({gone:?}); started again after {} ms, partition 0 led again {} ms after the kill",
                restarted_at - killed_at,
                back_at - killed_at
            ),
            "timers due meanwhile: due from the kill until partition 0 was back".into(),
        ],
    );
    cluster.restore().await;
    delete_topics(&cluster, &names).await;
}

/// Lateness of the acknowledged timers due in `[from, to)` whose ids `select` picks.
fn lateness_of(
    outcome: &Outcome,
    from: u64,
    to: u64,
    select: impl Fn(&str) -> bool,
) -> common::load::Percentiles {
    common::load::Percentiles::of(
        outcome
            .acknowledged()
            .filter(|c| c.due_ms >= from && c.due_ms < to && select(&c.id))
            .filter_map(|c| outcome.first_call(&c.id))
            .map(|call| call.at_ms.saturating_sub(call.fire_at_ms))
            .collect(),
    )
}

/// The broker that coordinates the groups and transactions of the engines
/// and the dispatchers is killed (chosen with the names: one that is not the
/// active controller if any fits); it holds no replica of chime's topics.
/// Every transaction needs its coordinator, so every partition waits for
/// the coordinators' new leaders: measured, not asserted. What is asserted
/// is that everything is called back, exactly once into the fires: a
/// dispatcher whose group coordinator had left the cluster once waited
/// forever inside librdkafka (the hung offsets call, kafka/src/txn.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinator_stalls_chime_only_until_its_election() {
    common::init_logging();
    let cluster = Cluster::start().await;
    cluster.restore().await;
    let controller = active_controller(&cluster).await;
    let coordinators = Coordinators::read(&cluster).await;
    let others: Vec<Node> = NODES.iter().copied().filter(|n| *n != controller).collect();
    let (names, victim) = coordinators.names_on_one_node("cl-coord", &others);
    let pair: Vec<Node> = NODES.iter().copied().filter(|n| *n != victim).collect();
    placed_topics(&cluster, &names, |p| {
        vec![pair[(p % 2) as usize], pair[((p + 1) % 2) as usize]]
    })
    .await;
    let callbacks = CallbackLog::start().await;
    let d = Deployment::start(
        &cluster,
        names,
        &callbacks,
        &[("CHIME_REPLICATION_FACTOR", "2")],
    )
    .await;
    let watcher = FireWatcher::start_on(cluster.bootstrap(), &d.topics);
    let load = d.load(&callbacks);
    let started = load.started_ms;
    tokio::time::sleep(WARM_UP).await;

    let killed_at = now_ms();
    cluster.kill(victim).await;
    let engine_group = d.names.engine_group();
    let txn_id = d.names.transactional_ids()[0].clone();
    wait_for("new coordinators for the engines", SETTLE, || async {
        let group = cluster
            .coordinator("__consumer_offsets", &engine_group)
            .await?;
        let txn = cluster.coordinator("__transaction_state", &txn_id).await?;
        let moved = group.is_some_and(|n| n != victim) && txn.is_some_and(|n| n != victim);
        Ok((
            moved.then_some(()),
            format!("group {group:?}, transactions {txn:?}"),
        ))
    })
    .await;
    let moved_ms = now_ms() - killed_at;
    sleep_until_ms(killed_at + 12_000).await;
    let names = d.names.clone();
    let (outcome, report) = finish(d, load, &callbacks, &watcher).await;

    let window = killed_at + 10_000;
    let faults = [before_the_fault(&outcome, &watcher, started, killed_at), Figures {
        fault: format!("kill -9 node {victim}, coordinator of every chime group and transaction, no chime replica"),
        pause_ms: outcome.longest_pause(killed_at, window),
        lateness: outcome.lateness(killed_at, window),
        fire_pause_ms: 0,
        fire_lateness: Default::default(),
    }
    .with_fires(&watcher, killed_at, window, |_| true)];
    print_figures(
        "coordinator kill",
        &faults,
        &outcome,
        &report,
        &[
            format!("the engines' group and transaction coordinators had new leaders {moved_ms} ms after the kill"),
            "timers due meanwhile: due in the 10 s after the kill".into(),
        ],
    );
    cluster.restore().await;
    delete_topics(&cluster, &names).await;
}

/// One create through ingest: the status, whether a 503 carried
/// Retry-After, and how long the answer took.
async fn create(
    http: &reqwest::Client,
    api: &str,
    id: &str,
    due_ms: u64,
    url: &str,
) -> (u16, bool, u64) {
    let body = serde_json::json!({
        "id": id,
        "fire_at": chrono::DateTime::from_timestamp_millis(due_ms as i64)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "callback": {"url": url},
    });
    let sent = now_ms();
    let r = http
        .post(format!("{api}/v1/timers"))
        .json(&body)
        .send()
        .await
        .expect("ingest answers");
    let retry_after = r.headers().contains_key("retry-after");
    (r.status().as_u16(), retry_after, now_ms() - sent)
}

/// An id on partition `p` starting with `stem`.
fn id_on(stem: &str, p: i32) -> String {
    (0..)
        .map(|i| format!("{stem}-{i}"))
        .find(|id| partition_for_key(id.as_bytes(), PARTITIONS) == p)
        .unwrap()
}

/// With two of the three nodes down, no partition takes an acks=all write
/// (`min.insync.replicas=2`): every create is answered 503 with Retry-After
/// within ingest's ack timeout, never 201. When the nodes are back, creates
/// succeed again without restarting anything, and every timer that got a
/// 201 (before, or after) is called back. Two `chime all` processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_answers_503_while_the_cluster_takes_no_writes_and_recovers_by_itself() {
    const ACK_TIMEOUT_MS: u64 = 5_000;
    common::init_logging();
    let cluster = Cluster::start().await;
    cluster.restore().await;
    let names = Names::new("cl-503");
    chime_topics(&cluster, &names).await;
    let callbacks = CallbackLog::start().await;
    let ack = ACK_TIMEOUT_MS.to_string();
    let d = Deployment::start_all(
        &cluster,
        names,
        &callbacks,
        &[("CHIME_ACK_TIMEOUT_MS", &ack)],
    )
    .await;
    let _watcher = FireWatcher::start_on(cluster.bootstrap(), &d.topics);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(ACK_TIMEOUT_MS + 30_000))
        .build()
        .unwrap();
    let url = callbacks.url("/due");
    let mut acknowledged: Vec<String> = Vec::new();

    // Before: timers due during the outage and after it.
    for i in 0..60 {
        let id = format!("before-{i}");
        let api = &d.apis[i % 2];
        let (status, _, _) = create(&http, api, &id, now_ms() + 3_000 + 400 * i as u64, &url).await;
        assert_eq!(status, 201, "create {id} before the outage");
        acknowledged.push(id);
    }

    let controller = cluster.active_controller().await;
    let down: Vec<Node> = NODES
        .iter()
        .copied()
        .filter(|n| Some(*n) != controller)
        .take(2)
        .collect();
    let down_at = now_ms();
    tokio::join!(cluster.kill(down[0]), cluster.kill(down[1]));

    // While two nodes are down: a create on every partition, through both
    // ingests at once, each due after the outage.
    let mut answers = tokio::task::JoinSet::new();
    for p in 0..PARTITIONS {
        for (i, api) in d.apis.iter().enumerate() {
            let (http, api, url) = (http.clone(), api.clone(), url.clone());
            answers.spawn(async move {
                let id = id_on(&format!("outage-{i}"), p);
                let (status, retry_after, took) =
                    create(&http, &api, &id, now_ms() + 20_000, &url).await;
                (id, status, retry_after, took)
            });
        }
    }
    let outage = answers.join_all().await;
    for (id, status, retry_after, _) in &outage {
        assert_eq!(
            *status, 503,
            "create {id} while two of three nodes are down"
        );
        assert!(*retry_after, "the 503 for {id} carries Retry-After");
    }
    let slowest = outage.iter().map(|o| o.3).max().unwrap_or(0);

    let restarted_at = now_ms();
    for n in &down {
        cluster.restart(*n).await;
    }
    let up_ms = now_ms() - restarted_at;
    // Creates succeed again, on every partition, through both ingests, as
    // a client retrying its 503s sees it.
    let mut first_201: Option<u64> = None;
    for p in 0..PARTITIONS {
        for (i, api) in d.apis.iter().enumerate() {
            let id = id_on(&format!("after-{i}"), p);
            let status = wait_for(
                &format!("a 201 for {id}"),
                Duration::from_secs(120),
                || async {
                    let (status, retry_after, _) =
                        create(&http, api, &id, now_ms() + 2_000, &url).await;
                    anyhow::ensure!(
                        status == 201 || (status == 503 && retry_after),
                        "answered {status}"
                    );
                    Ok((
                        (status == 201).then_some(status),
                        format!("status {status}"),
                    ))
                },
            )
            .await;
            assert_eq!(status, 201);
            first_201.get_or_insert(now_ms() - restarted_at);
            acknowledged.push(id);
        }
    }
    let all_201_ms = now_ms() - restarted_at;
    callbacks
        .wait_for("every timer that got a 201", &acknowledged, DRAIN)
        .await;
    let calls = Outcome::new(Vec::new(), callbacks.calls());
    let early = calls.early();
    assert!(early.is_empty(), "called before due: {early:?}");
    let report = audit(&d.bootstrap, &d.names.prefix).await;
    assert!(report.is_clean(), "the checker found problems:\n{report}");
    let mut d = d;
    d.assert_all_running();
    let called = callbacks.called();
    let refused_but_fired = outage.iter().filter(|o| called.contains(&o.0)).count();
    eprintln!("==== no writes: 503 ====");
    eprintln!(
        "nodes {down:?} killed (two of three; the quorum too); {} creates while they were down: all 503 with Retry-After, the slowest answered in {slowest} ms (ack timeout {ACK_TIMEOUT_MS} ms); {refused_but_fired} of them were written anyway and fired",
        outage.len()
    );
    eprintln!(
        "nodes restarted in {up_ms} ms; first 201 {} ms after the restarts began, a 201 on every partition through both ingests after {all_201_ms} ms; {} timers that got a 201 all called back; outage began {} ms before the restarts",
        first_201.unwrap_or(0),
        acknowledged.len(),
        restarted_at - down_at
    );
    eprintln!(
        "checker: {} expected, {} fire records, lateness p50 {} p99 {} max {} ms; load average {}",
        report.expected,
        report.fires,
        report.lateness_ms.p50,
        report.lateness_ms.p99,
        report.lateness_ms.max,
        load_average()
    );
    let names = d.names.clone();
    drop(d);
    cluster.restore().await;
    delete_topics(&cluster, &names).await;
}
