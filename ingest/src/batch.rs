//! `POST /v1/timers/batch`: many creates in one request. Each item is checked
//! and appended on its own, so one bad item fails alone; the answer comes once
//! every accepted item was acknowledged by Kafka (or failed to be).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use chime_wire::time::now_ms;

use crate::api::{new_timer, schedule, AppState, CreateTimer};
use crate::body::{field_of, parse_json, strip_position};
use crate::error::{ApiError, ErrorBody};

/// Items checked for duplicates and appended at once (Kafka batches the
/// appends; this bounds the status questions in flight to the engines).
const CONCURRENCY: usize = 128;

/// Body of `POST /v1/timers/batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBatch {
    /// Up to the configured maximum (default 1000) timers, each like the body
    /// of `POST /v1/timers`.
    #[schema(value_type = Vec<CreateTimer>)]
    pub timers: Vec<serde_json::Value>,
}

/// The outcome of one item, in request order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchItemResult {
    /// Position of the item in `timers`.
    pub index: usize,
    /// The status a single create would have answered (201, 400, 413, 503).
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fire_at: Option<String>,
    /// Why the item failed; `field` names the field within the item.
    #[serde(flatten)]
    #[schema(inline)]
    pub error: Option<ErrorBody>,
}

/// Answer of `POST /v1/timers/batch`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchCreated {
    /// Items Kafka acknowledged.
    pub created: usize,
    /// Items that failed.
    pub failed: usize,
    pub results: Vec<BatchItemResult>,
}

/// Create many timers; each item succeeds or fails alone.
#[utoipa::path(
    post, path = "/v1/timers/batch", tag = "timers",
    request_body = CreateBatch,
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Per-item results, after Kafka acknowledged every created item", body = BatchCreated),
        (status = 400, description = "The body is not `{timers: [...]}`", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 413, description = "More timers than the limit, or the body too large; `limit` says it", body = ErrorBody),
    )
)]
pub async fn create_batch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BatchCreated>, ApiError> {
    let req: CreateBatch = parse_json(&headers, body, &state.config)?;
    let limit = state.config.max_batch;
    if req.timers.len() > limit {
        let mut e = ApiError::too_large(Some("timers"), "timers", limit);
        e.body.error = format!(
            "timers: {} items, more than the limit of {limit}",
            req.timers.len()
        );
        return Err(e);
    }
    let now = now_ms();
    let state = &state;
    let results: Vec<BatchItemResult> = stream::iter(req.timers.into_iter().enumerate())
        .map(|(index, item)| async move {
            let outcome = async {
                let req = parse_item(index, item)?;
                let timer = new_timer(req, &state.config, now)?;
                schedule(state, timer).await
            }
            .await;
            match outcome {
                Ok(created) => BatchItemResult {
                    index,
                    status: 201,
                    id: Some(created.id),
                    fire_at: Some(created.fire_at),
                    error: None,
                },
                Err(e) => BatchItemResult {
                    index,
                    status: e.status.as_u16(),
                    id: None,
                    fire_at: None,
                    error: Some(e.body),
                },
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let created = results.iter().filter(|r| r.status == 201).count();
    Ok(Json(BatchCreated {
        created,
        failed: results.len() - created,
        results,
    }))
}

/// Reads item `index` of a batch as a create; a field error names the field
/// within the item, and an item that is not an object is `timers[index]`.
pub fn parse_item(index: usize, item: serde_json::Value) -> Result<CreateTimer, ApiError> {
    if !item.is_object() {
        return Err(ApiError::bad_field(
            format!("timers[{index}]"),
            "each timer must be a JSON object",
        ));
    }
    serde_path_to_error::deserialize(item).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        ApiError::bad_field(field_of(&path, &message), strip_position(&message))
    })
}
