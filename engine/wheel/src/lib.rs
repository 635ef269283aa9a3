//! A hierarchical timing wheel: millions of pending timers, each scheduled,
//! cancelled and expired in O(1).
//!
//! This crate is a pure data structure. It does no I/O and has no clock: the
//! caller says what time it is (`now`, in milliseconds, e.g. unix ms) when it
//! creates the wheel and whenever it [advances](TimingWheel::advance) it, so
//! tests can drive time however they like.
//!
//! # The problem
//!
//! A timer service holds a large set of `(id, deadline, payload)` and needs
//! four operations: schedule, cancel by id, "give me everything due by now",
//! and "when is the next one due". A binary heap or a B-tree does each in
//! O(log n), pays that log on every one of millions of timers, and a heap
//! cannot cancel without lazy tombstones that keep memory until they surface.
//!
//! # One wheel
//!
//! Varghese and Lauck ("Hashed and Hierarchical Timing Wheels", 1987) start
//! from a clock face: an array of slots, one per millisecond, each slot a
//! list. A timer due at `t` goes into slot `t mod size`; the clock's hand
//! moves one slot per millisecond and everything in the slot it reaches is
//! due. Insert and cancel are O(1) (push onto a list, unlink from a list). But
//! one wheel only reaches `size` milliseconds ahead, and a hand that visits
//! every millisecond does work even when nothing is due.
//!
//! # A hierarchy of wheels (scheme 7)
//!
//! Stack wheels like the hands of a clock. Here each level has 64 slots and
//! each level's slots are 64 times wider than the level below:
//!
//! ```text
//! level   one slot               whole level (= one slot of the level above)
//!   0     1 ms                   64 ms
//!   1     64 ms                  4.1 s
//!   2     4.1 s                  4.4 min
//!   3     4.4 min                4.7 h
//!   4     4.7 h                  12.4 days
//!   5     12.4 days              795 days (2^36 ms, ~2.2 years)
//!   overflow: later deadlines, grouped by 2^36-ms "epoch"
//! ```
//!
//! Because 64 = 2^6, a time's base-64 digits are its slots: digit `n` (bits
//! `6n..6n+6`) is its slot at level `n`. A timer goes into the level of the
//! *highest digit in which its deadline differs from the wheel's current
//! time*: a deadline that differs only in digit 0 is due within the current
//! 64-ms block and goes to level 0; one that first differs in digit 2 goes to
//! level 2; and so on. So every level holds only timers of the current block
//! of the level above it, and a coarse slot is a bucket of timers that share
//! all higher digits.
//!
//! As time reaches the start of a coarse slot, its timers are *cascaded*:
//! each is re-inserted relative to the new time, which puts it into a finer
//! level. Only at level 0 is a slot exactly one millisecond, and reaching it
//! means its timers are due. A worked example, with the wheel at time 1000
//! and a timer due at 5000:
//!
//! ```text
//! base-64 digits (level 2, 1, 0):   1000 = (0, 15, 40)     5000 = (1, 14, 8)
//! highest differing digit: 2  ->  level 2, slot 1, i.e. [4096, 8192)
//! time reaches 4096 = (1, 0, 0): cascade; now only digit 1 differs
//!                             ->  level 1, slot 14, i.e. [4992, 5056)
//! time reaches 4992 = (1, 14, 0): cascade  ->  level 0, slot 8
//! time reaches 5000: expired.
//! ```
//!
//! A timer is cascaded at most once per level (five times), so the total
//! work per timer is bounded by a constant no matter how far out it was.
//!
//! # Finding the next event without scanning
//!
//! Each level keeps a `u64` bitmap with one bit per non-empty slot. Since a
//! level only holds timers of the current block, in slots at or after the
//! current time's slot, the first non-empty slot is the lowest set bit:
//! one `trailing_zeros` instruction. And since every timer of level `n` falls
//! in the current `64^(n+1)`-ms block while every timer of level `n + 1`
//! falls after it, the lowest non-empty level holds the earliest timer. Six
//! bitmap tests find the next slot to process.
//!
//! # Advancing time, including large jumps
//!
//! [`TimingWheel::advance`] repeatedly takes the first non-empty slot of the
//! lowest non-empty level; if that slot starts after `now` it stops. Otherwise
//! it moves the wheel's time to the slot's start, then expires the slot
//! (level 0) or cascades it (higher levels). Empty stretches of time cost
//! nothing, so an engine that was down for hours expires everything due in
//! one call whose cost is proportional to the timers involved, not to the
//! milliseconds skipped. Timers come out in non-decreasing deadline order
//! because slots are processed in time order and a level-0 slot holds one
//! deadline.
//!
//! # Beyond the top level, and in the past
//!
//! The levels cover the current 2^36-ms block (*epoch*, `deadline >> 36`)
//! only. A deadline in a later epoch goes to the *overflow* (`overflow.rs`):
//! a sorted map from epoch to a list. (That is mostly far deadlines, but also
//! near ones just across an epoch boundary.) When the wheel's time reaches the
//! start of the first epoch there, that epoch's list is cascaded into the
//! levels, which by then are empty. Hence any `u64` deadline is fine,
//! `u64::MAX` included.
//!
//! A deadline before the wheel's time goes to a *due* list, expired (sorted)
//! at the start of the next `advance`. A deadline equal to the wheel's time is
//! simply a level-0 timer in the current slot.
//!
//! # Storage
//!
//! Timers live in an arena (`arena.rs`): one `Vec` of entries, each holding
//! id, deadline, payload and two `u32` links. Each slot's list is an
//! intrusive doubly linked list through those links, so linking and
//! unlinking is O(1) and no timer has a heap node of its own. To find the
//! list a timer is in, the wheel recomputes its level and slot from its
//! deadline and the wheel's time (a timer's list does not change while it is
//! pending), so entries carry no back-pointer. With `K = u64` and `V = ()`
//! an entry is 32 bytes.
//!
//! The id index (`index.rs`) is a hashbrown table of `u32` arena indices
//! that hashes and compares through the arena, so each id is stored once and
//! the index costs 5 bytes per bucket. A small arena (under 2^16 entries)
//! doubles when it grows; a large one grows by a quarter at a time, since
//! its slack is resident memory.
//!
//! When fewer than a quarter of the arena's slots are in use, the arena is
//! compacted into a fresh allocation twice the size of what is pending and
//! the index is rebuilt to fit, so a wheel that once held ten million timers
//! gives the memory back.
//!
//! # Cache misses, the real cost
//!
//! With a million timers pending, the structure is far larger than the CPU
//! caches and each operation's cost is its chain of dependent cache misses,
//! not its instruction count. Two choices follow from that:
//!
//! * Each list is split into 4 *stripes* by arena index (`list.rs`).
//!   Walking a linked list is one dependent miss per entry; walking four
//!   independent chains in turn lets the CPU overlap their misses, which
//!   roughly doubles the speed of expiring and cascading.
//! * Expiring a timer frees its arena slot but leaves its index entry behind
//!   as a *stale* entry (removing it would be two more dependent misses per
//!   timer, half the cost of expiry). Lookups compare the id stored in the
//!   arena slot an index entry points to, so a stale entry never matches;
//!   when the table fills up, it is rebuilt from the arena, dropping them.
//!
//! # How exact is `next_deadline`
//!
//! The first non-empty slot of the lowest level holds the earliest timer, but
//! a coarse slot holds many deadlines. Every list keeps a lower bound on its
//! deadlines which is exact after any insert; it can become a stale lower
//! bound when the list's earliest timer is cancelled or rescheduled and the
//! list is longer than 16 entries (shorter lists are rescanned). So
//! [`TimingWheel::next_deadline`] is exact unless that happened, and otherwise
//! is still never later than the true earliest deadline and never earlier
//! than the start of the slot holding it. Advancing to it cascades that slot,
//! after which the answer is exact again: a caller that sleeps until
//! `next_deadline` wakes up early at most once per level, never spins.
//!
//! # Costs
//!
//! | operation        | cost                                                  |
//! |------------------|-------------------------------------------------------|
//! | `schedule`       | O(1) amortised: one hash lookup, one list push        |
//! | `cancel`         | O(1): one hash removal, one list unlink               |
//! | `advance`        | O(timers expired + timers cascaded + slots visited)   |
//! | `next_deadline`  | O(1): at most 6 bitmap tests and one map lookup       |
//! | overflow timers  | O(log epochs) on schedule, cancel and cascade         |
//!
//! # Example
//!
//! ```
//! use chime_wheel::TimingWheel;
//!
//! let mut wheel = TimingWheel::new(1_000);
//! wheel.schedule("a", 1_500, "payload a");
//! wheel.schedule("b", 1_200, "payload b");
//! assert_eq!(wheel.next_deadline(), Some(1_200));
//!
//! let mut expired = Vec::new();
//! wheel.advance(1_300, &mut expired);
//! assert_eq!(expired.len(), 1);
//! assert_eq!((expired[0].id, expired[0].deadline), ("b", 1_200));
//!
//! assert_eq!(wheel.cancel(&"a"), Some((1_500, "payload a")));
//! assert!(wheel.is_empty());
//! ```

#![forbid(unsafe_code)]

mod arena;
mod index;
mod level;
mod list;
mod overflow;

#[cfg(test)]
mod invariants;

use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;

use hashbrown::hash_table::Entry as IndexEntry;

use arena::{Arena, MIN_CAPACITY};
use index::Index;
use level::{level_for, Level, LEVELS};
use list::{TimerList, Walk};
use overflow::{epoch_of, epoch_start, Overflow};

/// A timer taken out of the wheel by [`TimingWheel::advance`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired<K, V> {
    pub id: K,
    pub deadline: u64,
    pub payload: V,
}

/// A hierarchical timing wheel of timers identified by `K`, carrying `V`.
/// See the [crate documentation](crate) for how it works.
pub struct TimingWheel<K, V> {
    /// The wheel's time: every timer due before it has been expired, except
    /// those in `due`, which were scheduled in the past since.
    elapsed: u64,
    arena: Arena<K, V>,
    index: Index,
    levels: Box<[Level; LEVELS]>,
    /// Timers scheduled with a deadline before `elapsed`.
    due: TimerList,
    overflow: Overflow,
}

/// The list a pending timer is linked into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Home {
    Due,
    Level { level: usize, slot: usize },
    Overflow { epoch: u64 },
}

/// The next thing `advance` has to do, if it starts no later than `now`.
enum Event {
    /// Expire (level 0) or cascade (higher levels) this slot.
    Slot {
        level: usize,
        slot: usize,
        start: u64,
    },
    /// Cascade the first overflow epoch into the (empty) levels.
    Epoch { start: u64 },
}

impl<K: Hash + Eq, V> TimingWheel<K, V> {
    /// An empty wheel whose time starts at `now`.
    pub fn new(now: u64) -> Self {
        TimingWheel {
            elapsed: now,
            arena: Arena::new(),
            index: Index::new(),
            levels: Box::new(std::array::from_fn(Level::new)),
            due: TimerList::default(),
            overflow: Overflow::default(),
        }
    }

    /// Schedules timer `id` at `deadline`. If `id` is already pending, it is
    /// re-scheduled instead: its deadline and payload are replaced and the
    /// old payload is returned. A deadline at or before the wheel's time is
    /// due at the next [`advance`](Self::advance).
    ///
    /// # Panics
    ///
    /// When `u32::MAX` timers are already pending (128 GiB of entries):
    /// arena indices are `u32`.
    pub fn schedule(&mut self, id: K, deadline: u64, payload: V) -> Option<V> {
        let hash = self.index.hash::<K>(&id);
        let idx = match self.index.entry(&self.arena, hash, &id) {
            IndexEntry::Occupied(occupied) => *occupied.get(),
            IndexEntry::Vacant(vacant) => {
                let idx = self.arena.insert(id, deadline, payload);
                vacant.insert(idx);
                self.link(idx);
                return None;
            }
        };
        if self.arena.entry(idx).deadline != deadline {
            self.unlink(idx);
            self.arena.entry_mut(idx).deadline = deadline;
            self.link(idx);
        }
        match &mut self.arena.entry_mut(idx).item {
            Some((old_id, old)) => {
                // Equal ids, but the new one is kept: an id may carry more
                // than its identity (the engine's ids carry the record).
                *old_id = id;
                Some(std::mem::replace(old, payload))
            }
            None => unreachable!("index points at vacant arena slot {idx}"),
        }
    }

    /// Cancels pending timer `id`, returning its deadline and payload.
    /// Unknown ids (never scheduled, already expired or cancelled) are a
    /// no-op returning `None`.
    pub fn cancel<Q>(&mut self, id: &Q) -> Option<(u64, V)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let idx = self.index.remove(&self.arena, id)?;
        self.unlink(idx);
        let (_, deadline, payload) = self.arena.remove(idx);
        self.shrink_if_sparse();
        Some((deadline, payload))
    }

    /// Deadline and payload of pending timer `id`.
    pub fn get<Q>(&self, id: &Q) -> Option<(u64, &V)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_entry(id)
            .map(|(_, deadline, payload)| (deadline, payload))
    }

    /// The stored id, deadline and payload of pending timer `id`.
    pub fn get_entry<Q>(&self, id: &Q) -> Option<(&K, u64, &V)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let idx = self.index.find(&self.arena, self.index.hash(id), id)?;
        let entry = self.arena.entry(idx);
        entry
            .item
            .as_ref()
            .map(|(key, payload)| (key, entry.deadline, payload))
    }

    /// Moves the wheel's time to `now` and appends to `expired` every timer
    /// with a deadline `<= now`, in non-decreasing deadline order (timers
    /// with equal deadlines in no particular order). A `now` before the
    /// wheel's time does nothing. The cost does not depend on how far time
    /// jumps, only on the timers expired or cascaded.
    pub fn advance(&mut self, now: u64, expired: &mut Vec<Expired<K, V>>) {
        if now < self.elapsed {
            return;
        }
        self.expire_due(expired);
        while let Some(event) = self.next_event(now) {
            match event {
                Event::Slot { level, slot, start } => {
                    self.elapsed = start;
                    let list = self.levels[level].take(slot);
                    if level == 0 {
                        self.expire_list(list, expired);
                    } else {
                        self.relink_list(list);
                    }
                }
                Event::Epoch { start } => {
                    self.elapsed = start;
                    if let Some(list) = self.overflow.pop_first() {
                        self.relink_list(list);
                    }
                }
            }
        }
        // Every slot starting at or before `now` has been processed, so the
        // remaining timers keep their level and slot relative to `now`.
        self.elapsed = now;
        self.shrink_if_sparse();
    }

    /// The earliest pending deadline, or `None` if nothing is pending.
    ///
    /// Exact, except after the earliest timer of a long coarse slot was
    /// cancelled or rescheduled; then a lower bound, never earlier than that
    /// slot's start, and advancing to it makes it exact again (see the crate
    /// documentation). A deadline before [`now`](Self::now) means timers
    /// scheduled in the past are waiting for the next `advance`.
    pub fn next_deadline(&self) -> Option<u64> {
        if !self.due.is_empty() {
            return Some(self.due.min_deadline());
        }
        for level in self.levels.iter() {
            if let Some(slot) = level.first_occupied() {
                return Some(level.slot(slot).min_deadline());
            }
        }
        self.overflow.first().map(|(_, list)| list.min_deadline())
    }

    /// The wheel's time: the latest `now` it was created or advanced with.
    pub fn now(&self) -> u64 {
        self.elapsed
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.arena.len()
    }

    pub fn is_empty(&self) -> bool {
        self.arena.len() == 0
    }

    /// How many timers the wheel has memory for without growing. Falls
    /// again when most timers are gone.
    pub fn capacity(&self) -> usize {
        self.arena.capacity()
    }

    /// Every pending timer as `(id, deadline, payload)`, in no particular
    /// order. For diagnostics: it walks the whole arena.
    pub fn iter(&self) -> impl Iterator<Item = (&K, u64, &V)> {
        self.arena
            .iter()
            .map(|(_, id, deadline, payload)| (id, deadline, payload))
    }

    /// Where a timer with `deadline` belongs at the wheel's current time.
    fn home(&self, deadline: u64) -> Home {
        if deadline < self.elapsed {
            return Home::Due;
        }
        match level_for(self.elapsed, deadline) {
            level if level < LEVELS => Home::Level {
                level,
                slot: self.levels[level].slot_for(deadline),
            },
            _ => Home::Overflow {
                epoch: epoch_of(deadline),
            },
        }
    }

    fn link(&mut self, idx: u32) {
        match self.home(self.arena.entry(idx).deadline) {
            Home::Due => self.arena.push_front(&mut self.due, idx),
            Home::Level { level, slot } => self.levels[level].push(&mut self.arena, slot, idx),
            Home::Overflow { epoch } => self.overflow.push(&mut self.arena, epoch, idx),
        }
    }

    /// Unlinks a pending timer from its list. Its home is recomputed from
    /// its deadline: a timer's home does not change while it is pending,
    /// because `advance` empties a slot before time moves past its start.
    fn unlink(&mut self, idx: u32) {
        match self.home(self.arena.entry(idx).deadline) {
            Home::Due => self.arena.unlink(&mut self.due, idx),
            Home::Level { level, slot } => self.levels[level].unlink(&mut self.arena, slot, idx),
            Home::Overflow { epoch } => self.overflow.unlink(&mut self.arena, epoch, idx),
        }
    }

    /// The next slot or epoch to process, if it starts no later than `now`.
    /// The lowest non-empty level holds the earliest timers, and the
    /// overflow only matters once all levels are empty.
    fn next_event(&self, now: u64) -> Option<Event> {
        for (level_no, level) in self.levels.iter().enumerate() {
            if let Some(slot) = level.first_occupied() {
                let start = level.slot_start(self.elapsed, slot);
                return (start <= now).then_some(Event::Slot {
                    level: level_no,
                    slot,
                    start,
                });
            }
        }
        let (epoch, _) = self.overflow.first()?;
        let start = epoch_start(epoch);
        (start <= now).then_some(Event::Epoch { start })
    }

    /// Expires the timers scheduled in the past, sorted by deadline. They
    /// all precede every timer in the levels, which are `>= elapsed`.
    fn expire_due(&mut self, expired: &mut Vec<Expired<K, V>>) {
        if self.due.is_empty() {
            return;
        }
        let mut walk = self.due.take();
        // Sort (deadline, index) pairs rather than indices by a looked-up
        // key: the pairs are contiguous, the arena entries are not.
        let mut order = Vec::with_capacity(walk.len());
        while let Some(idx) = walk.next(&self.arena) {
            order.push((self.arena.entry(idx).deadline, idx));
        }
        order.sort_unstable();
        expired.reserve(order.len());
        for (_, idx) in order {
            self.expire_entry(idx, expired);
        }
    }

    /// Expires every timer of a level-0 slot (all share one deadline).
    fn expire_list(&mut self, mut walk: Walk, expired: &mut Vec<Expired<K, V>>) {
        expired.reserve(walk.len());
        while let Some(idx) = walk.next(&self.arena) {
            self.expire_entry(idx, expired);
        }
    }

    /// Frees an unlinked timer's arena slot. Its id stays in the index as a
    /// stale entry, which lookups ignore and the next rebuild drops (see
    /// `index.rs`): removing it now would cost two cache misses per timer,
    /// the bulk of what expiring costs.
    fn expire_entry(&mut self, idx: u32, expired: &mut Vec<Expired<K, V>>) {
        let (id, deadline, payload) = self.arena.remove(idx);
        expired.push(Expired {
            id,
            deadline,
            payload,
        });
    }

    /// Re-inserts every timer of a list taken from a coarser level (or the
    /// overflow) relative to the wheel's new time: cascading.
    fn relink_list(&mut self, mut walk: Walk) {
        while let Some(idx) = walk.next(&self.arena) {
            self.link(idx);
        }
    }

    /// Gives memory back once most of the arena is unused. Amortised O(1):
    /// compaction costs O(capacity) and leaves twice the pending count, so
    /// the next one needs at least half the remaining timers to go first.
    fn shrink_if_sparse(&mut self) {
        let capacity = self.arena.capacity();
        if capacity > MIN_CAPACITY && self.arena.len() < capacity / 4 {
            self.compact();
        }
    }

    /// Compacts the arena, then rebuilds every list and the index: list
    /// stripes and index entries are by arena index, and all of those moved.
    /// A timer's list depends only on its deadline and the wheel's time, so
    /// relinking each one reproduces the wheel (with exact list minimums).
    fn compact(&mut self) {
        let target = (self.arena.len() * 2).max(MIN_CAPACITY);
        self.arena.compact(target);
        *self.levels = std::array::from_fn(Level::new);
        self.due = TimerList::default();
        self.overflow = Overflow::default();
        for idx in 0..self.arena.len() as u32 {
            self.link(idx);
        }
        self.index.compact(&self.arena);
    }
}

impl<K: Hash + Eq, V> fmt::Debug for TimingWheel<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimingWheel")
            .field("now", &self.elapsed)
            .field("len", &self.len())
            .field("next_deadline", &self.next_deadline())
            .finish_non_exhaustive()
    }
}
