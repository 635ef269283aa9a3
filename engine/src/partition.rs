//! What the engine keeps for one owned partition of `chime.timers`.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use chime_wheel::TimingWheel;

use crate::status::FinishedTimers;

/// Pending timers of one partition: id → (due time, the schedule command's bytes).
pub type TimerWheel = TimingWheel<Bytes, Bytes>;

pub struct PartitionState {
    /// The partition's pending timers.
    pub wheel: TimerWheel,
    /// The next `chime.timers` offset to apply; every record before it is
    /// reflected in `wheel` and in the changelog. This is the offset each
    /// transaction commits for the partition. `None` until known: the group
    /// has no committed offset and no record has been applied yet.
    pub next_offset: Option<i64>,
    /// Recently fired and cancelled timers, for status questions.
    pub finished: FinishedTimers,
    /// Fires emitted ahead of their due time (within the lead), which a
    /// cancel or re-schedule can still revoke.
    pub early: EarlyFires,
    /// The input has been read to its end since the partition was loaded.
    /// Until then nothing fires: a cancel of a due timer may still be unread.
    pub caught_up: bool,
}

/// Fires emitted before their due time (the engine's lead), by id, until they
/// come due. The dispatcher holds such a fire until its time; a cancel that
/// arrives meanwhile is answered with a revoke record on the same key.
#[derive(Debug, Default)]
pub struct EarlyFires {
    by_id: HashMap<Bytes, u64>,
    order: VecDeque<(u64, Bytes)>, // (due time, id), in emission order
}

impl EarlyFires {
    /// `id` was emitted ahead of its due time `fire_at`.
    pub fn insert(&mut self, id: Bytes, fire_at: u64) {
        self.by_id.insert(id.clone(), fire_at);
        self.order.push_back((fire_at, id));
    }

    /// Forgets fires that are due by `now`: too late to revoke.
    pub fn expire(&mut self, now: u64) {
        while self.order.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((at, id)) = self.order.pop_front() {
                if self.by_id.get(&id) == Some(&at) {
                    self.by_id.remove(&id);
                }
            }
        }
    }

    /// Takes `id` out if its fire is still ahead of its time; returns the due time.
    pub fn take(&mut self, id: &Bytes) -> Option<u64> {
        self.by_id.remove(id)
    }
}
