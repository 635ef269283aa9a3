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

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use chime_kafka::txn::TxnTimeouts;
use chime_kafka::{GroupContext, GroupEvent, Transactional, TxnError};
use chime_wheel::Expired;
use chime_wire::time::now_ms;

use crate::output::Output;
use crate::partition::InputRecord;
use crate::rebuild::{self, Rebuilt};
use crate::status::EngineStatus;
use crate::EngineConfig;

/// Most input records applied in one transaction.
const MAX_INBOX: usize = 50_000;
/// Longest a collect phase sleeps when nothing happens (so shutdown is noticed).
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How often a running rebuild is looked for while one runs.
const REBUILD_POLL: Duration = Duration::from_millis(5);
/// Deadline for offset look-ups.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait before retrying after a failed transaction; doubles up to the max.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often live partitions not yet caught up compare their position with
/// the end of their input (in case the end-of-partition report never comes).
const CATCH_UP_CHECK: Duration = Duration::from_millis(500);
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
    next_rebuild: u64,
    rebuilt_tx: mpsc::Sender<Rebuilt>,
    rebuilt_rx: mpsc::Receiver<Rebuilt>,
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
    expired: Vec<Expired<Bytes, Bytes>>,
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
        );
        // End of partition marks a partition caught up (see `collect`).
        settings.set("enable.partition.eof", "true");
        if config.static_membership {
            settings.set("group.instance.id", &config.instance_id);
        }
        let consumer: BaseConsumer<GroupContext> =
            settings.create_with_context(GroupContext::new(&config.topics.timers, "engine"))?;
        let mut txn = transactional_producer(&config);
        // Fences an earlier process with this instance id before we join.
        txn.init()?;
        consumer.subscribe(&[&config.topics.timers])?;
        let (rebuilt_tx, rebuilt_rx) = mpsc::channel();
        Ok(Owner {
            config,
            consumer,
            txn,
            status,
            inbox: Vec::new(),
            held: Vec::new(),
            end_of_input: HashMap::new(),
            rebuilding: HashMap::new(),
            next_rebuild: 0,
            rebuilt_tx,
            rebuilt_rx,
            committed: HashMap::new(),
            stalled: BTreeMap::new(),
            last_commit: Instant::now(),
            retry_backoff: Duration::ZERO,
            last_catch_up_check: Instant::now(),
            expired: Vec::new(),
        })
    }

    pub fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
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
        loop {
            self.apply_group_events()?;
            self.install_rebuilt();
            if self.last_catch_up_check.elapsed() >= CATCH_UP_CHECK {
                self.check_caught_up();
            }
            if self.inbox.len() >= MAX_INBOX {
                return Ok(());
            }
            let now = Instant::now();
            let until = self.next_action(now, first_record_at).min(idle_until);
            if until <= now {
                return Ok(());
            }
            match self.consumer.poll(until - now) {
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

    /// When the collect phase must end: a tick after the first input record,
    /// when the earliest timer is to be emitted (due time less the lead, at
    /// most one commit per tick), when a failed transaction is retried, when
    /// a stalled partition may come back; soon while rebuilds run.
    fn next_action(&self, now: Instant, first_record_at: Option<Instant>) -> Instant {
        let tick = self.config.tick;
        let mut until = now + IDLE_WAIT; // the caller bounds it further
        if let Some(t) = first_record_at {
            until = until.min(t + tick);
        }
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

    /// The consumer reached the end of partition `p`: every record written
    /// before now is applied or in the inbox (applied before any fire), so
    /// the partition may fire.
    fn mark_caught_up(&mut self, p: i32) {
        let mut owned = self.status.lock();
        if let Some(state) = owned.live.get_mut(&p) {
            if !state.caught_up {
                tracing::debug!(partition = p, "partition caught up");
            }
            state.caught_up = true;
        }
        let applied = owned.live.get(&p).and_then(|s| s.next_offset).unwrap_or(0);
        let end = self
            .inbox
            .iter()
            .chain(self.held.iter())
            .filter(|r| r.partition == p)
            .fold(applied, |end, r| end.max(r.offset + 1));
        self.end_of_input.insert(p, end);
    }

    /// A consumer error: logged, unless it means the engine can never join.
    fn consumer_error(&self, e: KafkaError) -> anyhow::Result<()> {
        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::InvalidSessionTimeout) {
            anyhow::bail!(
                "the brokers refuse a session timeout of {:?} (CHIME_SESSION_TIMEOUT_MS): it is \
                 outside their group.min.session.timeout.ms / group.max.session.timeout.ms; \
                 raise CHIME_SESSION_TIMEOUT_MS or lower the brokers' minimum (docs/operations.md)",
                self.config.session_timeout
            );
        }
        tracing::warn!(error = %e, "consumer error");
        Ok(())
    }

    /// librdkafka reports the end of a partition once per offset, so a
    /// partition rebuilt at an offset whose end was reported before it was
    /// paused would wait for a report that never comes. Live partitions not
    /// yet caught up compare their consumer position with the end of their
    /// input instead.
    fn check_caught_up(&mut self) {
        self.last_catch_up_check = Instant::now();
        let waiting: Vec<(i32, Option<i64>)> = {
            let owned = self.status.lock();
            owned
                .live
                .values()
                .filter(|s| !s.caught_up)
                .map(|s| (s.partition, s.next_offset))
                .collect()
        };
        if waiting.is_empty() {
            return;
        }
        let topic = self.config.topics.timers.clone();
        let positions = self.consumer.position().unwrap_or_default();
        for (p, applied) in waiting {
            if self.inbox.iter().any(|r| r.partition == p) {
                continue; // the inbox is applied first; ask again next time
            }
            let position = match positions.find_partition(&topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => applied,
            };
            let Ok((_, end)) = self.consumer.fetch_watermarks(&topic, p, KAFKA_TIMEOUT) else {
                continue;
            };
            if position.unwrap_or(0) >= end {
                tracing::debug!(
                    partition = p,
                    end,
                    "partition caught up (position at the end)"
                );
                self.mark_caught_up(p);
            }
        }
    }

    fn apply_group_events(&mut self) -> anyhow::Result<()> {
        for event in self.consumer.context().take_events() {
            match event {
                GroupEvent::Revoked(parts) => {
                    let mut owned = self.status.lock();
                    for p in &parts {
                        // Outputs not yet committed go too: the next owner
                        // rebuilds from what was committed and redoes the rest.
                        owned.live.remove(p);
                        owned.loading.remove(p);
                        self.rebuilding.remove(p);
                        self.end_of_input.remove(p);
                        self.committed.remove(p);
                        self.stalled.remove(p);
                    }
                    drop(owned);
                    self.inbox.retain(|r| !parts.contains(&r.partition));
                    self.held.retain(|r| !parts.contains(&r.partition));
                }
                GroupEvent::Assigned(parts) => {
                    self.status.lock().joined = true;
                    self.start_rebuild(parts)?;
                }
            }
        }
        Ok(())
    }

    /// Pauses `parts` (their input waits for their state) and rebuilds them
    /// on a thread of their own.
    fn start_rebuild(&mut self, parts: Vec<i32>) -> anyhow::Result<()> {
        if parts.is_empty() {
            return Ok(());
        }
        self.consumer.pause(&self.partition_list(&parts))?;
        self.next_rebuild += 1;
        let id = self.next_rebuild;
        let mut owned = self.status.lock();
        for &p in &parts {
            owned.loading.insert(p);
            self.rebuilding.insert(p, id);
        }
        drop(owned);
        tracing::info!(partitions = ?parts, "rebuilding partitions");
        rebuild::spawn(&self.config, id, parts, self.rebuilt_tx.clone());
        Ok(())
    }

    /// Makes the partitions of every finished rebuild Live (those still ours
    /// and not rebuilt again since), and resumes their input.
    fn install_rebuilt(&mut self) {
        while let Ok(done) = self.rebuilt_rx.try_recv() {
            let ours: Vec<i32> = done
                .partitions
                .iter()
                .copied()
                .filter(|p| self.rebuilding.get(p) == Some(&done.id))
                .collect();
            if ours.is_empty() {
                continue;
            }
            let states = match done.result {
                Ok(states) => states,
                Err(e) => {
                    // Try again: the partitions stay paused and loading.
                    tracing::warn!(partitions = ?ours, error = %e, "rebuild failed; retrying");
                    for p in &ours {
                        self.rebuilding.remove(p);
                    }
                    let parts = ours.clone();
                    if let Err(e) = self.start_rebuild(parts) {
                        tracing::error!(error = %e, "cannot restart the rebuild");
                    }
                    continue;
                }
            };
            let mut owned = self.status.lock();
            for mut state in states {
                let p = state.partition;
                if !ours.contains(&p) {
                    continue;
                }
                self.rebuilding.remove(&p);
                owned.loading.remove(&p);
                state.caught_up = state.next_offset.is_some()
                    && self.end_of_input.get(&p) == state.next_offset.as_ref();
                if let Some(next) = state.next_offset {
                    self.committed.insert(p, next);
                }
                tracing::info!(
                    partition = p,
                    next_offset = ?state.next_offset,
                    pending = state.wheel.len(),
                    took_ms = done.took.as_millis() as u64,
                    "partition live"
                );
                owned.live.insert(p, state);
            }
            drop(owned);
            // Input that arrived while they loaded goes first.
            let held = std::mem::take(&mut self.held);
            let (now_live, still_held): (Vec<_>, Vec<_>) =
                held.into_iter().partition(|r| ours.contains(&r.partition));
            self.held = still_held;
            self.inbox.splice(0..0, now_live);
            if let Err(e) = self.consumer.resume(&self.partition_list(&ours)) {
                tracing::warn!(partitions = ?ours, error = %e, "resume failed");
            }
        }
    }

    /// Phase 2: apply the inbox and fire what is due, in memory; then one
    /// transaction with every partition's outputs and offsets.
    fn commit(&mut self) -> anyhow::Result<Committed> {
        let now = now_ms();
        let lead = self.config.lead.as_millis() as u64;
        let source = &self.config.topics.timers;
        let mut batch: Vec<(i32, Vec<Output>, Option<i64>)> = Vec::new();
        let mut fired = 0usize;
        {
            let mut owned = self.status.lock();
            for rec in std::mem::take(&mut self.inbox) {
                match owned.live.get_mut(&rec.partition) {
                    Some(state) => state.apply(&rec, now, source),
                    None if self.rebuilding.contains_key(&rec.partition) => self.held.push(rec),
                    None => {} // revoked while waiting in the inbox
                }
            }
            let stalled_now = Instant::now();
            for (&p, state) in owned.live.iter_mut() {
                state.finished.expire(now);
                if self
                    .stalled
                    .get(&p)
                    .is_some_and(|(until, _)| *until > stalled_now)
                {
                    continue; // sits out; its due timers wait with it
                }
                fired += state.fire_due(now, lead, &mut self.expired);
                let moved = state.next_offset.is_some()
                    && state.next_offset != self.committed.get(&p).copied();
                if !state.outputs.is_empty() || moved {
                    batch.push((p, std::mem::take(&mut state.outputs), state.next_offset));
                }
            }
        }
        if batch.is_empty() {
            return Ok(Committed::Nothing);
        }
        // Status readers may see the new state from here; the transaction
        // below makes it durable, or its outputs wait for the next one.
        let started = Instant::now();
        let result = self.send_batch(&batch);
        self.last_commit = Instant::now();
        match result {
            Ok(()) => {
                metrics::histogram!("chime_engine_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                for (p, _, next) in &batch {
                    if let Some(next) = next {
                        self.committed.insert(*p, *next);
                    }
                    if let Some((_, backoff)) = self.stalled.get_mut(p) {
                        *backoff = STALL_BACKOFF; // delivered again
                    }
                }
                self.stalled
                    .retain(|_, (until, _)| *until > self.last_commit);
                self.retry_backoff = Duration::ZERO;
                tracing::debug!(
                    partitions = batch.len(),
                    fired,
                    commit_ms = started.elapsed().as_millis() as u64,
                    "transaction committed"
                );
                Ok(Committed::Done)
            }
            Err(e) => {
                let mut owned = self.status.lock();
                for (p, outputs, _) in batch {
                    // Nothing ran between taking and now: put back exactly.
                    if let Some(state) = owned.live.get_mut(&p) {
                        state.outputs = outputs;
                    }
                }
                drop(owned);
                match e {
                    TxnError::Fenced(e) => Err(anyhow::anyhow!(
                        "another engine with instance id {:?} took over ({e}); \
                         instance ids must be unique",
                        self.config.instance_id
                    )),
                    TxnError::Stalled { tags, waited } => {
                        for p in tags {
                            let backoff = self
                                .stalled
                                .get(&p)
                                .map_or(STALL_BACKOFF, |(_, b)| (*b * 2).min(STALL_BACKOFF_MAX));
                            tracing::warn!(partition = p, ?waited, sit_out = ?backoff,
                                "records not delivered (no leader?); the partition sits out");
                            self.stalled
                                .insert(p, (self.last_commit + backoff, backoff));
                        }
                        Ok(Committed::Failed)
                    }
                    TxnError::Aborted(e) => {
                        self.retry_backoff =
                            (self.retry_backoff * 2).clamp(RETRY_BACKOFF, RETRY_BACKOFF_MAX);
                        tracing::warn!(error = %e, retry_in = ?self.retry_backoff,
                            "transaction aborted; its outputs go with the next");
                        Ok(Committed::Failed)
                    }
                }
            }
        }
    }

    /// Sends `batch` and commits it, all or nothing.
    fn send_batch(&mut self, batch: &[(i32, Vec<Output>, Option<i64>)]) -> Result<(), TxnError> {
        let topic = &self.config.topics.timers;
        let mut offsets = TopicPartitionList::new();
        for (p, outputs, next) in batch {
            for output in outputs {
                output.send(&mut self.txn, &self.config.topics, *p)?;
            }
            let next = match next {
                Some(next) => *next,
                // Fires without any input applied and no committed offset:
                // commit the start of the partition, which is where it stands.
                None => {
                    self.consumer
                        .fetch_watermarks(topic, *p, KAFKA_TIMEOUT)
                        .map_err(TxnError::Aborted)?
                        .0
                }
            };
            offsets
                .add_partition_offset(topic, *p, Offset::Offset(next))
                .map_err(TxnError::Aborted)?;
        }
        let group = self
            .consumer
            .group_metadata()
            .ok_or(TxnError::Aborted(KafkaError::Global(
                RDKafkaErrorCode::State,
            )))?;
        self.txn.commit(&offsets, &group)
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
        tracing::info!("engine left the group");
    }
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
