//! The id index: a hash table of arena indices, keyed by the ids stored in
//! the arena.
//!
//! Each id is stored once, in its arena entry; the table holds only the
//! 4-byte index (plus hashbrown's 1 control byte per bucket), and hashes and
//! compares through the arena. Invariant: the table holds exactly the indices
//! of the occupied arena slots.

use std::hash::{BuildHasher, Hash};

use hashbrown::hash_table::{Entry, HashTable};
use hashbrown::DefaultHashBuilder;

use crate::arena::Arena;

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

    pub(crate) fn hash<K: Hash>(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(crate) fn find<K: Eq, V>(&self, arena: &Arena<K, V>, hash: u64, key: &K) -> Option<u32> {
        self.table
            .find(hash, |&idx| arena.key(idx) == key)
            .copied()
    }

    /// The slot for `key`: occupied by its arena index, or vacant to take one.
    pub(crate) fn entry<'a, K: Hash + Eq, V>(
        &'a mut self,
        arena: &Arena<K, V>,
        hash: u64,
        key: &K,
    ) -> Entry<'a, u32> {
        let hasher = &self.hasher;
        self.table.entry(
            hash,
            |&idx| arena.key(idx) == key,
            |&idx| hasher.hash_one(arena.key(idx)),
        )
    }

    /// Removes `key`, returning the arena index it pointed to.
    pub(crate) fn remove<K: Hash + Eq, V>(&mut self, arena: &Arena<K, V>, key: &K) -> Option<u32> {
        let hash = self.hash(key);
        let entry = self
            .table
            .find_entry(hash, |&idx| arena.key(idx) == key)
            .ok()?;
        Some(entry.remove().0)
    }

    /// Removes arena index `idx`, whose id hashes to `hash`. Compares indices,
    /// not ids, so it never touches the arena.
    pub(crate) fn remove_index(&mut self, hash: u64, idx: u32) {
        match self.table.find_entry(hash, |&candidate| candidate == idx) {
            Ok(entry) => {
                entry.remove();
            }
            Err(_) => unreachable!("arena index {idx} missing from the id index"),
        }
    }

    /// Rewrites every index through `remap` (after [`Arena::compact`]) and
    /// shrinks the table to fit `capacity` ids.
    pub(crate) fn compact<K: Hash, V>(&mut self, arena: &Arena<K, V>, remap: &[u32], capacity: usize) {
        for idx in self.table.iter_mut() {
            *idx = remap[*idx as usize];
        }
        let hasher = &self.hasher;
        self.table
            .shrink_to(capacity, |&idx| hasher.hash_one(arena.key(idx)));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}
