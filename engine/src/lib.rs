//! The chime engine: owns partitions of `chime.timers` through the consumer
//! group, keeps each partition's pending timers in a timing wheel, and fires
//! due timers into `chime.fires` — effectively once, in Kafka transactions
//! fenced against stale owners. See [`owner`] for the loop, [`rebuild`] for
//! how a partition's state survives its owner.

pub mod listing;
pub mod output;
pub mod owner;
pub mod partition;
pub mod rebuild;
pub mod record;
pub mod schedule;
pub mod status;
pub mod status_server;

pub use status::EngineStatus;

use std::time::Duration;

use chime_wire::Topics;
use tokio_util::sync::CancellationToken;

/// How far ahead of its due time a timer is emitted by default: enough to
/// cover a transaction cycle and the read_committed visibility delay measured
/// on a small machine (docs/kafka-notes.md: p99 ≈ 100 ms), so the dispatcher holds the
/// fire and calls on time.
pub const DEFAULT_LEAD: Duration = Duration::from_millis(200);

/// How soon a dead member's partitions move, by default: short, for a quick
/// takeover, yet five heartbeats long, so a busy machine
/// or a broker's garbage collection does not expel a live member. Below 6 s
/// the brokers' `group.min.session.timeout.ms` must be lowered to allow it.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a dead owner's open transaction holds back readers (and so the
/// next owner's rebuild) before the broker aborts it, by default: no longer
/// than the session timeout, so a takeover is not held up by it.
pub const DEFAULT_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything an engine instance needs to know.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub bootstrap: String,
    pub topics: Topics,
    /// Consumer group over `chime.timers`; all engines of a deployment share it.
    pub group_id: String,
    /// This instance's name; part of its client id and transactional id. Give a
    /// restarted instance the same name and it fences its predecessor at once.
    pub instance_id: String,
    /// The longest input records wait before their transaction commits: the
    /// batching interval that trades transactions per second for latency.
    pub tick: Duration,
    /// How far ahead of its due time a timer is emitted (the dispatcher holds
    /// the fire until it is due).
    pub lead: Duration,
    /// Consumer-group session timeout: how soon a dead engine's partitions move.
    pub session_timeout: Duration,
    /// Join the group as a static member (`group.instance.id` = instance id).
    pub static_membership: bool,
    /// How the group moves partitions when engines come and go.
    pub rebalance: chime_kafka::Rebalance,
    /// How long an abandoned transaction blocks readers before the broker
    /// aborts it; also the deadline of each transactional call.
    pub transaction_timeout: Duration,
    /// How long a partition's records may wait for delivery with no other
    /// delivery completing before the partition is taken out of the next
    /// transactions for a while (its leader is likely away).
    pub stall_timeout: Duration,
    /// Longest a changelog rebuild may take before the engine gives up.
    pub rebuild_timeout: Duration,
    /// How long fired and cancelled timers are remembered for status questions.
    pub finished_retention: Duration,
    /// At most this many finished timers are remembered per partition.
    pub finished_max_per_partition: usize,
    /// Where this engine's status endpoint ([`status_server`]) is reached;
    /// advertised to ingest through the consumer group in the client id.
    pub status_address: Option<String>,
}

impl EngineConfig {
    pub fn new(bootstrap: &str, topic_prefix: &str) -> Self {
        EngineConfig {
            bootstrap: bootstrap.to_string(),
            topics: Topics::new(topic_prefix),
            group_id: format!("{topic_prefix}-engine"),
            instance_id: uuid::Uuid::new_v4().simple().to_string(),
            tick: Duration::from_millis(10),
            lead: DEFAULT_LEAD,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            static_membership: false,
            rebalance: chime_kafka::Rebalance::default(),
            transaction_timeout: DEFAULT_TRANSACTION_TIMEOUT,
            stall_timeout: Duration::from_secs(1),
            rebuild_timeout: Duration::from_secs(300),
            finished_retention: Duration::from_secs(3600),
            finished_max_per_partition: 500_000,
            status_address: None,
        }
    }

    /// The consumer's `client.id`, which advertises the status address to ingest.
    pub fn client_id(&self) -> String {
        chime_wire::status::engine_client_id(&self.instance_id, self.status_address.as_deref())
    }

    pub fn finished_timers(&self) -> status::FinishedTimers {
        status::FinishedTimers::new(
            self.finished_retention.as_millis() as u64,
            self.finished_max_per_partition,
        )
    }

    pub fn transactional_id(&self) -> String {
        format!("{}-{}", self.group_id, self.instance_id)
    }
}

/// Runs an engine on the calling thread until `shutdown`, then leaves the
/// group. `status` is updated as partitions load, fire and move.
pub fn run(
    config: EngineConfig,
    status: EngineStatus,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    owner::Owner::new(config, status)?.run(shutdown)
}

/// Runs an engine on a blocking thread of the tokio runtime.
pub async fn serve(
    config: EngineConfig,
    status: EngineStatus,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || run(config, status, shutdown)).await?
}
