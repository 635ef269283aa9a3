//! The overflow: deadlines beyond the top level, grouped by *epoch*.
//!
//! An epoch is one span of the whole wheel, `2^36` ms (about 2.2 years):
//! `epoch = deadline >> 36`. The levels only ever hold the epoch the wheel's
//! time is in. Invariant: every overflow entry belongs to a later epoch, in
//! the list for its epoch; no list is empty.
//!
//! When the wheel's time reaches the start of the first epoch here (and the
//! levels are empty, which they must then be), that epoch's list is moved
//! into the levels wholesale. A sorted map keeps that O(log epochs) however
//! far apart the epochs are, so any `u64` deadline works, `u64::MAX` too.

use std::collections::BTreeMap;

use crate::arena::Arena;
use crate::level::WHEEL_BITS;
use crate::list::{TimerList, Walk};

pub(crate) fn epoch_of(deadline: u64) -> u64 {
    deadline >> WHEEL_BITS
}

pub(crate) fn epoch_start(epoch: u64) -> u64 {
    epoch << WHEEL_BITS
}

#[derive(Default)]
pub(crate) struct Overflow {
    epochs: BTreeMap<u64, TimerList>,
}

impl Overflow {
    pub(crate) fn push<K, V>(&mut self, arena: &mut Arena<K, V>, epoch: u64, idx: u32) {
        arena.push_front(self.epochs.entry(epoch).or_default(), idx);
    }

    pub(crate) fn unlink<K, V>(&mut self, arena: &mut Arena<K, V>, epoch: u64, idx: u32) {
        let Some(list) = self.epochs.get_mut(&epoch) else {
            unreachable!("overflow entry {idx} has no list for epoch {epoch}");
        };
        arena.unlink(list, idx);
        if list.is_empty() {
            self.epochs.remove(&epoch);
        }
    }

    /// The earliest epoch and its list.
    pub(crate) fn first(&self) -> Option<(u64, &TimerList)> {
        self.epochs
            .first_key_value()
            .map(|(&epoch, list)| (epoch, list))
    }

    /// Removes the earliest epoch, returning a walk over its timers.
    pub(crate) fn pop_first(&mut self) -> Option<Walk> {
        self.epochs.pop_first().map(|(_, mut list)| list.take())
    }

    #[cfg(test)]
    pub(crate) fn lists(&self) -> impl Iterator<Item = (u64, &TimerList)> {
        self.epochs.iter().map(|(&epoch, list)| (epoch, list))
    }
}
