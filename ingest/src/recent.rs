//! What this ingest created a moment ago, so a client's immediate retry of a
//! create is recognised before the owning engine has applied the first one.
//!
//! A create with a client-chosen id is a no-op when the id is pending with
//! the same spec ([`crate::api::schedule`]). The engine learns of a create
//! only once it has read it from `chime.timers`, tens of milliseconds after
//! Kafka acknowledged it; a retry inside that gap would find the id unknown
//! and append again — moving a `delay_ms` timer. So ingest remembers each
//! create it acknowledged for [`WINDOW`] (the id, a fingerprint of the
//! callback and retry policy, the due time), and a retry that the engine
//! cannot yet confirm is answered from here. The engine's answer wins
//! whenever it has one that shows the remembered create was applied.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use chime_wire::TimerSpec;

/// How long an acknowledged create is remembered.
pub const WINDOW_MS: u64 = 60_000;
/// Most creates remembered (the oldest go first).
pub const CAPACITY: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remembered {
    /// Fingerprint of the callback and retry policy.
    pub fingerprint: u64,
    pub fire_at_ms: u64,
    /// When ingest got Kafka's acknowledgement.
    pub acked_at_ms: u64,
}

pub struct RecentCreates {
    hasher: RandomState,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Remembered>,
    /// Insertion order, for expiry and the capacity bound.
    order: VecDeque<(String, u64)>,
}

impl Default for RecentCreates {
    fn default() -> Self {
        RecentCreates {
            hasher: RandomState::new(),
            inner: Mutex::new(Inner::default()),
        }
    }
}

impl RecentCreates {
    /// The fingerprint of what a create asks to be called (not when).
    pub fn fingerprint(&self, spec: &TimerSpec) -> u64 {
        let what = serde_json::to_vec(&(&spec.callback, &spec.retry)).unwrap_or_default();
        self.hasher.hash_one(what)
    }

    /// Records a create Kafka acknowledged at `now_ms`.
    pub fn remember(&self, spec: &TimerSpec, now_ms: u64) {
        let entry = Remembered {
            fingerprint: self.fingerprint(spec),
            fire_at_ms: spec.fire_at_ms,
            acked_at_ms: now_ms,
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.by_id.insert(spec.id.clone(), entry);
        inner.order.push_back((spec.id.clone(), now_ms));
        inner.expire(now_ms);
    }

    /// Forgets `id` (it was cancelled through this ingest).
    pub fn forget(&self, id: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.by_id.remove(id);
    }

    /// The create of `id` remembered at `now_ms`, if any.
    pub fn get(&self, id: &str, now_ms: u64) -> Option<Remembered> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.expire(now_ms);
        inner.by_id.get(id).copied()
    }
}

impl Inner {
    fn expire(&mut self, now_ms: u64) {
        while let Some((id, at)) = self.order.front() {
            let old = now_ms.saturating_sub(*at) > WINDOW_MS;
            if !old && self.order.len() <= CAPACITY {
                break;
            }
            if self.by_id.get(id).is_some_and(|e| e.acked_at_ms == *at) {
                self.by_id.remove(id);
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chime_wire::{Callback, RetryPolicy};

    fn spec(id: &str, url: &str, fire_at_ms: u64) -> TimerSpec {
        TimerSpec {
            id: id.into(),
            fire_at_ms,
            callback: Callback {
                url: url.into(),
                method: "POST".into(),
                headers: Default::default(),
                body: String::new(),
            },
            attempt: 1,
            retry: RetryPolicy::default(),
            first_fire_at_ms: None,
            schedule_id: None,
            delivery: None,
        }
    }

    #[test]
    fn remembers_for_the_window_then_forgets() {
        let recent = RecentCreates::default();
        let a = spec("a", "http://x.example/", 5_000);
        recent.remember(&a, 1_000);
        let got = recent.get("a", 1_000 + WINDOW_MS).unwrap();
        assert_eq!(got.fire_at_ms, 5_000);
        assert_eq!(got.fingerprint, recent.fingerprint(&a));
        assert_ne!(
            got.fingerprint,
            recent.fingerprint(&spec("a", "http://y.example/", 5_000))
        );
        assert!(recent.get("a", 1_001 + WINDOW_MS).is_none());
    }

    #[test]
    fn a_newer_create_of_the_same_id_is_kept_when_the_older_expires() {
        let recent = RecentCreates::default();
        recent.remember(&spec("a", "http://x.example/", 1), 0);
        recent.remember(&spec("a", "http://x.example/", 2), WINDOW_MS);
        assert_eq!(recent.get("a", WINDOW_MS + 1).unwrap().fire_at_ms, 2);
        recent.forget("a");
        assert!(recent.get("a", WINDOW_MS + 1).is_none());
    }

    #[test]
    fn capacity_is_bounded() {
        let recent = RecentCreates::default();
        for i in 0..CAPACITY + 10 {
            recent.remember(&spec(&format!("t{i}"), "http://x.example/", 1), 0);
        }
        assert!(recent.get("t0", 0).is_none());
        assert!(recent.get(&format!("t{}", CAPACITY + 9), 0).is_some());
        let inner = recent.inner.lock().unwrap();
        assert!(inner.order.len() <= CAPACITY);
    }
}
