//! chime's wire contract: everything two chime processes (or a chime process and
//! a foreign Kafka client) must agree on.
//!
//! * [`topics`] — the topic names derived from one prefix.
//! * [`record`] — the JSON records on those topics and the headers beside them.
//! * [`partition`] — Kafka's murmur2 key partitioner, so anyone can tell which
//!   partition (and so which engine) holds a timer.
//! * [`kafka`] — client settings every chime producer and consumer shares, and topic creation.
//! * [`time`] — unix-millisecond wall clock helpers.

pub mod kafka;
pub mod partition;
pub mod record;
pub mod time;
pub mod topics;

pub use record::{Callback, DeadLetter, RetryPolicy, TimerCommand, TimerSpec};
pub use topics::Topics;
