//! One level of the wheel: 64 slots and a bitmap of the non-empty ones.
//!
//! Level `n` has slots `64^n` ms wide, so the level spans `64^(n+1)` ms: one
//! slot of level `n + 1`. With `e` the wheel's time, the invariant is:
//!
//! * every entry of level `n` has a deadline `>= e` inside the same
//!   `64^(n+1)`-ms block as `e`, and (for `n > 0`) outside `e`'s own slot of
//!   level `n`. So its slot index is `>= e`'s (`>` for `n > 0`), and the first
//!   non-empty slot is simply the lowest set bit of `occupied`: no rotation,
//!   no scan.
//! * bit `s` of `occupied` is set exactly when slot `s` is non-empty.

use crate::arena::Arena;
use crate::list::{TimerList, Walk};

/// Bits of a deadline consumed by one level: 64 slots.
pub(crate) const SLOT_BITS: u32 = 6;
pub(crate) const SLOTS: usize = 1 << SLOT_BITS;
/// Number of levels. Six levels span `64^6 ms = 2^36 ms`, about 2.2 years;
/// later deadlines wait in the overflow.
pub(crate) const LEVELS: usize = 6;
/// Bits of a deadline the levels cover together.
pub(crate) const WHEEL_BITS: u32 = SLOT_BITS * LEVELS as u32;

/// The level a `deadline >= elapsed` belongs to: the level whose bits hold
/// the highest bit in which `deadline` and `elapsed` differ. May be `>=
/// LEVELS`, meaning the overflow.
pub(crate) fn level_for(elapsed: u64, deadline: u64) -> usize {
    // OR-ing the slot mask in maps "equal" and "differ only in the lowest
    // six bits" to level 0, and keeps `leading_zeros` below 64.
    let differing = (elapsed ^ deadline) | (SLOTS as u64 - 1);
    let highest_bit = u64::BITS - 1 - differing.leading_zeros();
    (highest_bit / SLOT_BITS) as usize
}

pub(crate) struct Level {
    /// Width of one slot is `1 << shift` ms.
    shift: u32,
    /// Bit `s` is set when `slots[s]` is non-empty.
    occupied: u64,
    slots: [TimerList; SLOTS],
}

impl Level {
    pub(crate) fn new(level: usize) -> Self {
        Level {
            shift: level as u32 * SLOT_BITS,
            occupied: 0,
            slots: [TimerList::default(); SLOTS],
        }
    }

    pub(crate) fn slot_for(&self, deadline: u64) -> usize {
        ((deadline >> self.shift) & (SLOTS as u64 - 1)) as usize
    }

    /// First non-empty slot, found from the bitmap in O(1).
    pub(crate) fn first_occupied(&self) -> Option<usize> {
        (self.occupied != 0).then(|| self.occupied.trailing_zeros() as usize)
    }

    /// The time `slot` starts at, for a wheel whose time is `elapsed`.
    pub(crate) fn slot_start(&self, elapsed: u64, slot: usize) -> u64 {
        let block_mask = (1u64 << (self.shift + SLOT_BITS)) - 1;
        (elapsed & !block_mask) | ((slot as u64) << self.shift)
    }

    pub(crate) fn slot(&self, slot: usize) -> &TimerList {
        &self.slots[slot]
    }

    pub(crate) fn push<K, V>(&mut self, arena: &mut Arena<K, V>, slot: usize, idx: u32) {
        arena.push_front(&mut self.slots[slot], idx);
        self.occupied |= 1 << slot;
    }

    pub(crate) fn unlink<K, V>(&mut self, arena: &mut Arena<K, V>, slot: usize, idx: u32) {
        let list = &mut self.slots[slot];
        arena.unlink(list, idx);
        if list.is_empty() {
            self.occupied &= !(1 << slot);
        }
    }

    /// Empties `slot`, returning a walk over its timers to expire or cascade.
    pub(crate) fn take(&mut self, slot: usize) -> Walk {
        self.occupied &= !(1 << slot);
        self.slots[slot].take()
    }

    #[cfg(test)]
    pub(crate) fn occupied(&self) -> u64 {
        self.occupied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_for_uses_highest_differing_bit() {
        assert_eq!(level_for(0, 0), 0);
        assert_eq!(level_for(0, 63), 0);
        assert_eq!(level_for(0, 64), 1);
        assert_eq!(level_for(0, 4095), 1);
        assert_eq!(level_for(0, 4096), 2);
        assert_eq!(level_for(100, 127), 0);
        assert_eq!(level_for(0, (1 << 36) - 1), LEVELS - 1);
        assert_eq!(level_for(0, 1 << 36), LEVELS);
        assert_eq!(level_for(0, u64::MAX), 10);
        assert_eq!(level_for(u64::MAX, u64::MAX), 0);
    }

    #[test]
    fn slot_start_keeps_higher_bits_of_elapsed() {
        let level = Level::new(1);
        // elapsed in block [4096, 8192) of level 1; slot 3 starts at 4096 + 3*64.
        assert_eq!(level.slot_start(5000, 3), 4096 + 192);
        let top = Level::new(LEVELS - 1);
        assert_eq!(top.slot_start(u64::MAX, 63), !((1u64 << 30) - 1));
    }
}
