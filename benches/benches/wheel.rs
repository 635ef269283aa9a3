//! Timing wheel vs BinaryHeap, BTreeMap and tokio's DelayQueue, per
//! workload. Throughput is in timer operations per second (schedules,
//! cancels and expiries). `cargo bench -p chime-benches --bench wheel`;
//! add `-- expire` (or any name part) to run a subset.

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};

mod support;
use support::{
    deadlines, filled, run_ops, shuffled_half, steady_mix, BTree, Heap, TimerQueue,
    TokioDelayQueue, Wheel, BASE_MS, MINUTE_MS, SECOND_MS, YEAR_MS,
};

/// Runs `$bench::<Q>(args)` for each of the four structures.
macro_rules! for_each_queue {
    ($bench:ident($($arg:expr),* $(,)?)) => {
        $bench::<Wheel>($($arg),*);
        $bench::<Heap>($($arg),*);
        $bench::<BTree>($($arg),*);
        $bench::<TokioDelayQueue>($($arg),*);
    };
}

/// Few, flat samples: each iteration handles up to a million timers, and the
/// whole suite must finish in minutes on two cores.
fn new_group<'a>(
    c: &'a mut Criterion,
    name: &str,
    operations: u64,
) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(operations));
    group
}

fn schedule<Q: TimerQueue>(group: &mut BenchmarkGroup<WallTime>, deadlines: &[u64]) {
    group.bench_function(Q::NAME, |b| {
        b.iter_batched(
            || Q::new(BASE_MS),
            |mut queue| {
                queue.run(|queue| {
                    for (id, &deadline) in deadlines.iter().enumerate() {
                        queue.schedule(id as u64, deadline);
                    }
                });
                queue
            },
            BatchSize::PerIteration,
        )
    });
}

fn cancel<Q: TimerQueue>(group: &mut BenchmarkGroup<WallTime>, deadlines: &[u64], ids: &[u64]) {
    group.bench_function(Q::NAME, |b| {
        b.iter_batched(
            || filled::<Q>(deadlines),
            |mut queue| {
                queue.run(|queue| {
                    for &id in ids {
                        queue.cancel(id);
                    }
                });
                assert_eq!(queue.len(), deadlines.len() - ids.len());
                queue
            },
            BatchSize::PerIteration,
        )
    });
}

/// Expires every timer by advancing `step_ms` at a time up to `until`.
fn expire<Q: TimerQueue>(
    group: &mut BenchmarkGroup<WallTime>,
    deadlines: &[u64],
    step_ms: u64,
    until: u64,
) {
    group.bench_function(Q::NAME, |b| {
        b.iter_batched(
            || (filled::<Q>(deadlines), Vec::with_capacity(deadlines.len())),
            |(mut queue, mut expired)| {
                queue.run(|queue| {
                    let mut now = BASE_MS;
                    while now < until {
                        now = (now + step_ms).min(until);
                        queue.advance(now, &mut expired);
                    }
                });
                assert_eq!(expired.len(), deadlines.len());
                (queue, expired)
            },
            BatchSize::PerIteration,
        )
    });
}

fn mix<Q: TimerQueue>(
    group: &mut BenchmarkGroup<WallTime>,
    initial: &[u64],
    ops: &[support::Op],
    expiries: usize,
) {
    group.bench_function(Q::NAME, |b| {
        b.iter_batched(
            || (filled::<Q>(initial), Vec::new()),
            |(mut queue, mut expired)| {
                assert_eq!(run_ops(&mut queue, ops, &mut expired), expiries);
                (queue, expired)
            },
            BatchSize::PerIteration,
        )
    });
}

fn schedule_benches(c: &mut Criterion) {
    for (count, count_name) in [(10_000, "1e4"), (1_000_000, "1e6")] {
        for (span, span_name) in [(MINUTE_MS, "minute"), (YEAR_MS, "year")] {
            let deadlines = deadlines(count, span, 1);
            let mut group = new_group(
                c,
                &format!("schedule/{count_name}/{span_name}"),
                count as u64,
            );
            for_each_queue!(schedule(&mut group, &deadlines));
            group.finish();
        }
    }
}

fn cancel_benches(c: &mut Criterion) {
    // 10^4 shows the cost with everything in cache, 10^6 with little of it.
    for (pending, pending_name) in [(10_000, "1e4"), (1_000_000, "1e6")] {
        let deadlines = deadlines(pending, MINUTE_MS, 2);
        let ids = shuffled_half(pending, 3);
        let mut group = new_group(c, &format!("cancel-half/{pending_name}"), ids.len() as u64);
        for_each_queue!(cancel(&mut group, &deadlines, &ids));
        group.finish();
    }
}

fn expire_benches(c: &mut Criterion) {
    const COUNT: usize = 1_000_000;
    let deadlines = deadlines(COUNT, SECOND_MS, 4);
    let until = BASE_MS + SECOND_MS;
    let mut group = new_group(c, "expire/1e6-in-1s/1ms-steps", COUNT as u64);
    for_each_queue!(expire(&mut group, &deadlines, 1, until));
    group.finish();
    let mut group = new_group(c, "expire/1e6-in-1s/one-jump", COUNT as u64);
    for_each_queue!(expire(&mut group, &deadlines, SECOND_MS, until));
    group.finish();
}

fn mix_benches(c: &mut Criterion) {
    const PENDING: usize = 1_000_000;
    const TICKS: u64 = 3_000;
    // 10^6 timers over a minute expire at ~16.7 per ms: cancel and schedule
    // as many per tick.
    const PER_TICK: usize = 17;
    let initial = deadlines(PENDING, MINUTE_MS, 5);
    let (ops, operations) = steady_mix(PENDING, 5, TICKS, PER_TICK);
    let expiries = (operations - 2 * PER_TICK as u64 * TICKS) as usize;
    let mut group = new_group(c, "steady-mix/1e6", operations);
    for_each_queue!(mix(&mut group, &initial, &ops, expiries));
    group.finish();
}

criterion_group!(
    benches,
    schedule_benches,
    cancel_benches,
    expire_benches,
    mix_benches
);
criterion_main!(benches);
