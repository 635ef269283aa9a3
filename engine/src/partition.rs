//! What the engine keeps for one owned partition of `chime.timers`, and how
//! input and time change it. Pure: no Kafka here. Every change is recorded
//! as [`Output`]s, the records that make Kafka agree with the new state; the
//! owner loop ([`crate::owner`]) commits them, and keeps them until a
//! transaction carrying them commits.

use bytes::Bytes;
use chime_wheel::{Expired, TimingWheel};
use chime_wire::{lossy, DeadLetter, TimerCommand};

use crate::output::Output;
use crate::record::TimerRecord;
use crate::schedule::Schedules;
use crate::status::{Finish, FinishedTimers};

/// Pending timers of one partition, each a [`TimerRecord`] (id and schedule
/// command) due at its deadline.
pub type TimerWheel = TimingWheel<TimerRecord, ()>;

/// An input record copied out of the consumer, waiting to be applied.
#[derive(Debug, Clone)]
pub struct InputRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// The record's timestamp (unix ms), when it has one: when a schedule
    /// was asked for.
    pub timestamp_ms: Option<u64>,
}

pub struct PartitionState {
    pub partition: i32,
    /// The partition's pending timers, and its schedules due at their next
    /// occurrence ([`crate::schedule`]).
    pub wheel: TimerWheel,
    /// The partition's schedules (active, paused, recently ended).
    pub schedules: Schedules,
    /// The next `chime.timers` offset to apply: every record before it is
    /// reflected in `wheel`, and in Kafka once `outputs` are committed. `None`
    /// until known: the group has no committed offset and nothing was applied.
    pub next_offset: Option<i64>,
    /// Recently fired and cancelled timers, for status questions — and for
    /// revokes: a fire emitted ahead of its due time (within the lead) is a
    /// `Fired` entry whose due time is still ahead.
    pub finished: FinishedTimers,
    /// The input has been read to its end since the partition was loaded.
    /// Until then nothing fires: a cancel of a due timer may still be unread.
    pub caught_up: bool,
    /// Where the consumer last reported the end of the input. Records are
    /// applied in order, so once the inbox is applied every record before it
    /// is too (skipped aborted records and transaction markers included).
    pub input_end: Option<i64>,
    /// The end of the input when the partition was loaded: once every record
    /// before it is applied, the partition is caught up. (The consumer's
    /// end-of-partition report is the other way, but it does not come again
    /// for an end it already reported, so a quiet input would wait for it.)
    pub catch_up_at: Option<i64>,
    /// Records owed to Kafka for changes already made here, oldest first.
    /// They leave only when a transaction that carries them (with
    /// `next_offset`) commits; a failed transaction leaves them for the next.
    pub outputs: Vec<Output>,
}

impl PartitionState {
    pub fn new(
        partition: i32,
        wheel: TimerWheel,
        finished: FinishedTimers,
        next_offset: Option<i64>,
    ) -> Self {
        PartitionState {
            partition,
            wheel,
            schedules: Schedules::new(),
            next_offset,
            finished,
            caught_up: false,
            input_end: None,
            catch_up_at: None,
            outputs: Vec::new(),
        }
    }

    /// Every record below [`Self::catch_up_at`] has been applied (nothing
    /// applied reads from offset 0).
    pub fn applied_through_catch_up_point(&self) -> bool {
        self.catch_up_at
            .is_some_and(|end| self.next_offset.unwrap_or(0) >= end)
    }

    /// Applies one input record (skipping one applied before): schedule or
    /// cancel, or a dead letter for a record that breaks the contract.
    pub fn apply(&mut self, rec: &InputRecord, now: u64, source_topic: &str) {
        if self.next_offset.is_some_and(|next| rec.offset < next) {
            return; // delivered again after a seek or a reassignment
        }
        self.next_offset = Some(rec.offset + 1);
        if self.applied_through_catch_up_point() {
            self.caught_up = true;
        }
        match TimerCommand::decode(rec.key.as_deref(), rec.value.as_deref()) {
            Ok(TimerCommand::Schedule(spec)) => {
                let (Some(id), Some(command)) = (&rec.key, &rec.value) else {
                    unreachable!("decode checked key and value");
                };
                // A record written twice (a producer's resend under a new
                // epoch, docs/kafka-notes.md) is not a new timer when its copy
                // is read after the timer finished: a timer fires once per
                // due time, and a schedule stamped before the cancel took
                // effect cannot mean to bring the timer back.
                let replay = match self.finished.get(id) {
                    Some(Finish::Fired { fire_at_ms, .. }) => fire_at_ms == spec.fire_at_ms,
                    Some(Finish::Cancelled { cancelled_at_ms }) => {
                        rec.timestamp_ms.is_some_and(|t| t < cancelled_at_ms)
                    }
                    None => false,
                };
                if replay {
                    tracing::debug!(
                        partition = self.partition,
                        offset = rec.offset,
                        "schedule of a timer already finished: a replay, ignored"
                    );
                    metrics::counter!("chime_engine_replayed_schedules_total").increment(1);
                    return;
                }
                // A schedule with this id gives way.
                self.drop_schedule(id, now);
                // Re-scheduled while its old fire waits at a dispatcher.
                self.revoke_early_fire(id, now);
                self.finished.forget(id);
                self.wheel
                    .schedule(TimerRecord::new(id, command), spec.fire_at_ms, ());
                self.outputs.push(Output::Pending {
                    id: id.clone(),
                    fire_at_ms: spec.fire_at_ms,
                    command: command.clone(),
                });
            }
            Ok(TimerCommand::Cancel { id }) => {
                let id = Bytes::from(id.into_bytes());
                if self.cancel_schedule(&id, now) {
                    return;
                }
                if self.wheel.cancel(&id[..]).is_none() && !self.revoke_early_fire(&id, now) {
                    return; // fired already, or never seen
                }
                // Cancelled when the cancel was written (its record's time,
                // never later than now): a create stamped before it is older
                // than the cancel, one stamped after it is new (above).
                let cancelled_at_ms = rec.timestamp_ms.filter(|&t| t <= now).unwrap_or(now);
                self.finished
                    .record(&id, Finish::Cancelled { cancelled_at_ms });
                self.outputs.push(Output::Cancelled { id });
            }
            // Schedules and outcomes: see crate::schedule.
            Ok(TimerCommand::Recurring(spec)) => {
                let created = rec.timestamp_ms.filter(|&t| t <= now).unwrap_or(now);
                self.apply_recurring(key_of(rec), spec, created, now);
            }
            Ok(TimerCommand::Pause { .. }) => self.pause_schedule(key_of(rec), now),
            Ok(TimerCommand::Resume { .. }) => self.resume_schedule(key_of(rec), now),
            Ok(TimerCommand::Outcome(outcome)) => self.apply_outcome(key_of(rec), outcome),
            Err(e) => {
                tracing::warn!(partition = self.partition, offset = rec.offset, error = %e, "dead-lettering input record");
                let letter = DeadLetter {
                    reason: format!("undecodable timer command: {e}"),
                    source_topic: source_topic.to_string(),
                    partition: rec.partition,
                    offset: rec.offset,
                    key: lossy(rec.key.as_deref()),
                    value: lossy(rec.value.as_deref()),
                    attempts: None,
                    last_status: None,
                    dead_at_ms: now,
                };
                self.outputs.push(Output::DeadLetter {
                    key: rec.key.clone(),
                    letter: Bytes::from(letter.encode()),
                });
            }
        }
    }

    /// If `id`'s fire was emitted ahead and is not yet due, takes it back
    /// (a revoke record the dispatcher holding it obeys). True if it did.
    pub(crate) fn revoke_early_fire(&mut self, id: &Bytes, now: u64) -> bool {
        match self.finished.get(id) {
            Some(Finish::Fired { fire_at_ms, .. }) if fire_at_ms > now => {
                self.outputs.push(Output::Revoke {
                    id: id.clone(),
                    fire_at_ms,
                });
                true
            }
            _ => false,
        }
    }

    /// Fires every timer due by `now + lead` (the dispatcher holds a fire
    /// until its due time). Returns how many fired; `scratch` is reused
    /// between calls to avoid an allocation per tick.
    pub fn fire_due(
        &mut self,
        now: u64,
        lead: u64,
        scratch: &mut Vec<Expired<TimerRecord, ()>>,
    ) -> usize {
        if !self.caught_up {
            return 0; // a cancel for a due timer may still be unread
        }
        scratch.clear();
        self.wheel.advance(now.saturating_add(lead), scratch);
        let mut fired = 0;
        let lateness = metrics::histogram!("chime_engine_fire_lateness_seconds");
        for fire in scratch.drain(..) {
            if self.schedules.contains_key(fire.id.id()) {
                let id = Bytes::copy_from_slice(fire.id.id());
                fired += self.fire_schedule(id, now, lead);
                continue;
            }
            fired += 1;
            lateness.record(now.saturating_sub(fire.deadline) as f64 / 1000.0);
            // A fire emitted ahead takes effect at its due time.
            let fired_at_ms = now.max(fire.deadline);
            self.finished.record(
                fire.id.id(),
                Finish::Fired {
                    fire_at_ms: fire.deadline,
                    fired_at_ms,
                },
            );
            self.outputs.push(Output::Fired {
                timer: fire.id,
                fire_at_ms: fire.deadline,
                emitted_at_ms: now,
            });
        }
        fired
    }

    /// Every input record before this offset is applied (as far as is known).
    pub fn applied_through(&self) -> Option<i64> {
        match (self.next_offset, self.input_end) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the earliest pending timer is due (unix ms), if this partition
    /// may fire at all.
    pub fn next_due(&self) -> Option<u64> {
        self.caught_up.then(|| self.wheel.next_deadline()).flatten()
    }
}

/// The key of a record that decoded (so it has one).
fn key_of(rec: &InputRecord) -> Bytes {
    rec.key.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> PartitionState {
        let mut s = PartitionState::new(
            0,
            TimerWheel::new(1_000),
            FinishedTimers::new(3_600_000, 1000),
            Some(0),
        );
        s.caught_up = true;
        s
    }

    fn schedule(offset: i64, id: &str, at: u64) -> InputRecord {
        let value = format!(
            r#"{{"op":"schedule","id":"{id}","fire_at_ms":{at},"callback":{{"url":"http://127.0.0.1:9/"}}}}"#
        );
        InputRecord {
            partition: 0,
            offset,
            key: Some(Bytes::copy_from_slice(id.as_bytes())),
            value: Some(Bytes::from(value)),
            timestamp_ms: None,
        }
    }

    fn cancel(offset: i64, id: &str) -> InputRecord {
        InputRecord {
            partition: 0,
            offset,
            key: Some(Bytes::copy_from_slice(id.as_bytes())),
            value: Some(Bytes::from(format!(r#"{{"op":"cancel","id":"{id}"}}"#))),
            timestamp_ms: None,
        }
    }

    fn kinds(s: &PartitionState) -> Vec<&'static str> {
        s.outputs.iter().map(Output::kind).collect()
    }

    #[test]
    fn schedule_fire_and_cancel_produce_their_records() {
        let mut s = state();
        s.apply(&schedule(0, "a", 1_500), 1_000, "t");
        s.apply(&schedule(1, "b", 5_000), 1_000, "t");
        s.apply(&cancel(2, "b"), 1_000, "t");
        assert_eq!(s.next_offset, Some(3));
        assert_eq!(s.fire_due(1_400, 200, &mut Vec::new()), 1);
        assert_eq!(kinds(&s), ["pending", "pending", "cancelled", "fired"]);
        assert!(s.wheel.is_empty());
    }

    #[test]
    fn a_record_applied_before_is_skipped() {
        let mut s = state();
        s.apply(&schedule(0, "a", 1_500), 1_000, "t");
        s.apply(&schedule(0, "a", 1_500), 1_000, "t");
        assert_eq!(s.outputs.len(), 1);
    }

    #[test]
    fn a_schedule_replayed_after_its_fire_does_not_fire_again() {
        let mut s = state();
        s.apply(&schedule(0, "a", 1_500), 1_000, "t");
        assert_eq!(s.fire_due(1_500, 200, &mut Vec::new()), 1);
        // The same record written a second time, read after the fire.
        s.apply(&schedule(1, "a", 1_500), 1_600, "t");
        assert_eq!(s.next_offset, Some(2));
        assert!(s.wheel.is_empty(), "the replay was scheduled again");
        assert_eq!(s.fire_due(2_000, 200, &mut Vec::new()), 0);
        assert_eq!(kinds(&s), ["pending", "fired"]);
        // Also when the fire is known only from the changelog (a new owner).
        let mut s = state();
        s.finished.record(
            b"a",
            Finish::Fired {
                fire_at_ms: 1_500,
                fired_at_ms: 1_500,
            },
        );
        s.apply(&schedule(0, "a", 1_500), 1_600, "t");
        assert!(s.wheel.is_empty());
    }

    #[test]
    fn a_schedule_stamped_before_its_cancel_does_not_bring_the_timer_back() {
        let stamped = |offset, at| InputRecord {
            timestamp_ms: Some(at),
            ..schedule(offset, "a", 5_000)
        };
        let mut s = state();
        s.apply(&stamped(0, 1_000), 1_000, "t");
        // Written at 1 100, applied at 1 200.
        let cancel_at_1100 = InputRecord {
            timestamp_ms: Some(1_100),
            ..cancel(1, "a")
        };
        s.apply(&cancel_at_1100, 1_200, "t");
        // The create written a second time, read after the cancel.
        s.apply(&stamped(2, 1_000), 1_300, "t");
        assert!(s.wheel.is_empty(), "the replay brought the timer back");
        // Created again after the cancel was written (though before the
        // engine applied it): a new timer.
        s.apply(&stamped(3, 1_150), 1_400, "t");
        assert_eq!(s.fire_due(5_000, 200, &mut Vec::new()), 1);
        assert_eq!(kinds(&s), ["pending", "cancelled", "pending", "fired"]);
    }

    #[test]
    fn the_same_id_with_a_new_due_time_after_its_fire_is_a_new_timer() {
        let mut s = state();
        s.apply(&schedule(0, "a", 1_500), 1_000, "t");
        s.fire_due(1_500, 200, &mut Vec::new());
        s.apply(&schedule(1, "a", 3_000), 1_600, "t");
        assert_eq!(s.fire_due(3_000, 200, &mut Vec::new()), 1);
        assert_eq!(kinds(&s), ["pending", "fired", "pending", "fired"]);
    }

    #[test]
    fn a_cancel_inside_the_lead_revokes_the_early_fire() {
        let mut s = state();
        s.apply(&schedule(0, "a", 1_500), 1_000, "t");
        s.fire_due(1_400, 200, &mut Vec::new()); // emitted 100 ms ahead
        s.apply(&cancel(1, "a"), 1_450, "t");
        assert_eq!(kinds(&s), ["pending", "fired", "revoke", "cancelled"]);
        // Once due, the fire is no longer taken back: the cancel is a no-op.
        s.apply(&schedule(2, "b", 1_600), 1_450, "t");
        s.fire_due(1_450, 200, &mut Vec::new());
        s.apply(&cancel(3, "b"), 1_700, "t");
        assert_eq!(kinds(&s).last(), Some(&"fired"));
    }

    #[test]
    fn an_early_fire_known_only_from_the_changelog_is_revoked_too() {
        // A new owner after failover: the predecessor's fire, emitted ahead,
        // is known from its tombstone, rebuilt into `finished`.
        let mut s = state();
        s.finished.record(
            b"a",
            Finish::Fired {
                fire_at_ms: 1_500,
                fired_at_ms: 1_500,
            },
        );
        s.apply(&cancel(0, "a"), 1_400, "t");
        assert_eq!(kinds(&s), ["revoke", "cancelled"]);
    }

    #[test]
    fn nothing_fires_before_the_input_is_caught_up() {
        let mut s = state();
        s.apply(&schedule(0, "a", 1_000), 1_000, "t");
        s.caught_up = false;
        assert_eq!(s.fire_due(2_000, 0, &mut Vec::new()), 0);
        assert_eq!(s.next_due(), None);
        s.caught_up = true;
        assert_eq!(s.next_due(), Some(1_000));
    }

    #[test]
    fn a_loaded_partition_is_caught_up_once_it_applied_through_the_input_end() {
        let mut s = state();
        s.caught_up = false;
        s.catch_up_at = Some(2); // records 0 and 1 were written before it went live
        s.apply(&schedule(0, "a", 1_000), 1_000, "t");
        assert!(!s.caught_up, "record 1 (a cancel, maybe) is still unread");
        s.apply(&cancel(1, "a"), 1_000, "t");
        assert!(s.caught_up);
        assert_eq!(
            s.fire_due(2_000, 0, &mut Vec::new()),
            0,
            "the cancel was applied first"
        );
    }

    #[test]
    fn a_bad_record_becomes_a_dead_letter() {
        let mut s = state();
        let mut bad = cancel(0, "a");
        bad.key = Some(Bytes::from_static(b"other"));
        s.apply(&bad, 1_000, "t");
        assert_eq!(kinds(&s), ["dead-letter"]);
        assert_eq!(s.next_offset, Some(1));
    }
}
