//! Stand-in with the timing wheel's API (a BTreeMap), until `chime-wheel` lands.

use std::collections::BTreeMap;
use std::hash::Hash;

use hashbrown::HashMap;

pub struct Expired<K, V> {
    pub id: K,
    pub deadline: u64,
    pub payload: V,
}

pub struct TimingWheel<K, V> {
    by_time: BTreeMap<(u64, u64), K>,
    by_id: HashMap<K, (u64, u64, V)>,
    seq: u64,
    now: u64,
}

impl<K: Hash + Eq + Clone, V> TimingWheel<K, V> {
    pub fn new(now: u64) -> Self {
        TimingWheel {
            by_time: BTreeMap::new(),
            by_id: HashMap::new(),
            seq: 0,
            now,
        }
    }
    pub fn schedule(&mut self, id: K, deadline: u64, payload: V) -> Option<V> {
        let old = self.cancel(&id).map(|(_, v)| v);
        self.seq += 1;
        self.by_time.insert((deadline, self.seq), id.clone());
        self.by_id.insert(id, (deadline, self.seq, payload));
        old
    }
    pub fn cancel(&mut self, id: &K) -> Option<(u64, V)> {
        let (d, s, v) = self.by_id.remove(id)?;
        self.by_time.remove(&(d, s));
        Some((d, v))
    }
    pub fn get(&self, id: &K) -> Option<(u64, &V)> {
        self.by_id.get(id).map(|(d, _, v)| (*d, v))
    }
    pub fn advance(&mut self, now: u64, expired: &mut Vec<Expired<K, V>>) {
        self.now = self.now.max(now);
        while let Some(entry) = self.by_time.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            if let Some((deadline, _, payload)) = self.by_id.remove(&id) {
                expired.push(Expired {
                    id,
                    deadline,
                    payload,
                });
            }
        }
    }
    pub fn next_deadline(&self) -> Option<u64> {
        self.by_time.keys().next().map(|k| k.0)
    }
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}
