//! The checker's audit of schedules ([`crate::audit`] feeds it the records
//! it reads). From the topics alone:
//!
//! * each schedule's latest state in the changelog says how many occurrences
//!   it fired: exactly that many distinct occurrences of its series must be
//!   in `chime.fires` (the fire and the state commit in one transaction, so a
//!   lost or repeated occurrence shows here) — a *miscount*;
//! * every occurrence its recurrence has between the state's audit start and
//!   its next occurrence must have fired, unless the state records it skipped
//!   (catch-up policy, pause) — else a *missed occurrence*;
//! * no occurrence fired more than a second after the schedule's cancel was
//!   written (fired after cancel), and an active schedule's next occurrence is
//!   not overdue in the changelog.
//!
//! Duplicates and early fires of occurrences are caught by the checker's
//! (id, due time) rules, occurrence ids being `<schedule>@<due>`.

use std::collections::{BTreeMap, HashMap};

use chime_wire::changelog::ScheduleRecord;
use chime_wire::schedule::occurrence_id;
use chime_wire::{RecordHeaders, ScheduleState, TimerCommand, TimerSpec};

/// Most occurrences of one schedule walked for missed ones (the first ones
/// from its audit start).
const MAX_WALK: usize = 200_000;

#[derive(Debug, Default)]
pub struct ScheduleAudit {
    /// Schedule id → when a cancel was written after its latest `recurring`.
    series: HashMap<String, Option<u64>>,
    /// Schedule id → occurrence due time → when each fire record of it not
    /// revoked was emitted.
    occurrences: HashMap<String, BTreeMap<u64, Vec<u64>>>,
    /// Schedule id → its latest state in the changelog.
    states: HashMap<String, ScheduleState>,
}

/// What the audit found.
#[derive(Debug, Default)]
pub struct Findings {
    pub schedules: usize,
    pub miscounts: Vec<String>,
    pub missed: Vec<String>,
    pub fired_after_cancel: Vec<String>,
    pub overdue: Vec<String>,
}

impl ScheduleAudit {
    /// A command on the timers topic, written at `at_ms`.
    pub fn command(&mut self, command: &TimerCommand, at_ms: u64) {
        match command {
            TimerCommand::Recurring(spec) => {
                self.series.insert(spec.id.clone(), None);
            }
            TimerCommand::Schedule(spec) => {
                self.series.remove(&spec.id);
            }
            TimerCommand::Cancel { id } => {
                if let Some(cancelled) = self.series.get_mut(id) {
                    cancelled.get_or_insert(at_ms);
                }
            }
            _ => {}
        }
    }

    /// A fire record; occurrences (first attempts) are remembered.
    pub fn fire(&mut self, spec: &TimerSpec, fired_at_ms: u64) {
        let Some(schedule) = &spec.schedule_id else {
            return;
        };
        if spec.attempt != 1 {
            return; // a retry of an occurrence, not another occurrence
        }
        self.occurrences
            .entry(schedule.clone())
            .or_default()
            .entry(spec.fire_at_ms)
            .or_default()
            .push(fired_at_ms);
    }

    /// A revoke record: an occurrence emitted ahead was taken back.
    pub fn revoke(&mut self, id: &str, fire_at_ms: u64) {
        let Some(schedule) = id.strip_suffix(&format!("@{fire_at_ms}")) else {
            return;
        };
        if let Some(times) = self
            .occurrences
            .get_mut(schedule)
            .and_then(|o| o.get_mut(&fire_at_ms))
        {
            times.pop();
        }
    }

    /// A changelog record for `id`: a schedule's is taken, and true
    /// returned; a timer's replaces a schedule with its id.
    pub fn changelog(
        &mut self,
        id: &str,
        value: Option<&[u8]>,
        headers: &(impl RecordHeaders + ?Sized),
    ) -> bool {
        match ScheduleRecord::decode(value, headers) {
            Some(ScheduleRecord::State { state, .. }) => {
                match ScheduleState::decode(state) {
                    Ok(state) => self.states.insert(id.to_string(), state),
                    Err(_) => self.states.remove(id),
                };
                true
            }
            Some(ScheduleRecord::Ended(_)) => {
                self.states.remove(id);
                true
            }
            None => {
                self.states.remove(id);
                false
            }
        }
    }

    /// The findings; schedules whose next occurrence is before `due_before`
    /// are overdue.
    pub fn finish(&self, due_before: u64) -> Findings {
        let mut found = Findings::default();
        let none = BTreeMap::new();
        for (id, state) in &self.states {
            found.schedules += 1;
            let fired = self.occurrences.get(id).unwrap_or(&none);
            // Occurrences the state accounts for: before its next one, or up
            // to its last fired when there is none.
            let upper = match state.next_at_ms {
                Some(next) => next,
                None => state.recent.last().map_or(0, |o| o.due_ms + 1),
            };
            let in_series = fired
                .range(state.created_at_ms..upper.max(state.created_at_ms))
                .filter(|(_, times)| !times.is_empty())
                .count();
            if in_series as u64 != state.fired {
                found.miscounts.push(id.clone());
            }
            let anchor = state.spec.start_at_ms.unwrap_or(state.created_at_ms);
            if let Ok(recurrence) = state.spec.recurrence(anchor) {
                let mut at = recurrence.at_or_after(state.audit_from_ms);
                let mut walked = 0;
                while let Some(due) = at.filter(|&d| d < upper) {
                    walked += 1;
                    if walked > MAX_WALK {
                        break;
                    }
                    let skipped = state
                        .skips
                        .iter()
                        .any(|r| r.from_ms <= due && due <= r.to_ms);
                    if !skipped && fired.get(&due).is_none_or(Vec::is_empty) {
                        found.missed.push(occurrence_id(id, due));
                    }
                    at = recurrence.after(due);
                }
            }
            if state.is_active() && state.next_at_ms.is_some_and(|n| n < due_before) {
                found.overdue.push(id.clone());
            }
        }
        for (id, cancelled) in &self.series {
            let Some(cancelled_at) = cancelled else {
                continue;
            };
            let late = self.occurrences.get(id).is_some_and(|o| {
                o.values()
                    .flatten()
                    .any(|&fired_at| fired_at > cancelled_at + 1_000)
            });
            if late {
                found.fired_after_cancel.push(id.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chime_wire::schedule::{occurrence, ScheduleSpec};

    fn spec() -> ScheduleSpec {
        serde_json::from_value(
            serde_json::json!({"id": "s", "every_ms": 1000, "start_at_ms": 1000,
            "callback": {"url": "http://127.0.0.1:9/"}}),
        )
        .unwrap()
    }

    fn state(fired: u64, next: u64) -> ScheduleState {
        ScheduleState {
            spec: spec(),
            created_at_ms: 500,
            next_at_ms: Some(next),
            fired,
            skipped: 0,
            paused_at_ms: None,
            recent: Vec::new(),
            skips: Vec::new(),
            audit_from_ms: 500,
            ended: None,
        }
    }

    fn audit_of(state: ScheduleState, dues: &[u64]) -> Findings {
        let mut a = ScheduleAudit::default();
        a.command(&TimerCommand::Recurring(spec()), 400);
        for &d in dues {
            a.fire(&occurrence(&spec(), d), d);
        }
        let record = ScheduleRecord::State {
            next_at_ms: state.next_at_ms,
            state: &state.encode(),
        };
        assert!(a.changelog("s", record.value(), &record.headers()));
        a.finish(0)
    }

    #[test]
    fn a_clean_series_passes() {
        let f = audit_of(state(3, 4000), &[1000, 2000, 3000, 4000]);
        assert_eq!(f.schedules, 1);
        assert!(f.miscounts.is_empty() && f.missed.is_empty(), "{f:?}");
    }

    #[test]
    fn a_lost_or_repeated_occurrence_is_found() {
        let f = audit_of(state(3, 4000), &[1000, 3000]);
        assert_eq!(f.miscounts, ["s"]);
        assert_eq!(f.missed, ["s@2000"]);
        let f = audit_of(state(2, 4000), &[1000, 2000, 3000]);
        assert_eq!(f.miscounts, ["s"], "fired beyond what the state says");
    }

    #[test]
    fn skipped_ranges_are_not_missed() {
        let mut s = state(2, 5000);
        s.record_skipped(2000, 3000, 2);
        let f = audit_of(s, &[1000, 4000]);
        assert!(f.miscounts.is_empty() && f.missed.is_empty(), "{f:?}");
    }

    #[test]
    fn a_revoked_occurrence_does_not_count_and_a_late_one_after_cancel_does() {
        let mut a = ScheduleAudit::default();
        a.command(&TimerCommand::Recurring(spec()), 400);
        a.fire(&occurrence(&spec(), 1000), 1000);
        a.fire(&occurrence(&spec(), 2000), 1900);
        a.revoke("s@2000", 2000);
        a.command(&TimerCommand::Cancel { id: "s".into() }, 1950);
        let s = state(1, 2000);
        let record = ScheduleRecord::State {
            next_at_ms: s.next_at_ms,
            state: &s.encode(),
        };
        a.changelog("s", record.value(), &record.headers());
        let f = a.finish(0);
        assert!(
            f.miscounts.is_empty() && f.missed.is_empty() && f.fired_after_cancel.is_empty(),
            "{f:?}"
        );
        a.fire(&occurrence(&spec(), 5000), 5000);
        assert_eq!(a.finish(0).fired_after_cancel, ["s"]);
    }
}
