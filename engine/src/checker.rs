//! The checker: audits a deployment from its topics alone. It reads
//! `chime.timers` (what was asked), the changelog (what is still pending) and
//! `chime.fires` (what fired), all read_committed, and reports acknowledged
//! timers that did not fire, fired more than once, fired early or fired after
//! their cancel, with engine fire-lateness percentiles.
//!
//! The model: for each timer id the latest command on `chime.timers` wins. If
//! it is a schedule due more than `grace` ago, exactly one fire record with the
//! same `(id, fire_at)` must exist (a revoke record on the fires topic takes
//! back a fire emitted ahead of its time). Earlier schedules of the same id
//! that were replaced may or may not have fired (a re-schedule after the fire
//! is a new timer), but no `(id, fire_at)` may fire twice. Schedules are
//! audited by [`crate::checker_schedules`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use chime_kafka::group::QuietEof;
use chime_kafka::MessageHeaders;
use chime_wire::time::now_ms;
use chime_wire::{ChangelogRecord, FiresRecord, Revoke, TimerCommand, Topics};

use crate::checker_schedules::ScheduleAudit;

#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub bootstrap: String,
    pub topics: Topics,
    /// Timers due less than this long ago are not yet expected to have fired.
    pub grace: Duration,
    /// The engine's lead: a fire this far ahead of its time is not early.
    pub lead: Duration,
    /// Give up reading a topic after this long.
    pub read_timeout: Duration,
}

impl CheckConfig {
    pub fn new(bootstrap: &str, topic_prefix: &str) -> Self {
        CheckConfig {
            bootstrap: bootstrap.to_string(),
            topics: Topics::new(topic_prefix),
            grace: Duration::from_secs(5),
            lead: crate::DEFAULT_LEAD,
            read_timeout: Duration::from_secs(120),
        }
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
        if samples.is_empty() {
            return Lateness::default();
        }
        samples.sort_unstable();
        let rank = |q: f64| {
            let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[i - 1]
        };
        Lateness {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: samples[samples.len() - 1],
        }
    }
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
    /// Fired although their cancel was written before they fired (ids).
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

/// The latest command for one timer id.
struct Intent {
    fire_at_ms: u64,
    /// Timestamp of a cancel that came after the schedule, if one did.
    cancelled_at_ms: Option<u64>,
}

/// Reads the three topics and audits them.
pub fn check(config: &CheckConfig) -> anyhow::Result<CheckReport> {
    let now = now_ms();
    let mut report = CheckReport::default();

    let mut intents: HashMap<String, Intent> = HashMap::new();
    let mut schedules = ScheduleAudit::default();
    read_all(config, &config.topics.timers, |m| {
        report.commands += 1;
        let decoded = TimerCommand::decode(m.key(), m.payload());
        if let Ok(command) = &decoded {
            schedules.command(command, timestamp(m));
        }
        match decoded {
            Ok(TimerCommand::Schedule(spec)) => {
                intents.insert(
                    spec.id,
                    Intent {
                        fire_at_ms: spec.fire_at_ms,
                        cancelled_at_ms: None,
                    },
                );
            }
            Ok(TimerCommand::Cancel { id }) => {
                if let Some(intent) = intents.get_mut(&id) {
                    intent.cancelled_at_ms.get_or_insert(timestamp(m));
                }
            }
            Ok(_) => {}  // schedules (above), outcomes
            Err(_) => {} // dead-lettered by the engine
        }
    })?;

    // The changelog before the fires: every occurrence a schedule's state
    // counts is then among the fires read, even while engines run.
    let mut pending: HashMap<String, u64> = HashMap::new();
    read_all(config, &config.topics.changelog, |m| {
        let Some(id) = m.key().map(|k| String::from_utf8_lossy(k).into_owned()) else {
            return;
        };
        if schedules.changelog(&id, m.payload(), &MessageHeaders(m)) {
            return;
        }
        match ChangelogRecord::decode(m.payload(), &MessageHeaders(m)) {
            Ok(ChangelogRecord::Pending { fire_at_ms, .. }) => {
                pending.insert(id, fire_at_ms);
            }
            Ok(ChangelogRecord::Finished(_)) => {
                pending.remove(&id);
            }
            Err(_) => {}
        }
    })?;
    report.pending = pending.len();

    // (id, fire_at) → fired_at of each fire record not revoked
    let mut fired: HashMap<(String, u64), Vec<u64>> = HashMap::new();
    let mut lateness = Vec::new();
    let lead = config.lead.as_millis() as u64;
    read_all(config, &config.topics.fires, |m| {
        let (spec, fired_at) = match FiresRecord::decode(m.key(), m.payload(), &MessageHeaders(m)) {
            Ok(FiresRecord::Fire(fire)) => (fire.spec, fire.fired_at_ms),
            // A revoke takes back a fire emitted ahead of its time.
            Ok(FiresRecord::Revoke(Revoke { id, fire_at_ms })) => {
                schedules.revoke(&id, fire_at_ms);
                if let Some(times) = fired.get_mut(&(id, fire_at_ms)) {
                    times.pop();
                    report.fires -= 1;
                    report.revoked += 1;
                }
                return;
            }
            Err(_) => return,
        };
        report.fires += 1;
        let fired_at = fired_at.unwrap_or_else(|| timestamp(m));
        if fired_at.saturating_add(lead) < spec.fire_at_ms {
            report.early.push(spec.id.clone());
        }
        lateness.push(fired_at.saturating_sub(spec.fire_at_ms));
        schedules.fire(&spec, fired_at);
        fired
            .entry((spec.id, spec.fire_at_ms))
            .or_default()
            .push(fired_at);
    })?;

    let due_before = now.saturating_sub(config.grace.as_millis() as u64);
    for ((id, _), times) in &fired {
        if times.len() > 1 {
            report.duplicates.push(id.clone());
        }
    }
    for (id, intent) in &intents {
        let key = (id.clone(), intent.fire_at_ms);
        let fires = fired.get(&key).filter(|t| !t.is_empty());
        match intent.cancelled_at_ms {
            // A cancel written well before the fire must have prevented it.
            Some(cancelled_at)
                if fires.is_some_and(|t| t.iter().any(|&at| at > cancelled_at + 1_000)) =>
            {
                report.fired_after_cancel.push(id.clone());
            }
            Some(_) => {}
            None if intent.fire_at_ms < due_before => {
                report.expected += 1;
                if fires.is_none() {
                    report.missing.push(id.clone());
                }
            }
            None => {}
        }
    }
    for (id, fire_at) in &pending {
        if *fire_at < due_before {
            report.overdue.push(id.clone());
        }
    }
    let found = schedules.finish(due_before);
    report.schedules = found.schedules;
    report.schedule_miscounts = found.miscounts;
    report.missed_occurrences = found.missed;
    report.fired_after_cancel.extend(found.fired_after_cancel);
    report.overdue.extend(found.overdue);
    for ids in [
        &mut report.missing,
        &mut report.duplicates,
        &mut report.early,
        &mut report.fired_after_cancel,
        &mut report.overdue,
        &mut report.schedule_miscounts,
        &mut report.missed_occurrences,
    ] {
        ids.sort();
        ids.dedup();
    }
    report.lateness_ms = Lateness::of(&mut lateness);
    Ok(report)
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
    let mut at_end = 0;
    while at_end < partitions.len() {
        if Instant::now() > deadline {
            anyhow::bail!(
                "reading {topic} did not reach its end in {:?}",
                config.read_timeout
            );
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => at_end += 1,
            Some(Err(e)) => return Err(e.into()),
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
    }
}
