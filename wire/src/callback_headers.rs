//! The HTTP headers of a callback: what the dispatcher adds to every call
//! and a receiver may rely on (docs/receivers.md). Distinct from the Kafka
//! record headers in [`crate::headers`], though some share a name.

/// The timer's id (percent-encoded if not plain ASCII).
pub const TIMER_ID: &str = "chime-timer-id";
/// This attempt's due time, unix milliseconds.
pub const FIRE_AT_MS: &str = "chime-fire-at-ms";
/// The attempt number, from 1.
pub const ATTEMPT: &str = "chime-attempt";
/// The schedule an occurrence belongs to (percent-encoded like the timer id).
pub const SCHEDULE_ID: &str = "chime-schedule-id";
/// An occurrence's due time, unix ms (the same on every attempt, unlike
/// [`FIRE_AT_MS`]).
pub const OCCURRENCE_AT_MS: &str = "chime-occurrence-at-ms";
/// The same for every attempt and redelivery of one firing.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// `t=<unix ms>,v1=<hex HMAC-SHA256>` when a signing secret is set.
pub const SIGNATURE: &str = "chime-signature";
