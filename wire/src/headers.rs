//! Record headers: chime puts the numbers a reader needs without parsing the
//! JSON value (due times, fire times, outcomes) into Kafka record headers.
//! This module names them, reads them from any client's record
//! ([`RecordHeaders`]) and builds them for writing ([`HeaderList`]).

/// Fire record: unix ms at which the engine emitted it.
pub const FIRED_AT_MS: &str = "chime-fired-at-ms";
/// Fire record: how late the engine emitted it (fired_at − fire_at, ≥ 0).
pub const LATENESS_MS: &str = "chime-lateness-ms";
/// Revoke record on the fires topic: the due time of the fire, emitted ahead
/// of its time, that it takes back.
pub const REVOKES_FIRE_AT_MS: &str = "chime-revokes-fire-at-ms";
/// Changelog record: the timer's due time (pending record, fired tombstone).
pub const FIRE_AT_MS: &str = "chime-fire-at-ms";
/// Changelog tombstone: why the timer left (`fired` | `cancelled`); the
/// tombstone's timestamp says when.
pub const OUTCOME: &str = "chime-outcome";
pub const OUTCOME_FIRED: &str = "fired";
pub const OUTCOME_CANCELLED: &str = "cancelled";
/// Changelog tombstone of a schedule whose occurrences ran out (end time or
/// count reached).
pub const OUTCOME_COMPLETED: &str = "completed";
/// Changelog record: what it is about when not a one-shot timer (`schedule`).
pub const KIND: &str = "chime-kind";
pub const KIND_SCHEDULE: &str = "schedule";
/// Changelog `fired` tombstone: what came of the callback, as the JSON of a
/// [`crate::Delivery`] (written again once the dispatcher finished).
pub const DELIVERY: &str = "chime-delivery";
/// Changelog tombstone of a schedule: occurrences it fired.
pub const OCCURRENCES: &str = "chime-occurrences";

/// Read access to a record's headers, whatever Kafka client carries them.
pub trait RecordHeaders {
    /// The value of the first header called `name`.
    fn get(&self, name: &str) -> Option<&[u8]>;

    /// The value of header `name` as UTF-8.
    fn get_str(&self, name: &str) -> Option<&str> {
        std::str::from_utf8(self.get(name)?).ok()
    }

    /// The value of header `name` as a decimal number (the `*-ms` headers).
    fn get_u64(&self, name: &str) -> Option<u64> {
        self.get_str(name)?.parse().ok()
    }
}

/// Headers as a list of pairs (tests, fuzzing, and [`HeaderList`]).
impl RecordHeaders for [(&str, &[u8])] {
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

/// Headers to write with a record, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderList(Vec<(&'static str, String)>);

impl HeaderList {
    pub fn new() -> Self {
        HeaderList(Vec::new())
    }

    pub fn with(mut self, name: &'static str, value: impl ToString) -> Self {
        self.0.push((name, value.to_string()));
        self
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &[u8])> + '_ {
        self.0.iter().map(|(n, v)| (*n, v.as_bytes()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl RecordHeaders for HeaderList {
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_bytes())
    }
}
