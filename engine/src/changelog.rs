//! The changelog: a compacted topic with one partition per input partition,
//! written only by that partition's owner. `key = timer id`; a value is the
//! timer's schedule command ("pending"), a null value a tombstone ("fired or
//! cancelled"). Replaying a partition therefore yields exactly its pending set,
//! and compaction keeps that replay O(pending timers).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};

use chime_wire::kafka::header;
use chime_wire::record::{HEADER_FIRE_AT_MS, HEADER_OUTCOME, OUTCOME_CANCELLED, OUTCOME_FIRED};
use chime_wire::TimerCommand;

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
    let consumer: BaseConsumer<QuietEof> = chime_wire::kafka::consumer_config(
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
                match m.payload() {
                    None => {
                        wheel.cancel(&Bytes::copy_from_slice(id.as_bytes()));
                        if let Some(finish) = tombstone_finish(&m) {
                            finished.record(id.as_bytes(), finish);
                        }
                    }
                    Some(value) => match fire_at(&m, value) {
                        Some(at) => {
                            wheel.schedule(
                                Bytes::copy_from_slice(id.as_bytes()),
                                at,
                                Bytes::copy_from_slice(value),
                            );
                            finished.forget(id.as_bytes());
                        }
                        None => tracing::warn!(offset = m.offset(), "undecodable changelog record"),
                    },
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

/// How a tombstone's timer finished, from its headers and timestamp.
fn tombstone_finish<M: Message>(m: &M) -> Option<Finish> {
    let at = m
        .timestamp()
        .to_millis()
        .and_then(|t| u64::try_from(t).ok())?;
    match header(m, HEADER_OUTCOME)? {
        OUTCOME_FIRED => {
            let fire_at_ms = header(m, HEADER_FIRE_AT_MS)?.parse().ok()?;
            // A fire emitted ahead (the lead) takes effect at its due time.
            Some(Finish::Fired {
                fire_at_ms,
                fired_at_ms: at.max(fire_at_ms),
            })
        }
        OUTCOME_CANCELLED => Some(Finish::Cancelled {
            cancelled_at_ms: at,
        }),
        _ => None,
    }
}

/// The due time of a pending record: from its header, else from its JSON.
fn fire_at<M: Message>(m: &M, value: &[u8]) -> Option<u64> {
    let from_header = header(m, HEADER_FIRE_AT_MS).and_then(|s| s.parse().ok());
    from_header.or_else(
        || match serde_json::from_slice::<TimerCommand>(value).ok()? {
            TimerCommand::Schedule(spec) => Some(spec.fire_at_ms),
            TimerCommand::Cancel { .. } => None,
        },
    )
}

/// End of partition: also reported by librdkafka as a global error.
pub(crate) fn is_partition_eof(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
    )
}

/// librdkafka also reports "end of partition" as a global error, which the
/// default context would log at error level; here it is the expected signal.
pub(crate) struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if !is_partition_eof(&error) {
            tracing::error!(%error, reason, "changelog reader error");
        }
    }
}

impl ConsumerContext for QuietEof {}
