//! The owner loop: one thread per engine instance that owns some partitions
//! of `chime.timers` and alternates two phases.
//!
//! 1. **Collect** (no transaction open): poll input records into an inbox
//!    until the next thing to do — a tick after the first record arrived, the
//!    time to emit the earliest timer (its due time less the lead), or a
//!    retry — and sleep in `poll` until then, never spinning. Group
//!    membership changes surface here, inside `poll`: a revoked partition's
//!    state is dropped; an assigned one is paused and rebuilt on a thread of
//!    its own ([`crate::rebuild`]) while the others go on.
//! 2. **Commit**: apply the inbox and fire every timer due within the lead
//!    ([`PartitionState`]: in memory, under the status lock, no Kafka), then,
//!    outside the lock, send each partition's [`Output`]s and input offset in
//!    one Kafka transaction, with the consumer's group metadata so a stale
//!    owner is fenced (KIP-447).
//!
//! A failed transaction is not patched up and nothing is rebuilt: every
//! partition keeps the outputs it owes until a transaction carrying them
//! commits, so the next transaction simply carries them again. A partition
//! whose records could not be delivered (its leader is away) sits out the
//! following transactions for a while, so it holds up only itself.

mod commit;
mod partitions;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::TopicPartitionList;
use tokio_util::sync::CancellationToken;

use chime_kafka::txn::TxnTimeouts;
use chime_kafka::{GroupContext, Transactional, TxnError};
use chime_wheel::Expired;
use chime_wire::time::now_ms;

use crate::partition::InputRecord;
use crate::rebuild::{OffsetsReader, Rebuilt};
use crate::record::TimerRecord;
use crate::status::EngineStatus;
use crate::EngineConfig;

/// Most input records applied in one transaction.
const MAX_INBOX: usize = 50_000;
/// Longest a collect phase sleeps when nothing happens (so shutdown is noticed).
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Wait before a failed rebuild is tried again.
const REBUILD_RETRY: Duration = Duration::from_millis(500);
/// How often a running rebuild is looked for while one runs.
const REBUILD_POLL: Duration = Duration::from_millis(5);
/// Deadline for offset look-ups.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of the catch-up check's end-of-input queries, which the owner
/// loop waits on.
const WATERMARK_TIMEOUT: Duration = Duration::from_millis(250);
/// First wait before retrying after a failed transaction; doubles up to the max.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often live partitions not yet caught up compare their position with
/// the end of their input (in case the end-of-partition report never comes).
const CATCH_UP_CHECK: Duration = Duration::from_millis(500);
/// Fenced this many times within the window: another process has this
/// engine's instance id.
const FENCED_LIMIT: usize = 3;
const FENCED_WINDOW: Duration = Duration::from_secs(60);
/// How long a partition whose records were not delivered sits out.
const STALL_BACKOFF: Duration = Duration::from_millis(500);
const STALL_BACKOFF_MAX: Duration = Duration::from_secs(4);

pub struct Owner {
    config: EngineConfig,
    consumer: BaseConsumer<GroupContext>,
    txn: Transactional,
    /// Owned partitions, shared with status readers.
    status: EngineStatus,
    inbox: Vec<InputRecord>,
    /// Input records of partitions still being rebuilt, applied once live.
    held: Vec<InputRecord>,
    /// Per partition, the input offset at which the consumer last reported
    /// end of partition, while no record has arrived since. librdkafka
    /// reports an end only once per offset, so a rebuild that resumes
    /// exactly there is caught up without waiting for a report.
    end_of_input: HashMap<i32, i64>,
    /// Rebuilds under way: partition → the id of its latest rebuild.
    rebuilding: HashMap<i32, u64>,
    /// Partitions revoked since the last assignment: those assigned back
    /// are rebuilt apart from the others (see `apply_group_events`).
    just_revoked: HashSet<i32>,
    next_rebuild: u64,
    rebuilt_tx: mpsc::Sender<Rebuilt>,
    rebuilt_rx: mpsc::Receiver<Rebuilt>,
    offsets_reader: Arc<OffsetsReader>,
    /// The input offset last committed per partition.
    committed: HashMap<i32, i64>,
    /// Partitions sitting out after their records were not delivered: until
    /// when, and how long the next stall lasts.
    stalled: BTreeMap<i32, (Instant, Duration)>,
    /// When the last transaction ended, and the wait before the next retry
    /// after a failure (zero after a success).
    last_commit: Instant,
    retry_backoff: Duration,
    last_catch_up_check: Instant,
    /// When transactions were recently fenced.
    fenced: Vec<Instant>,
    /// Counts changes to what the partitions' state asks of the loop
    /// (ownership, rebuilds, catch-up), so the collect phase re-plans.
    changes: u64,
    expired: Vec<Expired<TimerRecord, ()>>,
}

/// What the commit phase did.
enum Committed {
    Nothing,
    Done,
    Failed,
}

impl Owner {
    pub fn new(config: EngineConfig, status: EngineStatus) -> anyhow::Result<Self> {
        let mut settings = chime_kafka::group_member_config(
            &config.bootstrap,
            &config.client_id(),
            &config.group_id,
            config.session_timeout,
            config.rebalance,
        );
        // End of partition marks a partition caught up (see `collect`).
        settings.set("enable.partition.eof", "true");
        if config.static_membership {
            settings.set("group.instance.id", &config.instance_id);
        }
        let consumer: BaseConsumer<GroupContext> =
            settings.create_with_context(GroupContext::new(
                &config.bootstrap,
                &config.group_id,
                &config.topics.timers,
                "engine",
            ))?;
        let txn = transactional_producer(&config);
        let (rebuilt_tx, rebuilt_rx) = mpsc::channel();
        let offsets_reader = Arc::new(OffsetsReader::new(&config)?);
        Ok(Owner {
            config,
            consumer,
            txn,
            status,
            inbox: Vec::new(),
            held: Vec::new(),
            end_of_input: HashMap::new(),
            rebuilding: HashMap::new(),
            just_revoked: HashSet::new(),
            next_rebuild: 0,
            rebuilt_tx,
            rebuilt_rx,
            offsets_reader,
            committed: HashMap::new(),
            stalled: BTreeMap::new(),
            last_commit: Instant::now(),
            retry_backoff: Duration::ZERO,
            last_catch_up_check: Instant::now(),
            fenced: Vec::new(),
            changes: 0,
            expired: Vec::new(),
        })
    }

    pub fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Fence an earlier process with this instance id (and abort its open
        // transaction) before joining. The cluster may be starting or
        // electing a coordinator: that is waited out, not fatal.
        let mut wait = RETRY_BACKOFF;
        loop {
            match self.txn.init() {
                Ok(()) => break,
                Err(TxnError::Fenced(e)) => return Err(e.into()),
                Err(e) if !shutdown.is_cancelled() => {
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot initialise transactions yet");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(RETRY_BACKOFF_MAX);
                }
                Err(_) => return Ok(()),
            }
        }
        self.consumer.subscribe(&[&self.config.topics.timers])?;
        tracing::info!(
            group = %self.config.group_id,
            instance = %self.config.instance_id,
            "engine started"
        );
        while !shutdown.is_cancelled() {
            self.collect()?;
            self.commit()?;
        }
        // Whatever is owed is committed before the partitions are handed on.
        self.commit()?;
        self.leave_group();
        Ok(())
    }

    /// Phase 1: poll input until the next thing to do is due.
    fn collect(&mut self) -> anyhow::Result<()> {
        let mut first_record_at: Option<Instant> = None;
        let idle_until = Instant::now() + IDLE_WAIT;
        // What the partitions' state asks for changes only with that state,
        // not with each input record: worked out again only after a change.
        let mut planned: Option<Instant> = None;
        loop {
            let generation = self.changes;
            self.apply_group_events()?;
            self.consumer.context().rejoin.serve(&self.consumer);
            self.install_rebuilt();
            if self.last_catch_up_check.elapsed() >= CATCH_UP_CHECK {
                self.check_caught_up();
            }
            if self.inbox.len() >= MAX_INBOX {
                return Ok(());
            }
            let now = Instant::now();
            if planned.is_none() || generation != self.changes {
                planned = Some(self.next_action(now));
            }
            let mut until = planned.unwrap_or(now).min(idle_until);
            if let Some(t) = first_record_at {
                until = until.min(t + self.config.tick);
            }
            if until <= now {
                return Ok(());
            }
            // Whole milliseconds, rounded up: librdkafka takes its timeout
            // in ms, so a wait under 1 ms would be a non-blocking poll, and
            // the loop would spin (reading the clock) until `until`.
            let wait = self.consumer.context().rejoin.poll_wait(until - now);
            match self.consumer.poll(ceil_ms(wait)) {
                None => {}
                Some(Ok(m)) => {
                    first_record_at.get_or_insert(now);
                    self.end_of_input.remove(&m.partition());
                    self.inbox.push(InputRecord {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(Bytes::copy_from_slice),
                        value: m.payload().map(Bytes::copy_from_slice),
                        timestamp_ms: m
                            .timestamp()
                            .to_millis()
                            .and_then(|t| u64::try_from(t).ok()),
                    });
                }
                Some(Err(KafkaError::PartitionEOF(p))) => self.mark_caught_up(p),
                Some(Err(e)) => self.consumer_error(e)?,
            }
        }
    }

    /// When the partitions' state asks the collect phase to end: when the
    /// earliest timer is to be emitted (due time less the lead, at most one
    /// commit per tick), when a failed transaction is retried, when a
    /// stalled partition may come back; soon while rebuilds run. (A tick
    /// after the first input record is the caller's.)
    fn next_action(&self, now: Instant) -> Instant {
        let tick = self.config.tick;
        let mut until = now + IDLE_WAIT; // the caller bounds it further
        if !self.rebuilding.is_empty() {
            until = until.min(now + REBUILD_POLL);
        }
        let earliest_commit = self.last_commit + tick.max(self.retry_backoff);
        let owned = self.status.lock();
        let mut work_at: Option<u64> = None;
        for (p, state) in owned.live.iter() {
            if let Some(&(back, _)) = self.stalled.get(p) {
                until = until.min(back.max(earliest_commit));
                continue;
            }
            if !state.caught_up {
                until = until.min(self.last_catch_up_check + CATCH_UP_CHECK);
            }
            let at = if state.outputs.is_empty() {
                state.next_due()
            } else {
                Some(0) // owed from a failed transaction: at the next commit
            };
            work_at = match (work_at, at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        drop(owned);
        if let Some(due) = work_at {
            let lead = self.config.lead.as_millis() as u64;
            let wait = due.saturating_sub(lead).saturating_sub(now_ms());
            until = until.min((now + Duration::from_millis(wait)).max(earliest_commit));
        }
        until
    }

    fn partition_list(&self, parts: &[i32]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for &p in parts {
            tpl.add_partition(&self.config.topics.timers, p);
        }
        tpl
    }

    fn leave_group(&mut self) {
        self.consumer.unsubscribe();
        // Serve the revocation so the group hands the partitions on promptly.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let _ = self.consumer.poll(Duration::from_millis(50));
            let _ = self.apply_group_events();
            let owned = self.status.lock();
            if owned.live.is_empty() && owned.loading.is_empty() {
                break;
            }
        }
        let left = chime_kafka::group::serve_until_left(&self.consumer, deadline);
        let _ = self.apply_group_events();
        if left {
            tracing::info!("engine left the group");
        } else {
            tracing::warn!("engine stopped without its leave request sent; its partitions move after the session timeout");
        }
    }
}

/// `d` rounded up to whole milliseconds.
fn ceil_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_micros().div_ceil(1000) as u64)
}

fn transactional_producer(config: &EngineConfig) -> Transactional {
    let mut settings = chime_kafka::producer_config(&config.bootstrap, &config.client_id());
    settings
        .set("transactional.id", config.transactional_id())
        .set(
            "transaction.timeout.ms",
            config.transaction_timeout.as_millis().to_string(),
        )
        .set("linger.ms", "2")
        .set("queue.buffering.max.messages", "1000000");
    Transactional::new(
        settings,
        TxnTimeouts {
            delivery: config.stall_timeout,
            call: config.transaction_timeout,
        },
    )
}
