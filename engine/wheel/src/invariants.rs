//! Test-only: a checker for every structural invariant the wheel relies on,
//! run after each operation of random operation sequences. The public-API
//! model test lives in `tests/model.rs`; this one looks inside.

use std::hash::Hash;

use proptest::prelude::*;

use crate::arena::NIL;
use crate::level::{level_for, SLOTS};
use crate::list::{TimerList, STRIPES};
use crate::overflow::epoch_of;
use crate::TimingWheel;

impl<K: Hash + Eq, V> TimingWheel<K, V> {
    pub(crate) fn assert_invariants(&self) {
        let elapsed = self.elapsed;
        let mut linked = self.check_list(&self.due, |deadline| deadline < elapsed);
        for (level_no, level) in self.levels.iter().enumerate() {
            for slot in 0..SLOTS {
                let list = level.slot(slot);
                let bit_set = (level.occupied() >> slot) & 1 == 1;
                assert_eq!(
                    bit_set,
                    !list.is_empty(),
                    "level {level_no} slot {slot} bitmap"
                );
                linked += self.check_list(list, |deadline| {
                    deadline >= elapsed
                        && level_for(elapsed, deadline) == level_no
                        && level.slot_for(deadline) == slot
                });
            }
        }
        for (epoch, list) in self.overflow.lists() {
            assert!(!list.is_empty(), "empty overflow list for epoch {epoch}");
            assert!(
                epoch > epoch_of(elapsed),
                "overflow epoch {epoch} not in the future"
            );
            linked += self.check_list(list, |deadline| epoch_of(deadline) == epoch);
        }
        assert_eq!(
            linked,
            self.arena.len(),
            "every pending timer is in one list"
        );
        assert!(
            self.index.len() >= self.arena.len(),
            "index covers the arena"
        );
        for (idx, key, _, _) in self.arena.iter() {
            let found = self.index.find(&self.arena, self.index.hash(key), key);
            assert_eq!(found, Some(idx), "index finds arena slot {idx}");
        }
    }

    /// Checks links, stripes, membership and the min bound of one list;
    /// returns its length.
    fn check_list(&self, list: &TimerList, belongs: impl Fn(u64) -> bool) -> usize {
        let (mut count, mut min) = (0, u64::MAX);
        for (stripe, &head) in list.heads().iter().enumerate() {
            let (mut prev, mut idx) = (NIL, head);
            while idx != NIL {
                let entry = self.arena.entry(idx);
                assert!(entry.item.is_some(), "vacant slot {idx} linked");
                assert_eq!(
                    idx as usize % STRIPES,
                    stripe,
                    "entry {idx} in the wrong stripe"
                );
                assert_eq!(entry.prev, prev, "back link of {idx}");
                assert!(
                    belongs(entry.deadline),
                    "deadline {} misplaced",
                    entry.deadline
                );
                min = min.min(entry.deadline);
                count += 1;
                prev = idx;
                idx = entry.next;
            }
        }
        assert_eq!(count, list.len(), "list length");
        let mut walk = list.walk();
        let mut walked = 0;
        while walk.next(&self.arena).is_some() {
            walked += 1;
        }
        assert_eq!(walked, count, "a walk visits every entry once");
        if count > 0 {
            assert!(list.min_deadline() <= min, "min bound above a deadline");
            if list.min_is_exact() {
                assert_eq!(list.min_deadline(), min, "exact min");
            }
        }
        count
    }
}

#[derive(Clone, Debug)]
enum Op {
    Schedule(u16, u64),
    Cancel(u16),
    Advance(u64),
}

fn deadline_near(base: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        (0u64..300).prop_map(move |d| base.saturating_add(d)),
        (0u64..1 << 20).prop_map(move |d| base.saturating_add(d)),
        (0u32..64).prop_map(|bit| 1u64 << bit),
        (0u64..1 << 40).prop_map(move |d| base.saturating_add(d)),
        any::<u64>(),
        (0u64..100).prop_map(|d| u64::MAX - d),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u16..48, deadline_near(1_000)).prop_map(|(id, d)| Op::Schedule(id, d)),
        2 => (0u16..48).prop_map(Op::Cancel),
        2 => prop_oneof![0u64..100, 0u64..100_000, 0u64..1 << 40, any::<u64>()].prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn invariants_hold_after_every_operation(ops in prop::collection::vec(op(), 1..150)) {
        let mut wheel = TimingWheel::new(1_000);
        let mut expired = Vec::new();
        for op in ops {
            match op {
                Op::Schedule(id, deadline) => {
                    wheel.schedule(id, deadline, ());
                }
                Op::Cancel(id) => {
                    wheel.cancel(&id);
                }
                Op::Advance(step) => {
                    wheel.advance(wheel.now().saturating_add(step), &mut expired);
                }
            }
            wheel.assert_invariants();
        }
    }
}

#[test]
fn compaction_keeps_every_invariant() {
    let mut wheel = TimingWheel::new(0);
    for id in 0..10_000u64 {
        // Spread over all levels and the overflow.
        wheel.schedule(id, id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (id % 40), id);
    }
    let capacity_before = wheel.capacity();
    for id in (0..10_000u64).filter(|id| id % 10 != 0) {
        assert_eq!(wheel.cancel(&id).map(|(_, payload)| payload), Some(id));
    }
    assert!(wheel.capacity() < capacity_before / 2);
    wheel.assert_invariants();
    for id in (0..10_000u64).step_by(10) {
        assert_eq!(wheel.get(&id).map(|(_, &payload)| payload), Some(id));
    }
}
