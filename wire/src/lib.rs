//! chime's wire contract: everything two chime processes (or a chime process
//! and a foreign Kafka client) must agree on. Data only: no I/O, no Kafka
//! client (that is `chime-kafka`).
//!
//! One module per topic's record, plus what they share:
//!
//! ```text
//! chime.timers       key = id   value = TimerCommand          command.rs (+ schedule.rs, outcome.rs)
//! chime.changelog    key = id   value = command | tombstone   changelog.rs
//! chime.fires        key = id   value = fire | revoke         fires.rs
//! chime.dead-letters key = key  value = DeadLetter            dead_letter.rs
//! ```
//!
//! * [`headers`] — the record headers chime writes, and how to read them.
//! * [`status`] — the status protocol between ingest and the engines.
//! * [`topics`] — the topic names derived from one prefix.
//! * [`partition`] — Kafka's murmur2 key partitioner, so anyone can tell which
//!   partition (and so which engine) holds a timer.
//! * [`time`] — unix-millisecond wall clock.

pub mod callback_headers;
pub mod changelog;
pub mod command;
pub mod dead_letter;
pub mod fires;
pub mod headers;
pub mod outcome;
pub mod partition;
pub mod recurrence;
pub mod schedule;
pub mod status;
pub mod time;
pub mod topics;

pub use changelog::{ChangelogRecord, Finished};
pub use command::{
    validate_id, Callback, FieldError, RetryPolicy, TimerCommand, TimerSpec, MAX_ID_BYTES,
    REFUSED_CALLBACK_HEADERS, REFUSED_CALLBACK_METHODS,
};
pub use dead_letter::{lossy, DeadLetter};
pub use fires::{Fire, FiresRecord, Revoke};
pub use headers::{HeaderList, RecordHeaders};
pub use outcome::{Delivery, DeliveryResult, Outcome};
pub use schedule::{ScheduleSpec, ScheduleState};
pub use status::{
    ListAnswer, ListKind, ListQuery, ListedItem, ScheduleStatus, StatusSource, TimerStatus,
};
pub use topics::Topics;
