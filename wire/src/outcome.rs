//! What came of a firing's callback: the dispatcher's `outcome` record on
//! `chime.timers` (one per finished firing, in the transaction that commits
//! the fire record), and the [`Delivery`] summary the engine keeps and
//! answers status questions with.
//!
//! ```json
//! {"op": "outcome", "id": "invoice-981", "fire_at_ms": 1795874587250,
//!  "delivery": {"result": "delivered", "attempts": 1, "status": 204, "at_ms": 1795874587262}}
//! ```
//!
//! The record is keyed by `id`: the timer's id, or for an occurrence of a
//! schedule the schedule's id (so it reaches the partition that owns the
//! schedule), with `timer_id` then naming the occurrence.

use serde::{Deserialize, Serialize};

use crate::command::{validate_id, FieldError};

/// Longest error text kept in a [`Delivery`]; longer ones are cut.
pub const MAX_ERROR_BYTES: usize = 512;

/// How a firing's delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryResult {
    /// The callback answered 2xx.
    Delivered,
    /// Given up: a permanent failure, attempts or deadline exhausted; the
    /// fire is in `chime.dead-letters`.
    DeadLettered,
    /// An attempt failed and another is scheduled (a retry timer).
    Retrying,
}

/// A firing's delivery so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    pub result: DeliveryResult,
    /// Calls made for this firing.
    pub attempts: u32,
    /// The last HTTP status received (absent after a timeout, a connection
    /// error or a refused address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The last error (absent when delivered): the dead letter's reason, or
    /// the failure a retry follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was delivered, dead-lettered, or the last attempt failed.
    pub at_ms: u64,
}

impl Delivery {
    pub fn validate(&self, field: &str) -> Result<(), FieldError> {
        if self.attempts == 0 {
            return Err(FieldError::new(
                format!("{field}.attempts"),
                "counts from 1",
            ));
        }
        if self.status.is_some_and(|s| !(100..=599).contains(&s)) {
            return Err(FieldError::new(
                format!("{field}.status"),
                "is not an HTTP status",
            ));
        }
        if self
            .error
            .as_ref()
            .is_some_and(|e| e.len() > 4 * MAX_ERROR_BYTES)
        {
            return Err(FieldError::new(format!("{field}.error"), "is too long"));
        }
        Ok(())
    }

    /// `error` cut to [`MAX_ERROR_BYTES`] on a character boundary.
    pub fn short_error(error: &str) -> String {
        if error.len() <= MAX_ERROR_BYTES {
            return error.to_string();
        }
        let mut end = MAX_ERROR_BYTES;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &error[..end])
    }

    pub fn encode(&self) -> String {
        // Plain strings and integers: serializing cannot fail.
        serde_json::to_string(self).expect("delivery serializes")
    }
}

/// The payload of an `outcome` command: a firing finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The record's key: the timer id, or the schedule id for an occurrence.
    pub id: String,
    /// The id the fire record carried, when it is not `id` (an occurrence
    /// of schedule `id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer_id: Option<String>,
    /// Due time of the fire record that finished the firing (its last attempt).
    pub fire_at_ms: u64,
    /// Due time of the firing's first attempt, when it was retried; for an
    /// occurrence, the occurrence's due time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_fire_at_ms: Option<u64>,
    pub delivery: Delivery,
}

impl Outcome {
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_id(&self.id)?;
        if let Some(timer_id) = &self.timer_id {
            validate_id(timer_id).map_err(|e| FieldError::new("timer_id", e.message))?;
        }
        if self.delivery.result == DeliveryResult::Retrying {
            return Err(FieldError::new(
                "delivery.result",
                "an outcome is delivered or dead_lettered",
            ));
        }
        self.delivery.validate("delivery")
    }

    /// The due time of the firing (its first attempt).
    pub fn firing_at_ms(&self) -> u64 {
        self.first_fire_at_ms.unwrap_or(self.fire_at_ms)
    }
}
