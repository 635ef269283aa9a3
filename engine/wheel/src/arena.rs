//! The arena: every pending timer lives in one `Vec` slot, addressed by a `u32`.
//!
//! Invariant: a slot is *occupied* (`item` is `Some`) exactly when the timer is
//! pending, and then it is linked into exactly one [`TimerList`]; a *vacant*
//! slot is on the free list, threaded through its `next` field.
//!
//! Links are indices, not pointers: no per-timer heap node, 4-byte links, and
//! the whole arena can be moved into a smaller allocation ([`Arena::compact`];
//! the wheel then relinks every timer and rebuilds its index).

use crate::list::TimerList;

/// "No entry": the end of a list, or of the free list.
pub(crate) const NIL: u32 = u32::MAX;

/// Largest number of entries the arena can hold; `NIL` is reserved.
const MAX_ENTRIES: usize = NIL as usize;

/// Smallest capacity the arena grows to, and never shrinks below.
pub(crate) const MIN_CAPACITY: usize = 64;

/// Below this many entries (2 MiB with 32-byte entries) the arena doubles
/// when it grows; above, it grows by a quarter.
const SMALL_ARENA: usize = 1 << 16;

pub(crate) struct Entry<K, V> {
    pub(crate) deadline: u64,
    /// Previous entry in the same list stripe, or `NIL` at the head.
    pub(crate) prev: u32,
    /// Next entry in the same list stripe (or next free slot, when vacant),
    /// or `NIL`.
    pub(crate) next: u32,
    /// Id and payload; `None` while the slot is vacant.
    pub(crate) item: Option<(K, V)>,
}

pub(crate) struct Arena<K, V> {
    entries: Vec<Entry<K, V>>,
    free_head: u32,
    len: usize,
}

impl<K, V> Arena<K, V> {
    pub(crate) fn new() -> Self {
        Arena {
            entries: Vec::new(),
            free_head: NIL,
            len: 0,
        }
    }

    /// Number of occupied slots (pending timers).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Number of slots the arena has memory for.
    pub(crate) fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    pub(crate) fn entry(&self, idx: u32) -> &Entry<K, V> {
        &self.entries[idx as usize]
    }

    pub(crate) fn entry_mut(&mut self, idx: u32) -> &mut Entry<K, V> {
        &mut self.entries[idx as usize]
    }

    /// The id in slot `idx`, or `None` if the slot is vacant.
    pub(crate) fn key(&self, idx: u32) -> Option<&K> {
        self.entries[idx as usize].item.as_ref().map(|(key, _)| key)
    }

    /// Stores a timer in a vacant slot and returns its index. The entry is
    /// not linked into any list yet.
    pub(crate) fn insert(&mut self, key: K, deadline: u64, payload: V) -> u32 {
        let entry = Entry {
            deadline,
            prev: NIL,
            next: NIL,
            item: Some((key, payload)),
        };
        if self.free_head != NIL {
            let idx = self.free_head;
            let slot = &mut self.entries[idx as usize];
            self.free_head = slot.next;
            *slot = entry;
            self.len += 1;
            return idx;
        }
        let idx = self.entries.len();
        assert!(
            idx < MAX_ENTRIES,
            "timing wheel is full ({MAX_ENTRIES} timers)"
        );
        self.len += 1;
        if idx == self.entries.capacity() {
            // A large arena grows by a quarter rather than doubling: it is
            // long-lived, so the slack after growth is resident memory, and
            // large `Vec`s grow by `mremap`, so growing often costs little.
            // A small one doubles: there each growth is a copy.
            let additional = if idx < SMALL_ARENA { idx } else { idx / 4 };
            self.entries.reserve_exact(additional.max(MIN_CAPACITY));
        }
        self.entries.push(entry);
        idx as u32
    }

    /// Frees an occupied slot that has already been unlinked from its list,
    /// returning `(id, deadline, payload)`.
    pub(crate) fn remove(&mut self, idx: u32) -> (K, u64, V) {
        let slot = &mut self.entries[idx as usize];
        let (key, payload) = slot
            .item
            .take()
            .unwrap_or_else(|| unreachable!("removing vacant arena slot {idx}"));
        slot.next = self.free_head;
        slot.prev = NIL;
        self.free_head = idx;
        self.len -= 1;
        (key, slot.deadline, payload)
    }

    /// Every pending timer as `(index, id, deadline, payload)`, in index order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &K, u64, &V)> {
        self.entries.iter().enumerate().filter_map(|(idx, entry)| {
            let (key, payload) = entry.item.as_ref()?;
            Some((idx as u32, key, entry.deadline, payload))
        })
    }

    /// Links `idx` at the front of `list` (O(1)) and folds its deadline into
    /// the list's minimum.
    pub(crate) fn push_front(&mut self, list: &mut TimerList, idx: u32) {
        let head = list.head_mut(idx);
        let old_head = *head;
        *head = idx;
        let entry = &mut self.entries[idx as usize];
        entry.prev = NIL;
        entry.next = old_head;
        let deadline = entry.deadline;
        if old_head != NIL {
            self.entries[old_head as usize].prev = idx;
        }
        list.note_pushed(deadline);
    }

    /// Unlinks `idx` from `list` (O(1), plus a short rescan when it took the
    /// list's minimum with it; see [`TimerList`]).
    pub(crate) fn unlink(&mut self, list: &mut TimerList, idx: u32) {
        let entry = &self.entries[idx as usize];
        let (prev, next, deadline) = (entry.prev, entry.next, entry.deadline);
        if prev == NIL {
            let head = list.head_mut(idx);
            debug_assert_eq!(*head, idx, "entry without prev must be the head");
            *head = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        if list.note_unlinked(deadline) {
            let mut walk = list.walk();
            let mut min = u64::MAX;
            while let Some(idx) = walk.next(self) {
                min = min.min(self.entries[idx as usize].deadline);
            }
            list.set_exact_min(min);
        }
    }

    /// Moves every occupied slot into a dense prefix of a new allocation with
    /// room for `capacity` entries, so memory held for timers that are gone is
    /// returned to the allocator. Every index changes, so every link is left
    /// meaningless: the caller must rebuild its lists and the id index.
    pub(crate) fn compact(&mut self, capacity: usize) {
        let capacity = capacity.max(self.len).max(MIN_CAPACITY);
        let old = std::mem::replace(&mut self.entries, Vec::with_capacity(capacity));
        self.entries
            .extend(old.into_iter().filter(|entry| entry.item.is_some()));
        self.free_head = NIL;
    }
}
