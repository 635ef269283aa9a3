//! What every mode of `chime-bench` shares: chime child processes
//! ([`spawn`]), the loopback receiver of their callbacks ([`receiver`]),
//! lateness percentiles ([`lateness`]), process CPU ([`cpu`]), fresh topic
//! prefixes ([`deployment`]) and the broker as something to kill, stop and
//! start ([`broker`]).

pub mod broker;
pub mod cpu;
pub mod deployment;
pub mod lateness;
pub mod receiver;
pub mod spawn;

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 50 ms until it yields a value, or fails naming `what`
/// after `within`. An error from `check` ends the wait at once.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sleeps until the wall clock reads `at_ms` (unix milliseconds).
pub async fn sleep_until_ms(at_ms: u64) {
    let now = chime_wire::time::now_ms();
    if at_ms > now {
        tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
    }
}
