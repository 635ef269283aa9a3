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

use crate::outcome::Delivery;

/// Every engine's `client.id` starts with this.
pub const ENGINE_CLIENT_ID_PREFIX: &str = "chime-engine-";
/// Separates the instance name from the status address in an engine's client id.
pub const ADDRESS_SEPARATOR: char = '@';
/// The route of a timer's status on an engine's internal endpoint.
pub const TIMER_ROUTE: &str = "/internal/v1/partitions/{partition}/timers/{id}";
/// The route of a schedule's status on an engine's internal endpoint.
pub const SCHEDULE_ROUTE: &str = "/internal/v1/partitions/{partition}/schedules/{id}";
/// The routes listing a partition's pending timers and its schedules
/// (query: [`ListQuery`]), answered with a [`ListAnswer`].
pub const LIST_TIMERS_ROUTE: &str = "/internal/v1/partitions/{partition}/timers";
pub const LIST_SCHEDULES_ROUTE: &str = "/internal/v1/partitions/{partition}/schedules";
/// Most items one listing answer carries.
pub const MAX_LIST_LIMIT: usize = 1000;

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
    /// lead already reports Fired). `delivery` once the dispatcher reported
    /// what came of the callback.
    Fired {
        fire_at_ms: u64,
        fired_at_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delivery: Option<Delivery>,
    },
    /// Cancelled at `cancelled_at_ms`.
    Cancelled { cancelled_at_ms: u64 },
}

/// A schedule's state as the engine owning its partition knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ScheduleStatus {
    NotOwned,
    Loading,
    /// Owned and live, but never seen or already forgotten (or a timer),
    /// as of input offset `applied_through` (see [`TimerStatus::Unknown`]).
    Unknown {
        applied_through: Option<i64>,
    },
    /// Active, paused, or ended within the retention: `schedule` is its
    /// [`crate::ScheduleState`] JSON.
    Known {
        schedule: String,
    },
}

/// Which page of a partition's pending timers or schedules to list: the
/// items after position `after` (pending timers are in (due time, id)
/// order, schedules in id order), at most `limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListQuery {
    /// Timers: the due time of the last item already seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_due_ms: Option<u64>,
    /// The id of the last item already seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_id: Option<String>,
    pub limit: usize,
}

/// A page of a partition's pending timers or schedules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ListAnswer {
    NotOwned,
    Loading,
    Listed {
        items: Vec<ListedItem>,
        /// More items follow the last one.
        more: bool,
    },
}

/// One pending timer (`record` = its schedule command's JSON, `due_ms` its
/// due time) or one schedule (`record` = its state JSON, `due_ms` its next
/// occurrence while active).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedItem {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<u64>,
    pub record: String,
}

/// What a listing is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    PendingTimers,
    Schedules,
}

/// An engine in the same process, asked directly instead of over HTTP.
pub trait StatusSource: Send + Sync {
    /// The state of timer `id`, whose partition (murmur2 of the id) is `partition`.
    fn timer(&self, partition: i32, id: &str) -> TimerStatus;
    /// The state of schedule `id`, whose partition is `partition`.
    fn schedule(&self, _partition: i32, _id: &str) -> ScheduleStatus {
        ScheduleStatus::NotOwned
    }
    /// A page of `partition`'s pending timers or schedules.
    fn list(&self, _partition: i32, _kind: ListKind, _query: &ListQuery) -> ListAnswer {
        ListAnswer::NotOwned
    }
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

/// The path ingest asks for a schedule's status ([`SCHEDULE_ROUTE`], filled in).
pub fn schedule_path(partition: i32, id: &str) -> String {
    format!(
        "/internal/v1/partitions/{partition}/schedules/{}",
        percent_encode(id)
    )
}

/// The path and query of a listing ([`LIST_TIMERS_ROUTE`],
/// [`LIST_SCHEDULES_ROUTE`]).
pub fn list_path(partition: i32, kind: ListKind, query: &ListQuery) -> String {
    let what = match kind {
        ListKind::PendingTimers => "timers",
        ListKind::Schedules => "schedules",
    };
    let mut path = format!(
        "/internal/v1/partitions/{partition}/{what}?limit={}",
        query.limit
    );
    if let Some(due) = query.after_due_ms {
        path.push_str(&format!("&after_due_ms={due}"));
    }
    if let Some(id) = &query.after_id {
        path.push_str(&format!("&after_id={}", percent_encode(id)));
    }
    path
}

pub fn percent_encode(text: &str) -> String {
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
    fn list_paths_carry_the_position() {
        let q = ListQuery {
            after_due_ms: Some(5),
            after_id: Some("a b".into()),
            limit: 10,
        };
        assert_eq!(
            list_path(2, ListKind::PendingTimers, &q),
            "/internal/v1/partitions/2/timers?limit=10&after_due_ms=5&after_id=a%20b"
        );
        assert_eq!(
            list_path(
                0,
                ListKind::Schedules,
                &ListQuery {
                    limit: 3,
                    ..Default::default()
                }
            ),
            "/internal/v1/partitions/0/schedules?limit=3"
        );
        assert_eq!(
            schedule_path(1, "s@1"),
            "/internal/v1/partitions/1/schedules/s%401"
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
