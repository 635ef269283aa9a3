//! The wheel against a reference model: a `BTreeSet` of `(deadline, id)`
//! plus a map `id -> (deadline, payload)`, driven by arbitrary interleavings
//! of schedule, re-schedule, cancel and advance. Deadlines and advance
//! targets are drawn relative to the wheel's time so that level boundaries
//! (64, 64^2, ... ms), the past, the overflow and `u64::MAX` are all hit.

use std::collections::{BTreeSet, HashMap};

use chime_wheel::{Expired, TimingWheel};
use proptest::prelude::*;

/// Ids come from a small space so re-schedules and cancels hit pending timers.
const IDS: u8 = 24;
/// Lists no longer than this are always exact (`list.rs`'s `RESCAN_LIMIT`).
const EXACT_UP_TO: usize = 16;

#[derive(Default)]
struct Model {
    now: u64,
    by_deadline: BTreeSet<(u64, u8)>,
    by_id: HashMap<u8, (u64, u32)>,
}

impl Model {
    fn schedule(&mut self, id: u8, deadline: u64, payload: u32) -> Option<u32> {
        let old = self.cancel(id).map(|(_, payload)| payload);
        self.by_deadline.insert((deadline, id));
        self.by_id.insert(id, (deadline, payload));
        old
    }

    fn cancel(&mut self, id: u8) -> Option<(u64, u32)> {
        let (deadline, payload) = self.by_id.remove(&id)?;
        self.by_deadline.remove(&(deadline, id));
        Some((deadline, payload))
    }

    /// Everything due by `now`, sorted by (deadline, id).
    fn advance(&mut self, now: u64) -> Vec<(u64, u8, u32)> {
        if now < self.now {
            return Vec::new();
        }
        self.now = now;
        let mut due = Vec::new();
        while let Some(&(deadline, id)) = self.by_deadline.first() {
            if deadline > now {
                break;
            }
            self.by_deadline.pop_first();
            let (_, payload) = self.by_id.remove(&id).expect("model maps agree");
            due.push((deadline, id, payload));
        }
        due
    }

    fn earliest(&self) -> Option<u64> {
        self.by_deadline.first().map(|&(deadline, _)| deadline)
    }
}

/// A time, described relative to the wheel's time when the op runs.
#[derive(Clone, Debug)]
enum When {
    /// `now + offset`, saturating; negative offsets are in the past.
    Offset(i64),
    /// Next multiple of `64^level` after now, plus a small delta.
    Boundary {
        level: u32,
        delta: i8,
    },
    Absolute(u64),
    FromMax(u16),
    /// The wheel's own `next_deadline` (or now, if empty).
    NextDeadline,
}

impl When {
    fn resolve(&self, now: u64, next_deadline: Option<u64>) -> u64 {
        match *self {
            When::Offset(offset) => now.saturating_add_signed(offset),
            When::Boundary { level, delta } => {
                let width = 1u64.checked_shl(6 * level).unwrap_or(0);
                let boundary = match width {
                    0 => u64::MAX,
                    width => (now / width).saturating_add(1).saturating_mul(width),
                };
                boundary.saturating_add_signed(i64::from(delta))
            }
            When::Absolute(at) => at,
            When::FromMax(back) => u64::MAX - u64::from(back),
            When::NextDeadline => next_deadline.unwrap_or(now),
        }
    }
}

fn when() -> impl Strategy<Value = When> {
    prop_oneof![
        4 => (-100i64..300).prop_map(When::Offset),
        2 => (-5_000i64..5_000_000).prop_map(When::Offset),
        2 => (0i64..1 << 40).prop_map(When::Offset),
        1 => (i64::MIN..i64::MAX).prop_map(When::Offset),
        3 => (0u32..11, -2i8..3).prop_map(|(level, delta)| When::Boundary { level, delta }),
        1 => any::<u64>().prop_map(When::Absolute),
        1 => (0u16..1_000).prop_map(When::FromMax),
    ]
}

fn advance_to() -> impl Strategy<Value = When> {
    prop_oneof![
        4 => (0i64..70).prop_map(When::Offset),
        2 => (-10i64..5_000).prop_map(When::Offset),
        2 => (0i64..1 << 37).prop_map(When::Offset),
        1 => (0i64..i64::MAX).prop_map(When::Offset),
        3 => (0u32..11, -1i8..2).prop_map(|(level, delta)| When::Boundary { level, delta }),
        2 => Just(When::NextDeadline),
        1 => (0u16..1_000).prop_map(When::FromMax),
        1 => any::<u64>().prop_map(When::Absolute),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Schedule { id: u8, at: When, payload: u32 },
    Cancel { id: u8 },
    Advance { to: When },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..IDS, when(), any::<u32>()).prop_map(|(id, at, payload)| Op::Schedule { id, at, payload }),
        2 => (0..IDS).prop_map(|id| Op::Cancel { id }),
        3 => advance_to().prop_map(|to| Op::Advance { to }),
    ]
}

fn start() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        0u64..1 << 20,
        Just(1_700_000_000_000),
        any::<u64>(),
        (0u64..1 << 20).prop_map(|back| u64::MAX - back),
    ]
}

fn check_pending(wheel: &TimingWheel<u8, u32>, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(wheel.len(), model.by_id.len());
    prop_assert_eq!(wheel.is_empty(), model.by_id.is_empty());
    prop_assert_eq!(wheel.now(), model.now);
    for id in 0..IDS {
        let expected = model
            .by_id
            .get(&id)
            .map(|&(deadline, payload)| (deadline, payload));
        prop_assert_eq!(
            wheel.get(&id).map(|(d, &p)| (d, p)),
            expected,
            "get({})",
            id
        );
    }
    let mut listed: Vec<(u8, u64, u32)> = wheel.iter().map(|(&id, d, &p)| (id, d, p)).collect();
    listed.sort_unstable();
    let mut expected: Vec<(u8, u64, u32)> = model
        .by_id
        .iter()
        .map(|(&id, &(d, p))| (id, d, p))
        .collect();
    expected.sort_unstable();
    prop_assert_eq!(listed, expected);

    let next = wheel.next_deadline();
    match model.earliest() {
        None => prop_assert_eq!(next, None),
        Some(earliest) => {
            let next =
                next.ok_or_else(|| TestCaseError::fail("next_deadline None while pending"))?;
            prop_assert!(
                next <= earliest,
                "next_deadline {} after earliest {}",
                next,
                earliest
            );
            if model.by_id.len() <= EXACT_UP_TO {
                prop_assert_eq!(next, earliest, "next_deadline not exact");
            }
        }
    }
    Ok(())
}

fn run(start: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut wheel = TimingWheel::new(start);
    let mut model = Model {
        now: start,
        ..Model::default()
    };
    let mut expired: Vec<Expired<u8, u32>> = Vec::new();
    for op in ops {
        match op {
            Op::Schedule { id, at, payload } => {
                let deadline = at.resolve(wheel.now(), wheel.next_deadline());
                prop_assert_eq!(
                    wheel.schedule(id, deadline, payload),
                    model.schedule(id, deadline, payload)
                );
            }
            Op::Cancel { id } => {
                prop_assert_eq!(wheel.cancel(&id), model.cancel(id));
            }
            Op::Advance { to } => {
                let now = to.resolve(wheel.now(), wheel.next_deadline());
                expired.clear();
                wheel.advance(now, &mut expired);
                let deadlines: Vec<u64> = expired.iter().map(|e| e.deadline).collect();
                prop_assert!(
                    deadlines.windows(2).all(|w| w[0] <= w[1]),
                    "out of order: {:?}",
                    deadlines
                );
                prop_assert!(
                    deadlines.iter().all(|&d| d <= now),
                    "expired a timer due after {}",
                    now
                );
                let mut got: Vec<(u64, u8, u32)> = expired
                    .iter()
                    .map(|e| (e.deadline, e.id, e.payload))
                    .collect();
                got.sort_unstable();
                prop_assert_eq!(got, model.advance(now));
            }
        }
        check_pending(&wheel, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2500))]

    #[test]
    fn wheel_agrees_with_model(start in start(), ops in prop::collection::vec(op(), 1..120)) {
        run(start, ops)?;
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Sleeping until `next_deadline` and advancing to it always makes
    /// progress: something expires, or `next_deadline` moves later. So an
    /// engine driven by it never spins, and drains the wheel in a bounded
    /// number of wake-ups (at most one per level per timer, plus one).
    #[test]
    fn advancing_to_next_deadline_makes_progress(
        start in start(),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let mut wheel = TimingWheel::new(start);
        let mut expired = Vec::new();
        for op in ops {
            match op {
                Op::Schedule { id, at, payload } => {
                    wheel.schedule(id, at.resolve(wheel.now(), wheel.next_deadline()), payload);
                }
                Op::Cancel { id } => {
                    wheel.cancel(&id);
                }
                Op::Advance { .. } => {}
            }
        }
        let mut wakeups = 0;
        let budget = 7 * wheel.len() + 1;
        while let Some(next) = wheel.next_deadline() {
            wakeups += 1;
            prop_assert!(wakeups <= budget, "{} wake-ups for {} timers", wakeups, budget);
            let now = next.max(wheel.now());
            expired.clear();
            wheel.advance(now, &mut expired);
            if expired.is_empty() {
                let after = wheel.next_deadline();
                prop_assert!(after.is_some_and(|after| after > now), "no progress at {}: {:?}", now, after);
            }
        }
    }
}
