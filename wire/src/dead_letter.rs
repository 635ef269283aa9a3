//! The record on `chime.dead-letters`: something chime could not process —
//! an input record that breaks the contract, or a fire whose callback could
//! not be delivered — with the reason, so nothing is dropped silently.

use serde::{Deserialize, Serialize};

/// A record on `chime.dead-letters`: what could not be processed, and why.
/// The key is the original record's key (the timer id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Why the record was given up on.
    pub reason: String,
    /// Where the record came from.
    pub source_topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The original key and value, as (lossy) UTF-8.
    pub key: Option<String>,
    pub value: Option<String>,
    /// Delivery attempts made, for undeliverable fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Last HTTP status seen, for undeliverable fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// When it was dead-lettered, unix ms.
    pub dead_at_ms: u64,
}

impl DeadLetter {
    pub fn encode(&self) -> Vec<u8> {
        // Plain strings and integers: serializing cannot fail.
        serde_json::to_vec(self).expect("dead letter serializes")
    }
}

/// Lossy UTF-8 of raw record bytes, for dead letters and logs.
pub fn lossy(bytes: Option<&[u8]>) -> Option<String> {
    bytes.map(|b| String::from_utf8_lossy(b).into_owned())
}
