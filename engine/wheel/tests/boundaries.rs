//! One test per edge the wheel must get right.

use bytes::Bytes;
use chime_wheel::{Expired, TimingWheel};

const NOW: u64 = 1_700_000_000_000;
const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;

fn advance<K: std::hash::Hash + Eq + Clone, V>(
    wheel: &mut TimingWheel<K, V>,
    now: u64,
) -> Vec<Expired<K, V>> {
    let mut expired = Vec::new();
    wheel.advance(now, &mut expired);
    expired
}

fn ids<K: Clone, V>(expired: &[Expired<K, V>]) -> Vec<K> {
    expired.iter().map(|e| e.id.clone()).collect()
}

/// A deterministic pseudo-random sequence (splitmix64).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn u64_max_deadline_is_kept_and_fires_at_u64_max() {
    let mut wheel = TimingWheel::new(NOW);
    wheel.schedule("max", u64::MAX, 1);
    wheel.schedule("max-1", u64::MAX - 1, 2);
    assert_eq!(wheel.next_deadline(), Some(u64::MAX - 1));
    assert!(advance(&mut wheel, u64::MAX - 2).is_empty());
    assert_eq!(ids(&advance(&mut wheel, u64::MAX - 1)), ["max-1"]);
    assert_eq!(wheel.next_deadline(), Some(u64::MAX));
    assert_eq!(ids(&advance(&mut wheel, u64::MAX)), ["max"]);
    assert!(wheel.is_empty());
    assert_eq!(wheel.now(), u64::MAX);
    // Scheduling at the end of time, at the end of time, still works.
    wheel.schedule("again", u64::MAX, 3);
    assert_eq!(ids(&advance(&mut wheel, u64::MAX)), ["again"]);
}

#[test]
fn past_deadlines_are_due_at_the_next_advance_in_order() {
    let mut wheel = TimingWheel::new(NOW);
    wheel.schedule("now", NOW, ());
    wheel.schedule("long ago", 5, ());
    wheel.schedule("just before", NOW - 1, ());
    assert_eq!(wheel.next_deadline(), Some(5));
    let expired = advance(&mut wheel, NOW);
    assert_eq!(ids(&expired), ["long ago", "just before", "now"]);
    assert_eq!(expired[0].deadline, 5);
    assert!(wheel.is_empty());
}

#[test]
fn advancing_backwards_is_a_no_op() {
    let mut wheel = TimingWheel::new(NOW);
    wheel.schedule("past", NOW - 10, ());
    wheel.schedule("future", NOW + 10, ());
    assert!(advance(&mut wheel, NOW - 5).is_empty());
    assert_eq!(wheel.now(), NOW);
    assert_eq!(wheel.len(), 2);
    assert_eq!(ids(&advance(&mut wheel, NOW + 10)), ["past", "future"]);
}

#[test]
fn cancel_unknown_id_is_a_no_op() {
    let mut wheel = TimingWheel::new(NOW);
    assert_eq!(wheel.cancel(&"nope"), None);
    wheel.schedule("a", NOW + 5, "pa");
    assert_eq!(wheel.cancel(&"nope"), None);
    assert_eq!(wheel.len(), 1);
    assert_eq!(wheel.cancel(&"a"), Some((NOW + 5, "pa")));
    assert_eq!(wheel.cancel(&"a"), None, "second cancel");
    wheel.schedule("b", NOW + 5, "pb");
    assert_eq!(ids(&advance(&mut wheel, NOW + 5)), ["b"]);
    assert_eq!(wheel.cancel(&"b"), None, "cancel after fire");
    assert!(wheel.is_empty());
    assert_eq!(wheel.next_deadline(), None);
}

#[test]
fn reschedule_moves_the_deadline_and_replaces_the_payload() {
    let mut wheel = TimingWheel::new(NOW);
    assert_eq!(wheel.schedule("a", NOW + 100, "first"), None);
    assert_eq!(wheel.schedule("a", NOW + 50_000, "later"), Some("first"));
    assert_eq!(wheel.len(), 1);
    assert_eq!(wheel.get(&"a"), Some((NOW + 50_000, &"later")));
    assert!(advance(&mut wheel, NOW + 49_999).is_empty());
    assert_eq!(
        wheel.schedule("a", NOW + 49_999 + 2, "sooner"),
        Some("later")
    );
    assert_eq!(wheel.next_deadline(), Some(NOW + 50_001));
    let expired = advance(&mut wheel, NOW + 60_000);
    assert_eq!(expired.len(), 1);
    assert_eq!(
        (expired[0].deadline, expired[0].payload),
        (NOW + 50_001, "sooner")
    );
    // Same deadline, new payload.
    wheel.schedule("b", NOW + 70_000, "x");
    assert_eq!(wheel.schedule("b", NOW + 70_000, "y"), Some("x"));
    assert_eq!(wheel.get(&"b"), Some((NOW + 70_000, &"y")));
    // Into the past: due at once.
    assert_eq!(wheel.schedule("b", NOW, "z"), Some("y"));
    assert_eq!(ids(&advance(&mut wheel, NOW + 60_000)), ["b"]);
}

#[test]
fn big_jump_expires_a_year_of_timers_in_one_advance_in_order() {
    let mut wheel = TimingWheel::new(NOW);
    let mut rng = 7;
    let mut deadlines = Vec::new();
    for id in 0..50_000u32 {
        let deadline = NOW + splitmix(&mut rng) % YEAR_MS;
        wheel.schedule(id, deadline, ());
        deadlines.push(deadline);
    }
    deadlines.sort_unstable();
    // Walking 3e10 milliseconds one by one would not finish; this must.
    let expired = advance(&mut wheel, NOW + YEAR_MS);
    assert_eq!(
        expired.iter().map(|e| e.deadline).collect::<Vec<_>>(),
        deadlines
    );
    assert!(wheel.is_empty());
    assert_eq!(wheel.now(), NOW + YEAR_MS);
}

#[test]
fn millisecond_steps_expire_each_timer_exactly_on_time() {
    let mut wheel = TimingWheel::new(0);
    let mut rng = 3;
    for id in 0..5_000u32 {
        wheel.schedule(id, splitmix(&mut rng) % 20_000, ());
    }
    for now in 0..=20_000 {
        for e in advance(&mut wheel, now) {
            assert_eq!(e.deadline, now, "timer {} fired at {now}", e.id);
        }
        if let Some(next) = wheel.next_deadline() {
            assert!(next > now);
        }
    }
    assert!(wheel.is_empty());
}

#[test]
fn timers_at_level_boundaries_fire_on_time() {
    let mut wheel = TimingWheel::new(0);
    let mut boundaries = Vec::new();
    for level in 1..=7u32 {
        let width = 1u64 << (6 * level);
        boundaries.extend([width - 1, width, width + 1]);
    }
    for (id, &deadline) in boundaries.iter().enumerate() {
        wheel.schedule(id, deadline, ());
    }
    for (id, &deadline) in boundaries.iter().enumerate() {
        assert_eq!(wheel.next_deadline(), Some(deadline));
        assert!(
            advance(&mut wheel, deadline - 1).is_empty(),
            "early at {deadline}"
        );
        let expired = advance(&mut wheel, deadline);
        assert_eq!(ids(&expired), [id], "deadline {deadline}");
    }
}

#[test]
fn next_deadline_is_exact_after_cascade() {
    let mut wheel = TimingWheel::new(0);
    wheel.schedule("a", 70, ());
    assert_eq!(wheel.next_deadline(), Some(70));
    assert!(advance(&mut wheel, 64).is_empty(), "cascade from level 1");
    assert_eq!(wheel.next_deadline(), Some(70));

    // 40 timers in one level-2 slot, [4096, 8192): too many to rescan when
    // the earliest is cancelled, so next_deadline becomes a lower bound...
    let mut wheel = TimingWheel::new(0);
    for i in 0..40u64 {
        wheel.schedule(i, 5_000 + 10 * i, ());
    }
    assert_eq!(wheel.next_deadline(), Some(5_000));
    wheel.cancel(&0);
    let bound = wheel.next_deadline().expect("pending");
    assert!((4_096..=5_010).contains(&bound), "bound {bound}");
    // ...and advancing to it cascades the slot, after which it is exact.
    assert!(advance(&mut wheel, bound).is_empty());
    assert_eq!(wheel.next_deadline(), Some(5_010));
}

#[test]
fn next_deadline_is_exact_in_short_lists_after_cancel() {
    let mut wheel = TimingWheel::new(0);
    for (id, deadline) in [(1, 5_000), (2, 6_000), (3, 7_000)] {
        wheel.schedule(id, deadline, ());
    }
    wheel.cancel(&1);
    assert_eq!(wheel.next_deadline(), Some(6_000));
    wheel.schedule(2, 9_000, ());
    assert_eq!(wheel.next_deadline(), Some(7_000));
}

#[test]
fn deadlines_beyond_the_top_level_wait_in_the_overflow() {
    let mut wheel = TimingWheel::new(0);
    let far = 1u64 << 40;
    wheel.schedule("far", far, ());
    wheel.schedule("far+5", far + 5, ());
    wheel.schedule("farther", 1 << 50, ());
    wheel.schedule("near", 10, ());
    assert_eq!(ids(&advance(&mut wheel, 10)), ["near"]);
    assert_eq!(wheel.next_deadline(), Some(far));
    assert!(advance(&mut wheel, far - 1).is_empty());
    assert_eq!(ids(&advance(&mut wheel, far + 4)), ["far"]);
    assert_eq!(wheel.next_deadline(), Some(far + 5));
    assert_eq!(wheel.cancel(&"farther"), Some((1 << 50, ())));
    wheel.schedule("farther", 1 << 51, ());
    assert_eq!(ids(&advance(&mut wheel, u64::MAX)), ["far+5", "farther"]);
}

#[test]
fn many_timers_with_one_deadline_fire_together() {
    let mut wheel = TimingWheel::new(0);
    for id in 0..1_000u32 {
        wheel.schedule(id, 123_456, ());
    }
    assert!(advance(&mut wheel, 123_455).is_empty());
    let mut fired = ids(&advance(&mut wheel, 123_456));
    fired.sort_unstable();
    assert_eq!(fired, (0..1_000).collect::<Vec<_>>());
}

#[test]
fn shrinking_releases_memory() {
    let mut wheel = TimingWheel::new(NOW);
    for id in 0..100_000u64 {
        wheel.schedule(id, NOW + id, ());
    }
    let full = wheel.capacity();
    assert!(full >= 100_000);
    for id in 1_000..100_000u64 {
        wheel.cancel(&id);
    }
    assert!(
        wheel.capacity() <= 4 * 1_000,
        "capacity {} after cancel",
        wheel.capacity()
    );
    for id in 0..1_000u64 {
        assert_eq!(wheel.get(&id), Some((NOW + id, &())));
    }
    // Expiry shrinks too.
    for id in 1_000..100_000u64 {
        wheel.schedule(id, NOW + id, ());
    }
    assert!(wheel.capacity() >= 100_000);
    assert_eq!(advance(&mut wheel, NOW + 99_989).len(), 99_990);
    assert!(
        wheel.capacity() <= 64,
        "capacity {} after expiry",
        wheel.capacity()
    );
    assert_eq!(advance(&mut wheel, u64::MAX).len(), 10);
}

#[test]
fn iter_lists_every_pending_timer() {
    let mut wheel = TimingWheel::new(0);
    wheel.schedule(1, 5, "a");
    wheel.schedule(2, 1 << 45, "b");
    wheel.schedule(3, 7, "c");
    wheel.cancel(&3);
    let mut listed: Vec<_> = wheel
        .iter()
        .map(|(&id, deadline, &p)| (id, deadline, p))
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, [(1, 5, "a"), (2, 1 << 45, "b")]);
}

#[test]
fn engine_key_and_payload_types_work() {
    let mut by_string: TimingWheel<String, Bytes> = TimingWheel::new(NOW);
    by_string.schedule("timer-1".to_owned(), NOW + 1, Bytes::from_static(b"record"));
    assert_eq!(
        by_string.get(&"timer-1".to_owned()).map(|(d, _)| d),
        Some(NOW + 1)
    );
    let mut by_bytes: TimingWheel<Bytes, Bytes> = TimingWheel::new(NOW);
    by_bytes.schedule(Bytes::from_static(b"k"), NOW + 1, Bytes::from_static(b"v"));
    let expired = advance(&mut by_bytes, NOW + 1);
    assert_eq!(expired[0].payload, Bytes::from_static(b"v"));
}
