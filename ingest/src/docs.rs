//! The OpenAPI 3.1 document, generated from the handlers and their types, at
//! `/openapi.json`, and Swagger UI at `/docs` from assets built into the binary.

use std::collections::BTreeMap;

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
        crate::listing::list_timers,
        crate::schedules::create_schedule,
        crate::listing::list_schedules,
        crate::schedules::schedule_status,
        crate::schedules::cancel_schedule,
        crate::schedules::pause_schedule,
        crate::schedules::resume_schedule,
        crate::api::create_legacy_timer,
        crate::api::legacy_timer_status,
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

/// `/docs` (Swagger UI) and `/openapi.json`.
pub fn swagger() -> Router<std::sync::Arc<AppState>> {
    SwaggerUi::new("/docs")
        .url("/openapi.json", ApiDoc::openapi())
        .into()
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
