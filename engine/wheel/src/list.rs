//! A list of timers: the head of an intrusive doubly linked list threaded
//! through the arena, plus its length and a lower bound on its deadlines.
//!
//! Invariant: `min` is `<=` every deadline in the list, and equal to the
//! smallest one when `min_is_exact`. Pushing keeps `min` exact for free.
//! Unlinking the entry that held the minimum would need a scan to find the
//! next one; the list pays for that scan only while it is short
//! (`RESCAN_LIMIT`), and otherwise keeps the old value as a lower bound. That
//! is what lets [`TimingWheel::next_deadline`](crate::TimingWheel::next_deadline)
//! be exact in the common case without ever costing more than O(1) amortised.

use crate::arena::NIL;

/// Lists at most this long find their new minimum by scanning when the old
/// one is unlinked. Short enough that the scan is a few cache lines.
pub(crate) const RESCAN_LIMIT: u32 = 16;

#[derive(Clone, Copy, Debug)]
pub(crate) struct TimerList {
    /// First entry, or `NIL` when empty.
    pub(crate) head: u32,
    len: u32,
    min: u64,
    min_is_exact: bool,
}

impl Default for TimerList {
    fn default() -> Self {
        TimerList {
            head: NIL,
            len: 0,
            min: u64::MAX,
            min_is_exact: true,
        }
    }
}

impl TimerList {
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    /// A lower bound on the list's deadlines; exact unless a long list lost
    /// its minimum (see the module comment). Meaningless when empty.
    pub(crate) fn min_deadline(&self) -> u64 {
        self.min
    }

    #[cfg(test)]
    pub(crate) fn min_is_exact(&self) -> bool {
        self.min_is_exact
    }

    /// Empties the list, returning what it held (to walk from its head).
    pub(crate) fn take(&mut self) -> TimerList {
        std::mem::take(self)
    }

    /// Bookkeeping for an entry with `deadline` just linked in.
    pub(crate) fn note_pushed(&mut self, deadline: u64) {
        // A deadline at or below a lower bound is the true minimum.
        if self.len == 0 || deadline <= self.min {
            self.min = deadline;
            self.min_is_exact = true;
        }
        self.len += 1;
    }

    /// Bookkeeping for an entry with `deadline` just unlinked. Returns true
    /// when the caller should rescan the list and call [`Self::set_exact_min`].
    pub(crate) fn note_unlinked(&mut self, deadline: u64) -> bool {
        self.len -= 1;
        if self.len == 0 {
            *self = TimerList::default();
            return false;
        }
        if deadline == self.min {
            // Others may share the minimum, but we cannot know without a scan.
            self.min_is_exact = false;
        }
        !self.min_is_exact && self.len <= RESCAN_LIMIT
    }

    pub(crate) fn set_exact_min(&mut self, min: u64) {
        self.min = min;
        self.min_is_exact = true;
    }
}
