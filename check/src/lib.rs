//! The checker: audits a chime deployment from its topics alone, as an
//! outsider would. It reads `<prefix>.timers` (what was asked), the changelog
//! (what is still pending) and `<prefix>.fires` (what fired), all
//! read_committed, and reports acknowledged timers that did not fire, fired
//! more than once, fired early or fired after their cancel, with engine
//! fire-lateness percentiles. It shares no code with the engine: only the
//! wire contract and the Kafka client settings.
//!
//! The model: for each timer id the latest command on `chime.timers` wins. If
//! it is a schedule due more than `grace` ago, exactly one fire record with the
//! same `(id, fire_at)` must exist (a revoke record on the fires topic takes
//! back a fire emitted ahead of its time). Earlier schedules of the same id
//! that were replaced may or may not have fired (a re-schedule after the fire
//! is a new timer), but no `(id, fire_at)` may fire twice. Schedules are
//! audited by [`schedules`]: every occurrence due fired or was skipped by its
//! catch-up policy, none twice, and as many as the schedule's state counts.
//!
//! Two engine settings enter the audit, so they must match the engines':
//! the lead (a fire emitted up to `lead` before its time is not early) and
//! the tick (see [`CheckConfig::cancel_allowance`]).

mod audit;
mod schedules;

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use chime_kafka::group::QuietEof;
use chime_kafka::MessageHeaders;
use chime_wire::time::now_ms;
use chime_wire::{FiresRecord, TimerCommand, Topics};

pub use audit::Audit;

#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub bootstrap: String,
    pub topics: Topics,
    /// Timers due less than this long ago are not yet expected to have fired.
    pub grace: Duration,
    /// The engines' lead (`CHIME_LEAD_MS`): a fire this far ahead of its
    /// time is not early.
    pub lead: Duration,
    /// The engines' transaction interval (`CHIME_TICK_MS`): the longest input
    /// waits before the engine applies it.
    pub tick: Duration,
    /// Give up reading a topic after this long.
    pub read_timeout: Duration,
}

impl CheckConfig {
    /// An audit of the deployment on `topic_prefix` whose engines run with
    /// this `lead` and `tick`; grace 5 s.
    pub fn new(bootstrap: &str, topic_prefix: &str, lead: Duration, tick: Duration) -> Self {
        CheckConfig {
            bootstrap: bootstrap.to_string(),
            topics: Topics::new(topic_prefix),
            grace: Duration::from_secs(5),
            lead,
            tick,
            read_timeout: Duration::from_secs(120),
        }
    }

    /// How long after a cancel was written a fire of its timer may still be
    /// emitted without the cancel having been ignored: `lead + tick`.
    ///
    /// A cancel can lose a race: the engine may emit the fire (up to `lead`
    /// ahead of its time) before it has read the cancel. It applies its
    /// input at least once per `tick`, and a record reaches it within what
    /// the lead is sized for (a transaction cycle plus read_committed
    /// visibility, see docs/design.md). So a fire emitted more than
    /// `lead + tick` after the cancel's timestamp was emitted with the cancel
    /// in reach: the cancel was ignored. The rule compares the emit time, not
    /// the due time, so it also catches an overdue timer fired after its
    /// cancel by an engine that took the partition over; and a timer due
    /// more than `2 × lead + tick` after its cancel can never pass it.
    pub fn cancel_allowance(&self) -> Duration {
        self.lead + self.tick
    }
}

/// Fire lateness (fired_at − fire_at) percentiles, milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Lateness {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Lateness {
    /// Nearest-rank percentiles of `samples`.
    pub fn of(samples: &mut [u64]) -> Lateness {
        samples.sort_unstable();
        let rank = |q: f64| nearest_rank(samples, q).unwrap_or(0);
        Lateness {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: rank(1.0),
        }
    }
}

/// The nearest-rank `q`-quantile (0 < q ≤ 1) of `sorted` (ascending), or
/// `None` when it is empty.
pub fn nearest_rank<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[i - 1])
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// Commands read from the timers topic.
    pub commands: usize,
    /// Timer ids whose latest command is a schedule due before now − grace.
    pub expected: usize,
    /// Fire records read, less those revoked.
    pub fires: usize,
    /// Fires emitted ahead of their time and then revoked by a cancel.
    pub revoked: usize,
    /// Pending records left in the changelog.
    pub pending: usize,
    /// Expected timers with no fire record (ids).
    pub missing: Vec<String>,
    /// `(id, fire_at)` fired more than once (ids).
    pub duplicates: Vec<String>,
    /// Fired before their time (less the lead) (ids).
    pub early: Vec<String>,
    /// Fired more than [`CheckConfig::cancel_allowance`] after their cancel
    /// was written (ids).
    pub fired_after_cancel: Vec<String>,
    /// Still pending in the changelog although due before now − grace (ids).
    pub overdue: Vec<String>,
    /// Schedules audited (those with a state in the changelog).
    pub schedules: usize,
    /// Schedules whose occurrences in `chime.fires` differ in number from
    /// what their state says fired (ids).
    pub schedule_miscounts: Vec<String>,
    /// Occurrences due that neither fired nor were skipped (occurrence ids).
    pub missed_occurrences: Vec<String>,
    pub lateness_ms: Lateness,
}

impl CheckReport {
    /// No timer lost, duplicated, early or fired despite its cancel.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.duplicates.is_empty()
            && self.early.is_empty()
            && self.fired_after_cancel.is_empty()
            && self.overdue.is_empty()
            && self.schedule_miscounts.is_empty()
            && self.missed_occurrences.is_empty()
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sample = |ids: &[String]| {
            let mut s = ids.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            if ids.len() > 5 {
                s.push_str(", …");
            }
            s
        };
        writeln!(f, "commands read          {}", self.commands)?;
        writeln!(f, "timers expected fired  {}", self.expected)?;
        writeln!(f, "fire records           {}", self.fires)?;
        writeln!(f, "revoked fires          {}", self.revoked)?;
        writeln!(f, "pending in changelog   {}", self.pending)?;
        writeln!(f, "schedules audited      {}", self.schedules)?;
        for (name, ids) in [
            ("missing", &self.missing),
            ("fired more than once", &self.duplicates),
            ("fired early", &self.early),
            ("fired after cancel", &self.fired_after_cancel),
            ("overdue in changelog", &self.overdue),
            ("schedule miscounts", &self.schedule_miscounts),
            ("missed occurrences", &self.missed_occurrences),
        ] {
            writeln!(f, "{name:<22} {} {}", ids.len(), sample(ids))?;
        }
        let l = &self.lateness_ms;
        writeln!(
            f,
            "fire lateness ms       p50 {} p90 {} p99 {} max {}",
            l.p50, l.p90, l.p99, l.max
        )?;
        write!(
            f,
            "verdict                {}",
            if self.is_clean() { "clean" } else { "PROBLEMS" }
        )
    }
}

/// Reads the three topics and audits them.
pub fn check(config: &CheckConfig) -> anyhow::Result<CheckReport> {
    let now = now_ms();
    let mut audit = Audit::new(config);
    read_all(config, &config.topics.timers, |m| {
        audit.command(
            TimerCommand::decode(m.key(), m.payload()).ok(),
            timestamp(m),
        );
    })?;
    // The changelog before the fires: every occurrence a schedule's state
    // counts is then among the fires read, even while engines run.
    read_all(config, &config.topics.changelog, |m| {
        if let Some(key) = m.key() {
            let id = String::from_utf8_lossy(key);
            audit.changelog_record(&id, m.payload(), &MessageHeaders(m));
        }
    })?;
    read_all(config, &config.topics.fires, |m| {
        if let Ok(record) = FiresRecord::decode(m.key(), m.payload(), &MessageHeaders(m)) {
            audit.fires_record(record, timestamp(m));
        }
    })?;
    Ok(audit.report(now))
}

fn timestamp(m: &BorrowedMessage<'_>) -> u64 {
    m.timestamp()
        .to_millis()
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(0)
}

/// Calls `each` for every committed record of `topic`, from the beginning to
/// the current end of every partition.
fn read_all(
    config: &CheckConfig,
    topic: &str,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> anyhow::Result<()> {
    let consumer: BaseConsumer<QuietEof> = chime_kafka::consumer_config(
        &config.bootstrap,
        "chime-checker",
        &format!("chime-checker-{}", uuid::Uuid::new_v4().simple()),
    )
    .set("enable.partition.eof", "true")
    .create_with_context(QuietEof)?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        anyhow::bail!("topic {topic} does not exist");
    }
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + config.read_timeout;
    // A partition reports its end again after more records arrived: count
    // each partition once.
    let mut at_end = std::collections::HashSet::new();
    // Errors a consumer reports while it goes on (a broker of the cluster
    // is down, a connection dropped) are not the end of the audit: the
    // client reconnects, or reads from the partition's new leader. The
    // last one is given if the end is not reached in time.
    let mut last_error: Option<KafkaError> = None;
    while at_end.len() < partitions.len() {
        if Instant::now() > deadline {
            let why = last_error
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default();
            anyhow::bail!(
                "reading {topic} did not reach its end in {:?}{why}",
                config.read_timeout
            );
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) if consumer.client().fatal_error().is_some() => return Err(e.into()),
            Some(Err(e)) => last_error = Some(e),
            Some(Ok(m)) => each(&m),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(
            Lateness::of(&mut v),
            Lateness {
                p50: 50,
                p90: 90,
                p99: 99,
                max: 100
            }
        );
        assert_eq!(Lateness::of(&mut []), Lateness::default());
        assert_eq!(Lateness::of(&mut [7]).p99, 7);
        assert_eq!(nearest_rank(&[-3i64, 1, 2, 9], 0.5), Some(1));
        assert_eq!(nearest_rank::<i64>(&[], 0.5), None);
    }

    #[test]
    fn cancel_allowance_is_the_lead_plus_one_tick() {
        let c = CheckConfig::new(
            "127.0.0.1:9092",
            "x",
            Duration::from_millis(200),
            Duration::from_millis(10),
        );
        assert_eq!(c.cancel_allowance(), Duration::from_millis(210));
    }
}
