//! The OpenAPI 3.1 document, generated from the handlers and their types, at
//! `/openapi.json`, and Swagger UI at `/docs` from assets built into the binary.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use chime_wire::{MAX_ID_BYTES, REFUSED_CALLBACK_HEADERS, REFUSED_CALLBACK_METHODS};

use axum::Router;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

use crate::api::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "chime",
        description = "A distributed, durable timer service on Kafka: call this URL at time T.\n\n\
            When API keys are configured (`CHIME_API_KEYS`), every `/v1` and original-API request \
            needs `Authorization: Bearer <key>`; health, readiness, metrics and these docs stay open."
    ),
    paths(
        crate::api::create_timer,
        crate::batch::create_batch,
        crate::api::timer_status,
        crate::api::cancel_timer,
        crate::api::batch_timer_status,
        crate::api::cancel_batch_timer,
        crate::listing::list_timers,
        crate::schedules::create_schedule,
        crate::listing::list_schedules,
        crate::schedules::schedule_status,
        crate::schedules::cancel_schedule,
        crate::schedules::pause_schedule,
        crate::schedules::resume_schedule,
        crate::legacy::create_legacy_timer,
        crate::legacy::legacy_timer_status,
        crate::ops::healthz,
        crate::ops::readyz,
        crate::ops::metrics,
    ),
    components(schemas(CallbackSchema, RetryPolicySchema, crate::error::ErrorBody)),
    modifiers(&ApiKeyScheme),
)]
pub struct ApiDoc;

struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `/docs` (Swagger UI) and `/openapi.json` ([`document`]).
pub fn swagger() -> Router<std::sync::Arc<AppState>> {
    SwaggerUi::new("/docs")
        .external_url_unchecked("/openapi.json", document())
        .into()
}

/// The OpenAPI document served at `/openapi.json`: the one generated from
/// the handlers, with the request and answer schemas replaced by exact ones
/// ([`schemas`]) — every limit the API enforces that JSON Schema can say —
/// and the answers every route can give added to each operation.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(components) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        // Answers never carry `null`: absent fields are left out.
        for schema in components.values_mut() {
            strip_null(schema);
        }
        for (name, schema) in schemas() {
            components.insert(name.to_string(), schema);
        }
    }
    let error = json!({"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}});
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, operation) in item.iter_mut() {
                if let Some(params) = operation
                    .get_mut("parameters")
                    .and_then(Value::as_array_mut)
                {
                    for param in params.iter_mut().filter(|p| p["name"] == "id") {
                        param["schema"] = id_schema();
                        param["description"] =
                            json!("The timer id: 1 to 256 bytes of UTF-8, no control characters");
                    }
                }
                let Some(responses) = operation
                    .get_mut("responses")
                    .and_then(Value::as_object_mut)
                else {
                    continue;
                };
                let mut add = |status: &str, description: &str| {
                    responses.entry(status.to_string()).or_insert_with(
                        || json!({"description": description, "content": error.clone()}),
                    );
                };
                add(
                    "403",
                    "A browser request from an origin not in CHIME_CORS_ORIGINS, or a Host \
                     other than localhost while chime listens on loopback",
                );
                add(
                    "413",
                    "More request headers than CHIME_MAX_HEADERS (64); `limit` says it",
                );
                if method == "post" {
                    add("415", "The body is not sent as `application/json`");
                }
                if path.contains("{id}") {
                    add("400", "The id is not valid");
                }
            }
        }
    }
    doc
}

fn strip_null(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types[0].clone();
                    map.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(variants)) = map.get_mut("oneOf") {
                variants.retain(|v| v.get("type") != Some(&json!("null")));
                if variants.len() == 1 {
                    let only = variants[0].clone();
                    map.remove("oneOf");
                    if let Value::Object(inner) = only {
                        for (k, v) in inner {
                            map.entry(k).or_insert(v);
                        }
                    }
                }
            }
            for value in map.values_mut() {
                strip_null(value);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_null),
        _ => {}
    }
}

/// An HTTP token (RFC 9110): what header names and methods are made of.
const TOKEN: &str = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";

/// A regex matching exactly one of `words`, in any letter case (JSON Schema
/// regexes have no case-insensitive flag).
fn any_case(words: &[&str]) -> String {
    let alternatives: Vec<String> = words
        .iter()
        .map(|w| {
            w.chars()
                .map(|c| {
                    if c.is_ascii_alphabetic() {
                        format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase())
                    } else if c.is_ascii_digit() || c == '-' {
                        c.to_string()
                    } else {
                        format!("\\{c}")
                    }
                })
                .collect()
        })
        .collect();
    format!("^({})$", alternatives.join("|"))
}

fn id_schema() -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_ID_BYTES,
        "pattern": r"^[^\u0000-\u001f\u007f-\u009f]+$",
        "description": "1 to 256 bytes of UTF-8 (JSON Schema counts characters; the limit is \
                        in bytes), no control characters",
        "example": "invoice-981",
    })
}

/// The exact request schemas, and the answers whose generated form was wrong.
fn schemas() -> Vec<(&'static str, Value)> {
    let horizon_ms = crate::HORIZON_DAYS * 86_400_000;
    let nullable_int = |min: u64, max: u64, description: &str| json!({"type": ["integer", "null"], "minimum": min, "maximum": max, "description": description});
    let url = json!({
        "type": "string",
        "pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[^\u0000-\u0020\u007f-\u009f]+$",
        "description": "An absolute `http://` or `https://` URL with a host, without spaces or \
                        control characters.",
        "example": "http://127.0.0.1:9000/hook",
    });
    let callback = json!({
        "type": "object",
        "description": "What to call when a timer fires. `null` for an optional field means \
                        the same as leaving it out.",
        "additionalProperties": false,
        "required": ["url"],
        "properties": {
            "url": url,
            "method": {
                "type": ["string", "null"],
                "pattern": TOKEN,
                "not": {"type": "string", "pattern": any_case(REFUSED_CALLBACK_METHODS)},
                "default": "POST",
                "description": "HTTP method; `POST` when absent. `CONNECT` and `TRACE` are \
                                refused.",
            },
            "headers": {
                "type": ["object", "null"],
                "description": "Extra request headers. Headers that steer the request rather \
                                than add to it are refused, in any letter case: `host`, \
                                hop-by-hop and framing headers, proxy credentials \
                                (see docs/api.md).",
                "propertyNames": {
                    "pattern": TOKEN,
                    "not": {"pattern": any_case(REFUSED_CALLBACK_HEADERS)},
                },
                "additionalProperties": {
                    "type": "string",
                    "pattern": r"^[^\u0000-\u0008\u000a-\u001f\u007f]*$",
                },
            },
            "body": {
                "type": ["string", "null"],
                "maxLength": 65536,
                "description": "Request body, sent as is: at most 64 KiB of UTF-8 (413 above).",
            },
        },
    });
    let u64_max = u64::MAX;
    let retry = json!({
        "type": ["object", "null"],
        "description": "How failed callbacks are retried; the dispatcher's defaults fill what \
                        is absent. `initial_backoff_ms` may not exceed `max_backoff_ms`.",
        "additionalProperties": false,
        "properties": {
            "max_attempts": nullable_int(1, u32::MAX as u64, "Most calls for one firing, the first included."),
            "initial_backoff_ms": nullable_int(0, u64_max, "Backoff after the first failed attempt; doubles each attempt."),
            "max_backoff_ms": nullable_int(0, u64_max, "Longest backoff between two attempts."),
            "deadline_ms": nullable_int(0, u64_max, "No attempt starts later than this after the first due time."),
        },
    });
    let create = json!({
        "type": "object",
        "description": "Body of `POST /v1/timers` (and of each item of a batch). Give exactly \
                        one of `fire_at` and `delay_ms`; `null` for an optional field means \
                        the same as leaving it out.",
        "additionalProperties": false,
        "required": ["callback"],
        "oneOf": [
            {"required": ["fire_at"], "properties": {"fire_at": {"type": "string"}}},
            {"required": ["delay_ms"], "properties": {"delay_ms": {"type": "integer"}}},
        ],
        "properties": {
            "id": {
                "anyOf": [id_schema(), {"type": "null"}],
                "description": "Client-chosen id (1 to 256 bytes, no control characters) for \
                                safe retries and later cancel; generated when absent.",
            },
            "fire_at": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "Absolute due time, RFC 3339 (e.g. `2026-11-28T14:03:07.250Z`); \
                                sub-millisecond parts round up. At most 1 hour in the past \
                                (it then fires at once) and 3,660 days ahead.",
            },
            "delay_ms": nullable_int(0, horizon_ms, "Due time relative to now, in milliseconds: 0 to 3,660 days."),
            "callback": {"$ref": "#/components/schemas/Callback"},
            "retry": {"$ref": "#/components/schemas/RetryPolicy"},
        },
        "example": {
            "id": "invoice-981",
            "delay_ms": 60000,
            "callback": {"url": "http://127.0.0.1:9000/hook", "body": "{\"invoice\": 981}"},
        },
    });
    let legacy = json!({
        "type": "object",
        "description": "Body of the original `POST /timers`: fires in hours:minutes:seconds \
                        (each 0 when absent or null; 3,660 days at most in all) with a `POST` \
                        of an empty body to `url` with `/<id>` appended to its path.",
        "additionalProperties": false,
        "required": ["url"],
        "properties": {
            "hours": nullable_int(0, crate::HORIZON_DAYS * 24, "Hours from now."),
            "minutes": nullable_int(0, crate::HORIZON_DAYS * 24 * 60, "Minutes from now."),
            "seconds": nullable_int(0, crate::HORIZON_DAYS * 24 * 3600, "Seconds from now."),
            "url": callback["properties"]["url"].clone(),
        },
        "example": {"minutes": 1, "seconds": 30, "url": "http://127.0.0.1:9000/hook"},
    });
    let batch = json!({
        "type": "object",
        "description": "Body of `POST /v1/timers/batch`: up to CHIME_MAX_BATCH (default 1000) \
                        timers. Each item is checked on its own as a `CreateTimer`; one that \
                        is not valid fails alone, in its result, so the request as a whole \
                        takes any items.",
        "additionalProperties": false,
        "required": ["timers"],
        "properties": {
            "timers": {
                "type": "array",
                "maxItems": 1000,
                "items": {"description": "A CreateTimer (checked per item)."},
            },
        },
        "example": {"timers": [
            {"delay_ms": 1000, "callback": {"url": "http://127.0.0.1:9000/a"}},
            {"id": "invoice-982", "delay_ms": 2000, "callback": {"url": "http://127.0.0.1:9000/b"}},
        ]},
    });
    let item = json!({
        "description": "The outcome of one item, in request order: created, or why not.",
        "oneOf": [
            {
                "type": "object",
                "additionalProperties": false,
                "required": ["index", "status", "id", "fire_at"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "status": {"const": 201},
                    "id": {"type": "string"},
                    "fire_at": {"type": "string", "format": "date-time"},
                },
            },
            {
                "type": "object",
                "additionalProperties": false,
                "required": ["index", "status", "error"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "status": {"type": "integer", "minimum": 400, "maximum": 599,
                               "description": "The status a single create would have answered."},
                    "error": {"type": "string"},
                    "field": {"type": "string", "description": "The field within the item at fault, or `timers[i]`."},
                    "limit": {"type": "integer", "minimum": 0},
                },
            },
        ],
    });
    let error = json!({
        "type": "object",
        "description": "Every error answer.",
        "additionalProperties": false,
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "description": "What went wrong, for a person."},
            "field": {"type": "string", "description": "The request field (dotted path) or part (`content-type`, `origin`, `host`, `headers`) at fault, when one is."},
            "limit": {"type": "integer", "minimum": 0, "description": "The limit exceeded, for 413s."},
        },
    });
    let schedule_id = json!({
        "type": "string",
        "minLength": 1,
        "maxLength": chime_wire::schedule::MAX_SCHEDULE_ID_BYTES,
        "pattern": r"^[^\u0000-\u001f\u007f-\u009f]+$",
    });
    let schedule = json!({
        "type": "object",
        "description": "Body of `POST /v1/schedules`. Give exactly one of `cron` (with an \
                        optional `time_zone`) and `every_ms`; `null` for an optional field \
                        means the same as leaving it out. What JSON Schema cannot say, the \
                        API checks and names in a 400: the cron syntax, the time zone's IANA \
                        name, an id of at most 235 bytes, `start_at` at most 3,660 days ahead, \
                        `end_at` not in the past and not before `start_at`, and a first \
                        occurrence within 3,660 days and before `end_at`.",
        "additionalProperties": false,
        "required": ["callback"],
        "oneOf": [
            {"required": ["cron"], "properties": {"cron": {"type": "string"}, "every_ms": {"type": "null"}}},
            {"required": ["every_ms"], "properties": {"every_ms": {"type": "integer"}, "cron": {"type": "null"}, "time_zone": {"type": "null"}}},
        ],
        "properties": {
            "id": {
                "anyOf": [schedule_id, {"type": "null"}],
                "description": "Client-chosen id (1 to 235 bytes, no control characters); \
                                generated when absent.",
            },
            "cron": {
                "type": ["string", "null"],
                "description": "`minute hour day-of-month month day-of-week`, or six fields \
                                with seconds first; names, `L`, `W`, `#` and `@daily`-style \
                                nicknames work.",
                "example": "0 9 * * MON-FRI",
            },
            "time_zone": {
                "type": ["string", "null"],
                "description": "IANA time zone the cron is read in; `UTC` when absent.",
                "example": "Europe/Paris",
            },
            "every_ms": nullable_int(1000, horizon_ms, "Instead of `cron`: every this many milliseconds."),
            "start_at": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "RFC 3339; no occurrence before it (for `every_ms`, the first occurrence).",
            },
            "end_at": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "RFC 3339; no occurrence after it.",
            },
            "max_count": nullable_int(1, u64::MAX, "The schedule ends after this many occurrences."),
            "catch_up": {
                "type": ["object", "null"],
                "additionalProperties": false,
                "description": "Which occurrences missed while chime could not fire them fire later.",
                "properties": {
                    "policy": {"enum": ["latest", "all", "none"], "default": "latest"},
                    "window_ms": {"type": "integer", "minimum": 0, "maximum": horizon_ms, "default": 60000},
                },
            },
            "callback": {"$ref": "#/components/schemas/Callback"},
            "retry": {"$ref": "#/components/schemas/RetryPolicy"},
        },
        "example": {
            "id": "daily-report",
            "cron": "0 9 * * MON-FRI",
            "time_zone": "Europe/Paris",
            "callback": {"url": "http://127.0.0.1:9000/report"},
        },
    });
    vec![
        ("CreateSchedule", schedule),
        ("Callback", callback),
        ("RetryPolicy", retry),
        ("CreateTimer", create),
        ("CreateLegacyTimer", legacy),
        ("CreateBatch", batch),
        ("BatchItemResult", item),
        ("ErrorBody", error),
    ]
}

/// What to call when a timer fires.
#[derive(Serialize, ToSchema)]
#[schema(as = Callback)]
pub struct CallbackSchema {
    /// An absolute `http://` or `https://` URL.
    pub url: String,
    /// HTTP method; `POST` when absent.
    pub method: Option<String>,
    /// Extra request headers.
    pub headers: Option<BTreeMap<String, String>>,
    /// Request body, sent as is (≤ 64 KiB).
    pub body: Option<String>,
}

/// How failed callbacks are retried; the dispatcher's defaults fill what is absent.
#[derive(Serialize, ToSchema)]
#[schema(as = RetryPolicy)]
pub struct RetryPolicySchema {
    /// Most calls made for one firing, the first included (≥ 1).
    pub max_attempts: Option<u32>,
    /// Backoff after the first failed attempt; doubles each attempt.
    pub initial_backoff_ms: Option<u64>,
    /// Longest backoff between two attempts.
    pub max_backoff_ms: Option<u64>,
    /// No attempt starts later than this long after the first attempt's due time.
    pub deadline_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo test -p chime-ingest --lib dump -- --ignored --nocapture`
    /// prints the served document.
    #[test]
    #[ignore]
    fn dump() {
        println!("{}", serde_json::to_string_pretty(&document()).unwrap());
    }

    #[test]
    fn refused_names_match_in_any_case() {
        let re = any_case(&["te", "x-forwarded-host"]);
        assert_eq!(
            re,
            "^([Tt][Ee]|[Xx]-[Ff][Oo][Rr][Ww][Aa][Rr][Dd][Ee][Dd]-[Hh][Oo][Ss][Tt])$"
        );
    }

    /// Walks the router's route table: every route it serves is in the document
    /// with its method, and the document lists nothing the router does not serve.
    #[test]
    fn the_document_lists_every_route() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().expect("paths");
        let routes = crate::api::routes().routes;
        for route in &routes {
            let method = route.method.as_str().to_ascii_lowercase();
            assert!(
                paths.get(route.path).and_then(|p| p.get(&method)).is_some(),
                "{} {} is served but not documented",
                route.method,
                route.path
            );
        }
        for (path, item) in paths {
            for method in item.as_object().unwrap().keys() {
                assert!(
                    routes
                        .iter()
                        .any(|r| r.path == path && r.method.as_str().eq_ignore_ascii_case(method)),
                    "{method} {path} is documented but not served"
                );
            }
        }
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
