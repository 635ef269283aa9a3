//! The local three-node Kafka cluster (`scripts/kafka cluster`), driven from
//! a test: start it, kill and restart nodes, and read who leads what.
//!
//! Three combined broker+controller nodes on loopback, replication factor 3
//! and `min.insync.replicas=2` for every topic, tuned so a killed node's
//! partitions get new leaders within a few seconds (docs/operations.md, "A
//! replicated cluster"). Node `n` (1, 2 or 3) is Kafka node id `n`: the broker
//! ids in metadata, and the numbers `scripts/kafka cluster kill N` takes.
//!
//! Tests that use the cluster run one at a time within a test binary:
//! [`Cluster::start`] holds a process-wide lock until the handle is dropped,
//! so one test's `kill` never lands in the middle of another test. A node a
//! failed test left down is started again by the next [`Cluster::start`].
//! When the first [`Cluster::start`] of a test binary finds the cluster not
//! running, the binary stops it again when it exits (`scripts/kafka cluster
//! stop`, from an `atexit` handler), unless `CHIME_KEEP_CLUSTER=1`; a cluster
//! that was already running is left running.
//!
//! The ports are the script's (127.0.0.1:19092-19094, controllers
//! 19192-19194; `CHIME_KAFKA_CLUSTER_PORT` and
//! `CHIME_KAFKA_CLUSTER_CONTROLLER_PORT` move them). A cluster on those ports
//! that another checkout's script started is used, but this one cannot kill
//! its nodes: [`Cluster::kill`] then fails and says so.
//!
//! Every wait has a deadline and panics with what it last saw when the
//! deadline passes; nothing here sleeps and hopes.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::metadata::Metadata;
use rdkafka::ClientConfig;
use tokio::sync::{Mutex, MutexGuard};

/// A node of the cluster: its Kafka node id (1, 2 or 3).
pub type Node = i32;

/// Every node of the cluster.
pub const NODES: [Node; 3] = [1, 2, 3];

/// How long the harness waits for the cluster to settle by default: generous
/// against a loaded machine, yet it fails a broken cluster within a minute.
pub const SETTLE: Duration = Duration::from_secs(60);

const POLL: Duration = Duration::from_millis(50);
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

static EXCLUSIVE: Mutex<()> = Mutex::const_new(());

/// One partition as the cluster's metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub partition: i32,
    /// `None` while no leader is elected.
    pub leader: Option<Node>,
    pub replicas: Vec<Node>,
    /// The in-sync replicas.
    pub isr: Vec<Node>,
}

impl PartitionState {
    /// Every replica is in sync.
    pub fn fully_in_sync(&self) -> bool {
        let isr: BTreeSet<_> = self.isr.iter().collect();
        self.replicas.iter().all(|r| isr.contains(r))
    }
}

/// A handle on the running three-node cluster (see the module documentation).
pub struct Cluster {
    bootstrap: String,
    admin: Arc<AdminClient<DefaultClientContext>>,
    _exclusive: MutexGuard<'static, ()>,
}

impl Cluster {
    /// Starts the cluster (`scripts/kafka cluster start`: starts whichever
    /// nodes are not running, a no-op when all are) and waits until this
    /// process's Kafka client sees all three brokers.
    pub async fn start() -> Cluster {
        let exclusive = EXCLUSIVE.lock().await;
        stop_at_exit_if_started_here().await;
        script(&["cluster", "start"]).await;
        let bootstrap = script(&["cluster", "bootstrap"]).await.trim().to_string();
        let admin = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("client.id", "chime-test-cluster")
            .create()
            .expect("create a Kafka admin client");
        let cluster = Cluster {
            bootstrap,
            admin: Arc::new(admin),
            _exclusive: exclusive,
        };
        cluster.wait_nodes_up(&NODES, SETTLE).await;
        cluster
    }

    /// The bootstrap string of all three brokers (`127.0.0.1:19092,…`).
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// `kill -9` node `node`; returns once its process is gone.
    pub async fn kill(&self, node: Node) {
        script(&["cluster", "kill", &node.to_string()]).await;
    }

    /// Stops node `node` gracefully (SIGTERM: a controlled shutdown moves its
    /// leaderships away first); returns once its process is gone.
    pub async fn stop(&self, node: Node) {
        script(&["cluster", "stop", &node.to_string()]).await;
    }

    /// Starts node `node` again (stopping it first if it runs); returns once
    /// it is registered with the controller and this process's client sees
    /// it among the live brokers.
    pub async fn restart(&self, node: Node) {
        script(&["cluster", "restart", &node.to_string()]).await;
        self.wait_nodes_up(&[node], SETTLE).await;
    }

    /// The node that is the active KRaft controller, `None` while an election
    /// is under way. (Metadata does not tell: in KRaft its "controller id" is
    /// a random broker.)
    pub async fn active_controller(&self) -> Option<Node> {
        let out = run_script(&["cluster", "controller"]).await.ok()?;
        out.trim().parse().ok()
    }

    /// The ids of the brokers the cluster reports as live (registered and not
    /// fenced), sorted.
    pub async fn live_brokers(&self) -> anyhow::Result<Vec<Node>> {
        let metadata = self.metadata(None).await?;
        let mut ids: Vec<Node> = metadata.brokers().iter().map(|b| b.id()).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The partitions of `topic`, by partition number.
    pub async fn partitions(&self, topic: &str) -> anyhow::Result<Vec<PartitionState>> {
        let metadata = self.metadata(Some(topic)).await?;
        let t = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| anyhow::anyhow!("topic {topic} not in the metadata"))?;
        if let Some(e) = t.error() {
            anyhow::bail!("topic {topic}: {e:?}");
        }
        let mut parts: Vec<PartitionState> = t
            .partitions()
            .iter()
            .map(|p| PartitionState {
                partition: p.id(),
                leader: (p.leader() >= 0).then_some(p.leader()),
                replicas: p.replicas().to_vec(),
                isr: p.isr().to_vec(),
            })
            .collect();
        parts.sort_by_key(|p| p.partition);
        Ok(parts)
    }

    /// The leader of every partition of each topic: topic → leaders by
    /// partition number.
    pub async fn leaders(
        &self,
        topics: &[&str],
    ) -> anyhow::Result<BTreeMap<String, Vec<Option<Node>>>> {
        let mut out = BTreeMap::new();
        for topic in topics {
            let leaders = self
                .partitions(topic)
                .await?
                .iter()
                .map(|p| p.leader)
                .collect();
            out.insert(topic.to_string(), leaders);
        }
        Ok(out)
    }

    /// The node that leads the most partitions of `topics` (ties: the lowest
    /// id), with how many it leads.
    pub async fn busiest_node(&self, topics: &[&str]) -> anyhow::Result<(Node, usize)> {
        let mut led: BTreeMap<Node, usize> = NODES.iter().map(|n| (*n, 0)).collect();
        for leaders in self.leaders(topics).await?.values() {
            for leader in leaders.iter().flatten() {
                *led.entry(*leader).or_default() += 1;
            }
        }
        let most = led.values().copied().max().unwrap_or(0);
        let node = led.iter().find(|(_, n)| **n == most).map(|(id, _)| *id);
        Ok((node.expect("three nodes"), most))
    }

    /// Creates `topic` and waits until each of its partitions has a leader
    /// and all its replicas in sync; returns the partitions as then seen.
    pub async fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
        replication: i32,
    ) -> Vec<PartitionState> {
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
        self.create_and_wait(new).await
    }

    /// Creates `topic` with the replicas of each partition named
    /// (`assignment[p]`, the first one the preferred leader) and the topic
    /// `configs`, and waits until every partition is led and in sync.
    pub async fn create_topic_assigned(
        &self,
        topic: &str,
        assignment: &[Vec<Node>],
        configs: &[(&str, &str)],
    ) -> Vec<PartitionState> {
        let replicas: Vec<&[Node]> = assignment.iter().map(Vec::as_slice).collect();
        let mut new = NewTopic::new(
            topic,
            assignment.len() as i32,
            TopicReplication::Variable(&replicas),
        );
        for (key, value) in configs {
            new = new.set(key, value);
        }
        self.create_and_wait(new).await
    }

    /// Creates `new` and waits until every partition is led and in sync;
    /// returns its partitions as then seen.
    async fn create_and_wait(&self, new: NewTopic<'_>) -> Vec<PartitionState> {
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = self
            .admin
            .create_topics([&new], &opts)
            .await
            .expect("create topic");
        for r in results {
            r.unwrap_or_else(|(name, code)| panic!("creating topic {name}: {code}"));
        }
        let mut seen = self.wait_in_sync(&[new.name], SETTLE).await;
        seen.remove(0)
    }

    /// The node leading the partition of Kafka's internal topic `internal`
    /// (`__consumer_offsets` or `__transaction_state`) that holds `key` (a
    /// group id or a transactional id): the coordinator of that group or
    /// transactional producer. `None` while that partition has no leader or
    /// the topic does not exist yet.
    pub async fn coordinator(&self, internal: &str, key: &str) -> anyhow::Result<Option<Node>> {
        let parts = self.partitions(internal).await?;
        anyhow::ensure!(!parts.is_empty(), "{internal} has no partitions");
        let p = coordinator_partition(key, parts.len() as i32);
        Ok(parts
            .iter()
            .find(|s| s.partition == p)
            .and_then(|s| s.leader))
    }

    /// Puts the cluster back as a test found it: every node running and
    /// live, and every replica of every topic in sync, each partition led by its
    /// preferred replica. Each test begins with it.
    pub async fn restore(&self) {
        script(&["cluster", "start"]).await;
        self.wait_nodes_up(&NODES, SETTLE).await;
        let topics = self.topic_names().await.expect("list the topics");
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.wait_in_sync(&names, SETTLE).await;
        // A node that was down leads nothing until leadership moves back to
        // the preferred replicas; a test choosing its victim by what each
        // node leads needs the layout of a cluster that never failed.
        script(&["cluster", "elect"]).await;
    }

    /// The name of every topic in the cluster, internal ones included.
    pub async fn topic_names(&self) -> anyhow::Result<Vec<String>> {
        let admin = Arc::clone(&self.admin);
        let metadata = tokio::task::spawn_blocking(move || {
            admin.inner().fetch_metadata(None, METADATA_TIMEOUT)
        })
        .await??;
        Ok(metadata
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .collect())
    }

    /// Deletes `topics` (best effort: a test's cleanup, not its subject).
    pub async fn delete_topics(&self, topics: &[&str]) {
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        if let Err(e) = self.admin.delete_topics(topics, &opts).await {
            eprintln!("deleting {topics:?}: {e}");
        }
    }

    /// Waits until every node of `nodes` is among the live brokers.
    pub async fn wait_nodes_up(&self, nodes: &[Node], timeout: Duration) {
        let what = format!("nodes {nodes:?} among the live brokers");
        wait_for(&what, timeout, || async {
            let live = self.live_brokers().await?;
            let up = nodes.iter().all(|n| live.contains(n));
            Ok((up.then_some(()), format!("live brokers {live:?}")))
        })
        .await
    }

    /// Waits until every partition of `topics` has a leader that is a live
    /// broker (not a node that was killed and is not fenced yet).
    pub async fn wait_leaders(&self, topics: &[&str], timeout: Duration) {
        let what = format!("a live leader for every partition of {topics:?}");
        wait_for(&what, timeout, || async {
            let live = self.live_brokers().await?;
            let leaders = self.leaders(topics).await?;
            let ok = leaders
                .values()
                .flatten()
                .all(|l| l.is_some_and(|l| live.contains(&l)));
            Ok((
                ok.then_some(()),
                format!("live {live:?}, leaders {leaders:?}"),
            ))
        })
        .await
    }

    /// Waits until every partition of `topics` has a leader and every replica
    /// in sync (after a restart: the node has caught up on all of them), and
    /// returns the partitions of each topic as then seen.
    pub async fn wait_in_sync(
        &self,
        topics: &[&str],
        timeout: Duration,
    ) -> Vec<Vec<PartitionState>> {
        let what = format!("every replica of {topics:?} in sync");
        wait_for(&what, timeout, || async {
            let mut seen = Vec::new();
            for topic in topics {
                seen.push(self.partitions(topic).await?);
            }
            let ok = seen
                .iter()
                .flatten()
                .all(|p| p.leader.is_some() && p.fully_in_sync());
            let description = format!("{seen:?}");
            Ok((ok.then_some(seen), description))
        })
        .await
    }

    /// Waits until partition `partition` of `topic` satisfies `condition`,
    /// and returns it as then seen.
    pub async fn wait_partition(
        &self,
        topic: &str,
        partition: i32,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&PartitionState) -> bool,
    ) -> PartitionState {
        let what = format!("{topic}/{partition}: {what}");
        wait_for(&what, timeout, || async {
            let parts = self.partitions(topic).await?;
            let p = parts
                .into_iter()
                .find(|p| p.partition == partition)
                .ok_or_else(|| anyhow::anyhow!("no partition {partition}"))?;
            let description = format!("{p:?}");
            Ok((condition(&p).then_some(p), description))
        })
        .await
    }

    /// Waits until partition `partition` of `topic` is led by a node other
    /// than `old` that is no longer among its in-sync replicas (a killed
    /// leader, fenced by the controller), and returns the partition as then
    /// seen.
    ///
    /// Brokers learn metadata changes independently, so a later question may
    /// be answered by a broker a few milliseconds behind: assert on what a
    /// wait returns, not on a fresh look.
    pub async fn wait_new_leader(
        &self,
        topic: &str,
        partition: i32,
        old: Node,
        timeout: Duration,
    ) -> PartitionState {
        let what = format!("led by a node other than {old}, {old} out of the in-sync replicas");
        self.wait_partition(topic, partition, &what, timeout, |p| {
            p.leader.is_some_and(|l| l != old) && !p.isr.contains(&old)
        })
        .await
    }

    /// Waits until `node` is not among the live brokers (fenced, or shut down).
    pub async fn wait_node_gone(&self, node: Node, timeout: Duration) {
        let what = format!("node {node} gone from the live brokers");
        wait_for(&what, timeout, || async {
            let live = self.live_brokers().await?;
            Ok((
                (!live.contains(&node)).then_some(()),
                format!("live brokers {live:?}"),
            ))
        })
        .await
    }

    /// Metadata of one topic, or of none (brokers only). A blocking librdkafka
    /// call, so it runs off the async runtime.
    async fn metadata(&self, topic: Option<&str>) -> anyhow::Result<Metadata> {
        let admin = Arc::clone(&self.admin);
        let topic = topic.map(str::to_string);
        tokio::task::spawn_blocking(move || {
            // No topic: ask for one that cannot exist, so the answer carries
            // the brokers without every topic's partitions.
            let topic = topic
                .as_deref()
                .unwrap_or("chime-test-cluster-brokers-only");
            admin.inner().fetch_metadata(Some(topic), METADATA_TIMEOUT)
        })
        .await?
        .map_err(anyhow::Error::from)
    }
}

/// Polls `check` until it yields a value or `timeout` passes; then panics
/// with `what` and the last observation (or error). `check` returns the value
/// when the condition holds and a description of what it saw.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<(Option<T>, String)>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let seen = match check().await {
            Ok((Some(value), _)) => return value,
            Ok((None, seen)) => seen,
            Err(e) => format!("error: {e:#}"),
        };
        if Instant::now() >= deadline {
            panic!("waited {timeout:?} for {what}; last saw: {seen}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The partition of an internal topic of `partitions` partitions that holds
/// `key`: Kafka's `Utils.abs(key.hashCode()) % partitions`, with Java's
/// `String.hashCode` over UTF-16 code units.
pub fn coordinator_partition(key: &str, partitions: i32) -> i32 {
    let hash = key
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32));
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions
}

/// On the first [`Cluster::start`] of this process: if the cluster is not
/// all running yet (so this binary starts it), stop it when the process
/// exits, unless `CHIME_KEEP_CLUSTER=1`.
async fn stop_at_exit_if_started_here() {
    static CHECKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if CHECKED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let keep = std::env::var("CHIME_KEEP_CLUSTER").is_ok_and(|v| v == "1");
    if keep || run_script(&["cluster", "status"]).await.is_ok() {
        return;
    }
    extern "C" {
        fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
    }
    extern "C" fn stop_cluster() {
        eprintln!(
            "stopping the Kafka cluster this test binary started (CHIME_KEEP_CLUSTER=1 keeps it)"
        );
        let _ = std::process::Command::new(SCRIPT)
            .args(["cluster", "stop"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status();
    }
    // SAFETY: registers a plain function with the C library; it runs at
    // process exit, after the tests, and only spawns the script.
    let registered = unsafe { atexit(stop_cluster) };
    if registered != 0 {
        eprintln!("could not arrange to stop the cluster at exit; scripts/kafka cluster stop does");
    }
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka");

/// Runs `scripts/kafka ARGS…`, returns its stdout; panics when it fails.
async fn script(args: &[&str]) -> String {
    run_script(args)
        .await
        .unwrap_or_else(|e| panic!("scripts/kafka {}: {e}", args.join(" ")))
}

async fn run_script(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(SCRIPT)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "{}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}
