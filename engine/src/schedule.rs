//! Schedules in an engine partition. A schedule lives in the partition's
//! wheel like a timer, due at its next occurrence (its wheel payload is
//! empty; its state is in [`Schedules`]). When it comes due, the engine emits
//! the occurrence's fire record *and* the schedule's new state (the next
//! occurrence) as outputs of the same partition, so one transaction carries
//! both: after a failover the new owner reads the state from the changelog
//! and neither skips nor repeats an occurrence.
//!
//! * Paused: out of the wheel, its state kept (and written) as paused.
//! * Ended (cancelled, or no occurrence left): kept, and in the wheel at its
//!   end plus the finished-timer retention, when it is forgotten with a
//!   changelog tombstone.
//! * Behind (its oldest unfired occurrence is overdue, as after a takeover):
//!   [`Schedule::plan`] applies the schedule's catch-up policy.

use bytes::Bytes;

use chime_wire::changelog::ScheduleEnd;
use chime_wire::recurrence::Recurrence;
use chime_wire::schedule::{
    occurrence, occurrence_id, CatchUpPolicy, Ended, SkipRange, MAX_CATCH_UP,
};
use chime_wire::{FieldError, Outcome, ScheduleSpec, ScheduleState, TimerCommand};

use crate::output::Output;
use crate::partition::PartitionState;
use crate::record::TimerRecord;
use crate::status::Finish;

/// Skipped occurrences of a cron schedule are counted one by one up to this
/// many (a very long outage or pause of a very frequent one is counted as
/// this many), so the work a schedule costs at once stays small.
const COUNT_LIMIT: u64 = 10_000;
/// Most occurrences one schedule emits ahead (within the lead) at once; the
/// rest come with the next transaction.
const MAX_AHEAD: usize = MAX_CATCH_UP;

/// The schedules of one partition, by id.
pub type Schedules = hashbrown::HashMap<Bytes, Schedule>;

/// One schedule: its state as written to the changelog, and its parsed
/// recurrence.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub state: ScheduleState,
    pub recurrence: Recurrence,
}

/// What a schedule that came due does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Occurrences to fire, oldest first.
    pub fire: Vec<u64>,
    /// Occurrences skipped by the catch-up policy (one range).
    pub skipped: Option<SkipRange>,
    /// The next occurrence after these.
    pub next: Option<u64>,
}

impl Schedule {
    /// A schedule from its changelog state.
    pub fn from_state(state: ScheduleState) -> Result<Schedule, FieldError> {
        let anchor = state.spec.start_at_ms.unwrap_or(state.created_at_ms);
        let recurrence = state.spec.recurrence(anchor)?;
        Ok(Schedule { state, recurrence })
    }

    /// Where it belongs in the wheel: its next occurrence while active, when
    /// to forget it once ended; nowhere while paused.
    pub fn wheel_deadline(&self, retention_ms: u64) -> Option<u64> {
        if let Some(ended) = self.state.ended {
            return Some(ended.at_ms.saturating_add(retention_ms));
        }
        if self.state.is_paused() {
            return None;
        }
        self.state.next_at_ms
    }

    /// The next occurrence due, while active.
    pub fn next_due(&self) -> Option<u64> {
        self.state
            .is_active()
            .then_some(self.state.next_at_ms)
            .flatten()
    }

    fn output(&self, id: &Bytes) -> Output {
        Output::Schedule {
            id: id.clone(),
            next_at_ms: self.next_due(),
            state: Bytes::from(self.state.encode()),
        }
    }

    fn in_bounds(&self, at: Option<u64>) -> Option<u64> {
        at.filter(|&a| self.state.spec.end_at_ms.is_none_or(|end| a <= end))
    }

    /// The first occurrence after `t` that the schedule's end allows.
    fn next_after(&self, t: u64) -> Option<u64> {
        self.in_bounds(self.recurrence.after(t))
    }

    fn at_or_after(&self, t: u64) -> Option<u64> {
        self.in_bounds(self.recurrence.at_or_after(t))
    }

    /// Occurrences in `[from, to]` (`from` being one): how many (counted up
    /// to [`COUNT_LIMIT`]) and the last.
    fn count_between(&self, from: u64, to: u64) -> (u64, u64) {
        let last = self.recurrence.at_or_before(to).unwrap_or(from).max(from);
        if let Recurrence::Every { every_ms, .. } = self.recurrence {
            return ((last - from) / every_ms + 1, last);
        }
        let mut count = 1;
        let mut at = from;
        while at < last && count < COUNT_LIMIT {
            match self.recurrence.after(at) {
                Some(next) if next <= last => {
                    count += 1;
                    at = next;
                }
                _ => break,
            }
        }
        (count, last)
    }

    /// What to do now that occurrence `due` is due within `horizon` (now plus
    /// the engine's lead). Occurrences at most `now` are overdue: when the
    /// oldest is at most the catch-up window late they all fire (a takeover
    /// or a short outage loses nothing); past it the policy decides —
    /// `latest` fires the most recent, `all` every one, `none` none. At most
    /// [`MAX_CATCH_UP`] overdue occurrences fire (the most recent).
    pub fn plan(&self, due: u64, now: u64, horizon: u64) -> Plan {
        let mut fire = Vec::new();
        let mut skipped: Option<SkipRange> = None;
        let mut next = Some(due);
        if due <= now {
            let mut overdue = Vec::new();
            let mut at = Some(due);
            while let Some(a) = at.filter(|&a| a <= now) {
                if overdue.len() == MAX_CATCH_UP {
                    break;
                }
                overdue.push(a);
                at = self.next_after(a);
            }
            let mut head: Option<SkipRange> = None;
            if at.is_some_and(|a| a <= now) {
                // More than can fire: keep the most recent.
                let newest = self
                    .in_bounds(self.recurrence.at_or_before(now))
                    .or_else(|| {
                        let end = self.state.spec.end_at_ms.unwrap_or(now).min(now);
                        self.recurrence.at_or_before(end)
                    })
                    .unwrap_or(due)
                    .max(due);
                let mut recent = vec![newest];
                while recent.len() < MAX_CATCH_UP {
                    match self.recurrence.before(recent[recent.len() - 1]) {
                        Some(b) if b >= due => recent.push(b),
                        _ => break,
                    }
                }
                recent.reverse();
                if let Some(head_last) = self.recurrence.before(recent[0]).filter(|&b| b >= due) {
                    let (count, last) = self.count_between(due, head_last);
                    head = Some(SkipRange {
                        from_ms: due,
                        to_ms: last,
                        count,
                    });
                }
                at = self.next_after(newest);
                overdue = recent;
            }
            let catch_up = self.state.spec.catch_up;
            let keep = if now - due <= catch_up.window_ms {
                overdue.len()
            } else {
                match catch_up.policy {
                    CatchUpPolicy::All => overdue.len(),
                    CatchUpPolicy::Latest => 1.min(overdue.len()),
                    CatchUpPolicy::Skip => 0,
                }
            };
            let dropped = overdue.len() - keep;
            skipped = head;
            if dropped > 0 {
                let range = SkipRange {
                    from_ms: overdue[0],
                    to_ms: overdue[dropped - 1],
                    count: dropped as u64,
                };
                skipped = Some(match skipped {
                    Some(h) => SkipRange {
                        from_ms: h.from_ms,
                        to_ms: range.to_ms,
                        count: h.count + range.count,
                    },
                    None => range,
                });
            }
            fire.extend_from_slice(&overdue[dropped..]);
            next = at;
        }
        while let Some(a) = next.filter(|&a| a <= horizon) {
            if fire.len() >= MAX_CATCH_UP + MAX_AHEAD {
                break;
            }
            fire.push(a);
            next = self.next_after(a);
        }
        Plan {
            fire,
            skipped,
            next,
        }
    }
}

impl PartitionState {
    /// Writes schedule `id`'s state and puts it where it belongs in the wheel.
    fn save_schedule(&mut self, id: &Bytes) {
        let retention = self.finished.retention_ms();
        let Some(schedule) = self.schedules.get(id) else {
            return;
        };
        self.outputs.push(schedule.output(id));
        match schedule.wheel_deadline(retention) {
            Some(at) => {
                self.wheel.schedule(TimerRecord::new(id, b""), at, ());
            }
            None => {
                self.wheel.cancel(&id[..]);
            }
        }
    }

    /// Takes back the occurrences of schedule `id` emitted ahead of their
    /// due time (the lead) and not yet due: they did not happen.
    fn revoke_ahead(&mut self, id: &Bytes, now: u64) {
        let Some(schedule) = self.schedules.get_mut(id) else {
            return;
        };
        while let Some(last) = schedule.state.recent.last() {
            if last.due_ms <= now {
                break;
            }
            let due = last.due_ms;
            schedule.state.recent.pop();
            schedule.state.fired = schedule.state.fired.saturating_sub(1);
            schedule.state.next_at_ms = Some(schedule.state.next_at_ms.map_or(due, |n| n.min(due)));
            self.outputs.push(Output::Revoke {
                id: Bytes::from(occurrence_id(&schedule.state.spec.id, due)),
                fire_at_ms: due,
            });
        }
    }

    /// If `id` is a schedule, it gives way to a new timer or schedule with
    /// its id: forgotten at once (the newcomer's changelog record replaces
    /// its state under the same key). True if it was one.
    pub(crate) fn drop_schedule(&mut self, id: &Bytes, now: u64) -> bool {
        if !self.schedules.contains_key(id) {
            return false;
        }
        self.revoke_ahead(id, now);
        self.schedules.remove(id);
        self.wheel.cancel(&id[..]);
        true
    }

    /// A `recurring` command: a schedule replacing whatever had its id. Its
    /// first occurrence is the first at or after its start and the command's
    /// time (`created`, the record's timestamp): nothing before the command
    /// is owed, but what came due since it was written is (the catch-up
    /// policy decides).
    pub(crate) fn apply_recurring(
        &mut self,
        id: Bytes,
        spec: ScheduleSpec,
        created: u64,
        now: u64,
    ) {
        if !self.drop_schedule(&id, now) {
            // A pending timer with this id, perhaps fired ahead.
            self.revoke_early_fire(&id, now);
            self.wheel.cancel(&id[..]);
        }
        self.finished.forget(&id);
        let mut spec = spec;
        if let Some(every) = spec.every_ms {
            spec.start_at_ms = Some(spec.start_at_ms.unwrap_or(created.saturating_add(every)));
        }
        let begin = spec.start_at_ms.unwrap_or(0).max(created);
        let state = ScheduleState {
            spec,
            created_at_ms: created,
            next_at_ms: None,
            fired: 0,
            skipped: 0,
            paused_at_ms: None,
            recent: Vec::new(),
            skips: Vec::new(),
            audit_from_ms: begin,
            ended: None,
        };
        let mut schedule = match Schedule::from_state(state) {
            Ok(s) => s,
            Err(e) => {
                // Decoding checked the spec; this cannot happen.
                tracing::error!(partition = self.partition, error = %e, "schedule refused");
                return;
            }
        };
        schedule.state.next_at_ms = schedule.at_or_after(begin);
        if schedule.state.next_at_ms.is_none() {
            schedule.state.ended = Some(Ended {
                cancelled: false,
                at_ms: now,
            });
        }
        self.schedules.insert(id.clone(), schedule);
        self.save_schedule(&id);
    }

    /// Pauses schedule `id` (a no-op for anything else).
    pub(crate) fn pause_schedule(&mut self, id: Bytes, now: u64) {
        if !self.schedules.get(&id).is_some_and(|s| s.state.is_active()) {
            return;
        }
        self.revoke_ahead(&id, now);
        if let Some(schedule) = self.schedules.get_mut(&id) {
            schedule.state.paused_at_ms = Some(now);
        }
        self.save_schedule(&id);
    }

    /// Resumes paused schedule `id` from its first occurrence at or after
    /// now; those due while it was paused are skipped.
    pub(crate) fn resume_schedule(&mut self, id: Bytes, now: u64) {
        let Some(schedule) = self.schedules.get_mut(&id) else {
            return;
        };
        if schedule.state.ended.is_some() || !schedule.state.is_paused() {
            return;
        }
        schedule.state.paused_at_ms = None;
        if let Some(next) = schedule.state.next_at_ms.filter(|&n| n < now) {
            let (count, last) = schedule.count_between(next, now - 1);
            schedule.state.record_skipped(next, last, count);
            schedule.state.next_at_ms = schedule.at_or_after(now);
        }
        if schedule.state.next_at_ms.is_none() {
            schedule.state.ended = Some(Ended {
                cancelled: false,
                at_ms: now,
            });
        }
        self.save_schedule(&id);
    }

    /// Cancels schedule `id`: it ends, and is remembered as cancelled for
    /// the retention. False if `id` is not a schedule.
    pub(crate) fn cancel_schedule(&mut self, id: &Bytes, now: u64) -> bool {
        match self.schedules.get(id) {
            None => return false,
            Some(s) if s.state.ended.is_some() => return true,
            Some(_) => {}
        }
        self.revoke_ahead(id, now);
        if let Some(schedule) = self.schedules.get_mut(id) {
            schedule.state.ended = Some(Ended {
                cancelled: true,
                at_ms: now,
            });
        }
        self.save_schedule(id);
        true
    }

    /// The dispatcher said what came of a firing: a one-shot timer's goes
    /// to its finished-timer memory and its tombstone (if the timer is still
    /// the one that fired at that time), an occurrence's to its schedule's
    /// recent occurrences.
    pub(crate) fn apply_outcome(&mut self, id: Bytes, outcome: Outcome) {
        let of_occurrence = outcome
            .timer_id
            .as_deref()
            .is_some_and(|t| t.as_bytes() != &id[..]);
        if of_occurrence {
            let Some(schedule) = self.schedules.get_mut(&id) else {
                return;
            };
            if schedule
                .state
                .record_delivery(outcome.firing_at_ms(), outcome.delivery)
            {
                self.save_schedule(&id);
            }
            return;
        }
        let Some(Finish::Fired {
            fire_at_ms,
            fired_at_ms,
        }) = self.finished.get(&id)
        else {
            return; // pending again, cancelled, forgotten, or never fired here
        };
        if fire_at_ms != outcome.fire_at_ms {
            return; // an earlier firing's, reported late
        }
        self.finished.set_delivery(&id, &outcome.delivery);
        self.outputs.push(Output::Delivered {
            id,
            fire_at_ms,
            fired_at_ms,
            delivery: outcome.delivery,
        });
    }

    /// Schedule `id` came out of the wheel at `now` (its next occurrence is
    /// due within the lead, or its retention after it ended is over): fire
    /// what is due, and write its new state. Returns occurrences fired.
    pub(crate) fn fire_schedule(&mut self, id: Bytes, now: u64, lead: u64) -> usize {
        let Some(schedule) = self.schedules.get_mut(&id) else {
            return 0;
        };
        if let Some(ended) = schedule.state.ended {
            let end = ScheduleEnd {
                cancelled: ended.cancelled,
                fired: schedule.state.fired,
            };
            self.schedules.remove(&id);
            self.outputs.push(Output::ScheduleGone { id, end });
            return 0;
        }
        let Some(due) = schedule.next_due() else {
            return 0; // paused: not in the wheel
        };
        let plan = schedule.plan(due, now, now.saturating_add(lead));
        let remaining = schedule
            .state
            .spec
            .max_count
            .map_or(u64::MAX, |max| max.saturating_sub(schedule.state.fired));
        let count_reached = plan.fire.len() as u64 >= remaining;
        let fire = &plan.fire[..plan.fire.len().min(remaining as usize)];
        let lateness = metrics::histogram!("chime_engine_fire_lateness_seconds");
        for &at in fire {
            lateness.record(now.saturating_sub(at) as f64 / 1000.0);
            let timer = occurrence(&schedule.state.spec, at);
            self.outputs.push(Output::Occurrence {
                id: Bytes::from(timer.id.clone().into_bytes()),
                fire_at_ms: at,
                emitted_at_ms: now,
                command: Bytes::from(TimerCommand::Schedule(timer).encode()),
            });
            // An occurrence emitted ahead takes effect at its due time.
            schedule.state.record_fired(at, now.max(at));
        }
        if let Some(skip) = plan.skipped {
            tracing::info!(partition = self.partition, schedule = %schedule.state.spec.id,
                skipped = skip.count, policy = ?schedule.state.spec.catch_up.policy,
                "schedule fell behind; occurrences skipped");
            schedule
                .state
                .record_skipped(skip.from_ms, skip.to_ms, skip.count);
        }
        schedule.state.next_at_ms = if count_reached { None } else { plan.next };
        if schedule.state.next_at_ms.is_none() {
            schedule.state.ended = Some(Ended {
                cancelled: false,
                at_ms: now,
            });
        }
        let fired = fire.len();
        self.save_schedule(&id);
        fired
    }
}

#[cfg(test)]
mod tests;
