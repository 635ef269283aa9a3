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
    #[serde(default = "default_method", deserialize_with = "method_or_default")]
    pub method: String,
    /// Extra request headers.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub headers: BTreeMap<String, String>,
    /// Request body, sent as is.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub body: String,
}

fn default_method() -> String {
    "POST".to_string()
}

/// An optional field given as JSON `null` means the same as leaving it out.
pub fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A struct read only from a JSON object. (serde's derived structs also read
/// a JSON array of the field values in order, so `"retry": [1, 2]` would pass.)
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(MapOnly(deserializer)).map(Object)
    }
}

/// A struct field read only from a JSON object (see [`Object`]).
pub fn object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Object::<T>::deserialize(deserializer).map(|o| o.0)
}

/// An optional struct field: `null` or absent means the default, else a JSON
/// object (see [`Object`]).
pub fn null_or_object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<Object<T>>::deserialize(deserializer)?
        .map(|o| o.0)
        .unwrap_or_default())
}

/// An optional struct field: `null` or absent is `None`, else a JSON object.
pub fn optional_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Object<T>>::deserialize(deserializer)?.map(|o| o.0))
}

/// Asks for a map where a struct is asked for; everything else as is.
struct MapOnly<D>(D);

impl<'de, D: serde::Deserializer<'de>> serde::Deserializer<'de> for MapOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(v)
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(v)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// A JSON number that is a whole number, as `T`: JSON Schema's `integer`
/// (and JavaScript's numbers) include `5.0` and `1e3`, which serde's integer
/// types refuse.
pub fn whole<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i128>,
{
    let n = deserializer.deserialize_any(WholeNumber)?;
    T::try_from(n)
        .map_err(|_| serde::de::Error::custom(format!("{n} is out of range for this field")))
}

/// [`whole`] for an optional field (`null` or absent: none).
pub fn opt_whole<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i128>,
{
    struct Opt;
    impl<'de> serde::de::Visitor<'de> for Opt {
        type Value = Option<i128>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number or null")
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(WholeNumber).map(Some)
        }
    }
    match deserializer.deserialize_option(Opt)? {
        None => Ok(None),
        Some(n) => T::try_from(n)
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{n} is out of range for this field"))),
    }
}

struct WholeNumber;

impl serde::de::Visitor<'_> for WholeNumber {
    type Value = i128;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a whole number")
    }

    fn visit_i64<E>(self, v: i64) -> Result<i128, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<i128, E> {
        Ok(v.into())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<i128, E> {
        // Exactly representable whole numbers only (|v| < 2^63 keeps the cast exact).
        if v.fract() == 0.0 && v.abs() < 2f64.powi(63) {
            Ok(v as i128)
        } else {
            Err(E::custom(format!("{v} is not a whole number")))
        }
    }
}

fn method_or_default<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_else(default_method))
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
    #[serde(deserialize_with = "object")]
    pub callback: Callback,
    /// Delivery attempt this firing is (1 for a fresh timer; retries count up).
    #[serde(default = "first_attempt", skip_serializing_if = "is_first_attempt")]
    pub attempt: u32,
    /// How failed calls are retried; the dispatcher's defaults fill what is absent.
    #[serde(
        default,
        deserialize_with = "null_or_object",
        skip_serializing_if = "RetryPolicy::is_default"
    )]
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
    #[serde(
        default,
        deserialize_with = "opt_whole",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_attempts: Option<u32>,
    /// Backoff after the first failed attempt; doubles each attempt.
    #[serde(
        default,
        deserialize_with = "opt_whole",
        skip_serializing_if = "Option::is_none"
    )]
    pub initial_backoff_ms: Option<u64>,
    /// Longest backoff between two attempts.
    #[serde(
        default,
        deserialize_with = "opt_whole",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_backoff_ms: Option<u64>,
    /// No attempt starts later than this long after the first attempt's due time.
    #[serde(
        default,
        deserialize_with = "opt_whole",
        skip_serializing_if = "Option::is_none"
    )]
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

/// Request headers a callback may not set (compared case-insensitively): they
/// steer where or how the request travels rather than what it says — the
/// virtual host (`host` and its proxy spellings), hop-by-hop connection
/// management, message framing (a wrong `content-length` drops the body or
/// stalls the call), and proxy credentials.
pub const REFUSED_CALLBACK_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "expect",
    "forwarded",
    "host",
    "http2-settings",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-forwarded-host",
];

/// Methods a callback may not use (compared case-insensitively): `CONNECT`
/// opens a tunnel (and drops the URL's path), `TRACE` echoes the request back.
pub const REFUSED_CALLBACK_METHODS: &[&str] = &["CONNECT", "TRACE"];

/// An HTTP token (RFC 9110 §5.6.2): what method and header names are made of.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Callback {
    /// Checks what can be checked before delivery: an absolute http(s) URL with a
    /// host, written plainly (no spaces or control characters for the URL
    /// parser to repair); a method token other than the refused ones; header
    /// names and values that HTTP can carry, none of them a refused header.
    pub fn validate(&self) -> Result<(), FieldError> {
        let url_field = |message: String| FieldError::new("callback.url", message);
        if self
            .url
            .chars()
            .any(|c| c.is_ascii_whitespace() || c.is_control())
        {
            return Err(url_field(
                "must not contain spaces or control characters".into(),
            ));
        }
        let scheme_end = self.url.find("://").unwrap_or(0);
        let scheme = &self.url[..scheme_end];
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(url_field(
                "must be an absolute URL starting with http:// or https://".into(),
            ));
        }
        let url =
            url::Url::parse(&self.url).map_err(|e| url_field(format!("is not a URL: {e}")))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(url_field("has no host".into()));
        }
        if !is_token(&self.method) {
            return Err(FieldError::new(
                "callback.method",
                format!("{:?} is not an HTTP method", self.method),
            ));
        }
        if let Some(refused) = REFUSED_CALLBACK_METHODS
            .iter()
            .find(|m| m.eq_ignore_ascii_case(&self.method))
        {
            return Err(FieldError::new(
                "callback.method",
                format!("{refused} is not allowed for callbacks"),
            ));
        }
        for (name, value) in &self.headers {
            let field = || format!("callback.headers.{name}");
            if !is_token(name) {
                return Err(FieldError::new(field(), "is not a valid header name"));
            }
            if REFUSED_CALLBACK_HEADERS
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name))
            {
                return Err(FieldError::new(
                    field(),
                    "may not be set by a callback: it steers the request rather than \
                     adding to it (see the refused headers in docs/api.md)",
                ));
            }
            if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(FieldError::new(
                    field(),
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
        if value.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(FieldError::new(
                "value",
                "not a timer command: must be a JSON object",
            ));
        }
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
mod tests;
