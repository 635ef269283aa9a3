//! Rebuilding a partition's state from its changelog (the record format is
//! [`chime_wire::changelog`]): replaying the compacted partition yields
//! exactly its pending set, and the recent fired/cancelled answers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use chime_kafka::group::QuietEof;
use chime_kafka::MessageHeaders;
use chime_wire::{ChangelogRecord, Finished};

use crate::partition::TimerWheel;
use crate::status::{Finish, FinishedTimers};
use crate::EngineConfig;

/// Reads changelog `partitions` from the beginning to their end (the last
/// stable offset: an earlier owner's unfinished transaction is not read) and
/// returns each partition's pending timers as a wheel starting at `now`, and
/// the timers that fired or were cancelled within the status retention.
pub fn load(
    config: &EngineConfig,
    partitions: &[i32],
    now: u64,
) -> anyhow::Result<HashMap<i32, (TimerWheel, FinishedTimers)>> {
    let mut wheels: HashMap<i32, (TimerWheel, FinishedTimers)> = partitions
        .iter()
        .map(|&p| (p, (TimerWheel::new(now), config.finished_timers())))
        .collect();
    if partitions.is_empty() {
        return Ok(wheels);
    }
    let consumer: BaseConsumer<QuietEof> = chime_kafka::consumer_config(
        &config.bootstrap,
        &format!("{}-changelog", config.client_id()),
        &format!("{}-changelog-reader", config.group_id),
    )
    .set("enable.partition.eof", "true")
    .set("fetch.max.bytes", "52428800")
    .set("max.partition.fetch.bytes", "10485760")
    .create_with_context(QuietEof)?;
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(&config.topics.changelog, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;

    let started = Instant::now();
    let mut at_end = 0usize;
    let mut records = 0u64;
    while at_end < partitions.len() {
        if started.elapsed() > config.rebuild_timeout {
            anyhow::bail!(
                "changelog rebuild of partitions {partitions:?} did not reach the end within {:?}",
                config.rebuild_timeout
            );
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                tracing::debug!(partition = p, "changelog partition loaded");
                at_end += 1;
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
                records += 1;
                let Some((wheel, finished)) = wheels.get_mut(&m.partition()) else {
                    continue;
                };
                let Some(id) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    tracing::warn!(offset = m.offset(), "changelog record without a UTF-8 key");
                    continue;
                };
                match ChangelogRecord::decode(m.payload(), &MessageHeaders(&m)) {
                    Ok(ChangelogRecord::Finished(finished_as)) => {
                        wheel.cancel(&Bytes::copy_from_slice(id.as_bytes()));
                        if let Some(finish) = finished_as.and_then(|f| finish_at(f, &m)) {
                            finished.record(id.as_bytes(), finish);
                        }
                    }
                    Ok(ChangelogRecord::Pending {
                        fire_at_ms,
                        command,
                    }) => {
                        wheel.schedule(
                            Bytes::copy_from_slice(id.as_bytes()),
                            fire_at_ms,
                            Bytes::copy_from_slice(command),
                        );
                        finished.forget(id.as_bytes());
                    }
                    Err(e) => {
                        tracing::warn!(offset = m.offset(), error = %e, "undecodable changelog record")
                    }
                }
            }
        }
    }
    for (_, finished) in wheels.values_mut() {
        finished.expire(now);
    }
    let pending: usize = wheels.values().map(|(w, _)| w.len()).sum();
    tracing::info!(
        ?partitions,
        records,
        pending,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "changelog rebuilt"
    );
    Ok(wheels)
}

/// A tombstone's finish, dated by the record's timestamp.
fn finish_at<M: Message>(finished: Finished, m: &M) -> Option<Finish> {
    let at = m
        .timestamp()
        .to_millis()
        .and_then(|t| u64::try_from(t).ok())?;
    Some(match finished {
        // A fire emitted ahead (the lead) takes effect at its due time.
        Finished::Fired { fire_at_ms } => Finish::Fired {
            fire_at_ms,
            fired_at_ms: at.max(fire_at_ms),
        },
        Finished::Cancelled => Finish::Cancelled {
            cancelled_at_ms: at,
        },
    })
}
