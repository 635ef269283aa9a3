//! Which partitions this engine owns: the group's assignments and
//! revocations, rebuilding assigned partitions beside the loop, and knowing
//! when a partition's input is read to its end (before which it fires
//! nothing: a cancel of a due timer may still be unread).

use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::Offset;

use chime_kafka::GroupEvent;

use super::{Owner, REBUILD_RETRY, WATERMARK_TIMEOUT};
use crate::rebuild;

impl Owner {
    /// The consumer reached the end of partition `p`: every record written
    /// before now is applied or in the inbox (applied before any fire), so
    /// the partition may fire.
    pub(super) fn mark_caught_up(&mut self, p: i32) {
        self.changes += 1;
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
        let unapplied = self.inbox.iter().any(|r| r.partition == p);
        if let (Some(state), false) = (owned.live.get_mut(&p), unapplied) {
            state.input_end = Some(end); // else set once the inbox is applied
        }
        self.end_of_input.insert(p, end);
    }

    /// A consumer error: logged, unless it means the engine can never join.
    pub(super) fn consumer_error(&self, e: KafkaError) -> anyhow::Result<()> {
        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::InvalidSessionTimeout) {
            anyhow::bail!(
                "the brokers refuse a session timeout of {:?} (CHIME_SESSION_TIMEOUT_MS): it is \
                 outside their group.min.session.timeout.ms / group.max.session.timeout.ms; \
                 raise CHIME_SESSION_TIMEOUT_MS or lower the brokers' minimum (docs/operations.md)",
                self.config.session_timeout
            );
        }
        if let Some(why) = chime_kafka::group::fatal_error(&self.consumer, &self.config.instance_id)
        {
            anyhow::bail!("engine {why}");
        }
        tracing::warn!(error = %e, "consumer error");
        Ok(())
    }

    /// librdkafka reports the end of a partition once per offset, so a
    /// partition rebuilt at an offset whose end was reported before it was
    /// paused would wait for a report that never comes. Live partitions not
    /// yet caught up compare their consumer position with the end of their
    /// input instead.
    pub(super) fn check_caught_up(&mut self) {
        self.last_catch_up_check = Instant::now();
        self.changes += 1;
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
        // The owner loop waits on these queries: each is short, and all
        // together stop after one query's time, the rest asked next time.
        // (A query can go unanswered for its whole timeout; with Kafka's 10 s
        // the loop once sat two minutes here, firing nothing.)
        let started = Instant::now();
        for (p, applied) in waiting {
            if started.elapsed() >= WATERMARK_TIMEOUT {
                break;
            }
            if self.inbox.iter().any(|r| r.partition == p) {
                continue; // the inbox is applied first; ask again next time
            }
            let position = match positions.find_partition(&topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => applied,
            };
            let Ok((_, end)) = self.consumer.fetch_watermarks(&topic, p, WATERMARK_TIMEOUT) else {
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

    pub(super) fn apply_group_events(&mut self) -> anyhow::Result<()> {
        for event in self.consumer.context().take_events() {
            self.changes += 1;
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
                    self.just_revoked.extend(parts);
                }
                GroupEvent::Assigned(parts) => {
                    self.status.lock().joined = true;
                    // A rebuild goes live all at once, after its slowest
                    // partition, and a partition taken from a member that
                    // died waits for that member's open transaction to be
                    // aborted (seconds). One this engine owned until this
                    // rebalance has no such wait (its transactions ended
                    // before the revocation), so an eager rebalance's
                    // returning partitions are rebuilt on their own.
                    let (back, new): (Vec<i32>, Vec<i32>) = parts
                        .into_iter()
                        .partition(|p| self.just_revoked.contains(p));
                    self.just_revoked.clear();
                    self.start_rebuild(back, Duration::ZERO);
                    self.start_rebuild(new, Duration::ZERO);
                }
            }
        }
        Ok(())
    }

    /// Pauses `parts` (their input waits for their state) and rebuilds them
    /// on a thread of their own.
    pub(super) fn start_rebuild(&mut self, parts: Vec<i32>, delay: Duration) {
        if parts.is_empty() {
            return;
        }
        if let Err(e) = self.consumer.pause(&self.partition_list(&parts)) {
            // Their input then reaches the inbox early and waits there
            // (held) until they are live: slower, not wrong.
            tracing::warn!(partitions = ?parts, error = %e, "pause failed");
        }
        self.next_rebuild += 1;
        let id = self.next_rebuild;
        let mut owned = self.status.lock();
        for &p in &parts {
            owned.loading.insert(p);
            self.rebuilding.insert(p, id);
        }
        drop(owned);
        tracing::info!(partitions = ?parts, "rebuilding partitions");
        rebuild::spawn(
            &self.config,
            &self.offsets_reader,
            id,
            parts,
            delay,
            self.rebuilt_tx.clone(),
        );
    }

    /// Makes the partitions of every finished rebuild Live (those still ours
    /// and not rebuilt again since), and resumes their input.
    pub(super) fn install_rebuilt(&mut self) {
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
                    // Try again shortly: the partitions stay paused and loading.
                    tracing::warn!(partitions = ?ours, error = %e, "rebuild failed; retrying");
                    self.start_rebuild(ours, REBUILD_RETRY);
                    continue;
                }
            };
            self.changes += 1;
            let mut owned = self.status.lock();
            for mut state in states {
                let p = state.partition;
                if !ours.contains(&p) {
                    continue;
                }
                self.rebuilding.remove(&p);
                owned.loading.remove(&p);
                // Nothing applied nor committed reads from the start: an
                // empty input is caught up at once.
                let next = state.next_offset;
                state.caught_up = next.is_some() && self.end_of_input.get(&p) == next.as_ref()
                    || state.applied_through_catch_up_point();
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
}
