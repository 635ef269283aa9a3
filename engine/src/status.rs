//! What an engine can say about a timer: only the owner of a timer's partition
//! knows its state, so status questions are answered here.
//!
//! Pending timers are in the partition's wheel. Fired and cancelled timers are
//! remembered for a bounded time ([`FinishedTimers`]) in compact form (a 64-bit
//! hash of the id, not the id), and are rebuilt from changelog tombstones on
//! assignment, so a new owner answers like the old one did.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::Hasher;
use std::sync::{Arc, Mutex, MutexGuard};

use chime_wire::{
    Delivery, DeliveryResult, ListAnswer, ListKind, ListQuery, ScheduleStatus, StatusSource,
    TimerStatus,
};

use crate::partition::PartitionState;

/// How a timer left the wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Fired { fire_at_ms: u64, fired_at_ms: u64 },
    Cancelled { cancelled_at_ms: u64 },
}

impl Finish {
    fn at_ms(&self) -> u64 {
        match *self {
            Finish::Fired { fired_at_ms, .. } => fired_at_ms,
            Finish::Cancelled { cancelled_at_ms } => cancelled_at_ms,
        }
    }
}

/// Recently fired or cancelled timers of one partition, forgotten after
/// `retention_ms` or beyond `max_entries` (oldest first).
#[derive(Debug)]
pub struct FinishedTimers {
    by_id: HashMap<u64, Finish>,
    order: VecDeque<(u64, u64)>, // (finished at, id hash), oldest first
    /// What came of fired timers' callbacks, once the dispatcher said:
    /// compact, with the error text apart (failures only).
    deliveries: HashMap<u64, DeliveryBrief>,
    errors: HashMap<u64, Box<str>>,
    retention_ms: u64,
    max_entries: usize,
}

/// A [`Delivery`] without its error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DeliveryBrief {
    result: DeliveryResult,
    attempts: u32,
    status: Option<u16>,
    at_ms: u64,
}

impl FinishedTimers {
    pub fn new(retention_ms: u64, max_entries: usize) -> Self {
        FinishedTimers {
            by_id: HashMap::new(),
            order: VecDeque::new(),
            deliveries: HashMap::new(),
            errors: HashMap::new(),
            retention_ms,
            max_entries,
        }
    }

    /// How long a finished timer is remembered.
    pub fn retention_ms(&self) -> u64 {
        self.retention_ms
    }

    pub fn record(&mut self, id: &[u8], finish: Finish) {
        let key = id_hash(id);
        self.deliveries.remove(&key);
        self.errors.remove(&key);
        self.by_id.insert(key, finish);
        self.order.push_back((finish.at_ms(), key));
        while self.order.len() > self.max_entries {
            self.evict_front();
        }
    }

    /// Forgets what finished before `now - retention`.
    pub fn expire(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_sub(self.retention_ms);
        while self.order.front().is_some_and(|&(at, _)| at < horizon) {
            self.evict_front();
        }
        if self.by_id.capacity() > 64 && self.by_id.len() < self.by_id.capacity() / 4 {
            self.by_id.shrink_to_fit();
            self.order.shrink_to_fit();
            self.deliveries.shrink_to_fit();
            self.errors.shrink_to_fit();
        }
    }

    fn evict_front(&mut self) {
        if let Some((at, key)) = self.order.pop_front() {
            // A later finish of the same id (re-scheduled, fired again) stays.
            if self.by_id.get(&key).is_some_and(|f| f.at_ms() == at) {
                self.by_id.remove(&key);
                self.deliveries.remove(&key);
                self.errors.remove(&key);
            }
        }
    }

    /// Forgets `id` (it was scheduled again).
    pub fn forget(&mut self, id: &[u8]) {
        let key = id_hash(id);
        self.by_id.remove(&key);
        self.deliveries.remove(&key);
        self.errors.remove(&key);
    }

    pub fn get(&self, id: &[u8]) -> Option<Finish> {
        self.by_id.get(&id_hash(id)).copied()
    }

    /// Records what came of fired timer `id`'s callback.
    pub fn set_delivery(&mut self, id: &[u8], delivery: &Delivery) {
        let key = id_hash(id);
        if !self.by_id.contains_key(&key) {
            return;
        }
        self.deliveries.insert(
            key,
            DeliveryBrief {
                result: delivery.result,
                attempts: delivery.attempts,
                status: delivery.status,
                at_ms: delivery.at_ms,
            },
        );
        match &delivery.error {
            Some(e) => self.errors.insert(key, e.as_str().into()),
            None => self.errors.remove(&key),
        };
    }

    /// What came of fired timer `id`'s callback, if the dispatcher said.
    pub fn delivery(&self, id: &[u8]) -> Option<Delivery> {
        let key = id_hash(id);
        let brief = self.deliveries.get(&key)?;
        Some(Delivery {
            result: brief.result,
            attempts: brief.attempts,
            status: brief.status,
            error: self.errors.get(&key).map(|e| e.to_string()),
            at_ms: brief.at_ms,
        })
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

fn id_hash(id: &[u8]) -> u64 {
    // SipHash with fixed keys: the same id always gives the same hash.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(id);
    h.finish()
}

/// The partitions an engine owns, shared between its owner loop (which
/// mutates them) and status readers (HTTP handlers, metrics).
#[derive(Default)]
pub struct OwnedPartitions {
    pub live: HashMap<i32, PartitionState>,
    /// Assigned, being rebuilt from the changelog.
    pub loading: BTreeSet<i32>,
    /// The engine has received its first assignment from the group.
    pub joined: bool,
}

/// A cheap, cloneable handle on an engine's state.
#[derive(Clone, Default)]
pub struct EngineStatus {
    inner: Arc<Mutex<OwnedPartitions>>,
    /// Partitions whose pending-timer gauge was last set, so a partition
    /// that moved away is reset to 0 instead of lingering.
    reported: Arc<Mutex<BTreeSet<i32>>>,
}

impl EngineStatus {
    pub fn lock(&self) -> MutexGuard<'_, OwnedPartitions> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state of timer `id`, whose partition (murmur2 of the id) is `partition`.
    pub fn timer(&self, partition: i32, id: &str) -> TimerStatus {
        let owned = self.lock();
        if owned.loading.contains(&partition) {
            return TimerStatus::Loading;
        }
        let Some(state) = owned.live.get(&partition) else {
            return TimerStatus::NotOwned;
        };
        if !state.caught_up {
            return TimerStatus::Loading;
        }
        if state.schedules.contains_key(id.as_bytes()) {
            // A schedule: see `schedule`.
            return TimerStatus::Unknown {
                applied_through: state.applied_through(),
            };
        }
        if let Some((timer, fire_at_ms, ())) = state.wheel.get_entry(id.as_bytes()) {
            return TimerStatus::Pending {
                fire_at_ms,
                spec: String::from_utf8_lossy(timer.command()).into_owned(),
            };
        }
        match state.finished.get(id.as_bytes()) {
            Some(Finish::Fired {
                fire_at_ms,
                fired_at_ms,
            }) => TimerStatus::Fired {
                fire_at_ms,
                fired_at_ms,
                delivery: state.finished.delivery(id.as_bytes()),
            },
            Some(Finish::Cancelled { cancelled_at_ms }) => {
                TimerStatus::Cancelled { cancelled_at_ms }
            }
            None => TimerStatus::Unknown {
                applied_through: state.applied_through(),
            },
        }
    }

    /// The state of schedule `id`, whose partition is `partition`.
    pub fn schedule(&self, partition: i32, id: &str) -> ScheduleStatus {
        let owned = self.lock();
        if owned.loading.contains(&partition) {
            return ScheduleStatus::Loading;
        }
        let Some(state) = owned.live.get(&partition) else {
            return ScheduleStatus::NotOwned;
        };
        if !state.caught_up {
            return ScheduleStatus::Loading;
        }
        match state.schedules.get(id.as_bytes()) {
            Some(schedule) => ScheduleStatus::Known {
                schedule: String::from_utf8_lossy(&schedule.state.encode()).into_owned(),
            },
            None => ScheduleStatus::Unknown {
                applied_through: state.applied_through(),
            },
        }
    }

    /// A page of `partition`'s pending timers or schedules.
    pub fn list(&self, partition: i32, kind: ListKind, query: &ListQuery) -> ListAnswer {
        let owned = self.lock();
        if owned.loading.contains(&partition) {
            return ListAnswer::Loading;
        }
        let Some(state) = owned.live.get(&partition) else {
            return ListAnswer::NotOwned;
        };
        if !state.caught_up {
            return ListAnswer::Loading;
        }
        let query = ListQuery {
            limit: query.limit.min(chime_wire::status::MAX_LIST_LIMIT),
            ..query.clone()
        };
        let (items, more) = match kind {
            ListKind::PendingTimers => state.list_pending(&query),
            ListKind::Schedules => state.list_schedules(&query),
        };
        ListAnswer::Listed { items, more }
    }

    /// Joined the group and every owned partition is Live.
    pub fn is_ready(&self) -> bool {
        let owned = self.lock();
        owned.joined && owned.loading.is_empty() && owned.live.values().all(|p| p.caught_up)
    }

    /// Pending timers per owned live partition.
    pub fn pending_per_partition(&self) -> Vec<(i32, usize)> {
        let owned = self.lock();
        let mut v: Vec<(i32, usize)> = owned
            .live
            .iter()
            .map(|(p, s)| {
                // Schedules are in the wheel too, but for paused ones.
                let schedules = s
                    .schedules
                    .values()
                    .filter(|sc| !sc.state.is_paused())
                    .count();
                (*p, s.wheel.len().saturating_sub(schedules))
            })
            .collect();
        v.sort_unstable();
        v
    }
}

impl StatusSource for EngineStatus {
    fn timer(&self, partition: i32, id: &str) -> TimerStatus {
        EngineStatus::timer(self, partition, id)
    }

    fn schedule(&self, partition: i32, id: &str) -> ScheduleStatus {
        EngineStatus::schedule(self, partition, id)
    }

    fn list(&self, partition: i32, kind: ListKind, query: &ListQuery) -> ListAnswer {
        EngineStatus::list(self, partition, kind, query)
    }

    fn is_ready(&self) -> bool {
        EngineStatus::is_ready(self)
    }

    /// Sets the engine's gauges (pending timers per partition, partitions
    /// loading and live), just before a scrape.
    fn publish_gauges(&self) {
        let pending = self.pending_per_partition();
        let loading = self.lock().loading.len();
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        let now: BTreeSet<i32> = pending.iter().map(|(p, _)| *p).collect();
        for gone in reported.difference(&now) {
            metrics::gauge!("chime_engine_pending_timers", "partition" => gone.to_string())
                .set(0.0);
        }
        for (p, n) in &pending {
            metrics::gauge!("chime_engine_pending_timers", "partition" => p.to_string())
                .set(*n as f64);
        }
        metrics::gauge!("chime_engine_partitions", "state" => "live").set(pending.len() as f64);
        metrics::gauge!("chime_engine_partitions", "state" => "loading").set(loading as f64);
        *reported = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_timers_expire_by_age_and_count() {
        let mut f = FinishedTimers::new(1_000, 3);
        f.record(
            b"a",
            Finish::Cancelled {
                cancelled_at_ms: 100,
            },
        );
        f.record(
            b"b",
            Finish::Fired {
                fire_at_ms: 90,
                fired_at_ms: 200,
            },
        );
        assert_eq!(
            f.get(b"b"),
            Some(Finish::Fired {
                fire_at_ms: 90,
                fired_at_ms: 200
            })
        );
        f.expire(1_150);
        assert_eq!(f.get(b"a"), None, "older than the retention");
        assert!(f.get(b"b").is_some());
        f.record(
            b"c",
            Finish::Cancelled {
                cancelled_at_ms: 300,
            },
        );
        f.record(
            b"d",
            Finish::Cancelled {
                cancelled_at_ms: 400,
            },
        );
        f.record(
            b"e",
            Finish::Cancelled {
                cancelled_at_ms: 500,
            },
        );
        assert_eq!(f.len(), 3, "capped at max_entries");
        assert_eq!(f.get(b"b"), None, "oldest evicted first");
    }

    #[test]
    fn a_later_finish_of_the_same_id_survives_eviction_of_the_earlier() {
        let mut f = FinishedTimers::new(1_000, 10);
        f.record(
            b"a",
            Finish::Fired {
                fire_at_ms: 1,
                fired_at_ms: 100,
            },
        );
        f.record(
            b"a",
            Finish::Fired {
                fire_at_ms: 500,
                fired_at_ms: 900,
            },
        );
        f.expire(1_200);
        assert_eq!(
            f.get(b"a"),
            Some(Finish::Fired {
                fire_at_ms: 500,
                fired_at_ms: 900
            })
        );
    }
}
