//! When to try a failed callback again: which outcomes are worth a retry,
//! exponential backoff with jitter, `Retry-After`, and a timer's policy over
//! the dispatcher's defaults.

use std::time::{Duration, SystemTime};

use chime_wire::RetryPolicy;
use reqwest::header::HeaderMap;

/// The dispatcher's policy where a timer's `retry` object says nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryDefaults {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub deadline_ms: u64,
}

impl Default for RetryDefaults {
    fn default() -> Self {
        RetryDefaults {
            max_attempts: 8,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 10 * 60 * 1_000,
            deadline_ms: 24 * 60 * 60 * 1_000,
        }
    }
}

impl RetryDefaults {
    /// A timer's policy with the gaps filled.
    pub fn apply(&self, policy: &RetryPolicy) -> RetryDefaults {
        RetryDefaults {
            max_attempts: policy.max_attempts.unwrap_or(self.max_attempts).max(1),
            initial_backoff_ms: policy.initial_backoff_ms.unwrap_or(self.initial_backoff_ms),
            max_backoff_ms: policy.max_backoff_ms.unwrap_or(self.max_backoff_ms),
            deadline_ms: policy.deadline_ms.unwrap_or(self.deadline_ms),
        }
    }

    /// Backoff after attempt `failed` (from 1) failed: `initial × 2^(failed−1)`
    /// capped at the maximum, then "equal jitter" — a uniformly random point in
    /// its upper half, so retries of many timers that failed together spread
    /// out without any waiting much less than the schedule says.
    /// `unit` is a random number in [0, 1).
    pub fn backoff_ms(&self, failed: u32, unit: f64) -> u64 {
        let exp = failed.saturating_sub(1).min(63);
        let base = self
            .initial_backoff_ms
            .saturating_mul(1u64 << exp)
            .min(self.max_backoff_ms);
        let half = base / 2;
        half + ((base - half) as f64 * unit.clamp(0.0, 1.0)) as u64
    }
}

/// What one call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    /// 2xx.
    Delivered { status: u16 },
    /// 429, 5xx, a timeout or a connection error: worth another attempt.
    Retryable {
        status: Option<u16>,
        error: String,
        retry_after_ms: Option<u64>,
    },
    /// Any other answer, or a refused address: no attempt will do better.
    Permanent { status: Option<u16>, error: String },
}

impl CallResult {
    /// The outcome's class, as a metric label.
    pub fn class(&self) -> &'static str {
        match self {
            CallResult::Delivered { .. } => "delivered",
            CallResult::Retryable { .. } => "retryable",
            CallResult::Permanent { .. } => "permanent",
        }
    }
}

/// Classifies an HTTP status. `excerpt` is the start of the answer's body,
/// kept for the dead letter.
pub fn classify(status: reqwest::StatusCode, headers: &HeaderMap, excerpt: &str) -> CallResult {
    if status.is_success() {
        return CallResult::Delivered {
            status: status.as_u16(),
        };
    }
    let mut error = format!("callback answered {status}");
    if status.is_redirection() {
        error.push_str(" (redirects are not followed)");
    }
    if !excerpt.is_empty() {
        error.push_str(": ");
        error.push_str(excerpt);
    }
    let code = status.as_u16();
    if code == 429 || status.is_server_error() {
        CallResult::Retryable {
            status: Some(code),
            error,
            retry_after_ms: retry_after_ms(headers, SystemTime::now()),
        }
    } else {
        CallResult::Permanent {
            status: Some(code),
            error,
        }
    }
}

/// `Retry-After` as milliseconds from `now`: delta-seconds or an HTTP date.
pub fn retry_after_ms(headers: &HeaderMap, now: SystemTime) -> Option<u64> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(secs.saturating_mul(1000));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO).as_millis() as u64)
}

/// A random number in [0, 1) for jitter (v4 UUIDs come from the OS's RNG).
pub fn random_unit() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let p = RetryDefaults {
            initial_backoff_ms: 1000,
            max_backoff_ms: 5000,
            ..RetryDefaults::default()
        };
        assert_eq!(p.backoff_ms(1, 0.0), 500);
        assert_eq!(p.backoff_ms(1, 0.999_999), 999);
        assert_eq!(p.backoff_ms(2, 0.0), 1000);
        assert_eq!(p.backoff_ms(3, 0.5), 3000);
        assert_eq!(p.backoff_ms(10, 0.0), 2500, "capped at 5000 before jitter");
        assert_eq!(p.backoff_ms(200, 1.0), 5000, "no overflow");
    }

    #[test]
    fn timer_policy_overrides_defaults() {
        let d = RetryDefaults::default();
        let p = d.apply(&RetryPolicy {
            max_attempts: Some(3),
            initial_backoff_ms: None,
            max_backoff_ms: Some(100),
            deadline_ms: None,
        });
        assert_eq!(p.max_attempts, 3);
        assert_eq!(p.max_backoff_ms, 100);
        assert_eq!(p.initial_backoff_ms, d.initial_backoff_ms);
        assert_eq!(p.deadline_ms, d.deadline_ms);
    }

    #[test]
    fn statuses_are_classified() {
        let h = HeaderMap::new();
        let s = |c: u16| reqwest::StatusCode::from_u16(c).unwrap();
        assert_eq!(
            classify(s(204), &h, ""),
            CallResult::Delivered { status: 204 }
        );
        for code in [429, 500, 503] {
            assert!(matches!(
                classify(s(code), &h, ""),
                CallResult::Retryable { .. }
            ));
        }
        for code in [301, 400, 404, 410] {
            assert!(matches!(
                classify(s(code), &h, ""),
                CallResult::Permanent { .. }
            ));
        }
    }

    #[test]
    fn retry_after_seconds_and_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after_ms(&h, now), Some(7000));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Sun, 06 Nov 1994 08:50:37 GMT"),
        );
        assert_eq!(retry_after_ms(&h, now), Some(60_000));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after_ms(&h, now), None);
    }

    #[test]
    fn random_unit_is_in_range() {
        for _ in 0..1000 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
    }
}
