//! What the engine keeps for one owned partition of `chime.timers`.

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
    /// The input has been read to its end since the partition was loaded.
    /// Until then nothing fires: a cancel of a due timer may still be unread.
    pub caught_up: bool,
}
