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

//!
//! A **schedule** (header [`KIND`] = `schedule`) has instead:
//!
//! * **State**: value = its [`crate::ScheduleState`] JSON, header
//!   [`FIRE_AT_MS`] = its next occurrence while it is active (absent while
//!   paused); re-written with every occurrence fired, in the transaction
//!   that writes the occurrence's fire record.
//! * **Tombstone**: it ended; [`OUTCOME`] = `cancelled` or `completed`,
//!   [`OCCURRENCES`] = how many occurrences it fired.
//!
//! A `fired` tombstone is written again, with header [`DELIVERY`], when the
//! dispatcher reports what came of the callback ([`crate::Outcome`]).

use crate::command::{FieldError, TimerCommand};
use crate::headers::{
    HeaderList, RecordHeaders, DELIVERY, FIRED_AT_MS, FIRE_AT_MS, KIND, KIND_SCHEDULE, OCCURRENCES,
    OUTCOME, OUTCOME_CANCELLED, OUTCOME_COMPLETED, OUTCOME_FIRED,
};
use crate::outcome::Delivery;

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
                Ok(_) => return Err(FieldError::new("value", "not a pending timer")),
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

/// The headers of a `fired` tombstone that also says what came of the
/// callback: the due time, when it fired, and the delivery.
pub fn delivered_tombstone(fire_at_ms: u64, fired_at_ms: u64, delivery: &Delivery) -> HeaderList {
    ChangelogRecord::Finished(Some(Finished::Fired { fire_at_ms }))
        .headers()
        .with(FIRED_AT_MS, fired_at_ms)
        .with(DELIVERY, delivery.encode())
}

/// What a `fired` tombstone says came of the callback, and when the timer
/// fired, if it says.
pub fn tombstone_delivery(
    headers: &(impl RecordHeaders + ?Sized),
) -> (Option<Delivery>, Option<u64>) {
    let delivery = headers
        .get(DELIVERY)
        .and_then(|v| serde_json::from_slice(v).ok());
    (delivery, headers.get_u64(FIRED_AT_MS))
}

/// A schedule's changelog record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleRecord<'a> {
    /// Its state; `next_at_ms` while it is active.
    State {
        next_at_ms: Option<u64>,
        state: &'a [u8],
    },
    /// It ended (a tombstone).
    Ended(ScheduleEnd),
}

/// How a schedule ended, and how many occurrences it fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleEnd {
    pub cancelled: bool,
    pub fired: u64,
}

impl<'a> ScheduleRecord<'a> {
    /// Reads a changelog record if it is a schedule's (header [`KIND`]).
    pub fn decode(
        value: Option<&'a [u8]>,
        headers: &(impl RecordHeaders + ?Sized),
    ) -> Option<Self> {
        if headers.get_str(KIND) != Some(KIND_SCHEDULE) {
            return None;
        }
        Some(match value {
            Some(state) => ScheduleRecord::State {
                next_at_ms: headers.get_u64(FIRE_AT_MS),
                state,
            },
            None => ScheduleRecord::Ended(ScheduleEnd {
                cancelled: headers.get_str(OUTCOME) != Some(OUTCOME_COMPLETED),
                fired: headers.get_u64(OCCURRENCES).unwrap_or(0),
            }),
        })
    }

    pub fn value(&self) -> Option<&'a [u8]> {
        match *self {
            ScheduleRecord::State { state, .. } => Some(state),
            ScheduleRecord::Ended(_) => None,
        }
    }

    pub fn headers(&self) -> HeaderList {
        let kind = HeaderList::new().with(KIND, KIND_SCHEDULE);
        match *self {
            ScheduleRecord::State {
                next_at_ms: Some(at),
                ..
            } => kind.with(FIRE_AT_MS, at),
            ScheduleRecord::State { .. } => kind,
            ScheduleRecord::Ended(end) => kind
                .with(
                    OUTCOME,
                    if end.cancelled {
                        OUTCOME_CANCELLED
                    } else {
                        OUTCOME_COMPLETED
                    },
                )
                .with(OCCURRENCES, end.fired),
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
    fn schedule_records_round_trip_and_are_told_from_timers() {
        for record in [
            ScheduleRecord::State {
                next_at_ms: Some(5),
                state: b"{}",
            },
            ScheduleRecord::State {
                next_at_ms: None,
                state: b"{}",
            },
            ScheduleRecord::Ended(ScheduleEnd {
                cancelled: true,
                fired: 3,
            }),
            ScheduleRecord::Ended(ScheduleEnd {
                cancelled: false,
                fired: 7,
            }),
        ] {
            let headers = record.headers();
            assert_eq!(
                ScheduleRecord::decode(record.value(), &headers),
                Some(record)
            );
        }
        let timer = ChangelogRecord::Pending {
            fire_at_ms: 1,
            command: b"{}",
        };
        assert_eq!(
            ScheduleRecord::decode(timer.value(), &timer.headers()),
            None
        );
    }

    #[test]
    fn a_fired_tombstone_can_say_what_came_of_the_callback() {
        let delivery = Delivery {
            result: crate::DeliveryResult::DeadLettered,
            attempts: 3,
            status: Some(503),
            error: Some("busy".into()),
            at_ms: 90,
        };
        let headers = delivered_tombstone(10, 12, &delivery);
        assert_eq!(
            ChangelogRecord::decode(None, &headers).unwrap(),
            ChangelogRecord::Finished(Some(Finished::Fired { fire_at_ms: 10 }))
        );
        assert_eq!(tombstone_delivery(&headers), (Some(delivery), Some(12)));
        let plain = ChangelogRecord::Finished(Some(Finished::Cancelled)).headers();
        assert_eq!(tombstone_delivery(&plain), (None, None));
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
