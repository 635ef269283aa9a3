//! Heap bytes per pending timer for each structure, at 10^6 and 10^7
//! pending, counted by a global allocator wrapper (bytes requested from the
//! allocator, live; allocator bookkeeping not included). Also the peak while
//! filling, and what is still held per remaining timer after 90% of them are
//! cancelled (the heap keeps its tombstones; the wheel shrinks).
//!
//! `cargo bench -p chime-benches --bench memory` (add `-- 1000000` to skip 10^7).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use chime_wheel::TimingWheel;

mod support;
use support::{BTree, Heap, Rng, TimerQueue, TokioDelayQueue, Wheel, BASE_MS, MINUTE_MS};

/// Counts live heap bytes and their high-water mark.
struct CountingAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn count_alloc(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees carry over; the counters are only
// bookkeeping beside it.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count_alloc(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count_alloc(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_ptr = unsafe { System.realloc(ptr, layout, new_size) };
        if !new_ptr.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            count_alloc(new_size);
        }
        new_ptr
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// The wheel with the engine's payload type (an empty `Bytes`: the struct
/// is stored, no payload bytes), to show what a non-unit payload costs.
struct WheelWithBytes(TimingWheel<u64, Bytes>);

impl TimerQueue for WheelWithBytes {
    const NAME: &'static str = "wheel<u64,Bytes>";

    fn new(now: u64) -> Self {
        WheelWithBytes(TimingWheel::new(now))
    }

    fn schedule(&mut self, id: u64, deadline: u64) {
        self.0.schedule(id, deadline, Bytes::new());
    }

    fn cancel(&mut self, id: u64) -> bool {
        self.0.cancel(&id).is_some()
    }

    fn advance(&mut self, now: u64, expired: &mut Vec<(u64, u64)>) {
        let mut out = Vec::new();
        self.0.advance(now, &mut out);
        expired.extend(out.into_iter().map(|e| (e.id, e.deadline)));
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

fn measure<Q: TimerQueue>(count: usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let mut queue = Q::new(BASE_MS);
    let mut rng = Rng::new(11);
    queue.run(|queue| {
        for id in 0..count as u64 {
            queue.schedule(id, BASE_MS + rng.offset(MINUTE_MS));
        }
    });
    let filled = LIVE.load(Ordering::Relaxed) - before;
    let peak = PEAK.load(Ordering::Relaxed) - before;
    queue.run(|queue| {
        for id in (0..count as u64).filter(|id| id % 10 != 0) {
            queue.cancel(id);
        }
    });
    let remaining = queue.len();
    let after_cancel = LIVE.load(Ordering::Relaxed) - before;
    drop(queue);
    let per = |bytes: usize, timers: usize| bytes as f64 / timers as f64;
    println!(
        "| {:<17} | {:>10} | {:>15.1} | {:>14.1} | {:>30.1} |",
        Q::NAME,
        count,
        per(filled, count),
        per(peak, count),
        per(after_cancel, remaining),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a count filter.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    println!("| structure         |    pending | bytes per timer | peak per timer | per timer after 90% cancelled |");
    println!("|-------------------|-----------:|----------------:|---------------:|------------------------------:|");
    for count in [1_000_000, 10_000_000] {
        if !filter.is_empty() && !filter.iter().any(|f| *f == count.to_string()) {
            continue;
        }
        measure::<Wheel>(count);
        measure::<WheelWithBytes>(count);
        measure::<Heap>(count);
        measure::<BTree>(count);
        measure::<TokioDelayQueue>(count);
    }
}
