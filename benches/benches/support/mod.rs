//! Shared by the `wheel` and `memory` benches: the four timer structures
//! behind one trait, and deterministic workloads.
//!
//! Every structure keys timers by `u64` id, cancels by id, and reports
//! `(id, deadline)` for each expiry, so all four do the same job:
//! * `wheel`: `chime_wheel::TimingWheel<u64, ()>`;
//! * `heap`: `std` `BinaryHeap` plus a live-id map; cancel only drops the id
//!   from the map (lazy deletion) and expiry skips the stale heap entries;
//! * `btree`: `BTreeSet<(deadline, id)>` plus an id -> deadline map;
//! * `delayqueue`: `tokio_util::time::DelayQueue` plus an id -> key map, on a
//!   current-thread runtime with paused time, advanced with
//!   `tokio::time::advance`.
//!
//! The maps are hashbrown with its default hasher, the same the wheel uses.

// Each bench binary uses a different subset of this module.
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use chime_wheel::{Expired, TimingWheel};
use hashbrown::HashMap;
use tokio::runtime::Runtime;
use tokio_util::time::{delay_queue, DelayQueue};

/// Start of time in every workload: a realistic unix-ms timestamp.
pub const BASE_MS: u64 = 1_700_000_000_000;
pub const MINUTE_MS: u64 = 60_000;
pub const SECOND_MS: u64 = 1_000;
pub const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;

pub trait TimerQueue: Sized {
    const NAME: &'static str;
    fn new(now: u64) -> Self;
    fn schedule(&mut self, id: u64, deadline: u64);
    /// True if `id` was pending.
    fn cancel(&mut self, id: u64) -> bool;
    /// Appends `(id, deadline)` for everything due by `now`.
    fn advance(&mut self, now: u64, expired: &mut Vec<(u64, u64)>);
    fn len(&self) -> usize;
    /// Runs `work` with whatever ambient context the structure needs.
    fn run<R>(&mut self, work: impl FnOnce(&mut Self) -> R) -> R {
        work(self)
    }
}

pub struct Wheel {
    wheel: TimingWheel<u64, ()>,
    scratch: Vec<Expired<u64, ()>>,
}

impl TimerQueue for Wheel {
    const NAME: &'static str = "wheel";

    fn new(now: u64) -> Self {
        Wheel {
            wheel: TimingWheel::new(now),
            scratch: Vec::new(),
        }
    }

    fn schedule(&mut self, id: u64, deadline: u64) {
        self.wheel.schedule(id, deadline, ());
    }

    fn cancel(&mut self, id: u64) -> bool {
        self.wheel.cancel(&id).is_some()
    }

    fn advance(&mut self, now: u64, expired: &mut Vec<(u64, u64)>) {
        self.wheel.advance(now, &mut self.scratch);
        expired.extend(self.scratch.drain(..).map(|e| (e.id, e.deadline)));
    }

    fn len(&self) -> usize {
        self.wheel.len()
    }
}

pub struct Heap {
    /// `(deadline, sequence, id)`: the sequence number tells a live entry
    /// from a stale one left behind by a cancel or re-schedule.
    heap: BinaryHeap<Reverse<(u64, u64, u64)>>,
    live: HashMap<u64, u64>,
    next_sequence: u64,
}

impl TimerQueue for Heap {
    const NAME: &'static str = "heap";

    fn new(_now: u64) -> Self {
        Heap {
            heap: BinaryHeap::new(),
            live: HashMap::new(),
            next_sequence: 0,
        }
    }

    fn schedule(&mut self, id: u64, deadline: u64) {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.live.insert(id, sequence);
        self.heap.push(Reverse((deadline, sequence, id)));
    }

    fn cancel(&mut self, id: u64) -> bool {
        self.live.remove(&id).is_some()
    }

    fn advance(&mut self, now: u64, expired: &mut Vec<(u64, u64)>) {
        while let Some(&Reverse((deadline, sequence, id))) = self.heap.peek() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            if self.live.get(&id) == Some(&sequence) {
                self.live.remove(&id);
                expired.push((id, deadline));
            }
        }
    }

    fn len(&self) -> usize {
        self.live.len()
    }
}

pub struct BTree {
    by_deadline: BTreeSet<(u64, u64)>,
    by_id: HashMap<u64, u64>,
}

impl TimerQueue for BTree {
    const NAME: &'static str = "btree";

    fn new(_now: u64) -> Self {
        BTree {
            by_deadline: BTreeSet::new(),
            by_id: HashMap::new(),
        }
    }

    fn schedule(&mut self, id: u64, deadline: u64) {
        if let Some(old) = self.by_id.insert(id, deadline) {
            self.by_deadline.remove(&(old, id));
        }
        self.by_deadline.insert((deadline, id));
    }

    fn cancel(&mut self, id: u64) -> bool {
        match self.by_id.remove(&id) {
            Some(deadline) => self.by_deadline.remove(&(deadline, id)),
            None => false,
        }
    }

    fn advance(&mut self, now: u64, expired: &mut Vec<(u64, u64)>) {
        while let Some(&(deadline, id)) = self.by_deadline.first() {
            if deadline > now {
                break;
            }
            self.by_deadline.pop_first();
            self.by_id.remove(&id);
            expired.push((id, deadline));
        }
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }
}

pub struct TokioDelayQueue {
    runtime: Arc<Runtime>,
    queue: DelayQueue<u64>,
    keys: HashMap<u64, delay_queue::Key>,
    /// `BASE`-relative times map onto tokio's paused clock from `start`.
    start: tokio::time::Instant,
    start_ms: u64,
    now_ms: u64,
}

impl TokioDelayQueue {
    fn instant(&self, ms: u64) -> tokio::time::Instant {
        self.start + Duration::from_millis(ms.saturating_sub(self.start_ms))
    }
}

impl TimerQueue for TokioDelayQueue {
    const NAME: &'static str = "delayqueue";

    fn new(now: u64) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("building a current-thread runtime");
        let runtime = Arc::new(runtime);
        let _context = runtime.enter();
        TokioDelayQueue {
            queue: DelayQueue::new(),
            keys: HashMap::new(),
            start: tokio::time::Instant::now(),
            start_ms: now,
            now_ms: now,
            runtime: runtime.clone(),
        }
    }

    fn schedule(&mut self, id: u64, deadline: u64) {
        let when = self.instant(deadline);
        match self.keys.get(&id) {
            Some(key) => self.queue.reset_at(key, when),
            None => {
                let key = self.queue.insert_at(id, when);
                self.keys.insert(id, key);
            }
        }
    }

    fn cancel(&mut self, id: u64) -> bool {
        match self.keys.remove(&id) {
            Some(key) => {
                self.queue.remove(&key);
                true
            }
            None => false,
        }
    }

    fn advance(&mut self, now: u64, expired: &mut Vec<(u64, u64)>) {
        if now > self.now_ms {
            let step = Duration::from_millis(now - self.now_ms);
            self.runtime.block_on(tokio::time::advance(step));
            self.now_ms = now;
        }
        let mut context = Context::from_waker(Waker::noop());
        while let Poll::Ready(Some(entry)) = self.queue.poll_expired(&mut context) {
            let deadline = self.start_ms + (entry.deadline() - self.start).as_millis() as u64;
            let id = entry.into_inner();
            self.keys.remove(&id);
            expired.push((id, deadline));
        }
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    /// DelayQueue creates tokio `Sleep`s, which need the runtime entered.
    /// Entering once per batch keeps that cost out of the per-op figures.
    fn run<R>(&mut self, work: impl FnOnce(&mut Self) -> R) -> R {
        let runtime = self.runtime.clone();
        let _context = runtime.enter();
        work(self)
    }
}

/// splitmix64: a tiny deterministic generator, so every structure and every
/// run sees the same workload.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `1..=span`.
    pub fn offset(&mut self, span: u64) -> u64 {
        1 + self.next_u64() % span
    }
}

/// `count` deadlines spread uniformly over `(BASE_MS, BASE_MS + span]`.
pub fn deadlines(count: usize, span: u64, seed: u64) -> Vec<u64> {
    let mut rng = Rng::new(seed);
    (0..count).map(|_| BASE_MS + rng.offset(span)).collect()
}

/// A queue at `BASE_MS` with timer `i` pending at `deadlines[i]`.
pub fn filled<Q: TimerQueue>(deadlines: &[u64]) -> Q {
    let mut queue = Q::new(BASE_MS);
    queue.run(|queue| {
        for (id, &deadline) in deadlines.iter().enumerate() {
            queue.schedule(id as u64, deadline);
        }
    });
    queue
}

/// A random half of `0..count`, in random order (Fisher-Yates).
pub fn shuffled_half(count: usize, seed: u64) -> Vec<u64> {
    let mut rng = Rng::new(seed);
    let mut ids: Vec<u64> = (0..count as u64).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    ids.truncate(count / 2);
    ids
}

#[derive(Clone, Copy, Debug)]
pub enum Op {
    Advance(u64),
    Schedule(u64, u64),
    Cancel(u64),
}

/// The steady-state mix: starting from `pending` timers over a minute (ids
/// `0..pending`, deadlines from [`deadlines`] with `seed`), each 1-ms tick
/// advances time, cancels `per_tick` random pending timers and schedules
/// `per_tick` new ones up to a minute out. With `per_tick` near the expiry
/// rate, schedule, cancel and expire come in about equal measure. Returns
/// the ops and the total operation count (schedules + cancels + expiries).
pub fn steady_mix(pending: usize, seed: u64, ticks: u64, per_tick: usize) -> (Vec<Op>, u64) {
    let initial = deadlines(pending, MINUTE_MS, seed);
    // A reference run tracks what is pending so every cancel hits a pending
    // timer: ids in a vector (swap-remove) plus each id's position in it.
    let mut pending_ids: Vec<u64> = (0..pending as u64).collect();
    let mut position: HashMap<u64, usize> = (0..pending).map(|i| (i as u64, i)).collect();
    let mut reference = BTree::new(BASE_MS);
    for (id, &deadline) in initial.iter().enumerate() {
        reference.schedule(id as u64, deadline);
    }
    let mut rng = Rng::new(seed ^ 0xA5A5);
    let (mut ops, mut expired, mut next_id) = (Vec::new(), Vec::new(), pending as u64);
    let mut total = 0;
    for tick in 1..=ticks {
        let now = BASE_MS + tick;
        ops.push(Op::Advance(now));
        expired.clear();
        reference.advance(now, &mut expired);
        total += expired.len() as u64;
        for &(id, _) in &expired {
            forget(id, &mut pending_ids, &mut position);
        }
        for _ in 0..per_tick {
            let id = pending_ids[(rng.next_u64() % pending_ids.len() as u64) as usize];
            forget(id, &mut pending_ids, &mut position);
            reference.cancel(id);
            ops.push(Op::Cancel(id));
        }
        for _ in 0..per_tick {
            let (id, deadline) = (next_id, now + rng.offset(MINUTE_MS));
            next_id += 1;
            position.insert(id, pending_ids.len());
            pending_ids.push(id);
            reference.schedule(id, deadline);
            ops.push(Op::Schedule(id, deadline));
        }
        total += 2 * per_tick as u64;
    }
    (ops, total)
}

/// Drops `id` from the reference run's pending set (see [`steady_mix`]).
fn forget(id: u64, pending_ids: &mut Vec<u64>, position: &mut HashMap<u64, usize>) {
    let at = position.remove(&id).expect("id is pending");
    pending_ids.swap_remove(at);
    if let Some(&moved) = pending_ids.get(at) {
        position.insert(moved, at);
    }
}

/// Runs a mix from [`steady_mix`]; returns how many timers expired.
pub fn run_ops<Q: TimerQueue>(queue: &mut Q, ops: &[Op], expired: &mut Vec<(u64, u64)>) -> usize {
    queue.run(|queue| {
        for &op in ops {
            match op {
                Op::Advance(now) => queue.advance(now, expired),
                Op::Schedule(id, deadline) => queue.schedule(id, deadline),
                Op::Cancel(id) => {
                    queue.cancel(id);
                }
            }
        }
    });
    expired.len()
}
