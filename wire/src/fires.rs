//! The fires topic (`<prefix>.fires`): what the dispatchers call. Key = timer
//! id, so every record about one timer is on one partition, in order.
//!
//! * **Fire**: value = the timer's schedule command (the bytes the engine
//!   holds), headers [`FIRED_AT_MS`] and [`LATENESS_MS`]. The dispatcher calls
//!   no earlier than the command's `fire_at_ms`, so the engine may emit a
//!   fire ahead of its time (its lead).
//! * **Revoke**: value = `{"op":"cancel","id":…}`, header
//!   [`REVOKES_FIRE_AT_MS`] = the due time of the fire it takes back. Written
//!   when a cancel or re-schedule arrives while a fire emitted ahead is still
//!   held by a dispatcher; the dispatcher drops that fire.

use crate::command::{FieldError, TimerCommand, TimerSpec};
use crate::headers::{HeaderList, RecordHeaders, FIRED_AT_MS, LATENESS_MS, REVOKES_FIRE_AT_MS};

/// One record of the fires topic, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // short-lived; fires outnumber revokes
pub enum FiresRecord {
    Fire(Fire),
    Revoke(Revoke),
}

/// A timer released to the dispatchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    pub spec: TimerSpec,
    /// When the engine emitted it (absent on records from other writers).
    pub fired_at_ms: Option<u64>,
}

/// Takes back the fire of timer `id` due at `fire_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoke {
    pub id: String,
    pub fire_at_ms: u64,
}

impl Fire {
    /// The headers of a fire record the engine emits at `fired_at_ms` for a
    /// timer due at `fire_at_ms`. Its value is the schedule command's bytes.
    pub fn headers(fire_at_ms: u64, fired_at_ms: u64) -> HeaderList {
        HeaderList::new()
            .with(FIRED_AT_MS, fired_at_ms)
            .with(LATENESS_MS, fired_at_ms.saturating_sub(fire_at_ms))
    }
}

impl Revoke {
    pub fn value(&self) -> Vec<u8> {
        TimerCommand::Cancel {
            id: self.id.clone(),
        }
        .encode()
    }

    pub fn headers(&self) -> HeaderList {
        HeaderList::new().with(REVOKES_FIRE_AT_MS, self.fire_at_ms)
    }
}

/// The `op` of a command, for messages.
fn op_name(command: &TimerCommand) -> &'static str {
    match command {
        TimerCommand::Schedule(_) => "schedule",
        TimerCommand::Cancel { .. } => "cancel",
        TimerCommand::Recurring(_) => "recurring",
        TimerCommand::Pause { .. } => "pause",
        TimerCommand::Resume { .. } => "resume",
        TimerCommand::Outcome(_) => "outcome",
    }
}

impl FiresRecord {
    /// Reads one fires record. The key must be the timer id, as on `chime.timers`.
    pub fn decode(
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &(impl RecordHeaders + ?Sized),
    ) -> Result<FiresRecord, FieldError> {
        match TimerCommand::decode(key, value)? {
            TimerCommand::Schedule(spec) => Ok(FiresRecord::Fire(Fire {
                spec,
                fired_at_ms: headers.get_u64(FIRED_AT_MS),
            })),
            TimerCommand::Cancel { id } => {
                let fire_at_ms = headers.get_u64(REVOKES_FIRE_AT_MS).ok_or_else(|| {
                    FieldError::new(
                        format!("headers.{REVOKES_FIRE_AT_MS}"),
                        "a revoke must name the due time of the fire it takes back",
                    )
                })?;
                Ok(FiresRecord::Revoke(Revoke { id, fire_at_ms }))
            }
            other => Err(FieldError::new(
                "value",
                format!("a {:?} command is not a fire record", op_name(&other)),
            )),
        }
    }

    /// The timer id the record is about.
    pub fn id(&self) -> &str {
        match self {
            FiresRecord::Fire(f) => &f.spec.id,
            FiresRecord::Revoke(r) => &r.id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fire_and_revoke_round_trip() {
        let command = br#"{"op":"schedule","id":"a","fire_at_ms":100,"callback":{"url":"https://x.example/"}}"#;
        let headers = Fire::headers(100, 130);
        assert_eq!(headers.get_u64(LATENESS_MS), Some(30));
        let FiresRecord::Fire(fire) =
            FiresRecord::decode(Some(b"a"), Some(command), &headers).unwrap()
        else {
            panic!("not a fire")
        };
        assert_eq!((fire.spec.fire_at_ms, fire.fired_at_ms), (100, Some(130)));

        let revoke = Revoke {
            id: "a".into(),
            fire_at_ms: 100,
        };
        let decoded =
            FiresRecord::decode(Some(b"a"), Some(&revoke.value()), &revoke.headers()).unwrap();
        assert_eq!(decoded, FiresRecord::Revoke(revoke));
    }

    #[test]
    fn a_revoke_without_its_due_time_is_refused() {
        let none: &[(&str, &[u8])] = &[];
        let err = FiresRecord::decode(Some(b"a"), Some(br#"{"op":"cancel","id":"a"}"#), none)
            .unwrap_err();
        assert_eq!(err.field, "headers.chime-revokes-fire-at-ms");
    }
}
