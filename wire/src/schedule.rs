//! Schedules: recurring timers. The `recurring` command on `chime.timers`
//! (key = the schedule id, murmur2 like a timer's), the schedule's state as
//! its owning engine keeps it in the changelog, and the occurrences' fire
//! records.
//!
//! ```json
//! {"op": "recurring", "id": "daily-report", "cron": "0 9 * * MON-FRI",
//!  "time_zone": "Europe/Paris", "callback": {"url": "https://reports.example/run"}}
//! {"op": "recurring", "id": "heartbeat", "every_ms": 30000,
//!  "catch_up": {"policy": "latest", "window_ms": 60000},
//!  "callback": {"url": "https://svc.example/beat"}}
//! {"op": "pause", "id": "heartbeat"}   {"op": "resume", "id": "heartbeat"}
//! {"op": "cancel", "id": "heartbeat"}  (ends a schedule as it cancels a timer)
//! ```
//!
//! Each occurrence is fired as a timer whose id is [`occurrence_id`]
//! (`<schedule id>@<due ms>`), so a retry of one occurrence (a timer with
//! that id) never replaces the schedule, and whose spec names the schedule.

use serde::{Deserialize, Serialize};

use crate::command::{validate_id, Callback, FieldError, RetryPolicy, TimerSpec, MAX_ID_BYTES};
use crate::outcome::Delivery;
use crate::recurrence::{CronRecurrence, Recurrence, LAST_INSTANT_MS};

/// Longest schedule id: an occurrence id (`<id>@<20 digits>`) must still be
/// a valid timer id.
pub const MAX_SCHEDULE_ID_BYTES: usize = MAX_ID_BYTES - 21;
/// How late the occurrences of a schedule that fell behind may be and still
/// all fire, unless the schedule says otherwise.
pub const DEFAULT_CATCH_UP_WINDOW_MS: u64 = 60_000;
/// Most overdue occurrences of one schedule fired when it catches up (the
/// most recent ones); earlier ones are skipped.
pub const MAX_CATCH_UP: usize = 1_000;
/// Occurrence outcomes a schedule's state remembers.
pub const RECENT_OCCURRENCES: usize = 10;
/// Skipped ranges a schedule's state remembers (for the checker).
pub const SKIP_RANGES: usize = 16;

/// A recurring timer: the payload of a `recurring` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub id: String,
    /// A cron expression: 5 fields (minute hour day-of-month month
    /// day-of-week), or 6 with seconds first. Give this or `every_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// IANA time zone the cron expression is read in; `UTC` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// A fixed interval in milliseconds (at least 1000), instead of `cron`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    /// No occurrence before this (unix ms). For `every_ms` it is the first
    /// occurrence (the anchor); when absent, the command's time (+ every_ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_ms: Option<u64>,
    /// No occurrence after this (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at_ms: Option<u64>,
    /// The schedule ends after this many occurrences fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u64>,
    /// What happens to occurrences missed while no engine could fire them.
    #[serde(default, skip_serializing_if = "CatchUp::is_default")]
    pub catch_up: CatchUp,
    pub callback: Callback,
    #[serde(default, skip_serializing_if = "RetryPolicy::is_default")]
    pub retry: RetryPolicy,
}

/// The catch-up policy of a schedule that fell behind (its engines were
/// down, or it could not fire for another reason): see docs/design.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatchUp {
    #[serde(default)]
    pub policy: CatchUpPolicy,
    /// Overdue occurrences all fire when the oldest is at most this late;
    /// past it the policy applies.
    #[serde(default = "default_window", deserialize_with = "crate::command::whole")]
    pub window_ms: u64,
}

fn default_window() -> u64 {
    DEFAULT_CATCH_UP_WINDOW_MS
}

impl Default for CatchUp {
    fn default() -> Self {
        CatchUp {
            policy: CatchUpPolicy::default(),
            window_ms: DEFAULT_CATCH_UP_WINDOW_MS,
        }
    }
}

impl CatchUp {
    pub fn is_default(&self) -> bool {
        *self == CatchUp::default()
    }
}

/// Which of a schedule's missed occurrences fire once it can fire again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUpPolicy {
    /// Only the most recent missed occurrence.
    #[default]
    Latest,
    /// Every missed occurrence (at most [`MAX_CATCH_UP`], the most recent).
    All,
    /// None: go on with the next occurrence.
    #[serde(rename = "none")]
    Skip,
}

impl ScheduleSpec {
    /// Checks everything a schedule needs, naming the field at fault
    /// (`cron`, `time_zone`, `every_ms`, `end_at_ms`, `callback.url`, …).
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_id(&self.id)?;
        if self.id.len() > MAX_SCHEDULE_ID_BYTES {
            return Err(FieldError::new(
                "id",
                format!(
                    "is {} bytes; a schedule id is at most {MAX_SCHEDULE_ID_BYTES}",
                    self.id.len()
                ),
            ));
        }
        match (&self.cron, self.every_ms) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "every_ms",
                    "give cron or every_ms, not both",
                ))
            }
            (None, None) => {
                return Err(FieldError::new(
                    "cron",
                    "missing: give cron (with time_zone) or every_ms",
                ))
            }
            (None, Some(_)) if self.time_zone.is_some() => {
                return Err(FieldError::new(
                    "time_zone",
                    "applies to cron only; an every_ms interval is in real time",
                ))
            }
            _ => {}
        }
        self.recurrence(0)?;
        if let (Some(start), Some(end)) = (self.start_at_ms, self.end_at_ms) {
            if end < start {
                return Err(FieldError::new(
                    "end_at_ms",
                    format!("{end} is before start_at_ms {start}"),
                ));
            }
        }
        if self.max_count == Some(0) {
            return Err(FieldError::new("max_count", "must be at least 1"));
        }
        if self.catch_up.window_ms > LAST_INSTANT_MS {
            return Err(FieldError::new("catch_up.window_ms", "is too large"));
        }
        self.retry.validate()?;
        self.callback.validate()
    }

    /// The occurrences, with `anchor_ms` as the first of an interval
    /// schedule that gives no `start_at_ms`.
    pub fn recurrence(&self, anchor_ms: u64) -> Result<Recurrence, FieldError> {
        match (&self.cron, self.every_ms) {
            (Some(cron), _) => {
                let zone = self.time_zone.as_deref().unwrap_or("UTC");
                Ok(Recurrence::Cron(Box::new(CronRecurrence::parse(
                    cron, zone,
                )?)))
            }
            (None, Some(every)) => Recurrence::every(every, self.start_at_ms.unwrap_or(anchor_ms)),
            (None, None) => Err(FieldError::new("cron", "missing")),
        }
    }

    /// The same schedule as `other`, but for when it was asked for: the same
    /// recurrence, bounds, policy, callback and retry.
    pub fn same_as(&self, other: &ScheduleSpec, compare_start: bool) -> bool {
        let mut a = self.clone();
        let mut b = other.clone();
        if !compare_start {
            a.start_at_ms = None;
            b.start_at_ms = None;
        }
        a.time_zone = a.time_zone.filter(|z| z != "UTC");
        b.time_zone = b.time_zone.filter(|z| z != "UTC");
        a == b
    }
}

/// The id of the occurrence of schedule `schedule_id` due at `due_ms`.
pub fn occurrence_id(schedule_id: &str, due_ms: u64) -> String {
    format!("{schedule_id}@{due_ms}")
}

/// The timer an occurrence is fired as: the schedule's callback and retry
/// policy, due at `due_ms`, naming the schedule.
pub fn occurrence(spec: &ScheduleSpec, due_ms: u64) -> TimerSpec {
    TimerSpec {
        id: occurrence_id(&spec.id, due_ms),
        fire_at_ms: due_ms,
        callback: spec.callback.clone(),
        attempt: 1,
        retry: spec.retry.clone(),
        first_fire_at_ms: None,
        schedule_id: Some(spec.id.clone()),
        delivery: None,
    }
}

/// A schedule as its owning engine keeps it: the value of its changelog
/// record (key = schedule id, header `chime-kind: schedule`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// The spec, with `start_at_ms` set to the anchor actually used.
    pub spec: ScheduleSpec,
    /// When the series began (the command's time): no occurrence before it.
    pub created_at_ms: u64,
    /// The next occurrence to fire; `None` when there is none (the schedule
    /// is over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at_ms: Option<u64>,
    /// Occurrences fired (released to the dispatchers).
    #[serde(default)]
    pub fired: u64,
    /// Occurrences skipped: missed beyond the catch-up policy, or due
    /// while paused.
    #[serde(default)]
    pub skipped: u64,
    /// Set while paused: since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at_ms: Option<u64>,
    /// The latest occurrences fired, oldest first, with what came of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<OccurrenceRecord>,
    /// The latest ranges of occurrences skipped, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skips: Vec<SkipRange>,
    /// Every occurrence from here to `next_at_ms` either fired or lies in
    /// one of `skips` (older skip ranges are forgotten, and this moves).
    #[serde(default)]
    pub audit_from_ms: u64,
    /// Set once it ended (cancelled, or no occurrence left); the engine
    /// forgets it (a tombstone) its finished-timer retention later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Ended>,
}

/// How and when a schedule ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    /// Cancelled (else completed: its end time or count was reached).
    pub cancelled: bool,
    pub at_ms: u64,
}

/// One occurrence fired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OccurrenceRecord {
    pub due_ms: u64,
    /// When the engine released it (it may be ahead of its due time by the
    /// engine's lead, or late).
    pub fired_at_ms: u64,
    /// What came of its callback, once the dispatcher finished it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
}

/// Occurrences from `from_ms` to `to_ms` (both included) that were not fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipRange {
    pub from_ms: u64,
    pub to_ms: u64,
    /// How many occurrences.
    pub count: u64,
}

impl ScheduleState {
    pub fn encode(&self) -> Vec<u8> {
        // Plain strings and integers: serializing cannot fail.
        serde_json::to_vec(self).expect("schedule state serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<ScheduleState, FieldError> {
        let state: ScheduleState = serde_json::from_slice(bytes)
            .map_err(|e| FieldError::new("value", format!("not a schedule state: {e}")))?;
        state.spec.validate()?;
        Ok(state)
    }

    pub fn is_paused(&self) -> bool {
        self.paused_at_ms.is_some()
    }

    /// Neither paused nor ended.
    pub fn is_active(&self) -> bool {
        self.paused_at_ms.is_none() && self.ended.is_none()
    }

    /// Remembers an occurrence fired.
    pub fn record_fired(&mut self, due_ms: u64, fired_at_ms: u64) {
        self.fired += 1;
        self.recent.push(OccurrenceRecord {
            due_ms,
            fired_at_ms,
            delivery: None,
        });
        if self.recent.len() > RECENT_OCCURRENCES {
            self.recent.remove(0);
        }
    }

    /// Remembers `count` occurrences from `from_ms` to `to_ms` skipped.
    pub fn record_skipped(&mut self, from_ms: u64, to_ms: u64, count: u64) {
        if count == 0 {
            return;
        }
        self.skipped += count;
        self.skips.push(SkipRange {
            from_ms,
            to_ms,
            count,
        });
        if self.skips.len() > SKIP_RANGES {
            let forgotten = self.skips.remove(0);
            self.audit_from_ms = self.audit_from_ms.max(forgotten.to_ms.saturating_add(1));
        }
    }

    /// Records what came of occurrence `due_ms`'s callback; false if it is
    /// not among the recent occurrences.
    pub fn record_delivery(&mut self, due_ms: u64, delivery: Delivery) -> bool {
        match self.recent.iter_mut().rev().find(|o| o.due_ms == due_ms) {
            Some(o) => {
                o.delivery = Some(delivery);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::TimerCommand;

    fn decode(json: &str) -> Result<TimerCommand, FieldError> {
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        let id = value["id"].as_str().unwrap_or_default().to_string();
        TimerCommand::decode(Some(id.as_bytes()), Some(json.as_bytes()))
    }

    #[test]
    fn the_documented_records_decode() {
        let TimerCommand::Recurring(s) = decode(
            r#"{"op":"recurring","id":"daily-report","cron":"0 9 * * MON-FRI","time_zone":"Europe/Paris","callback":{"url":"https://reports.example/run"}}"#,
        )
        .unwrap() else {
            panic!("not recurring")
        };
        assert_eq!(s.catch_up, CatchUp::default());
        assert_eq!(s.catch_up.policy, CatchUpPolicy::Latest);
        let TimerCommand::Recurring(s) = decode(
            r#"{"op":"recurring","id":"heartbeat","every_ms":30000,"catch_up":{"policy":"none"},"callback":{"url":"https://svc.example/beat"}}"#,
        )
        .unwrap() else {
            panic!("not recurring")
        };
        assert_eq!(s.catch_up.policy, CatchUpPolicy::Skip);
        assert_eq!(s.catch_up.window_ms, DEFAULT_CATCH_UP_WINDOW_MS);
        assert_eq!(
            decode(r#"{"op":"pause","id":"heartbeat"}"#).unwrap(),
            TimerCommand::Pause {
                id: "heartbeat".into()
            }
        );
        assert_eq!(
            decode(r#"{"op":"resume","id":"heartbeat"}"#).unwrap(),
            TimerCommand::Resume {
                id: "heartbeat".into()
            }
        );
        // Written as documented, read back the same.
        let again = TimerCommand::Recurring(s.clone()).encode();
        assert_eq!(
            TimerCommand::decode(Some(b"heartbeat"), Some(&again)).unwrap(),
            TimerCommand::Recurring(s)
        );
    }

    #[test]
    fn bad_schedules_name_the_field() {
        let field = |json: &str| decode(json).unwrap_err().field;
        let cb = r#""callback":{"url":"https://x.example/"}"#;
        assert_eq!(
            field(&format!(r#"{{"op":"recurring","id":"a",{cb}}}"#)),
            "cron"
        );
        assert_eq!(
            field(&format!(
                r#"{{"op":"recurring","id":"a","cron":"* * *",{cb}}}"#
            )),
            "cron"
        );
        assert_eq!(
            field(&format!(
                r#"{{"op":"recurring","id":"a","cron":"0 9 * * *","time_zone":"Europe/Pariss",{cb}}}"#
            )),
            "time_zone"
        );
        assert_eq!(
            field(&format!(
                r#"{{"op":"recurring","id":"a","every_ms":999,{cb}}}"#
            )),
            "every_ms"
        );
        assert_eq!(
            field(&format!(
                r#"{{"op":"recurring","id":"a","every_ms":1000,"time_zone":"UTC",{cb}}}"#
            )),
            "time_zone"
        );
        assert_eq!(
            field(&format!(
                r#"{{"op":"recurring","id":"a","every_ms":1000,"start_at_ms":10,"end_at_ms":9,{cb}}}"#
            )),
            "end_at_ms"
        );
        assert_eq!(
            field(&format!(
                r#"{{"op":"recurring","id":"a","every_ms":1000,"max_count":0,{cb}}}"#
            )),
            "max_count"
        );
        assert_eq!(
            field(r#"{"op":"recurring","id":"a","every_ms":1000,"callback":{"url":"ftp://x/"}}"#),
            "callback.url"
        );
        let long = "x".repeat(MAX_SCHEDULE_ID_BYTES + 1);
        assert_eq!(
            field(&format!(
                r#"{{"op":"recurring","id":"{long}","every_ms":1000,{cb}}}"#
            )),
            "id"
        );
        assert_eq!(field(r#"{"op":"pause","id":""}"#), "id");
    }

    #[test]
    fn occurrences_are_timers_naming_their_schedule() {
        let TimerCommand::Recurring(s) = decode(
            r#"{"op":"recurring","id":"s","every_ms":1000,"callback":{"url":"https://x.example/"}}"#,
        )
        .unwrap() else {
            panic!()
        };
        let o = occurrence(&s, 5_000);
        assert_eq!(o.id, "s@5000");
        assert_eq!(o.schedule_id.as_deref(), Some("s"));
        o.validate().unwrap();
        let long = ScheduleSpec {
            id: "x".repeat(MAX_SCHEDULE_ID_BYTES),
            ..s
        };
        occurrence(&long, u64::MAX).validate().unwrap();
    }

    #[test]
    fn state_keeps_a_bounded_history() {
        let TimerCommand::Recurring(spec) = decode(
            r#"{"op":"recurring","id":"s","every_ms":1000,"callback":{"url":"https://x.example/"}}"#,
        )
        .unwrap() else {
            panic!()
        };
        let mut state = ScheduleState {
            spec,
            created_at_ms: 0,
            next_at_ms: Some(0),
            fired: 0,
            skipped: 0,
            paused_at_ms: None,
            recent: Vec::new(),
            skips: Vec::new(),
            audit_from_ms: 0,
            ended: None,
        };
        for i in 0..20 {
            state.record_fired(i * 1000, i * 1000);
            state.record_skipped(i * 1000 + 1, i * 1000 + 2, 1);
        }
        assert_eq!(state.fired, 20);
        assert_eq!(state.recent.len(), RECENT_OCCURRENCES);
        assert_eq!(state.skips.len(), SKIP_RANGES);
        assert_eq!(state.audit_from_ms, 3_003);
        let back = ScheduleState::decode(&state.encode()).unwrap();
        assert_eq!(back, state);
    }
}
