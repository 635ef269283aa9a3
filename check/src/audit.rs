//! The audit itself, fed the records of the three topics in log order (the
//! timers topic first) and judged at the end: no Kafka in here, so its
//! rules are unit-tested record by record.

use std::collections::HashMap;

use chime_wire::{ChangelogRecord, FiresRecord, RecordHeaders, Revoke, TimerCommand};

use crate::schedules::ScheduleAudit;
use crate::{CheckConfig, CheckReport, Lateness};

/// The latest command for one timer id.
struct Intent {
    fire_at_ms: u64,
    /// Timestamp of a cancel that came after the schedule, if one did.
    cancelled_at_ms: Option<u64>,
}

/// What the checker has read so far; [`Audit::report`] judges it.
pub struct Audit {
    grace_ms: u64,
    lead_ms: u64,
    cancel_allowance_ms: u64,
    commands: usize,
    intents: HashMap<String, Intent>,
    /// (id, fire_at) → fired_at of each fire record not revoked.
    fired: HashMap<(String, u64), Vec<u64>>,
    fires: usize,
    revoked: usize,
    early: Vec<String>,
    lateness: Vec<u64>,
    /// id → fire_at of what the changelog holds pending.
    pending: HashMap<String, u64>,
    schedules: ScheduleAudit,
}

impl Audit {
    pub fn new(config: &CheckConfig) -> Audit {
        Audit {
            grace_ms: config.grace.as_millis() as u64,
            lead_ms: config.lead.as_millis() as u64,
            cancel_allowance_ms: config.cancel_allowance().as_millis() as u64,
            commands: 0,
            intents: HashMap::new(),
            fired: HashMap::new(),
            fires: 0,
            revoked: 0,
            early: Vec::new(),
            lateness: Vec::new(),
            pending: HashMap::new(),
            schedules: ScheduleAudit::default(),
        }
    }

    /// A record of the timers topic (`None`: one that does not decode, which
    /// the engine dead-letters) written at `timestamp_ms`.
    pub fn command(&mut self, command: Option<TimerCommand>, timestamp_ms: u64) {
        self.commands += 1;
        if let Some(command) = &command {
            self.schedules.command(command, timestamp_ms);
        }
        match command {
            Some(TimerCommand::Schedule(spec)) => {
                self.intents.insert(
                    spec.id,
                    Intent {
                        fire_at_ms: spec.fire_at_ms,
                        cancelled_at_ms: None,
                    },
                );
            }
            Some(TimerCommand::Cancel { id }) => {
                if let Some(intent) = self.intents.get_mut(&id) {
                    intent.cancelled_at_ms.get_or_insert(timestamp_ms);
                }
            }
            // Schedules (above), outcomes; `None`: dead-lettered by the engine.
            Some(_) | None => {}
        }
    }

    /// A record of the fires topic written at `timestamp_ms` (the emit time
    /// when the record does not say).
    pub fn fires_record(&mut self, record: FiresRecord, timestamp_ms: u64) {
        let (spec, fired_at) = match record {
            FiresRecord::Fire(fire) => (fire.spec, fire.fired_at_ms.unwrap_or(timestamp_ms)),
            // A revoke takes back a fire emitted ahead of its time.
            FiresRecord::Revoke(Revoke { id, fire_at_ms }) => {
                self.schedules.revoke(&id, fire_at_ms);
                if let Some(times) = self.fired.get_mut(&(id, fire_at_ms)) {
                    if times.pop().is_some() {
                        self.fires -= 1;
                        self.revoked += 1;
                    }
                }
                return;
            }
        };
        self.fires += 1;
        if fired_at.saturating_add(self.lead_ms) < spec.fire_at_ms {
            self.early.push(spec.id.clone());
        }
        self.schedules.fire(&spec, fired_at);
        self.lateness.push(fired_at.saturating_sub(spec.fire_at_ms));
        self.fired
            .entry((spec.id, spec.fire_at_ms))
            .or_default()
            .push(fired_at);
    }

    /// A record of the changelog, keyed `id`: a schedule's state, or a
    /// timer's pending record or tombstone. Read before the fires topic.
    pub fn changelog_record(
        &mut self,
        id: &str,
        value: Option<&[u8]>,
        headers: &(impl RecordHeaders + ?Sized),
    ) {
        if self.schedules.changelog(id, value, headers) {
            return;
        }
        match ChangelogRecord::decode(value, headers) {
            Ok(ChangelogRecord::Pending { fire_at_ms, .. }) => {
                self.pending.insert(id.to_string(), fire_at_ms);
            }
            Ok(ChangelogRecord::Finished(_)) => {
                self.pending.remove(id);
            }
            Err(_) => {}
        }
    }

    /// The verdict at `now_ms`: timers due before `now_ms − grace` count.
    pub fn report(mut self, now_ms: u64) -> CheckReport {
        let mut report = CheckReport {
            commands: self.commands,
            fires: self.fires,
            revoked: self.revoked,
            pending: self.pending.len(),
            early: std::mem::take(&mut self.early),
            lateness_ms: Lateness::of(&mut self.lateness),
            ..CheckReport::default()
        };
        let due_before = now_ms.saturating_sub(self.grace_ms);
        for ((id, _), times) in &self.fired {
            if times.len() > 1 {
                report.duplicates.push(id.clone());
            }
        }
        for (id, intent) in &self.intents {
            let key = (id.clone(), intent.fire_at_ms);
            let fires = self.fired.get(&key).filter(|t| !t.is_empty());
            match intent.cancelled_at_ms {
                // A cancel in the engine's reach before the fire must have prevented it.
                Some(cancelled_at)
                    if fires.is_some_and(|t| {
                        t.iter()
                            .any(|&at| at > cancelled_at + self.cancel_allowance_ms)
                    }) =>
                {
                    report.fired_after_cancel.push(id.clone());
                }
                Some(_) => {}
                None if intent.fire_at_ms < due_before => {
                    report.expected += 1;
                    if fires.is_none() {
                        report.missing.push(id.clone());
                    }
                }
                None => {}
            }
        }
        for (id, fire_at) in &self.pending {
            if *fire_at < due_before {
                report.overdue.push(id.clone());
            }
        }
        let found = std::mem::take(&mut self.schedules).finish(due_before);
        report.schedules = found.schedules;
        report.schedule_miscounts = found.miscounts;
        report.missed_occurrences = found.missed;
        report.fired_after_cancel.extend(found.fired_after_cancel);
        report.overdue.extend(found.overdue);
        for ids in [
            &mut report.missing,
            &mut report.duplicates,
            &mut report.early,
            &mut report.fired_after_cancel,
            &mut report.overdue,
            &mut report.schedule_miscounts,
            &mut report.missed_occurrences,
        ] {
            ids.sort();
            ids.dedup();
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config() -> CheckConfig {
        let mut c = CheckConfig::new(
            "127.0.0.1:9092",
            "x",
            Duration::from_millis(200),
            Duration::from_millis(10),
        );
        c.grace = Duration::from_millis(1000);
        c
    }

    fn spec(id: &str, fire_at_ms: u64) -> chime_wire::TimerSpec {
        let json = format!(
            r#"{{"op":"schedule","id":"{id}","fire_at_ms":{fire_at_ms},"callback":{{"url":"http://127.0.0.1:9/x"}}}}"#
        );
        match TimerCommand::decode(Some(id.as_bytes()), Some(json.as_bytes())) {
            Ok(TimerCommand::Schedule(spec)) => spec,
            other => panic!("not a schedule: {other:?}"),
        }
    }

    fn schedule(audit: &mut Audit, id: &str, fire_at_ms: u64, written_ms: u64) {
        audit.command(
            Some(TimerCommand::Schedule(spec(id, fire_at_ms))),
            written_ms,
        );
    }

    fn cancel(audit: &mut Audit, id: &str, written_ms: u64) {
        audit.command(Some(TimerCommand::Cancel { id: id.into() }), written_ms);
    }

    fn fire(audit: &mut Audit, id: &str, fire_at_ms: u64, fired_at_ms: u64) {
        audit.fires_record(
            FiresRecord::Fire(chime_wire::Fire {
                spec: spec(id, fire_at_ms),
                fired_at_ms: Some(fired_at_ms),
            }),
            fired_at_ms,
        );
    }

    fn revoke(audit: &mut Audit, id: &str, fire_at_ms: u64) {
        audit.fires_record(
            FiresRecord::Revoke(Revoke {
                id: id.into(),
                fire_at_ms,
            }),
            0,
        );
    }

    #[test]
    fn finds_missing_duplicate_early_and_overdue_timers() {
        let mut a = Audit::new(&config());
        schedule(&mut a, "ok", 10_000, 0);
        schedule(&mut a, "lost", 10_000, 0);
        schedule(&mut a, "twice", 10_000, 0);
        schedule(&mut a, "early", 10_000, 0);
        schedule(&mut a, "ahead", 10_000, 0);
        schedule(&mut a, "not-yet-due", 19_500, 0);
        a.command(None, 0); // undecodable: counted, not judged
        fire(&mut a, "ok", 10_000, 10_050);
        fire(&mut a, "twice", 10_000, 10_010);
        fire(&mut a, "twice", 10_000, 13_000);
        fire(&mut a, "early", 10_000, 9_700); // 300 ms ahead, lead 200
        fire(&mut a, "ahead", 10_000, 9_800); // within the lead
        let changelog = |a: &mut Audit, id: &str, record: ChangelogRecord<'_>| {
            a.changelog_record(id, record.value(), &record.headers());
        };
        let pending = ChangelogRecord::Pending {
            fire_at_ms: 10_000,
            command: b"{}",
        };
        changelog(&mut a, "stuck", pending);
        changelog(&mut a, "left", pending);
        changelog(&mut a, "left", ChangelogRecord::Finished(None));
        let r = a.report(20_000);
        assert_eq!(r.commands, 7);
        assert_eq!(r.expected, 5, "not-yet-due is inside the grace");
        assert_eq!(r.missing, ["lost"]);
        assert_eq!(r.duplicates, ["twice"]);
        assert_eq!(r.early, ["early"]);
        assert_eq!(r.overdue, ["stuck"]);
        assert_eq!((r.fires, r.pending), (5, 1));
        assert!(!r.is_clean());
    }

    #[test]
    fn a_cancel_may_lose_only_within_the_lead_plus_one_tick() {
        let mut a = Audit::new(&config());
        // Cancel written at 5 000 for timers due far later.
        for id in ["won", "raced", "ignored"] {
            schedule(&mut a, id, 60_000, 0);
            cancel(&mut a, id, 5_000);
        }
        // Emitted 210 ms after the cancel: it may not have been read yet.
        fire(&mut a, "raced", 60_000, 5_210);
        // Emitted 211 ms after: the cancel was in reach and was ignored.
        fire(&mut a, "ignored", 60_000, 5_211);
        // An overdue timer fired by a new owner after its cancel is ignored too.
        schedule(&mut a, "overdue", 1_000, 0);
        cancel(&mut a, "overdue", 2_000);
        fire(&mut a, "overdue", 1_000, 9_000);
        let r = a.report(100_000);
        assert_eq!(r.fired_after_cancel, ["ignored", "overdue"]);
        assert_eq!(r.expected, 0, "cancelled timers are not expected to fire");
        assert!(r.missing.is_empty());
    }

    #[test]
    fn a_revoke_takes_back_one_fire_and_a_stray_revoke_nothing() {
        let mut a = Audit::new(&config());
        schedule(&mut a, "held", 10_000, 0);
        cancel(&mut a, "held", 9_900);
        fire(&mut a, "held", 10_000, 9_800); // emitted ahead, then cancelled
        revoke(&mut a, "held", 10_000);
        revoke(&mut a, "held", 10_000); // nothing left to take back
        revoke(&mut a, "never-fired", 10_000);
        // A re-schedule after a fire is a new timer: both fires stand once.
        schedule(&mut a, "again", 10_000, 0);
        fire(&mut a, "again", 10_000, 10_001);
        schedule(&mut a, "again", 12_000, 11_000);
        fire(&mut a, "again", 12_000, 12_001);
        let r = a.report(20_000);
        assert_eq!((r.fires, r.revoked), (2, 1));
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.expected, 1, "the latest schedule of `again`");
    }
}
