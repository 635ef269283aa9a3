//! Which offset of a partition is safe to commit while many calls run at once:
//! the lowest offset still in flight (or one past the highest seen when none
//! is). A record's output (a retry timer or a dead letter) is released for the
//! same transaction that commits an offset past it, so a crash re-delivers
//! only what was in flight or not yet committed, and no output is written
//! twice for one consumption of a fire record.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug)]
pub struct PartitionProgress<T> {
    /// Tells this assignment's records from those of an earlier one.
    pub epoch: u64,
    in_flight: BTreeSet<i64>,
    /// The lowest record given up on (not delivered): nothing at or after it
    /// is committed, so the next owner delivers it.
    abandoned: Option<i64>,
    next_unseen: i64,
    /// Outputs of finished records not yet committed, by offset.
    outputs: BTreeMap<i64, T>,
    committed: Option<i64>,
}

impl<T> PartitionProgress<T> {
    pub fn new(epoch: u64) -> Self {
        PartitionProgress {
            epoch,
            in_flight: BTreeSet::new(),
            abandoned: None,
            next_unseen: 0,
            outputs: BTreeMap::new(),
            committed: None,
        }
    }

    /// A record was taken for delivery.
    pub fn start(&mut self, offset: i64) {
        self.in_flight.insert(offset);
        self.next_unseen = self.next_unseen.max(offset + 1);
    }

    /// A record finished, with what must be written for it. False if it was
    /// not in flight (finished twice).
    pub fn finish(&mut self, offset: i64, output: Option<T>) -> bool {
        if !self.in_flight.remove(&offset) {
            return false;
        }
        if let Some(o) = output {
            self.outputs.insert(offset, o);
        }
        true
    }

    /// A record was given up on (its partition is handed over before it
    /// was delivered): no longer in flight, and the commit point stays
    /// before it. False if it was not in flight.
    pub fn abandon(&mut self, offset: i64) -> bool {
        if !self.in_flight.remove(&offset) {
            return false;
        }
        self.abandoned = Some(self.abandoned.map_or(offset, |a| a.min(offset)));
        true
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The offset to commit (next to consume) if it moved past the last commit.
    pub fn commit_point(&self) -> Option<i64> {
        if self.next_unseen == 0 {
            return None;
        }
        let point = self
            .in_flight
            .first()
            .copied()
            .unwrap_or(self.next_unseen)
            .min(self.abandoned.unwrap_or(i64::MAX));
        (self.committed < Some(point)).then_some(point)
    }

    /// Takes the outputs of records before `point`, to commit with it.
    pub fn take_outputs_before(&mut self, point: i64) -> Vec<(i64, T)> {
        let later = self.outputs.split_off(&point);
        std::mem::replace(&mut self.outputs, later)
            .into_iter()
            .collect()
    }

    /// A commit failed: its outputs wait for the next one.
    pub fn restore_outputs(&mut self, outputs: Vec<(i64, T)>) {
        self.outputs.extend(outputs);
    }

    /// A commit up to `point` succeeded.
    pub fn committed(&mut self, point: i64) {
        self.committed = self.committed.max(Some(point));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_point_waits_for_the_lowest_in_flight() {
        let mut p = PartitionProgress::<()>::new(0);
        assert_eq!(p.commit_point(), None, "nothing seen");
        for o in 10..13 {
            p.start(o);
        }
        assert_eq!(p.commit_point(), Some(10));
        p.committed(10);
        assert!(p.finish(11, None));
        assert!(p.finish(12, None));
        assert_eq!(p.commit_point(), None, "10 is still in flight");
        assert!(p.finish(10, None));
        assert_eq!(
            p.commit_point(),
            Some(13),
            "all done: commit past the highest"
        );
        assert!(!p.finish(10, None), "finishing twice is ignored");
    }

    #[test]
    fn an_abandoned_record_holds_the_commit_point_back() {
        let mut p = PartitionProgress::<()>::new(0);
        for o in 0..4 {
            p.start(o);
        }
        assert!(p.finish(0, None));
        assert!(p.abandon(1));
        assert!(p.finish(2, None));
        assert!(p.finish(3, None));
        assert_eq!(p.in_flight(), 0, "nothing waits any more");
        assert_eq!(p.commit_point(), Some(1), "but 1 was not delivered");
    }

    #[test]
    fn outputs_leave_only_with_the_offset_past_them() {
        let mut p = PartitionProgress::new(0);
        for o in 0..3 {
            p.start(o);
        }
        p.finish(1, Some("retry-1"));
        p.finish(2, Some("dead-2"));
        assert_eq!(p.commit_point(), Some(0));
        assert!(p.take_outputs_before(0).is_empty(), "0 still in flight");
        p.finish(0, None);
        let point = p.commit_point().unwrap();
        assert_eq!(point, 3);
        let outputs = p.take_outputs_before(point);
        assert_eq!(outputs, vec![(1, "retry-1"), (2, "dead-2")]);
        // The commit failed: the outputs go with the next attempt.
        p.restore_outputs(outputs);
        assert_eq!(p.commit_point(), Some(3));
        assert_eq!(p.take_outputs_before(3).len(), 2);
        p.committed(3);
        assert_eq!(p.commit_point(), None);
    }
}
