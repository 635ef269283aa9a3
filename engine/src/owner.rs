//! The owner loop: one thread per engine instance that owns some partitions of
//! `chime.timers` and alternates two phases.
//!
//! 1. **Collect** (no transaction open): poll input records into an inbox for up
//!    to one tick after the first arrives, or until the earliest timer is due.
//!    Group membership changes surface here, inside `poll`, and are applied at
//!    once: a revoked partition's state and inbox records are dropped; an
//!    assigned partition is rebuilt from the changelog before any of its input
//!    is applied.
//! 2. **Commit** (no poll): in one Kafka transaction, apply the inbox (changelog
//!    writes, dead letters), fire every due timer (fire record + changelog
//!    tombstone), and send the input offsets of every partition touched with the
//!    consumer's group metadata. A stale owner's transaction is therefore fenced
//!    by the group coordinator (KIP-447).
//!
//! If a transaction fails, the in-memory state is not patched up: it is thrown
//! away and rebuilt from the changelog and the committed offsets, exactly as on
//! a fresh assignment, so whatever the failed transaction would have fired fires
//! in a later one.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use chime_kafka::txn::TxnTimeouts;
use chime_kafka::{GroupContext, GroupEvent, OutRecord, Transactional};
use chime_wire::time::now_ms;
use chime_wire::{
    lossy, ChangelogRecord, DeadLetter, Finished, Fire, HeaderList, Revoke, TimerCommand,
};

use crate::changelog;
use crate::partition::PartitionState;
use crate::status::{EngineStatus, Finish};
use crate::EngineConfig;
use chime_wheel::Expired;

/// Most input records applied in one transaction.
const MAX_INBOX: usize = 50_000;
/// Longest a collect phase waits when nothing happens (so shutdown is noticed).
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Deadline for offset look-ups and seeks.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for each transactional call; a transaction that cannot finish in
/// this time is given up on and the owned partitions are rebuilt.
const TXN_TIMEOUT: Duration = Duration::from_secs(5);

/// An input record copied out of the consumer, waiting for the commit phase.
struct InputRecord {
    partition: i32,
    offset: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
}

pub struct Owner {
    config: EngineConfig,
    consumer: BaseConsumer<GroupContext>,
    txn: Transactional,
    /// Owned partitions, shared with status readers.
    status: EngineStatus,
    inbox: Vec<InputRecord>,
    /// Reads the group's committed offsets (read_committed: it waits for
    /// pending transactional offsets) without being a member of the group.
    offsets_reader: BaseConsumer,
    /// Per partition, the input offset at which the consumer last reported
    /// end of partition, while no record has arrived since. librdkafka reports
    /// an end only once per offset, so a rebuild that resumes exactly there
    /// is caught up without waiting for a report that will not come.
    end_of_input: HashMap<i32, i64>,
    expired: Vec<Expired<Bytes, Bytes>>,
}

impl Owner {
    pub fn new(config: EngineConfig, status: EngineStatus) -> anyhow::Result<Self> {
        let consumer: BaseConsumer<GroupContext> = chime_kafka::group_member_config(
            &config.bootstrap,
            &config.client_id(),
            &config.group_id,
            config.session_timeout,
        )
        // End of partition marks a partition caught up (see `collect`).
        .set("enable.partition.eof", "true")
        .create_with_context(GroupContext::new(&config.topics.timers, "engine"))?;
        consumer.subscribe(&[&config.topics.timers])?;
        let mut txn = transactional_producer(&config);
        txn.init()?;
        let offsets_reader: BaseConsumer = chime_kafka::consumer_config(
            &config.bootstrap,
            &format!("{}-offsets", config.client_id()),
            &config.group_id,
        )
        .create()?;
        Ok(Owner {
            offsets_reader,
            config,
            consumer,
            txn,
            status,
            inbox: Vec::new(),
            end_of_input: HashMap::new(),
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
            if let Err(e) = self.commit() {
                self.recover(e)?;
            }
        }
        self.leave_group();
        Ok(())
    }

    /// Phase 1: poll input until a tick has passed since the first record, a
    /// timer is due, or the inbox is full.
    fn collect(&mut self) -> anyhow::Result<()> {
        let idle_until = Instant::now() + IDLE_WAIT;
        let mut first_record_at: Option<Instant> = None;
        loop {
            self.apply_group_events()?;
            let now = Instant::now();
            let mut until = match first_record_at {
                Some(t) => t + self.config.tick,
                None => idle_until,
            };
            if let Some(due) = self.next_due_instant(now) {
                until = until.min(due);
            }
            if self.inbox.len() >= MAX_INBOX {
                return Ok(());
            }
            // Always poll, with a zero timeout when a timer is already due:
            // under steady load something is due at every turn, and a loop
            // that skipped the poll then would starve input (cancels!) and
            // group membership alike.
            match self.consumer.poll(until.saturating_duration_since(now)) {
                None => {
                    if Instant::now() >= until {
                        return Ok(());
                    }
                }
                Some(Ok(m)) => {
                    first_record_at.get_or_insert_with(Instant::now);
                    self.end_of_input.remove(&m.partition());
                    self.inbox.push(InputRecord {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(Bytes::copy_from_slice),
                        value: m.payload().map(Bytes::copy_from_slice),
                    });
                    // Drain what is at hand, but never past a tick late.
                    if Instant::now() >= until + self.config.tick {
                        return Ok(());
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => self.mark_caught_up(p),
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            }
        }
    }

    /// The consumer reached the end of partition `p`: every record written
    /// before now is applied or in the inbox (applied before any fire), so the
    /// partition may fire.
    fn mark_caught_up(&mut self, p: i32) {
        let mut owned = self.status.lock();
        if let Some(state) = owned.live.get_mut(&p) {
            if !state.caught_up {
                tracing::debug!(partition = p, "partition caught up");
            }
            state.caught_up = true;
            let applied = state.next_offset.unwrap_or(0);
            let end = self
                .inbox
                .iter()
                .filter(|r| r.partition == p)
                .fold(applied, |end, r| end.max(r.offset + 1));
            self.end_of_input.insert(p, end);
        }
    }

    /// When the earliest pending timer (less the lead) is due, if any.
    fn next_due_instant(&self, now: Instant) -> Option<Instant> {
        let earliest = self
            .status
            .lock()
            .live
            .values()
            .filter(|p| p.caught_up)
            .filter_map(|p| p.wheel.next_deadline())
            .min()?;
        let lead = self.config.lead.as_millis() as u64;
        let wait_ms = earliest.saturating_sub(lead).saturating_sub(now_ms());
        Some(now + Duration::from_millis(wait_ms))
    }

    fn apply_group_events(&mut self) -> anyhow::Result<()> {
        for event in self.consumer.context().take_events() {
            match event {
                GroupEvent::Revoked(parts) => {
                    let mut owned = self.status.lock();
                    for p in &parts {
                        owned.live.remove(p);
                        owned.loading.remove(p);
                        self.end_of_input.remove(p);
                    }
                    drop(owned);
                    self.inbox.retain(|r| !parts.contains(&r.partition));
                }
                GroupEvent::Assigned(parts) => {
                    self.status.lock().joined = true;
                    self.load(&parts, false)?
                }
            }
        }
        Ok(())
    }

    /// Makes `parts` Live: committed input offsets first (this waits for an
    /// earlier owner's pending transaction to finish), then the changelog to
    /// its end. With `seek`, input consumption restarts at the committed
    /// offsets (after a failed transaction; on a fresh assignment librdkafka
    /// starts there itself).
    fn load(&mut self, parts: &[i32], seek: bool) -> anyhow::Result<()> {
        if parts.is_empty() {
            return Ok(());
        }
        let topic = &self.config.topics.timers;
        let mut tpl = TopicPartitionList::new();
        for &p in parts {
            tpl.add_partition(topic, p);
        }
        self.status.lock().loading.extend(parts.iter().copied());
        // Asked through a consumer outside the group: the group consumer's
        // own state machine stalls for seconds when the application queries
        // offsets while librdkafka is starting newly assigned partitions.
        let committed = self.offsets_reader.committed_offsets(tpl, KAFKA_TIMEOUT)?;
        let mut rebuilt = changelog::load(&self.config, parts, now_ms())?;
        for &p in parts {
            let next_offset = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
            if seek {
                let from = next_offset.map_or(Offset::Beginning, Offset::Offset);
                if let Err(e) = self.consumer.seek(topic, p, from, KAFKA_TIMEOUT) {
                    tracing::warn!(partition = p, error = %e, "seek failed");
                }
            }
            let (wheel, finished) = rebuilt
                .remove(&p)
                .ok_or_else(|| anyhow::anyhow!("changelog load lost partition {p}"))?;
            tracing::info!(
                partition = p,
                ?next_offset,
                pending = wheel.len(),
                "partition live"
            );
            let mut owned = self.status.lock();
            owned.loading.remove(&p);
            owned.live.insert(
                p,
                PartitionState {
                    wheel,
                    next_offset,
                    finished,
                    early: Default::default(),
                    caught_up: next_offset.is_some()
                        && self.end_of_input.get(&p) == next_offset.as_ref(),
                },
            );
        }
        Ok(())
    }

    /// Phase 2: one transaction with the inbox applied and every due timer fired.
    fn commit(&mut self) -> anyhow::Result<()> {
        let now = now_ms();
        let mut touched = BTreeSet::new();
        let status = self.status.clone();
        let mut owned = status.lock();
        for rec in std::mem::take(&mut self.inbox) {
            let Some(state) = owned.live.get_mut(&rec.partition) else {
                continue; // revoked while waiting in the inbox
            };
            if state.next_offset.is_some_and(|next| rec.offset < next) {
                continue; // already applied before a seek back
            }
            apply_input(&self.config, &mut self.txn, state, &rec, now)?;
            state.next_offset = Some(rec.offset + 1);
            touched.insert(rec.partition);
        }
        let fire_until = now.saturating_add(self.config.lead.as_millis() as u64);
        for (&p, state) in owned.live.iter_mut() {
            state.finished.expire(now);
            state.early.expire(now);
            if !state.caught_up {
                continue; // a cancel for a due timer may still be unread
            }
            self.expired.clear();
            state.wheel.advance(fire_until, &mut self.expired);
            if self.expired.is_empty() {
                continue;
            }
            touched.insert(p);
            for fire in self.expired.drain(..) {
                if fire.deadline > now {
                    state.early.insert(fire.id.clone(), fire.deadline);
                }
                // A fire emitted ahead takes effect at its due time.
                state.finished.record(
                    &fire.id,
                    Finish::Fired {
                        fire_at_ms: fire.deadline,
                        fired_at_ms: now.max(fire.deadline),
                    },
                );
                emit_fire(&self.config, &mut self.txn, p, fire, now)?;
            }
        }
        if !self.txn.is_open() {
            return Ok(());
        }
        let topic = &self.config.topics.timers;
        let mut offsets = TopicPartitionList::new();
        for &p in &touched {
            let next = match owned.live[&p].next_offset {
                Some(next) => next,
                // Fires without any input applied and no committed offset:
                // commit the start of the partition, which is where it stands.
                None => self.consumer.fetch_watermarks(topic, p, KAFKA_TIMEOUT)?.0,
            };
            offsets.add_partition_offset(topic, p, Offset::Offset(next))?;
        }
        // Status readers may see the new state from here; the transaction
        // below makes it durable or, failing, triggers a rebuild.
        drop(owned);
        let group = self
            .consumer
            .group_metadata()
            .ok_or_else(|| anyhow::anyhow!("consumer has no group metadata"))?;
        let commit_started = Instant::now();
        self.txn.commit(&offsets, &group)?;
        metrics::histogram!("chime_engine_commit_seconds")
            .record(commit_started.elapsed().as_secs_f64());
        tracing::debug!(
            partitions = touched.len(),
            commit_ms = commit_started.elapsed().as_millis() as u64,
            phase_ms = now_ms().saturating_sub(now),
            "transaction committed"
        );
        Ok(())
    }

    /// A transaction failed: abort it (or replace a producer that cannot), then
    /// rebuild every owned partition from Kafka instead of guessing what the
    /// in-memory state should be.
    fn recover(&mut self, err: anyhow::Error) -> anyhow::Result<()> {
        tracing::warn!(error = %err, "transaction failed; rebuilding owned partitions");
        self.txn.abort();
        self.inbox.clear();
        // The partitions the failed transaction touched lose their state...
        let failed: Vec<i32> = {
            let mut owned = self.status.lock();
            let parts = owned.live.keys().copied().collect();
            owned.live.clear();
            parts
        };
        // ...a pending rebalance (the usual cause) is applied: revoked
        // partitions go, newly assigned ones load as on any assignment...
        self.apply_group_events()?;
        // ...and those still ours are rebuilt and re-read from the committed
        // offsets (only these need a seek: their consumer position is past
        // records the failed transaction applied).
        let assignment = self.consumer.assignment()?;
        let still_ours: Vec<i32> = failed
            .into_iter()
            .filter(|p| {
                assignment
                    .find_partition(&self.config.topics.timers, *p)
                    .is_some()
            })
            .collect();
        self.load(&still_ours, true)
    }

    fn leave_group(&mut self) {
        self.consumer.unsubscribe();
        // Serve the revocation so the group hands the partitions on promptly.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let _ = self.consumer.poll(Duration::from_millis(50));
            let _ = self.apply_group_events();
            if self.status.lock().live.is_empty() {
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
            delivery: TXN_TIMEOUT,
            call: TXN_TIMEOUT,
        },
    )
}

/// Applies one input record: schedule or cancel in the wheel and the
/// changelog, or a dead letter for a record that breaks the contract.
fn apply_input(
    config: &EngineConfig,
    txn: &mut Transactional,
    state: &mut PartitionState,
    rec: &InputRecord,
    now: u64,
) -> anyhow::Result<()> {
    let p = rec.partition;
    match TimerCommand::decode(rec.key.as_deref(), rec.value.as_deref()) {
        Ok(TimerCommand::Schedule(spec)) => {
            let (Some(key), Some(value)) = (&rec.key, &rec.value) else {
                unreachable!("decode checked key and value");
            };
            if let Some(fire_at) = state.early.take(key) {
                // Re-scheduled while its old fire waits at the dispatcher.
                send_revoke(config, txn, p, key, fire_at)?;
            }
            state
                .wheel
                .schedule(key.clone(), spec.fire_at_ms, value.clone());
            state.finished.forget(key);
            let record = ChangelogRecord::Pending {
                fire_at_ms: spec.fire_at_ms,
                command: value,
            };
            send_changelog(config, txn, p, key, record)
        }
        Ok(TimerCommand::Cancel { id }) => {
            let key = Bytes::copy_from_slice(id.as_bytes());
            if state.wheel.cancel(&key).is_none() {
                match state.early.take(&key) {
                    // Emitted ahead of its time: the dispatcher still holds it.
                    Some(fire_at) => send_revoke(config, txn, p, &key, fire_at)?,
                    None => return Ok(()), // fired already, or never seen
                }
            }
            state.finished.record(
                &key,
                Finish::Cancelled {
                    cancelled_at_ms: now,
                },
            );
            let record = ChangelogRecord::Finished(Some(Finished::Cancelled));
            send_changelog(config, txn, p, &key, record)
        }
        Err(e) => {
            tracing::warn!(partition = p, offset = rec.offset, error = %e, "dead-lettering input record");
            let letter = DeadLetter {
                reason: format!("undecodable timer command: {e}"),
                source_topic: config.topics.timers.clone(),
                partition: p,
                offset: rec.offset,
                key: lossy(rec.key.as_deref()),
                value: lossy(rec.value.as_deref()),
                attempts: None,
                last_status: None,
                dead_at_ms: now,
            }
            .encode();
            let record = OutRecord {
                topic: &config.topics.dead_letters,
                partition: None,
                key: rec.key.as_deref(),
                value: Some(&letter),
                headers: HeaderList::new(),
            };
            Ok(txn.send(p, record)?)
        }
    }
}

fn send_changelog(
    config: &EngineConfig,
    txn: &mut Transactional,
    partition: i32,
    id: &[u8],
    record: ChangelogRecord<'_>,
) -> anyhow::Result<()> {
    let out = OutRecord {
        topic: &config.topics.changelog,
        partition: Some(partition),
        key: Some(id),
        value: record.value(),
        headers: record.headers(),
    };
    Ok(txn.send(partition, out)?)
}

/// Emits one due timer: its fire record, and the changelog tombstone that
/// stops it from being rebuilt as pending.
fn emit_fire(
    config: &EngineConfig,
    txn: &mut Transactional,
    partition: i32,
    fire: Expired<Bytes, Bytes>,
    now: u64,
) -> anyhow::Result<()> {
    metrics::histogram!("chime_engine_fire_lateness_seconds")
        .record(now.saturating_sub(fire.deadline) as f64 / 1000.0);
    let record = OutRecord {
        topic: &config.topics.fires,
        partition: None,
        key: Some(&fire.id),
        value: Some(&fire.payload),
        headers: Fire::headers(fire.deadline, now),
    };
    txn.send(partition, record)?;
    let tombstone = ChangelogRecord::Finished(Some(Finished::Fired {
        fire_at_ms: fire.deadline,
    }));
    send_changelog(config, txn, partition, &fire.id, tombstone)
}

/// Revokes a fire emitted ahead of its due time: a revoke record on the
/// fires topic, same key (so the same partition, after the fire).
fn send_revoke(
    config: &EngineConfig,
    txn: &mut Transactional,
    partition: i32,
    id: &Bytes,
    fire_at_ms: u64,
) -> anyhow::Result<()> {
    let revoke = Revoke {
        id: String::from_utf8_lossy(id).into_owned(),
        fire_at_ms,
    };
    let value = revoke.value();
    let record = OutRecord {
        topic: &config.topics.fires,
        partition: None,
        key: Some(id),
        value: Some(&value),
        headers: revoke.headers(),
    };
    Ok(txn.send(partition, record)?)
}
