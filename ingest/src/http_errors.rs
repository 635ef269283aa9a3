//! Every error answer is JSON, also those no handler writes:
//!
//! * [`json_fallbacks`] — the router's own `404` (no such route) and `405`
//!   (route without that method; the `Allow` header is kept) get an
//!   [`ErrorBody`](crate::error::ErrorBody).
//! * [`JsonListener`] — the HTTP server answers some requests before any
//!   router sees them: `431` (header section larger than the server reads),
//!   `414` (URI too long) and `400` (a request line or header it cannot
//!   parse), each with an empty body. The listener's connections rewrite
//!   exactly those answers to carry a JSON body.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::error::ApiError;

/// Gives a JSON body to the router's bodiless 404 and 405 answers.
pub async fn json_fallbacks(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    if !matches!(
        status,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
    ) || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let message = if status == StatusCode::NOT_FOUND {
        format!("no route {method} {path}; see /docs for the API")
    } else {
        let allowed = response
            .headers()
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        format!("{path} does not take {method}; it takes {allowed}")
    };
    let (mut parts, _) = response.into_parts();
    let fresh = ApiError::new(status, message).into_response();
    let (fresh_parts, body) = fresh.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in fresh_parts.headers.iter() {
        parts.headers.insert(name.clone(), value.clone());
    }
    Response::from_parts(parts, body)
}

/// A TCP listener whose connections give the HTTP server's own error
/// answers (400, 414, 431) a JSON body.
pub struct JsonListener(pub TcpListener);

impl axum::serve::Listener for JsonListener {
    type Io = JsonErrors<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.0).await;
        (JsonErrors::new(stream), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A connection that rewrites the server's bodiless 400/414/431 answers.
///
/// hyper writes such an answer as one buffer holding only the response head,
/// with `content-length: 0`. Everything chime's handlers answer has a body,
/// so a head-only 400/414/431 with `content-length: 0` can only be hyper's.
/// Writes are claimed whole and the rewritten bytes flushed before anything
/// else (as a buffered writer does).
pub struct JsonErrors<T> {
    inner: T,
    pending: Vec<u8>,
    sent: usize,
}

impl<T> JsonErrors<T> {
    pub fn new(inner: T) -> Self {
        JsonErrors {
            inner,
            pending: Vec::new(),
            sent: 0,
        }
    }
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain(cx))?;
        if let Some(rewritten) = rewrite_server_error(buf) {
            self.pending = rewritten;
            self.sent = 0;
            // The bytes are ours now; a pending write finishes on flush.
            let _ = self.drain(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Vectored writes would let a head arrive in pieces; one buffer per write
    // keeps the check above exact.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// The JSON version of a head-only `HTTP/1.x 400|414|431` answer with
/// `content-length: 0`, or None for anything else.
pub fn rewrite_server_error(buf: &[u8]) -> Option<Vec<u8>> {
    let status = match buf.get(..13)? {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'0' | b'1', b' ', a, b, c, b' '] => {
            std::str::from_utf8(&[*a, *b, *c])
                .ok()?
                .parse::<u16>()
                .ok()?
        }
        _ => return None,
    };
    let (message, field) = match status {
        400 => ("the request could not be parsed as HTTP", None),
        414 => ("the request URI is too long", Some("uri")),
        431 => (
            "the request's header section is larger than the server reads",
            Some("headers"),
        ),
        _ => return None,
    };
    let head = std::str::from_utf8(buf).ok()?;
    let head = head.strip_suffix("\r\n\r\n")?;
    if head.contains("\r\n\r\n") {
        return None; // more than one head in the buffer
    }
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut out = String::with_capacity(buf.len() + 160);
    out.push_str(status_line);
    out.push_str("\r\n");
    let mut had_empty_length = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") {
            if value.trim() != "0" {
                return None;
            }
            had_empty_length = true;
            continue;
        }
        if name.eq_ignore_ascii_case("content-type")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            return None;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    if !had_empty_length {
        return None;
    }
    let mut error = ApiError::new(
        StatusCode::from_u16(status).ok()?,
        format!("{status}: {message}"),
    );
    error.body.field = field.map(str::to_string);
    let body = serde_json::to_string(&error.body).ok()?;
    out.push_str("content-type: application/json\r\n");
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    out.push_str(&body);
    Some(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_error_heads_get_a_json_body() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Sun, 30 Nov 2025 06:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite_server_error(head).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("date: "), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["field"], "headers");
        assert!(json["error"].as_str().unwrap().starts_with("431"));
    }

    #[test]
    fn other_answers_pass_untouched() {
        for buf in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n",
            b"{\"error\":\"x\"}",
            b"",
        ] {
            assert!(rewrite_server_error(buf).is_none(), "{:?}", String::from_utf8_lossy(buf));
        }
    }
}
