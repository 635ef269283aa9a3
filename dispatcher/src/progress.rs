//! Which offset of a partition is safe to commit while many calls run at once:
//! the lowest offset still in flight (or one past the highest seen when none
//! is). A crash then re-delivers only what was in flight.

use std::collections::BTreeSet;
use std::sync::Mutex;

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;

#[derive(Debug, Default)]
pub struct PartitionProgress {
    in_flight: BTreeSet<i64>,
    next_unseen: i64,
}

impl PartitionProgress {
    /// A record was taken for delivery.
    pub fn start(&mut self, offset: i64) {
        self.in_flight.insert(offset);
        self.next_unseen = self.next_unseen.max(offset + 1);
    }

    /// A record finished. Returns the new commit point (next offset to consume)
    /// if finishing it moved the point.
    pub fn finish(&mut self, offset: i64) -> Option<i64> {
        let was_lowest = self.in_flight.first() == Some(&offset);
        if !self.in_flight.remove(&offset) || !was_lowest {
            return None;
        }
        Some(self.in_flight.first().copied().unwrap_or(self.next_unseen))
    }
}

/// Consumer context that remembers revoked partitions, so their progress is
/// forgotten (a later owner resumes from the committed offset).
#[derive(Default)]
pub struct RevocationContext {
    revoked: Mutex<Vec<i32>>,
}

impl RevocationContext {
    pub fn take_revoked(&self) -> Vec<i32> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ClientContext for RevocationContext {}

impl ConsumerContext for RevocationContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
            revoked.extend(tpl.elements().iter().map(|e| e.partition()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_point_waits_for_the_lowest_in_flight() {
        let mut p = PartitionProgress::default();
        for o in 10..13 {
            p.start(o);
        }
        assert_eq!(p.finish(11), None, "10 is still in flight");
        assert_eq!(p.finish(12), None);
        assert_eq!(p.finish(10), Some(13), "all done: commit past the highest");
    }

    #[test]
    fn commit_point_stops_at_next_in_flight() {
        let mut p = PartitionProgress::default();
        p.start(0);
        p.start(1);
        assert_eq!(p.finish(0), Some(1));
        assert_eq!(p.finish(1), Some(2));
        assert_eq!(p.finish(1), None, "finishing twice is ignored");
    }
}
