//! Rebuilding a partition's state when it is assigned: first the group's
//! committed input offset, then the changelog (record format:
//! [`chime_wire::changelog`]) read to its end. Replaying the compacted
//! partition yields exactly its pending set, and the recent fired and
//! cancelled answers (which include fires emitted ahead of their due time,
//! so a new owner can still revoke them).
//!
//! The committed offset is read first, with read_committed semantics (it
//! waits while an earlier owner's transaction is pending), so a zombie's late
//! commit cannot slip between the two reads. A rebuild runs on a thread of
//! its own, so the owner loop keeps firing its other partitions meanwhile.

use std::collections::HashMap;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use chime_kafka::group::QuietEof;
use chime_kafka::MessageHeaders;
use chime_wire::changelog::{tombstone_delivery, ScheduleRecord};
use chime_wire::{ChangelogRecord, Finished, ScheduleState};

use crate::partition::{PartitionState, TimerWheel};
use crate::record::TimerRecord;
use crate::schedule::{Schedule, Schedules};
use crate::status::{Finish, FinishedTimers};
use crate::EngineConfig;

/// Deadline for reading the committed offsets.
const OFFSETS_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of all the input-end queries of one rebuild together (an end is
/// also learnt from the consumer's end-of-partition report, so one left
/// unanswered only waits).
const INPUT_END_TIMEOUT: Duration = Duration::from_millis(250);

/// A finished rebuild: the partitions' states, or why it failed.
pub struct Rebuilt {
    /// Tells this rebuild from a later one of the same partitions.
    pub id: u64,
    pub partitions: Vec<i32>,
    pub result: anyhow::Result<Vec<PartitionState>>,
    pub took: Duration,
}

/// Rebuilds `partitions` on a new thread, after `delay`; the result (or
/// why there is none) is sent on `done`.
pub fn spawn(
    config: &EngineConfig,
    offsets: &Arc<OffsetsReader>,
    id: u64,
    partitions: Vec<i32>,
    delay: Duration,
    done: mpsc::Sender<Rebuilt>,
) {
    let (config, offsets) = (config.clone(), Arc::clone(offsets));
    let (parts, report) = (partitions.clone(), done.clone());
    let spawned = std::thread::Builder::new()
        .name("chime-rebuild".into())
        .spawn(move || {
            std::thread::sleep(delay);
            let started = Instant::now();
            let result = rebuild(&config, &offsets, &partitions);
            release_freed_memory();
            let _ = done.send(Rebuilt {
                id,
                partitions,
                result,
                took: started.elapsed(),
            });
        });
    if let Err(e) = spawned {
        // Reported as a failed rebuild, so it is tried again.
        let _ = report.send(Rebuilt {
            id,
            partitions: parts,
            result: Err(anyhow::anyhow!("cannot start a rebuild thread: {e}")),
            took: Duration::ZERO,
        });
    }
}

/// Gives librdkafka's freed fetch buffers back to the system: a rebuild
/// reads the whole changelog through them, and glibc would otherwise keep
/// that memory, so the engine's footprint after a rebuild would exceed the
/// one before it for the same timers. (chime's own allocations use mimalloc,
/// which returns freed pages by itself; librdkafka is C and uses malloc.)
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Committed input offsets, then the changelog: each partition's state.
/// Several partitions are read by several readers at once (one per core):
/// the per-record cost is on the reading thread, so one reader would leave
/// the machine's other cores idle during a rebuild.
fn rebuild(
    config: &EngineConfig,
    offsets: &OffsetsReader,
    partitions: &[i32],
) -> anyhow::Result<Vec<PartitionState>> {
    let committed = offsets.committed(partitions)?;
    let input_ends = offsets.input_ends(partitions);
    let now = chime_wire::time::now_ms();
    let readers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(partitions.len())
        .max(1);
    let shares: Vec<Vec<i32>> = (0..readers)
        .map(|r| {
            partitions
                .iter()
                .copied()
                .skip(r)
                .step_by(readers)
                .collect()
        })
        .collect();
    let mut loaded = HashMap::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .iter()
            .map(|share| scope.spawn(move || load(config, share, now)))
            .collect();
        for handle in handles {
            let part = handle
                .join()
                .map_err(|_| anyhow::anyhow!("a changelog reader panicked"))??;
            loaded.extend(part);
        }
        anyhow::Ok(())
    })?;
    partitions
        .iter()
        .map(|&p| {
            let (wheel, finished, schedules) = loaded
                .remove(&p)
                .ok_or_else(|| anyhow::anyhow!("changelog load lost partition {p}"))?;
            let mut state = PartitionState::new(p, wheel, finished, committed.get(&p).copied());
            state.schedules = schedules;
            state.catch_up_at = input_ends.get(&p).copied();
            Ok(state)
        })
        .collect()
}

/// Reads the group's committed input offsets (next offset to apply)
/// through a consumer outside the group: the group member's own state
/// machine stalls for seconds when the application queries offsets while
/// librdkafka is starting newly assigned partitions. One per engine, made
/// once: a new client per rebuild cost ~100 ms of connecting and finding the
/// group's coordinator on every failover.
pub struct OffsetsReader {
    consumer: BaseConsumer,
    topic: String,
}

impl OffsetsReader {
    pub fn new(config: &EngineConfig) -> anyhow::Result<OffsetsReader> {
        let consumer = chime_kafka::consumer_config(
            &config.bootstrap,
            &format!("{}-offsets", config.client_id()),
            &config.group_id,
        )
        .create()?;
        Ok(OffsetsReader {
            consumer,
            topic: config.topics.timers.clone(),
        })
    }

    /// The end of each partition's input now (its high watermark), for those
    /// whose end could be read in time: every record written before the
    /// partition goes live is below it. A partition without one waits for
    /// the consumer to report the end.
    /// All the queries together take at most `INPUT_END_TIMEOUT`.
    fn input_ends(&self, partitions: &[i32]) -> HashMap<i32, i64> {
        let deadline = Instant::now() + INPUT_END_TIMEOUT;
        partitions
            .iter()
            .map_while(|&p| {
                let left = deadline.checked_duration_since(Instant::now())?;
                Some((p, self.consumer.fetch_watermarks(&self.topic, p, left)))
            })
            .filter_map(|(p, answer)| Some((p, answer.ok()?.1)))
            .collect()
    }

    fn committed(&self, partitions: &[i32]) -> anyhow::Result<HashMap<i32, i64>> {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition(&self.topic, p);
        }
        let committed = self.consumer.committed_offsets(tpl, OFFSETS_TIMEOUT)?;
        Ok(partitions
            .iter()
            .filter_map(
                |&p| match committed.find_partition(&self.topic, p)?.offset() {
                    Offset::Offset(o) => Some((p, o)),
                    _ => None,
                },
            )
            .collect())
    }
}

/// One partition's state as its changelog says.
type Loaded = (TimerWheel, FinishedTimers, Schedules);

/// Reads changelog `partitions` from the beginning to their end (the last
/// stable offset: an earlier owner's unfinished transaction is not read) and
/// returns each partition's pending timers as a wheel starting at `now`, the
/// timers that fired or were cancelled within the status retention, and its
/// schedules (in the wheel too, at their next occurrence).
fn load(
    config: &EngineConfig,
    partitions: &[i32],
    now: u64,
) -> anyhow::Result<HashMap<i32, Loaded>> {
    let mut wheels: HashMap<i32, Loaded> = partitions
        .iter()
        .map(|&p| {
            (
                p,
                (
                    TimerWheel::new(now),
                    config.finished_timers(),
                    Schedules::new(),
                ),
            )
        })
        .collect();
    if partitions.is_empty() {
        return Ok(wheels);
    }
    let consumer: BaseConsumer<QuietEof> = chime_kafka::consumer_config(
        &config.bootstrap,
        &format!("{}-changelog", config.client_id()),
        // Never joined nor committed to; librdkafka's assign needs a group id.
        &format!("{}-changelog-reader", config.group_id),
    )
    .set("enable.partition.eof", "true")
    .set("fetch.max.bytes", "52428800")
    .set("max.partition.fetch.bytes", "10485760")
    // Bounds what the reader buffers ahead of the rebuild (default 64 MiB).
    .set("queued.max.messages.kbytes", "32768")
    .create_with_context(QuietEof)?;
    // From offset 0, not `Offset::Beginning`: a logical offset is resolved
    // by a query that, asked before this new client knows the partition's
    // leader, librdkafka retries only 500 ms later — half a second added to
    // every rebuild. A compacted changelog keeps offset 0 as its start; were
    // it gone (records deleted by hand), `auto.offset.reset=earliest` reads
    // from the first offset there is.
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(&config.topics.changelog, p, Offset::Offset(0))?;
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
                let Some((wheel, finished, schedules)) = wheels.get_mut(&m.partition()) else {
                    continue;
                };
                let Some(id) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    tracing::warn!(offset = m.offset(), "changelog record without a UTF-8 key");
                    continue;
                };
                // A later record for an id replaces an earlier one of either kind.
                if let Some(record) = ScheduleRecord::decode(m.payload(), &MessageHeaders(&m)) {
                    wheel.cancel(id.as_bytes());
                    finished.forget(id.as_bytes());
                    schedules.remove(id.as_bytes());
                    if let ScheduleRecord::State { state, .. } = record {
                        match ScheduleState::decode(state).and_then(Schedule::from_state) {
                            Ok(schedule) => {
                                schedules.insert(Bytes::copy_from_slice(id.as_bytes()), schedule);
                            }
                            Err(e) => tracing::warn!(offset = m.offset(), error = %e,
                                "undecodable schedule state in the changelog"),
                        }
                    }
                    continue;
                }
                if !schedules.is_empty() {
                    schedules.remove(id.as_bytes());
                }
                match ChangelogRecord::decode(m.payload(), &MessageHeaders(&m)) {
                    Ok(ChangelogRecord::Finished(finished_as)) => {
                        wheel.cancel(id.as_bytes());
                        if let Some(finish) = finished_as.and_then(|f| finish_at(f, &m)) {
                            finished.record(id.as_bytes(), finish);
                            if let (Some(delivery), _) = tombstone_delivery(&MessageHeaders(&m)) {
                                finished.set_delivery(id.as_bytes(), &delivery);
                            }
                        }
                    }
                    Ok(ChangelogRecord::Pending {
                        fire_at_ms,
                        command,
                    }) => {
                        wheel.schedule(TimerRecord::new(id.as_bytes(), command), fire_at_ms, ());
                        finished.forget(id.as_bytes());
                    }
                    Err(e) => {
                        tracing::warn!(offset = m.offset(), error = %e, "undecodable changelog record")
                    }
                }
            }
        }
    }
    for (wheel, finished, schedules) in wheels.values_mut() {
        finished.expire(now);
        let retention = finished.retention_ms();
        for (id, schedule) in schedules.iter() {
            if let Some(at) = schedule.wheel_deadline(retention) {
                wheel.schedule(TimerRecord::new(id, b""), at, ());
            }
        }
    }
    // Closing a client waits for its threads (~100 ms): not on the way to
    // the partitions going live.
    let _ = std::thread::Builder::new()
        .name("chime-rebuild-close".into())
        .spawn(move || drop(consumer));
    let pending: usize = wheels.values().map(|(w, _, _)| w.len()).sum();
    tracing::info!(
        ?partitions,
        records,
        pending,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "changelog rebuilt"
    );
    Ok(wheels)
}

/// A tombstone's finish, dated by the record's timestamp (or, for a fired
/// tombstone written again with its delivery, the time it says it fired).
fn finish_at<M: Message>(finished: Finished, m: &M) -> Option<Finish> {
    let stamped = m
        .timestamp()
        .to_millis()
        .and_then(|t| u64::try_from(t).ok());
    let at = match tombstone_delivery(&MessageHeaders(m)) {
        (_, Some(fired_at)) => fired_at,
        _ => stamped?,
    };
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
