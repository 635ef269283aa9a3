//! The input command on `chime.timers`: `{"op":"schedule",…}` or
//! `{"op":"cancel","id":…}`, keyed by the timer id. Any Kafka client in any
//! language may produce these, so decoding checks everything a timer needs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Longest accepted timer id, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// What to call when a timer fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Callback {
    /// An absolute `http://` or `https://` URL.
    pub url: String,
    /// HTTP method, `POST` unless said otherwise.
    #[serde(default = "default_method")]
    pub method: String,
    /// Extra request headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Request body, sent as is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
}

fn default_method() -> String {
    "POST".to_string()
}

fn first_attempt() -> u32 {
    1
}

fn is_first_attempt(a: &u32) -> bool {
    *a == 1
}

/// A timer: who, when, what to call. The payload of a `schedule` command, of a
/// pending changelog record and of a fire record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerSpec {
    pub id: String,
    /// Due time, unix milliseconds.
    pub fire_at_ms: u64,
    pub callback: Callback,
    /// Delivery attempt this firing is (1 for a fresh timer; retries count up).
    #[serde(default = "first_attempt", skip_serializing_if = "is_first_attempt")]
    pub attempt: u32,
    /// How failed calls are retried; the dispatcher's defaults fill what is absent.
    #[serde(default, skip_serializing_if = "RetryPolicy::is_default")]
    pub retry: RetryPolicy,
    /// On a retry (attempt > 1): the due time of the first attempt, which the
    /// idempotency key and the retry deadline are derived from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_fire_at_ms: Option<u64>,
    /// For an occurrence of a schedule: the schedule's id (see [`crate::schedule`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    /// On a retry: how the firing's delivery has gone so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<crate::outcome::Delivery>,
}

/// A timer's retry policy. Every field is optional so the dispatcher's
/// defaults (documented in docs/receivers.md) apply to what is not given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Most calls made for one firing, the first included (≥ 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Backoff after the first failed attempt; doubles each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_backoff_ms: Option<u64>,
    /// Longest backoff between two attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff_ms: Option<u64>,
    /// No attempt starts later than this long after the first attempt's due time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

impl RetryPolicy {
    pub fn is_default(&self) -> bool {
        *self == RetryPolicy::default()
    }

    pub fn validate(&self) -> Result<(), FieldError> {
        if self.max_attempts == Some(0) {
            return Err(FieldError::new(
                "retry.max_attempts",
                "must be at least 1 (the first call counts)",
            ));
        }
        if let (Some(initial), Some(max)) = (self.initial_backoff_ms, self.max_backoff_ms) {
            if initial > max {
                return Err(FieldError::new(
                    "retry.initial_backoff_ms",
                    format!("{initial} is more than retry.max_backoff_ms {max}"),
                ));
            }
        }
        Ok(())
    }
}

/// A command on `chime.timers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TimerCommand {
    /// Create the timer, or re-schedule it if the id is pending.
    Schedule(TimerSpec),
    /// Forget a pending timer; a no-op if it already fired or never existed.
    /// Ends a schedule.
    Cancel { id: String },
    /// Create a schedule (a recurring timer), or replace what has its id.
    Recurring(crate::schedule::ScheduleSpec),
    /// Stop firing a schedule until it is resumed.
    Pause { id: String },
    /// Fire a paused schedule again, from its next occurrence after now.
    Resume { id: String },
    /// What came of a firing's callback (written by the dispatcher).
    Outcome(crate::outcome::Outcome),
}

/// Input that breaks the contract, with the field at fault (dotted path, e.g.
/// `callback.url`) so a client or a dead-letter reader can see what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Checks a timer id: non-empty, at most [`MAX_ID_BYTES`], no control characters.
pub fn validate_id(id: &str) -> Result<(), FieldError> {
    if id.is_empty() {
        return Err(FieldError::new("id", "must not be empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(FieldError::new(
            "id",
            format!("is {} bytes; at most {MAX_ID_BYTES} allowed", id.len()),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(FieldError::new("id", "must not contain control characters"));
    }
    Ok(())
}

impl Callback {
    /// Checks what can be checked before delivery: an absolute http(s) URL with a
    /// host, a valid method token, header names and values that HTTP can carry.
    pub fn validate(&self) -> Result<(), FieldError> {
        let url = url::Url::parse(&self.url)
            .map_err(|e| FieldError::new("callback.url", format!("is not a URL: {e}")))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(FieldError::new(
                "callback.url",
                format!("scheme must be http or https, not {:?}", url.scheme()),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(FieldError::new("callback.url", "has no host"));
        }
        let method_ok = !self.method.is_empty()
            && self
                .method
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !method_ok {
            return Err(FieldError::new(
                "callback.method",
                format!("{:?} is not an HTTP method", self.method),
            ));
        }
        for (name, value) in &self.headers {
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !name_ok {
                return Err(FieldError::new(
                    format!("callback.headers.{name}"),
                    "is not a valid header name",
                ));
            }
            if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(FieldError::new(
                    format!("callback.headers.{name}"),
                    "value contains control characters",
                ));
            }
        }
        Ok(())
    }
}

impl TimerSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_id(&self.id)?;
        if self.attempt == 0 {
            return Err(FieldError::new("attempt", "counts from 1"));
        }
        self.retry.validate()?;
        if let Some(schedule_id) = &self.schedule_id {
            validate_id(schedule_id).map_err(|e| FieldError::new("schedule_id", e.message))?;
        }
        if let Some(delivery) = &self.delivery {
            delivery.validate("delivery")?;
        }
        self.callback.validate()
    }
}

impl TimerCommand {
    /// The timer (or schedule) id the command is about.
    pub fn id(&self) -> &str {
        match self {
            TimerCommand::Schedule(spec) => &spec.id,
            TimerCommand::Recurring(spec) => &spec.id,
            TimerCommand::Outcome(outcome) => &outcome.id,
            TimerCommand::Cancel { id }
            | TimerCommand::Pause { id }
            | TimerCommand::Resume { id } => id,
        }
    }

    /// Decodes and checks one `chime.timers` record. The key must be the timer id:
    /// that is what sends a cancel to the same partition as its schedule.
    pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<TimerCommand, FieldError> {
        let value = value.ok_or_else(|| FieldError::new("value", "record has no value"))?;
        let command: TimerCommand = serde_json::from_slice(value)
            .map_err(|e| FieldError::new("value", format!("not a timer command: {e}")))?;
        match &command {
            TimerCommand::Schedule(spec) => spec.validate()?,
            TimerCommand::Recurring(spec) => spec.validate()?,
            TimerCommand::Outcome(outcome) => outcome.validate()?,
            TimerCommand::Cancel { id }
            | TimerCommand::Pause { id }
            | TimerCommand::Resume { id } => validate_id(id)?,
        }
        let key = key.ok_or_else(|| {
            FieldError::new("key", "record has no key; the key must be the timer id")
        })?;
        if key != command.id().as_bytes() {
            return Err(FieldError::new(
                "key",
                format!(
                    "key {:?} is not the timer id {:?}",
                    String::from_utf8_lossy(key),
                    command.id()
                ),
            ));
        }
        Ok(command)
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail (string keys, no floats).
        serde_json::to_vec(self).expect("timer command serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TimerSpec {
        TimerSpec {
            id: "t1".into(),
            fire_at_ms: 1_700_000_000_000,
            callback: Callback {
                url: "http://127.0.0.1:9/hook".into(),
                method: "POST".into(),
                headers: BTreeMap::new(),
                body: "hi".into(),
            },
            attempt: 1,
            retry: RetryPolicy::default(),
            first_fire_at_ms: None,
            schedule_id: None,
            delivery: None,
        }
    }

    #[test]
    fn schedule_round_trips_in_documented_form() {
        let cmd = TimerCommand::Schedule(spec());
        let json = String::from_utf8(cmd.encode()).unwrap();
        assert_eq!(
            json,
            r#"{"op":"schedule","id":"t1","fire_at_ms":1700000000000,"callback":{"url":"http://127.0.0.1:9/hook","method":"POST","body":"hi"}}"#
        );
        assert_eq!(
            TimerCommand::decode(Some(b"t1"), Some(json.as_bytes())).unwrap(),
            cmd
        );
    }

    #[test]
    fn minimal_schedule_gets_defaults() {
        let v =
            br#"{"op":"schedule","id":"a","fire_at_ms":5,"callback":{"url":"https://x.example/"}}"#;
        let TimerCommand::Schedule(s) = TimerCommand::decode(Some(b"a"), Some(v)).unwrap() else {
            panic!("not a schedule")
        };
        assert_eq!(s.callback.method, "POST");
        assert_eq!(s.attempt, 1);
        assert!(s.callback.body.is_empty());
    }

    #[test]
    fn cancel_decodes() {
        let v = br#"{"op":"cancel","id":"a"}"#;
        assert_eq!(
            TimerCommand::decode(Some(b"a"), Some(v)).unwrap(),
            TimerCommand::Cancel { id: "a".into() }
        );
    }

    #[test]
    fn bad_records_name_what_is_wrong() {
        let err = |k: Option<&[u8]>, v: Option<&[u8]>| TimerCommand::decode(k, v).unwrap_err();
        assert_eq!(err(Some(b"a"), None).field, "value");
        assert_eq!(err(Some(b"a"), Some(b"garbage")).field, "value");
        assert_eq!(
            err(Some(b"a"), Some(br#"{"op":"explode","id":"a"}"#)).field,
            "value"
        );
        let good = br#"{"op":"cancel","id":"a"}"#;
        assert_eq!(err(None, Some(good)).field, "key");
        assert_eq!(err(Some(b"b"), Some(good)).field, "key");
        let ftp = br#"{"op":"schedule","id":"a","fire_at_ms":5,"callback":{"url":"ftp://x/"}}"#;
        assert_eq!(err(Some(b"a"), Some(ftp)).field, "callback.url");
        let empty = br#"{"op":"cancel","id":""}"#;
        assert_eq!(err(Some(b""), Some(empty)).field, "id");
    }

    #[test]
    fn header_validation() {
        let mut s = spec();
        s.callback.headers.insert("bad name".into(), "v".into());
        assert_eq!(s.validate().unwrap_err().field, "callback.headers.bad name");
        let mut s = spec();
        s.callback.method = "GE T".into();
        assert_eq!(s.validate().unwrap_err().field, "callback.method");
    }
}
