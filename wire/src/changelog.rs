//! The changelog (`<prefix>.changelog`): compacted, one partition per input
//! partition, written only by that partition's owning engine. Key = timer id.
//!
//! * **Pending**: value = the timer's schedule command (the very bytes of the
//!   input record), header [`FIRE_AT_MS`] so a rebuild need not parse JSON.
//! * **Tombstone** (null value): the timer left; header [`OUTCOME`] says why
//!   (`fired`, with [`FIRE_AT_MS`] = the due time it fired for, or
//!   `cancelled`), and the record's timestamp says when.
//!
//! Replaying a partition therefore yields exactly its pending set, and
//! compaction keeps that replay proportional to the pending timers.

use crate::command::{FieldError, TimerCommand};
use crate::headers::{
    HeaderList, RecordHeaders, FIRE_AT_MS, OUTCOME, OUTCOME_CANCELLED, OUTCOME_FIRED,
};

/// One changelog record's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangelogRecord<'a> {
    /// The timer is pending, due at `fire_at_ms`; `command` is its schedule
    /// command's JSON.
    Pending { fire_at_ms: u64, command: &'a [u8] },
    /// A tombstone: the timer is no longer pending. `None` when the tombstone
    /// does not say why (it still removes the timer).
    Finished(Option<Finished>),
}

/// Why a timer left, as its tombstone says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Fired for its due time `fire_at_ms`.
    Fired {
        fire_at_ms: u64,
    },
    Cancelled,
}

impl<'a> ChangelogRecord<'a> {
    /// Reads a changelog record's value and headers. A pending record whose
    /// header is missing falls back to the due time in its JSON.
    pub fn decode(
        value: Option<&'a [u8]>,
        headers: &(impl RecordHeaders + ?Sized),
    ) -> Result<Self, FieldError> {
        let Some(command) = value else {
            let finished = match headers.get_str(OUTCOME) {
                Some(OUTCOME_FIRED) => headers
                    .get_u64(FIRE_AT_MS)
                    .map(|fire_at_ms| Finished::Fired { fire_at_ms }),
                Some(OUTCOME_CANCELLED) => Some(Finished::Cancelled),
                _ => None,
            };
            return Ok(ChangelogRecord::Finished(finished));
        };
        let fire_at_ms = match headers.get_u64(FIRE_AT_MS) {
            Some(at) => at,
            None => match serde_json::from_slice::<TimerCommand>(command) {
                Ok(TimerCommand::Schedule(spec)) => spec.fire_at_ms,
                Ok(TimerCommand::Cancel { .. }) => {
                    return Err(FieldError::new("value", "a cancel is not a pending timer"))
                }
                Err(e) => {
                    return Err(FieldError::new(
                        "value",
                        format!("not a schedule command: {e}"),
                    ))
                }
            },
        };
        Ok(ChangelogRecord::Pending {
            fire_at_ms,
            command,
        })
    }

    /// The record's value: the command for a pending timer, none for a tombstone.
    pub fn value(&self) -> Option<&'a [u8]> {
        match *self {
            ChangelogRecord::Pending { command, .. } => Some(command),
            ChangelogRecord::Finished(_) => None,
        }
    }

    pub fn headers(&self) -> HeaderList {
        match *self {
            ChangelogRecord::Pending { fire_at_ms, .. } => {
                HeaderList::new().with(FIRE_AT_MS, fire_at_ms)
            }
            ChangelogRecord::Finished(Some(Finished::Fired { fire_at_ms })) => HeaderList::new()
                .with(OUTCOME, OUTCOME_FIRED)
                .with(FIRE_AT_MS, fire_at_ms),
            ChangelogRecord::Finished(Some(Finished::Cancelled)) => {
                HeaderList::new().with(OUTCOME, OUTCOME_CANCELLED)
            }
            ChangelogRecord::Finished(None) => HeaderList::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(record: ChangelogRecord<'_>) {
        let headers = record.headers();
        assert_eq!(
            ChangelogRecord::decode(record.value(), &headers).unwrap(),
            record
        );
    }

    #[test]
    fn every_kind_round_trips() {
        round_trip(ChangelogRecord::Pending {
            fire_at_ms: 42,
            command: br#"{"op":"schedule"}"#,
        });
        round_trip(ChangelogRecord::Finished(Some(Finished::Fired {
            fire_at_ms: 7,
        })));
        round_trip(ChangelogRecord::Finished(Some(Finished::Cancelled)));
        round_trip(ChangelogRecord::Finished(None));
    }

    #[test]
    fn a_pending_record_without_its_header_reads_the_json() {
        let v =
            br#"{"op":"schedule","id":"a","fire_at_ms":5,"callback":{"url":"https://x.example/"}}"#;
        let none: &[(&str, &[u8])] = &[];
        assert_eq!(
            ChangelogRecord::decode(Some(v), none).unwrap(),
            ChangelogRecord::Pending {
                fire_at_ms: 5,
                command: v
            }
        );
        assert_eq!(
            ChangelogRecord::decode(Some(b"garbage"), none)
                .unwrap_err()
                .field,
            "value"
        );
    }
}
