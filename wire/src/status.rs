//! The status protocol between ingest and the engines. Only the engine that
//! owns a timer's partition knows the timer's state, so ingest asks it:
//!
//! * over HTTP, `GET` [`timer_path`] on the engine's internal status
//!   endpoint, answered with a [`TimerStatus`] as JSON (always 200; the
//!   `state` says whether that engine owns the partition);
//! * in-process (`chime all`), through a [`StatusSource`].
//!
//! Ingest finds an engine's endpoint through the engines' consumer group:
//! each member's `client.id` is [`engine_client_id`], which carries the
//! address after [`ADDRESS_SEPARATOR`].

use serde::{Deserialize, Serialize};

/// Every engine's `client.id` starts with this.
pub const ENGINE_CLIENT_ID_PREFIX: &str = "chime-engine-";
/// Separates the instance name from the status address in an engine's client id.
pub const ADDRESS_SEPARATOR: char = '@';
/// The route of a timer's status on an engine's internal endpoint.
pub const TIMER_ROUTE: &str = "/internal/v1/partitions/{partition}/timers/{id}";

/// A timer's state as the engine owning its partition knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TimerStatus {
    /// This engine does not own the timer's partition.
    NotOwned,
    /// The partition is being rebuilt; ask again shortly.
    Loading,
    /// Owned and live, but never seen or already forgotten — as of input
    /// offset `applied_through`: every input record before it is applied.
    /// A record written later (the create a client just got a 201 for) may
    /// not be, so the asker compares it with the partition's end before
    /// concluding the timer does not exist.
    Unknown { applied_through: Option<i64> },
    /// Waiting for its time; `spec` is the schedule command's JSON.
    Pending { fire_at_ms: u64, spec: String },
    /// Fired: released to the dispatchers, effective at `fired_at_ms` (its
    /// due time, or later if it fired late; a fire emitted ahead within the
    /// lead already reports Fired).
    Fired { fire_at_ms: u64, fired_at_ms: u64 },
    /// Cancelled at `cancelled_at_ms`.
    Cancelled { cancelled_at_ms: u64 },
}

/// An engine in the same process, asked directly instead of over HTTP.
pub trait StatusSource: Send + Sync {
    /// The state of timer `id`, whose partition (murmur2 of the id) is `partition`.
    fn timer(&self, partition: i32, id: &str) -> TimerStatus;
    /// Joined its group, and every partition it owns is Live.
    fn is_ready(&self) -> bool;
    /// Sets the engine's gauges (pending timers, partitions) before a scrape.
    fn publish_gauges(&self);
}

/// The `client.id` of engine `instance_id`, advertising its status address.
pub fn engine_client_id(instance_id: &str, status_address: Option<&str>) -> String {
    match status_address {
        Some(address) => {
            format!("{ENGINE_CLIENT_ID_PREFIX}{instance_id}{ADDRESS_SEPARATOR}{address}")
        }
        None => format!("{ENGINE_CLIENT_ID_PREFIX}{instance_id}"),
    }
}

/// The status address an engine advertised in its `client.id`, if any.
pub fn advertised_address(client_id: &str) -> Option<&str> {
    let rest = client_id.strip_prefix(ENGINE_CLIENT_ID_PREFIX)?;
    let (_, address) = rest.rsplit_once(ADDRESS_SEPARATOR)?;
    (!address.is_empty()).then_some(address)
}

/// The path ingest asks for a timer's status ([`TIMER_ROUTE`], filled in).
pub fn timer_path(partition: i32, id: &str) -> String {
    format!(
        "/internal/v1/partitions/{partition}/timers/{}",
        percent_encode(id)
    )
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_address_is_after_the_separator() {
        assert_eq!(
            advertised_address(&engine_client_id("abc", Some("127.0.0.1:4000"))),
            Some("127.0.0.1:4000")
        );
        assert_eq!(advertised_address(&engine_client_id("abc", None)), None);
        assert_eq!(advertised_address("chime-engine-abc@"), None);
        assert_eq!(advertised_address("other@127.0.0.1:1"), None);
    }

    #[test]
    fn ids_are_percent_encoded_in_the_path() {
        assert_eq!(
            timer_path(3, "a/b c"),
            "/internal/v1/partitions/3/timers/a%2Fb%20c"
        );
    }

    #[test]
    fn status_round_trips_through_json() {
        let status = TimerStatus::Pending {
            fire_at_ms: 5,
            spec: "{\"op\":\"schedule\"}".into(),
        };
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<TimerStatus>(&json).unwrap(), status);
    }
}
