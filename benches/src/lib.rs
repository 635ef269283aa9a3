//! `chime-bench`, chime's measuring tool (a binary of its own, so the
//! production `chime` binary links none of it; `chime bench …` runs it):
//!
//! * [`load`] — the load test: timers per second, lateness, CPU;
//! * [`figures`] — the engine's figures: rebuild rate, failover, lateness;
//! * [`soak`] — the chaos soak: faults under steady load, then the books;
//! * [`faults`] — the failover figures: one fault under steady load, the
//!   lateness of the timers due meanwhile;
//! * [`harness`] — what the modes share: chime child processes, the
//!   callback receiver, percentiles, CPU.
//!
//! The criterion benches live in `benches/`.

pub mod faults;
pub mod figures;
pub mod harness;
pub mod load;
pub mod soak;

use std::path::PathBuf;

/// What every mode needs to know: where Kafka is, which deployment, which
/// chime executable to start.
#[derive(Debug, Clone)]
pub struct Common {
    pub bootstrap: String,
    /// The topic prefix of a running chime (load test without `--spawn`).
    pub topic_prefix: String,
    /// The chime executable children run (default: `chime` next to
    /// `chime-bench`).
    pub chime_bin: Option<PathBuf>,
}
