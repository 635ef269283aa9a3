//! A list of timers: intrusive doubly linked lists threaded through the
//! arena, plus the list's length and a lower bound on its deadlines.
//!
//! A list is split into `STRIPES` chains by arena index. Walking a linked
//! list is a chain of dependent loads, one cache miss per entry when the
//! list is large; walking the stripes round-robin follows independent
//! chains, so the CPU overlaps their misses. Expiring and cascading are
//! list walks, so this is what bounds them.
//!
//! Invariant: `min` is `<=` every deadline in the list, and equal to the
//! smallest one when `min_is_exact`. Pushing keeps `min` exact for free.
//! Unlinking the entry that held the minimum would need a scan to find the
//! next one; the list pays for that scan only while it is short
//! (`RESCAN_LIMIT`), and otherwise keeps the old value as a lower bound. That
//! is what lets [`TimingWheel::next_deadline`](crate::TimingWheel::next_deadline)
//! be exact in the common case without ever costing more than O(1) amortised.

use crate::arena::{Arena, NIL};

/// Independent chains per list.
pub(crate) const STRIPES: usize = 4;

/// Lists at most this long find their new minimum by scanning when the old
/// one is unlinked. Short enough that the scan is a few cache lines.
pub(crate) const RESCAN_LIMIT: u32 = 16;

#[derive(Clone, Copy, Debug)]
pub(crate) struct TimerList {
    /// First entry of each stripe, or `NIL`. Entry `idx` is in stripe
    /// `idx % STRIPES`.
    heads: [u32; STRIPES],
    len: u32,
    min: u64,
    min_is_exact: bool,
}

impl Default for TimerList {
    fn default() -> Self {
        TimerList {
            heads: [NIL; STRIPES],
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

    #[cfg(test)]
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

    /// Empties the list, returning a walk over what it held.
    pub(crate) fn take(&mut self) -> Walk {
        let list = std::mem::take(self);
        Walk {
            cursors: list.heads,
            turn: 0,
            remaining: list.len,
        }
    }

    /// A walk over the list's entries; the list must not change meanwhile.
    pub(crate) fn walk(&self) -> Walk {
        Walk {
            cursors: self.heads,
            turn: 0,
            remaining: self.len,
        }
    }

    /// The head of the stripe entry `idx` belongs to.
    pub(crate) fn head_mut(&mut self, idx: u32) -> &mut u32 {
        &mut self.heads[idx as usize % STRIPES]
    }

    #[cfg(test)]
    pub(crate) fn heads(&self) -> &[u32; STRIPES] {
        &self.heads
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

/// Visits a list's entries, taking one from each stripe in turn (see the
/// module comment). Not an `Iterator`: callers relink or free each entry
/// while walking, so the arena is passed in per step, and each entry's
/// successor is read before the entry is handed out.
pub(crate) struct Walk {
    cursors: [u32; STRIPES],
    turn: usize,
    remaining: u32,
}

impl Walk {
    pub(crate) fn len(&self) -> usize {
        self.remaining as usize
    }

    pub(crate) fn next<K, V>(&mut self, arena: &Arena<K, V>) -> Option<u32> {
        if self.remaining == 0 {
            return None;
        }
        for _ in 0..STRIPES {
            let stripe = self.turn;
            self.turn = (self.turn + 1) % STRIPES;
            let idx = self.cursors[stripe];
            if idx != NIL {
                self.cursors[stripe] = arena.entry(idx).next;
                self.remaining -= 1;
                return Some(idx);
            }
        }
        // Unreachable while the list's length matches its chains.
        debug_assert_eq!(self.remaining, 0, "list length out of sync with its chains");
        self.remaining = 0;
        None
    }
}
