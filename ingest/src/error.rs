//! Every error the API returns is `{"error": "...", "field": "..."?, "limit": n?}`
//! with a 4xx or 5xx status, so a client can tell exactly what to fix.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use chime_wire::FieldError;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// The request field at fault (dotted path), when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The limit exceeded, for 413s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// Seconds, for 503s.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn bad_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody {
                error: format!("{field}: {}", message.into()),
                field: Some(field),
                limit: None,
            },
            retry_after: None,
        }
    }

    pub fn too_large(field: Option<&str>, what: &str, limit: usize) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            body: ErrorBody {
                error: format!("{what} is larger than the limit of {limit} bytes"),
                field: field.map(str::to_string),
                limit: Some(limit as u64),
            },
            retry_after: None,
        }
    }

    /// 403 naming the request part at fault (a browser's `origin`, the `host`).
    pub fn forbidden(field: &str, message: impl Into<String>) -> Self {
        let mut e = ApiError::new(StatusCode::FORBIDDEN, message);
        e.body.field = Some(field.to_string());
        e
    }

    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                error: message.into(),
                field: None,
                limit: None,
            },
            retry_after: None,
        }
    }

    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: ErrorBody {
                error: message.into(),
                field: None,
                limit: None,
            },
            retry_after: Some(retry_after),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::bad_field(e.field, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.into());
        }
        response
    }
}
