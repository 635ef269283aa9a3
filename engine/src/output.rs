//! The records an engine partition owes Kafka for a change of its state, and
//! how each is written (record formats: [`chime_wire`]).

use bytes::Bytes;
use chime_kafka::{OutRecord, Transactional, TxnError};
use chime_wire::changelog::{delivered_tombstone, ScheduleEnd, ScheduleRecord};
use chime_wire::{ChangelogRecord, Delivery, Finished, Fire, HeaderList, Revoke, Topics};

use crate::record::TimerRecord;

/// One state change's records. All of a partition's outputs go to its own
/// partition of every topic (the fires topic is keyed by timer id, and has
/// as many partitions as the input), so a partition whose leader is away
/// holds up only its own transaction work.
#[derive(Debug)]
pub enum Output {
    /// Scheduled: the changelog's pending record.
    Pending {
        id: Bytes,
        fire_at_ms: u64,
        command: Bytes,
    },
    /// Fired at `emitted_at_ms`: the fire record, and the changelog
    /// tombstone that says it fired.
    Fired {
        timer: TimerRecord,
        fire_at_ms: u64,
        emitted_at_ms: u64,
    },
    /// Cancelled: the changelog tombstone.
    Cancelled { id: Bytes },
    /// Takes back a fire emitted ahead of its due time.
    Revoke { id: Bytes, fire_at_ms: u64 },
    /// An input record that breaks the contract.
    DeadLetter { key: Option<Bytes>, letter: Bytes },
    /// The dispatcher said what came of fired timer `id`'s callback: its
    /// `fired` tombstone, written again with the delivery.
    Delivered {
        id: Bytes,
        fire_at_ms: u64,
        fired_at_ms: u64,
        delivery: Delivery,
    },
    /// An occurrence of a schedule fired: its fire record (timer id
    /// `<schedule>@<due>`); the schedule's new state goes in the same
    /// transaction as a [`Output::Schedule`].
    Occurrence {
        id: Bytes,
        fire_at_ms: u64,
        emitted_at_ms: u64,
        command: Bytes,
    },
    /// A schedule's state: the changelog record under its id.
    Schedule {
        id: Bytes,
        next_at_ms: Option<u64>,
        state: Bytes,
    },
    /// A schedule that ended is forgotten: the changelog tombstone.
    ScheduleGone { id: Bytes, end: ScheduleEnd },
}

impl Output {
    /// A short name, for logs and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            Output::Pending { .. } => "pending",
            Output::Fired { .. } => "fired",
            Output::Cancelled { .. } => "cancelled",
            Output::Revoke { .. } => "revoke",
            Output::DeadLetter { .. } => "dead-letter",
            Output::Delivered { .. } => "delivered",
            Output::Occurrence { .. } => "occurrence",
            Output::Schedule { .. } => "schedule",
            Output::ScheduleGone { .. } => "schedule-gone",
        }
    }

    /// Sends this output's records for `partition` in the open transaction.
    pub fn send(
        &self,
        txn: &mut Transactional,
        topics: &Topics,
        partition: i32,
    ) -> Result<(), TxnError> {
        match self {
            Output::Pending {
                id,
                fire_at_ms,
                command,
            } => {
                let record = ChangelogRecord::Pending {
                    fire_at_ms: *fire_at_ms,
                    command,
                };
                txn.send(
                    partition,
                    changelog(topics, partition, id, record.value(), record.headers()),
                )
            }
            Output::Fired {
                timer,
                fire_at_ms,
                emitted_at_ms,
            } => {
                let id = timer.id();
                let fire = OutRecord {
                    topic: &topics.fires,
                    // = murmur2 of the id, as on the input topic (the counts
                    // are equal, checked at start); explicit, as for occurrences.
                    partition: Some(partition),
                    key: Some(id),
                    value: Some(timer.command()),
                    headers: Fire::headers(*fire_at_ms, *emitted_at_ms),
                };
                txn.send(partition, fire)?;
                let fired = Finished::Fired {
                    fire_at_ms: *fire_at_ms,
                };
                txn.send(partition, tombstone(topics, partition, id, fired))
            }
            Output::Cancelled { id } => {
                let cancelled = Finished::Cancelled;
                txn.send(partition, tombstone(topics, partition, id, cancelled))
            }
            Output::Revoke { id, fire_at_ms } => {
                let revoke = Revoke {
                    id: String::from_utf8_lossy(id).into_owned(),
                    fire_at_ms: *fire_at_ms,
                };
                let value = revoke.value();
                let record = OutRecord {
                    topic: &topics.fires,
                    // After the fire it revokes, on the same partition.
                    partition: Some(partition),
                    key: Some(id),
                    value: Some(&value),
                    headers: revoke.headers(),
                };
                txn.send(partition, record)
            }
            Output::DeadLetter { key, letter } => {
                let record = OutRecord {
                    topic: &topics.dead_letters,
                    partition: None,
                    key: key.as_deref(),
                    value: Some(letter),
                    headers: HeaderList::new(),
                };
                txn.send(partition, record)
            }
            Output::Delivered {
                id,
                fire_at_ms,
                fired_at_ms,
                delivery,
            } => {
                let record = OutRecord {
                    topic: &topics.changelog,
                    partition: Some(partition),
                    key: Some(id),
                    value: None,
                    headers: delivered_tombstone(*fire_at_ms, *fired_at_ms, delivery),
                };
                txn.send(partition, record)
            }
            Output::Occurrence {
                id,
                fire_at_ms,
                emitted_at_ms,
                command,
            } => {
                let fire = OutRecord {
                    topic: &topics.fires,
                    // The schedule's partition (not murmur2 of the occurrence
                    // id): all of a partition's records stay on its own
                    // partitions, and a revoke follows its fire there.
                    partition: Some(partition),
                    key: Some(id),
                    value: Some(command),
                    headers: Fire::headers(*fire_at_ms, *emitted_at_ms),
                };
                txn.send(partition, fire)
            }
            Output::Schedule {
                id,
                next_at_ms,
                state,
            } => {
                let record = ScheduleRecord::State {
                    next_at_ms: *next_at_ms,
                    state,
                };
                txn.send(
                    partition,
                    changelog(topics, partition, id, record.value(), record.headers()),
                )
            }
            Output::ScheduleGone { id, end } => {
                let record = ScheduleRecord::Ended(*end);
                txn.send(
                    partition,
                    changelog(topics, partition, id, record.value(), record.headers()),
                )
            }
        }
    }
}

/// The changelog tombstone of timer `id` of `partition`: it fired or was cancelled.
fn tombstone<'a>(
    topics: &'a Topics,
    partition: i32,
    id: &'a [u8],
    finished: Finished,
) -> OutRecord<'a> {
    let record = ChangelogRecord::Finished(Some(finished));
    changelog(topics, partition, id, record.value(), record.headers())
}

/// A changelog record of `partition` for `id` (a timer's or a schedule's:
/// both kinds share the changelog, told apart by their headers).
fn changelog<'a>(
    topics: &'a Topics,
    partition: i32,
    id: &'a [u8],
    value: Option<&'a [u8]>,
    headers: HeaderList,
) -> OutRecord<'a> {
    OutRecord {
        topic: &topics.changelog,
        partition: Some(partition),
        key: Some(id),
        value,
        headers,
    }
}
