//! Pages of a partition's pending timers (in (due time, id) order) and of
//! its schedules (in id order), after a position, for `GET /v1/timers` and
//! `GET /v1/schedules`. Each page is an O(n) selection over the partition:
//! nothing is kept sorted for it.

use std::collections::BinaryHeap;

use chime_wire::{ListQuery, ListedItem};

use crate::partition::PartitionState;

impl PartitionState {
    /// Up to `query.limit` pending timers after (`after_due_ms`,
    /// `after_id`), and whether more follow.
    pub fn list_pending(&self, query: &ListQuery) -> (Vec<ListedItem>, bool) {
        let after = query
            .after_due_ms
            .map(|due| (due, query.after_id.clone().unwrap_or_default().into_bytes()));
        let candidates = self
            .wheel
            .iter()
            .map(|(timer, due, _)| (due, timer.id()))
            .filter(|(_, id)| !self.schedules.contains_key(*id))
            .filter(|(due, id)| {
                after
                    .as_ref()
                    .is_none_or(|(a_due, a_id)| (*due, *id) > (*a_due, a_id.as_slice()))
            });
        let (page, more) = smallest(candidates, query.limit);
        let items = page
            .into_iter()
            .map(|(due, id)| ListedItem {
                id: String::from_utf8_lossy(id).into_owned(),
                due_ms: Some(due),
                record: self
                    .wheel
                    .get_entry(id)
                    .map(|(timer, _, _)| String::from_utf8_lossy(timer.command()).into_owned())
                    .unwrap_or_default(),
            })
            .collect();
        (items, more)
    }

    /// Up to `query.limit` schedules whose id follows `after_id`, and
    /// whether more follow.
    pub fn list_schedules(&self, query: &ListQuery) -> (Vec<ListedItem>, bool) {
        let after = query.after_id.as_deref().map(str::as_bytes);
        let candidates = self
            .schedules
            .keys()
            .filter(|id| after.is_none_or(|a| id.as_ref() > a));
        let (page, more) = smallest(candidates, query.limit);
        let items = page
            .into_iter()
            .filter_map(|id| {
                let schedule = self.schedules.get(id)?;
                Some(ListedItem {
                    id: String::from_utf8_lossy(id).into_owned(),
                    due_ms: schedule.next_due(),
                    record: String::from_utf8_lossy(&schedule.state.encode()).into_owned(),
                })
            })
            .collect();
        (items, more)
    }
}

/// The `limit` smallest of `items`, in order, and whether there were more.
fn smallest<T: Ord>(items: impl Iterator<Item = T>, limit: usize) -> (Vec<T>, bool) {
    // A max-heap of the limit + 1 smallest seen: its top is the largest.
    let keep = limit.saturating_add(1);
    let mut heap: BinaryHeap<T> = BinaryHeap::with_capacity(keep.min(1024));
    for item in items {
        if heap.len() < keep {
            heap.push(item);
        } else if heap.peek().is_some_and(|top| item < *top) {
            heap.pop();
            heap.push(item);
        }
    }
    let mut sorted = heap.into_sorted_vec();
    let more = sorted.len() > limit;
    sorted.truncate(limit);
    (sorted, more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smallest_keeps_order_and_says_if_more() {
        let (page, more) = smallest([5, 1, 4, 2, 3].into_iter(), 2);
        assert_eq!((page, more), (vec![1, 2], true));
        let (page, more) = smallest([3, 1].into_iter(), 2);
        assert_eq!((page, more), (vec![1, 3], false));
        let (page, more) = smallest(std::iter::empty::<u8>(), 0);
        assert_eq!((page, more), (vec![], false));
        let (page, more) = smallest([1].into_iter(), 0);
        assert_eq!((page, more), (vec![], true));
    }
}
