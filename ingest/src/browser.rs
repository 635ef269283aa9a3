//! Web browsers: which pages may call the API.
//!
//! A page a developer visits must not be able to create timers (that call
//! their localhost services) or cancel them. Three rules, in this order:
//!
//! * **DNS rebinding.** When the API listens on a loopback address, the
//!   `Host` a request names must be `localhost` (or `*.localhost`) or a
//!   loopback address; otherwise `403`. A page on `evil.example` whose name
//!   was re-pointed at 127.0.0.1 sends `Host: evil.example` and is refused.
//! * **Origin.** A request with an `Origin` header (browsers send one on
//!   every cross-origin request and on same-origin writes) is served only if
//!   the origin is the API's own (the Swagger UI at `/docs`: same host and
//!   port as `Host`) or is listed in `CHIME_CORS_ORIGINS` (`*` lists every
//!   origin); otherwise `403` naming the origin. Requests without `Origin`
//!   (curl, SDKs, servers) are not affected.
//! * **Pre-flight.** `OPTIONS` with `Access-Control-Request-Method` from a
//!   listed origin gets `204` with the CORS headers (methods `GET, POST,
//!   DELETE`, headers `authorization, content-type`, max age 600 s); from
//!   any other origin `403`. Listed origins get `Access-Control-Allow-Origin`
//!   (their own origin, never `*`) and `Vary: Origin` on every answer.
//!
//! Together with `application/json` being required for bodies (a plain HTML
//! form or a "simple" `fetch` cannot send it without a pre-flight), no page
//! can write through the API unless its origin is configured.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::AppState;
use crate::error::ApiError;

/// Methods and request headers a listed origin may use.
const ALLOW_METHODS: &str = "GET, POST, DELETE";
const ALLOW_HEADERS: &str = "authorization, content-type";
const EXPOSE_HEADERS: &str = "retry-after, www-authenticate";
const MAX_AGE_SECS: &str = "600";

/// Parses `CHIME_CORS_ORIGINS`: comma-separated origins (`scheme://host[:port]`),
/// compared case-insensitively; `*` allows every origin.
pub fn parse_origins(list: &str) -> Vec<String> {
    list.split(',')
        .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
        .filter(|o| !o.is_empty())
        .collect()
}

/// The browser rules above, as a middleware around every route.
pub async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if state.config.loopback_only_hosts {
        if let Some(host) = headers.get(header::HOST) {
            if !is_local_host(host.as_bytes()) {
                let shown = String::from_utf8_lossy(host.as_bytes()).into_owned();
                return ApiError::forbidden(
                    "host",
                    format!(
                        "Host {shown:?} refused: chime listens on a loopback address and \
                         answers only to localhost or a loopback address (DNS-rebinding guard)"
                    ),
                )
                .into_response();
            }
        }
    }
    let Some(origin) = headers.get(header::ORIGIN).cloned() else {
        return next.run(request).await;
    };
    let origin_text = String::from_utf8_lossy(origin.as_bytes()).to_ascii_lowercase();
    let listed = state
        .config
        .cors_origins
        .iter()
        .any(|o| o == "*" || *o == origin_text);
    let preflight = request.method() == Method::OPTIONS
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if listed {
        if preflight {
            let mut response = StatusCode::NO_CONTENT.into_response();
            allow(response.headers_mut(), &origin);
            let h = response.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(MAX_AGE_SECS),
            );
            return response;
        }
        let mut response = next.run(request).await;
        allow(response.headers_mut(), &origin);
        return response;
    }
    if !preflight && same_origin(&origin_text, headers) {
        return next.run(request).await;
    }
    ApiError::forbidden(
        "origin",
        format!(
            "cross-origin request from {origin_text:?} refused: list the origin in \
             CHIME_CORS_ORIGINS to allow it"
        ),
    )
    .into_response()
}

fn allow(headers: &mut HeaderMap, origin: &HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
}

/// The origin names the host (and port) the request was sent to: a page
/// served by chime itself (the Swagger UI).
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some(authority) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| host.eq_ignore_ascii_case(authority))
}

/// `localhost`, `*.localhost` or a loopback address, with any port.
pub fn is_local_host(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || is_port(port) => v6,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_port(text: &str) -> bool {
    let digits = text.strip_prefix(':').unwrap_or(text);
    !digits.is_empty() && digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_hosts() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.9.9.9:1",
            "localhost",
            "LOCALHOST:8080",
            "api.localhost:80",
            "[::1]",
            "[::1]:8080",
            "localhost.",
        ] {
            assert!(is_local_host(host.as_bytes()), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "192.0.2.2:8080",
            "localhost.evil.example",
            "[::2]:8080",
            "127.0.0.1:80:80",
            "127.0.0.1:x",
            "",
        ] {
            assert!(!is_local_host(host.as_bytes()), "{host}");
        }
    }

    #[test]
    fn origins_parse_and_compare_case_insensitively() {
        assert_eq!(
            parse_origins(" https://App.example/ ,http://127.0.0.1:3000,"),
            vec!["https://app.example", "http://127.0.0.1:3000"]
        );
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin("http://127.0.0.1:8080", &h));
        assert!(!same_origin("http://127.0.0.1:8081", &h));
        assert!(!same_origin("null", &h));
    }
}
