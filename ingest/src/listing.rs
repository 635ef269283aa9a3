//! Listing what is pending: `GET /v1/timers?state=pending` and
//! `GET /v1/schedules`, a page at a time with an opaque cursor.
//!
//! Only the engine that owns a partition knows its timers, so a listing
//! walks the partitions in order and asks each one's owner for the items
//! after a position (pending timers in (due time, id) order, schedules in id
//! order) — no scan of Kafka per request. The cursor says where the walk
//! stopped: a partition and a position in it.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use chime_wire::status::MAX_LIST_LIMIT;
use chime_wire::time::now_ms;
use chime_wire::{
    Callback, ListAnswer, ListKind, ListQuery, ListedItem, RetryPolicy, ScheduleState, TimerCommand,
};

use crate::api::{format_ms, AppState};
use crate::delivery::DeliveryView;
use crate::error::{ApiError, ErrorBody};
use crate::schedules::{ScheduleStateName, ScheduleView};

/// Items per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;

/// Query of `GET /v1/timers`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TimersQuery {
    /// Which timers: `pending` (the only state that can be listed; the default).
    #[param(pattern = "^pending$")]
    pub state: Option<String>,
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Query of `GET /v1/schedules`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SchedulesQuery {
    /// Only schedules in this state: `active`, `paused`, `completed` or
    /// `cancelled` (ended ones are listed for an hour); all when absent.
    #[param(pattern = "^(active|paused|completed|cancelled)$")]
    pub state: Option<String>,
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A pending timer in a listing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PendingTimer {
    pub id: String,
    /// The due time, RFC 3339, UTC.
    pub fire_at: String,
    pub time_left_ms: u64,
    #[schema(value_type = crate::docs::CallbackSchema)]
    pub callback: Callback,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::docs::RetryPolicySchema>)]
    pub retry: Option<RetryPolicy>,
    /// For an occurrence of a schedule being retried: the schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    /// A retry's attempts so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryView>,
}

/// Answer of `GET /v1/timers`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TimerPage {
    /// By partition, then due time, then id.
    pub timers: Vec<PendingTimer>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Answer of `GET /v1/schedules`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SchedulePage {
    /// By partition, then id.
    pub schedules: Vec<ScheduleView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// List pending timers, a page at a time.
///
/// Answered by the engines that own the partitions, walked in order; the
/// order is stable (partition, due time, id), so paging through sees every
/// timer pending throughout the walk once. Timers created meanwhile may or
/// may not appear; fired ones leave.
#[utoipa::path(
    get, path = "/v1/timers", tag = "timers",
    params(TimersQuery),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "A page of pending timers", body = TimerPage),
        (status = 400, description = "A query parameter is wrong; `field` names it", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 503, description = "A partition is loading or its owner cannot be reached", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn list_timers(
    State(state): State<Arc<AppState>>,
    query: Result<Query<TimersQuery>, QueryRejection>,
) -> Result<Json<TimerPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_field("query", e.body_text()))?;
    if let Some(s) = query.state.as_deref().filter(|s| *s != "pending") {
        return Err(ApiError::bad_field(
            "state",
            format!("{s:?}: only pending timers can be listed"),
        ));
    }
    let limit = limit_of(query.limit)?;
    let cursor = query.cursor.as_deref().map(Cursor::parse).transpose()?;
    let (items, next) = walk(&state, ListKind::PendingTimers, cursor, limit, |_| true).await?;
    let now = now_ms();
    let timers = items
        .into_iter()
        .filter_map(|item| {
            let due = item.due_ms?;
            let Ok(TimerCommand::Schedule(spec)) = serde_json::from_str(&item.record) else {
                return None;
            };
            Some(PendingTimer {
                id: item.id,
                fire_at: format_ms(due),
                time_left_ms: due.saturating_sub(now),
                retry: (!spec.retry.is_default()).then_some(spec.retry),
                delivery: spec.delivery.as_ref().map(Into::into),
                schedule_id: spec.schedule_id,
                callback: spec.callback,
            })
        })
        .collect();
    Ok(Json(TimerPage {
        timers,
        next_cursor: next.map(|c| c.encode()),
    }))
}

/// List schedules, a page at a time.
///
/// Answered by the engines that own the partitions, walked in order
/// (partition, then id).
#[utoipa::path(
    get, path = "/v1/schedules", tag = "schedules",
    params(SchedulesQuery),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "A page of schedules", body = SchedulePage),
        (status = 400, description = "A query parameter is wrong; `field` names it", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 503, description = "A partition is loading or its owner cannot be reached", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn list_schedules(
    State(state): State<Arc<AppState>>,
    query: Result<Query<SchedulesQuery>, QueryRejection>,
) -> Result<Json<SchedulePage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_field("query", e.body_text()))?;
    let wanted = match query.state.as_deref() {
        None => None,
        Some("active") => Some(ScheduleStateName::Active),
        Some("paused") => Some(ScheduleStateName::Paused),
        Some("completed") => Some(ScheduleStateName::Completed),
        Some("cancelled") => Some(ScheduleStateName::Cancelled),
        Some(other) => {
            return Err(ApiError::bad_field(
                "state",
                format!("{other:?}: one of active, paused, completed, cancelled"),
            ))
        }
    };
    let limit = limit_of(query.limit)?;
    let cursor = query.cursor.as_deref().map(Cursor::parse).transpose()?;
    let view = |item: &ListedItem| {
        serde_json::from_str::<ScheduleState>(&item.record)
            .ok()
            .map(|s| ScheduleView::of(&s))
    };
    let keep = |item: &ListedItem| wanted.is_none_or(|w| view(item).is_some_and(|v| v.state == w));
    let (items, next) = walk(&state, ListKind::Schedules, cursor, limit, keep).await?;
    Ok(Json(SchedulePage {
        schedules: items.iter().filter_map(view).collect(),
        next_cursor: next.map(|c| c.encode()),
    }))
}

fn limit_of(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        n @ 1..=MAX_LIST_LIMIT => Ok(n),
        n => Err(ApiError::bad_field(
            "limit",
            format!("{n} is not between 1 and {MAX_LIST_LIMIT}"),
        )),
    }
}

/// Where a walk stopped: partition, and the last item seen in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub partition: i32,
    pub after_due_ms: Option<u64>,
    pub after_id: Option<String>,
}

impl Cursor {
    /// `v1.<partition>.<due or ->.<hex of the id, or ->`: opaque to clients.
    pub fn encode(&self) -> String {
        let due = self
            .after_due_ms
            .map_or_else(|| "-".to_string(), |d| d.to_string());
        let id = self.after_id.as_ref().map_or_else(
            || "-".to_string(),
            |id| id.bytes().map(|b| format!("{b:02x}")).collect(),
        );
        format!("v1.{}.{due}.{id}", self.partition)
    }

    pub fn parse(text: &str) -> Result<Cursor, ApiError> {
        let bad = || ApiError::bad_field("cursor", "is not a cursor this API gave");
        let mut parts = text.split('.');
        if parts.next() != Some("v1") {
            return Err(bad());
        }
        let partition: i32 = parts
            .next()
            .and_then(|p| p.parse().ok())
            .filter(|p| *p >= 0)
            .ok_or_else(bad)?;
        let after_due_ms = match parts.next().ok_or_else(bad)? {
            "-" => None,
            d => Some(d.parse().map_err(|_| bad())?),
        };
        let after_id = match parts.next().ok_or_else(bad)? {
            "-" => None,
            hex => {
                if hex.len() % 2 != 0 || hex.len() > 2 * chime_wire::MAX_ID_BYTES {
                    return Err(bad());
                }
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| bad())?;
                Some(String::from_utf8(bytes).map_err(|_| bad())?)
            }
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Cursor {
            partition,
            after_due_ms,
            after_id,
        })
    }
}

/// Walks the partitions from `cursor`, asking each owner for the items
/// after the position, until `limit` items that `keep` accepts were found.
/// Returns them and the cursor of the next page, if any.
async fn walk(
    state: &AppState,
    kind: ListKind,
    cursor: Option<Cursor>,
    limit: usize,
    keep: impl Fn(&ListedItem) -> bool,
) -> Result<(Vec<ListedItem>, Option<Cursor>), ApiError> {
    let partitions = state.lookup.partition_count().await?;
    let mut at = cursor.unwrap_or(Cursor {
        partition: 0,
        after_due_ms: None,
        after_id: None,
    });
    let mut items = Vec::with_capacity(limit.min(1024));
    while at.partition < partitions {
        let query = ListQuery {
            after_due_ms: at.after_due_ms,
            after_id: at.after_id.clone(),
            limit: limit - items.len(),
        };
        let ListAnswer::Listed { items: page, more } =
            state.lookup.list(at.partition, kind, &query).await?
        else {
            return Err(ApiError::unavailable(
                format!("partition {} is not answered by its owner", at.partition),
                1,
            ));
        };
        if let Some(last) = page.last() {
            at.after_due_ms = last.due_ms.filter(|_| kind == ListKind::PendingTimers);
            at.after_id = Some(last.id.clone());
        }
        items.extend(page.into_iter().filter(&keep));
        if !more {
            at = Cursor {
                partition: at.partition + 1,
                after_due_ms: None,
                after_id: None,
            };
        }
        if items.len() >= limit {
            break;
        }
    }
    let next = (at.partition < partitions).then_some(at);
    Ok((items, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        for c in [
            Cursor {
                partition: 3,
                after_due_ms: Some(1_795_000_000_000),
                after_id: Some("a.b/ü@1".into()),
            },
            Cursor {
                partition: 0,
                after_due_ms: None,
                after_id: None,
            },
        ] {
            assert_eq!(Cursor::parse(&c.encode()).unwrap(), c);
        }
        for bad in [
            "",
            "v2.1.-.-",
            "v1.x.-.-",
            "v1.-1.-.-",
            "v1.1.-.zz",
            "v1.1.-.6",
            "v1.1.-.-.-",
        ] {
            assert_eq!(
                Cursor::parse(bad).unwrap_err().body.field.as_deref(),
                Some("cursor"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(limit_of(None).unwrap(), DEFAULT_LIMIT);
        assert!(limit_of(Some(0)).is_err());
        assert!(limit_of(Some(MAX_LIST_LIMIT + 1)).is_err());
    }
}
