//! What came of a callback, as the status answers show it: the dispatcher
//! reports each finished firing to the engine that owns the timer (an
//! `outcome` record), and a retry carries the failed attempts with it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use chime_wire::{Delivery, DeliveryResult};

use crate::api::format_ms;

/// Where a firing's delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// The callback answered 2xx.
    Delivered,
    /// Given up (a permanent failure, or attempts or deadline exhausted): the
    /// fire is in the dead-letter topic.
    DeadLettered,
    /// An attempt failed; the next one is scheduled.
    Retrying,
}

/// What came of the callback: attempts made, the last answer, and when it
/// was delivered or dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    pub state: DeliveryState,
    /// Calls made for this firing.
    pub attempts: u32,
    /// The last HTTP status the callback answered (absent after a timeout, a
    /// connection error or a refused address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// The last error: why it was dead-lettered, or why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the callback answered 2xx (delivered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
    /// When it was given up (dead-lettered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_lettered_at: Option<String>,
    /// When the last failed attempt was made (retrying).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<String>,
}

impl From<&Delivery> for DeliveryView {
    fn from(d: &Delivery) -> Self {
        let at = Some(format_ms(d.at_ms));
        let (state, delivered_at, dead_lettered_at, last_attempt_at) = match d.result {
            DeliveryResult::Delivered => (DeliveryState::Delivered, at, None, None),
            DeliveryResult::DeadLettered => (DeliveryState::DeadLettered, None, at, None),
            DeliveryResult::Retrying => (DeliveryState::Retrying, None, None, at),
        };
        DeliveryView {
            state,
            attempts: d.attempts,
            last_status: d.status,
            last_error: d.error.clone(),
            delivered_at,
            dead_lettered_at,
            last_attempt_at,
        }
    }
}
