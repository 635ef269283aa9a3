//! The load test (`chime-bench [FLAGS]`, or `chime bench`): drives a chime
//! (a running one, or `chime all` it spawns) with timers at a steady rate or
//! in one burst, receives their callbacks on loopback and reports what
//! arrived, how late, and at what cost.
//!
//! Creation and firing are measured apart: every timer is created before
//! the first one is due (plus a margin), then the tool watches them fire.

mod args;
mod baseline;
pub mod create;
mod drive;
mod plot;
pub mod report;

use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};

use chime_wire::Topics;

use crate::harness::deployment::Deployment;
use crate::harness::receiver::Receiver;
use crate::harness::spawn::{chime_exe, SpawnedChime};
use crate::Common;
pub use args::{BenchArgs, Workload, MAX_TIMERS};
pub use create::Via;
use report::{Ceiling, Report};

/// Calls in flight in the raw HTTP baseline.
const HTTP_BASELINE_IN_FLIGHT: usize = 256;

/// A run's report plus what the plot needs.
pub struct Outcome {
    pub report: Report,
    /// Size of one timer record, for the Kafka baseline.
    pub record_bytes: usize,
    pub due_ms: Vec<u64>,
    pub arrivals: Vec<report::Arrival>,
}

/// The load test: runs, prints the table (or JSON), writes the plot.
pub async fn main(args: &BenchArgs, common: &Common) -> anyhow::Result<()> {
    let outcome = run(args, common).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome.report)?);
    } else {
        print!("{}", outcome.report.table());
    }
    if let Some(path) = &args.plot {
        let title = match outcome.report.offered_rate_per_s {
            Some(r) => format!("{} timers at {r:.0}/s", outcome.report.timers),
            None => format!("burst of {}", outcome.report.timers),
        };
        plot::write_svg(path, &title, &outcome.due_ms, &outcome.arrivals)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(())
}

/// One run, start to end; a spawned chime is stopped whatever happens.
pub async fn run(args: &BenchArgs, common: &Common) -> anyhow::Result<Outcome> {
    args.check()?;
    let workload = args.workload()?;
    let bootstrap = common.bootstrap.as_str();
    let receiver = Receiver::start().await?;
    let run_id = format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let outcome = if args.spawn {
        let exe = chime_exe(common.chime_bin.as_deref())?;
        let prefix = format!("bench-{run_id}");
        let chime = SpawnedChime::start(
            &exe,
            bootstrap,
            &prefix,
            args.partitions,
            args.api_key.as_deref(),
        )
        .await?;
        let target = Chime {
            api: chime.api.clone(),
            prefix: prefix.clone(),
            partitions: args.partitions,
            processes: vec![("chime all (spawned)".to_string(), chime.pid())],
        };
        let outcome = drive::drive(args, bootstrap, &run_id, workload, &receiver, &target)
            .await
            .map_err(|e| {
                e.context(format!(
                    "the spawned chime's log ends:\n{}",
                    chime.log_tail()
                ))
            });
        let stopped = chime.stop().await;
        // Repeated runs must not pile up partitions on the broker.
        Deployment::named(bootstrap, &prefix, args.partitions)
            .remove()
            .await;
        let outcome = outcome?;
        stopped.context("stopping the spawned chime")?;
        (outcome, args.partitions)
    } else {
        let target = Chime {
            api: args.url.trim_end_matches('/').to_string(),
            prefix: common.topic_prefix.clone(),
            partitions: timers_partitions(bootstrap, &Topics::new(&common.topic_prefix).timers)?,
            processes: Vec::new(),
        };
        let outcome = drive::drive(args, bootstrap, &run_id, workload, &receiver, &target).await?;
        (outcome, target.partitions)
    };
    let (mut outcome, partitions) = outcome;
    // After a spawned chime stopped, so the ceilings do not share the
    // machine with timers still firing.
    if args.baselines {
        outcome.report.baselines =
            measure_baselines(bootstrap, &run_id, partitions, &outcome, &receiver).await?;
    }
    receiver.stop();
    Ok(outcome)
}

/// The chime under test.
struct Chime {
    api: String,
    prefix: String,
    partitions: i32,
    /// Processes whose CPU is reported: (label, pid).
    processes: Vec<(String, u32)>,
}

fn timers_partitions(bootstrap: &str, topic: &str) -> anyhow::Result<i32> {
    let consumer: BaseConsumer =
        chime_kafka::client_config(bootstrap, "chime-bench-metadata").create()?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading metadata of {topic} from {bootstrap}"))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    anyhow::ensure!(
        partitions > 0,
        "topic {topic} does not exist on {bootstrap}; pass the running chime's --topic-prefix, or use --spawn"
    );
    Ok(partitions as i32)
}

async fn measure_baselines(
    bootstrap: &str,
    run_id: &str,
    partitions: i32,
    outcome: &Outcome,
    receiver: &Receiver,
) -> anyhow::Result<Vec<Ceiling>> {
    let report = &outcome.report;
    let chime_rate = report.delivery.delivered_rate_per_s;
    let share = |rate: f64| if rate > 0.0 { chime_rate / rate } else { 0.0 };
    let record_bytes = outcome.record_bytes;
    let (records, seconds) = baseline::kafka_produce_consume(
        bootstrap,
        &format!("bench-{run_id}.baseline"),
        partitions,
        report.timers,
        record_bytes,
    )
    .await
    .context("Kafka baseline")?;
    let kafka_rate = records as f64 / seconds.max(1e-6);
    // Enough calls in flight to keep the receiver busy, as the dispatcher
    // does (it allows up to 1024 by default).
    let (posts, post_s) = baseline::http_posts(
        receiver,
        report.timers.min(200_000),
        HTTP_BASELINE_IN_FLIGHT,
    )
    .await
    .context("HTTP baseline")?;
    let http_rate = posts as f64 / post_s.max(1e-6);
    Ok(vec![
        Ceiling {
            what: format!("Kafka produce→consume ({record_bytes} B records)"),
            count: records,
            seconds,
            rate_per_s: kafka_rate,
            chime_share: share(kafka_rate),
        },
        Ceiling {
            what: "HTTP POSTs to the receiver (reqwest)".into(),
            count: posts,
            seconds: post_s,
            rate_per_s: http_rate,
            chime_share: share(http_rate),
        },
    ])
}
