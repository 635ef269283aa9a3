//! The id index: a hash table of arena indices, keyed by the ids stored in
//! the arena.
//!
//! Each id is stored once, in its arena entry; the table holds only the
//! 4-byte index (plus hashbrown's 1 control byte per bucket), and hashes and
//! compares through the arena.
//!
//! Invariant: every pending timer's arena index is in the table, under the
//! hash of its id. The table may also hold *stale* indices, left behind by
//! expired timers: expiry frees the arena slot but does not touch the table,
//! because a removal is two dependent cache misses per timer (control byte,
//! then bucket) and would dominate the cost of expiring. A stale index is
//! harmless: lookups compare the id in the arena slot it points to, which is
//! vacant or holds another id (if it holds the same id, it is that id's live
//! entry, a correct answer). Stale indices take table capacity, so a full
//! table is rebuilt from the arena (dropping them all) before it grows;
//! each rebuild is O(arena) and leaves room for as many inserts as there
//! are pending timers, so it is amortised O(1) per insert.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

use hashbrown::hash_table::{Entry, HashTable};
use hashbrown::DefaultHashBuilder;

use crate::arena::{Arena, MIN_CAPACITY};

/// Below this many pending timers (a table of at most 1 MiB) a rebuild
/// leaves room for four times as many; above, for half as many again.
const SMALL_TABLE: usize = 1 << 16;

pub(crate) struct Index {
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl Index {
    pub(crate) fn new() -> Self {
        Index {
            table: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
        }
    }

    pub(crate) fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The arena index of pending timer `key`, whose hash is `hash`.
    pub(crate) fn find<K: Borrow<Q>, Q: Eq + ?Sized, V>(
        &self,
        arena: &Arena<K, V>,
        hash: u64,
        key: &Q,
    ) -> Option<u32> {
        self.table
            .find(hash, |&idx| arena.key(idx).map(Borrow::borrow) == Some(key))
            .copied()
    }

    /// The table slot for `key`: occupied by its arena index if pending, or
    /// vacant to take one.
    pub(crate) fn entry<'a, K: Hash + Eq, V>(
        &'a mut self,
        arena: &Arena<K, V>,
        hash: u64,
        key: &K,
    ) -> Entry<'a, u32> {
        if self.table.len() == self.table.capacity() {
            self.rebuild(arena);
        }
        let hasher = &self.hasher;
        self.table.entry(
            hash,
            |&idx| arena.key(idx) == Some(key),
            // Not called: the table has room, so hashbrown never rehashes.
            // Were it called, a stale index may go anywhere.
            |&idx| arena.key(idx).map_or(0, |key| hasher.hash_one(key)),
        )
    }

    /// Replaces the table by one holding the pending timers only, filled by
    /// walking the arena in order. (hashbrown's own resize would fetch each
    /// id from the arena in hash order, a cache miss per timer; in arena
    /// order the reads are sequential.) Room is rounded up by hashbrown to a
    /// power-of-two bucket count: a table that filled with pending timers
    /// doubles (or more), one that filled with stale ones keeps its size.
    fn rebuild<K: Hash, V>(&mut self, arena: &Arena<K, V>) {
        let pending = arena.len();
        // Small tables get room for four times what is pending, so they are
        // rebuilt (a pass over every timer) less often while they are cheap
        // to over-allocate.
        let room = if pending < SMALL_TABLE {
            pending * 4
        } else {
            pending + pending / 2
        };
        let mut table = HashTable::with_capacity(room.max(MIN_CAPACITY));
        for (idx, key, _, _) in arena.iter() {
            // The capacity covers every pending timer, so this never rehashes.
            table.insert_unique(self.hasher.hash_one(key), idx, |_| 0);
        }
        self.table = table;
    }

    /// Removes pending timer `key`, returning its arena index.
    pub(crate) fn remove<K: Borrow<Q>, Q: Hash + Eq + ?Sized, V>(
        &mut self,
        arena: &Arena<K, V>,
        key: &Q,
    ) -> Option<u32> {
        let hash = self.hash(key);
        let entry = self
            .table
            .find_entry(hash, |&idx| arena.key(idx).map(Borrow::borrow) == Some(key))
            .ok()?;
        Some(entry.remove().0)
    }

    /// Rebuilds the table for a freshly compacted arena (whose indices all
    /// changed), which also shrinks it to fit.
    pub(crate) fn compact<K: Hash, V>(&mut self, arena: &Arena<K, V>) {
        self.rebuild(arena);
    }

    /// Number of indices held, stale ones included.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}
