//! The properties the fuzz targets (`fuzz/`, `cargo +nightly fuzz`) and the
//! property tests (`ingest/tests/decoders.rs`, stable) check on every decoder
//! that reads bytes from outside chime: any input is either decoded or
//! refused with an error naming a field — never a panic — and what decodes
//! survives a round trip through its encoding.
//!
//! Each function takes one byte string. Inputs with several parts (a record
//! key, value and headers) are split at NUL bytes; a part that is exactly
//! `-` stands for "absent" (no key, no value, no such header).

use axum::http::{HeaderMap, HeaderValue};

use chime_wire::headers::{FIRED_AT_MS, FIRE_AT_MS, OUTCOME, REVOKES_FIRE_AT_MS};
use chime_wire::{ChangelogRecord, FieldError, FiresRecord, RecordHeaders, TimerCommand};

use crate::api::{new_timer, CreateTimer};
use crate::batch::{parse_item, CreateBatch};
use crate::body::parse_body;
use crate::error::ApiError;
use crate::legacy::{legacy_timer, CreateLegacyTimer};
use crate::IngestConfig;

/// A fixed "now" for the REST checks (2026-01-01T00:00:00Z), so runs repeat.
const NOW_MS: u64 = 1_767_225_600_000;

fn parts(data: &[u8]) -> Vec<Option<&[u8]>> {
    data.split(|b| *b == 0)
        .map(|p| (p != b"-").then_some(p))
        .collect()
}

fn part<'a>(parts: &[Option<&'a [u8]>], i: usize) -> Option<&'a [u8]> {
    parts.get(i).copied().flatten()
}

fn named(e: &FieldError) {
    assert!(!e.field.is_empty(), "an error without a field: {e:?}");
    assert!(!e.message.is_empty(), "an error without a message: {e:?}");
}

/// `chime.timers`: `key \0 value`.
pub fn timer_command(data: &[u8]) {
    let p = parts(data);
    let (key, value) = (part(&p, 0), part(&p, 1));
    match TimerCommand::decode(key, value) {
        Err(e) => named(&e),
        Ok(command) => {
            assert_eq!(key, Some(command.id().as_bytes()), "the key is the id");
            let again = TimerCommand::decode(key, Some(&command.encode()))
                .expect("an encoded command decodes");
            assert_eq!(again, command, "the encoding round-trips");
        }
    }
}

/// The changelog: `value \0 chime-fire-at-ms \0 chime-outcome`.
pub fn changelog(data: &[u8]) {
    let p = parts(data);
    let mut headers: Vec<(&str, &[u8])> = Vec::new();
    for (name, i) in [(FIRE_AT_MS, 1), (OUTCOME, 2)] {
        if let Some(v) = part(&p, i) {
            headers.push((name, v));
        }
    }
    match ChangelogRecord::decode(part(&p, 0), headers.as_slice()) {
        Err(e) => named(&e),
        Ok(record) => {
            let written = record.headers();
            let again = ChangelogRecord::decode(record.value(), &written)
                .expect("a written changelog record decodes");
            assert_eq!(again, record, "the record round-trips");
        }
    }
}

/// `chime.fires`: `key \0 value \0 chime-fired-at-ms \0 chime-revokes-fire-at-ms`.
pub fn fires(data: &[u8]) {
    let p = parts(data);
    let mut headers: Vec<(&str, &[u8])> = Vec::new();
    for (name, i) in [(FIRED_AT_MS, 2), (REVOKES_FIRE_AT_MS, 3)] {
        if let Some(v) = part(&p, i) {
            headers.push((name, v));
        }
    }
    let key = part(&p, 0);
    match FiresRecord::decode(key, part(&p, 1), headers.as_slice()) {
        Err(e) => named(&e),
        Ok(record) => {
            assert_eq!(key, Some(record.id().as_bytes()), "the key is the id");
            if let FiresRecord::Fire(fire) = &record {
                assert_eq!(
                    fire.fired_at_ms,
                    headers.as_slice().get_u64(FIRED_AT_MS),
                    "fired-at comes from its header"
                );
            }
        }
    }
}

fn api_named(e: &ApiError) {
    assert!(
        e.status.is_client_error(),
        "a 4xx for bad input, not {}",
        e.status
    );
    assert!(
        e.body.field.as_deref().is_some_and(|f| !f.is_empty()),
        "an error without a field: {:?}",
        e.body
    );
}

/// The REST API's request parsing. The first byte picks what the rest is:
/// `c` the body of `POST /v1/timers`, `b` of `POST /v1/timers/batch`, `l`
/// of the original `POST /timers`, `h` request headers (`content-type \0
/// authorization \0 host`), `a` a consumer-group assignment (what ingest
/// reads from the broker to find the engines); anything else: all bodies.
pub fn rest(data: &[u8]) {
    let config = IngestConfig::new("127.0.0.1:9", "fuzz");
    let (kind, rest) = data.split_first().map_or((0, data), |(k, r)| (*k, r));
    match kind {
        b'c' => create(rest, &config),
        b'b' => batch(rest, &config),
        b'l' => legacy(rest, &config),
        b'h' => headers(rest),
        b'a' => {
            let _ = crate::lookup::assigned_partitions(rest, "fuzz.timers");
        }
        _ => {
            create(data, &config);
            batch(data, &config);
            legacy(data, &config);
        }
    }
}

fn create(body: &[u8], config: &IngestConfig) {
    match parse_body::<CreateTimer>(body) {
        Err(e) => api_named(&e),
        Ok(req) => match new_timer(req, config, NOW_MS) {
            Err(e) => api_named(&e),
            Ok(timer) => {
                let command = TimerCommand::Schedule(timer.spec);
                let id = command.id().as_bytes().to_vec();
                TimerCommand::decode(Some(&id), Some(&command.encode()))
                    .expect("what the API accepts, the engine accepts");
            }
        },
    }
}

fn batch(body: &[u8], config: &IngestConfig) {
    match parse_body::<CreateBatch>(body) {
        Err(e) => api_named(&e),
        Ok(req) => {
            for (index, item) in req.timers.into_iter().enumerate() {
                match parse_item(index, item).and_then(|r| new_timer(r, config, NOW_MS)) {
                    Err(e) => api_named(&e),
                    Ok(timer) => timer.spec.validate().expect("an accepted item is valid"),
                }
            }
        }
    }
}

fn legacy(body: &[u8], config: &IngestConfig) {
    match parse_body::<CreateLegacyTimer>(body) {
        Err(e) => api_named(&e),
        Ok(req) => match legacy_timer(req, config, NOW_MS, "0123456789abcdef".into()) {
            Err(e) => api_named(&e),
            Ok((spec, seconds)) => {
                spec.validate().expect("an accepted timer is valid");
                assert_eq!(spec.fire_at_ms, NOW_MS + seconds * 1000);
                let url = url::Url::parse(&spec.callback.url).expect("a URL");
                assert!(
                    url.path().ends_with("/0123456789abcdef"),
                    "the id ends the path: {url}"
                );
            }
        },
    }
}

fn headers(data: &[u8]) {
    let p = parts(data);
    let value = |i: usize| part(&p, i).and_then(|v| HeaderValue::from_bytes(v).ok());
    let mut map = HeaderMap::new();
    if let Some(v) = value(0) {
        map.insert(axum::http::header::CONTENT_TYPE, v);
    }
    if let Err(e) = crate::body::require_json(&map) {
        api_named(&e);
    }
    if let Some(text) = value(1).as_ref().and_then(|v| v.to_str().ok()) {
        if let Some(token) = crate::guard::bearer_token(text) {
            assert!(!token.is_empty() && text.contains(token));
        }
    }
    if let Some(host) = part(&p, 2) {
        let _ = crate::browser::is_local_host(host);
    }
}
