//! `chime-bench rebuild`: produces N schedule commands due in a day, lets
//! one engine apply them (so its changelog holds N pending records), stops
//! it, then starts fresh engines and reads their `changelog rebuilt` log
//! lines. Also reads the same changelog with a bare consumer (no
//! processing): Kafka's own ceiling for the rebuild on this machine.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use chime_kafka::group::QuietEof;
use chime_wire::time::now_ms;

use super::{loadavg, on_fresh_deployment, FigureArgs, Rig};
use crate::Common;

#[derive(Args, Debug, Clone)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub figures: FigureArgs,
    /// Pending timers the changelog holds.
    #[arg(long, default_value_t = 1_000_000)]
    pub timers: usize,
    /// Fresh engines that rebuild it, one after another.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
}

pub async fn run(args: &RebuildArgs, common: &Common) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=crate::load::MAX_TIMERS as usize).contains(&args.timers),
        "--timers: between 1 and {}",
        crate::load::MAX_TIMERS
    );
    on_fresh_deployment("rebuild", common, &args.figures, |rig| {
        measure(rig, args.timers, args.repeats)
    })
    .await
}

async fn measure(rig: Rig, n: usize, repeats: usize) -> anyhow::Result<()> {
    let p = rig.partitions as usize;
    let day_ahead = now_ms() + 86_400_000;
    let produce_rate = rig
        .produce((0..n as u64).map(|i| day_ahead + i).collect())
        .await?;
    println!("produced {n} schedule commands at {produce_rate:.0}/s");

    let mut loader = rig.engine("loader", &[])?;
    loader.wait_live(p, Duration::from_secs(60)).await?;
    let live_at = Instant::now();
    let applied_at = rig.wait_applied(Duration::from_secs(600)).await?;
    let apply_secs = applied_at.duration_since(live_at).as_secs_f64();
    let loader_rss = loader.memory_mib("VmRSS");
    println!(
        "loader applied {n} commands in {apply_secs:.1} s ({:.0}/s; includes its first rebuild); RSS {loader_rss:.0} MiB",
        n as f64 / apply_secs
    );
    loader.terminate()?;

    let raw = tokio::task::block_in_place(|| raw_changelog_read(&rig))?;

    println!();
    println!("| run | records | pending | rebuild ms | records/s | pending/s | spawn→live ms | engine CPU s to live | RSS MiB (peak) | load avg |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| bare consumer, no processing | {} | – | {} | {:.0} | – | – | – | – | {} |",
        raw.0,
        raw.1,
        raw.0 as f64 * 1000.0 / raw.1.max(1) as f64,
        loadavg()
    );
    for run in 1..=repeats {
        let spawned = Instant::now();
        let mut engine = rig.engine(&format!("rebuilder-{run}"), &[])?;
        engine.wait_live(p, Duration::from_secs(600)).await?;
        let spawn_to_live = spawned.elapsed().as_millis();
        // CPU is steadier than wall time on a shared machine.
        let cpu_to_live = engine.cpu_seconds();
        let rebuilt = engine.lines("changelog rebuilt");
        let covered: BTreeSet<i32> = rebuilt.iter().flat_map(|l| l.partitions()).collect();
        anyhow::ensure!(
            covered.len() == p,
            "rebuild covered {covered:?}, not all {p} partitions"
        );
        let records: u64 = rebuilt.iter().map(|l| l.u64("records")).sum();
        let pending: u64 = rebuilt.iter().map(|l| l.u64("pending")).sum();
        let elapsed_ms: u64 = rebuilt.iter().map(|l| l.u64("elapsed_ms")).sum();
        anyhow::ensure!(
            pending == n as u64,
            "rebuilt {pending} pending timers, expected {n}"
        );
        println!(
            "| rebuild {run} ({} load{}) | {records} | {pending} | {elapsed_ms} | {:.0} | {:.0} | {spawn_to_live} | {cpu_to_live:.1} | {:.0} ({:.0}) | {} |",
            rebuilt.len(),
            if rebuilt.len() == 1 { "" } else { "s" },
            records as f64 * 1000.0 / elapsed_ms.max(1) as f64,
            pending as f64 * 1000.0 / elapsed_ms.max(1) as f64,
            engine.memory_mib("VmRSS"),
            engine.memory_mib("VmHWM"),
            loadavg()
        );
        engine.terminate()?;
    }
    Ok(())
}

/// Reads the whole changelog read_committed with the engine's fetch settings
/// and does nothing with the records: (records, milliseconds).
fn raw_changelog_read(rig: &Rig) -> anyhow::Result<(u64, u64)> {
    let consumer: BaseConsumer<QuietEof> = chime_kafka::consumer_config(
        &rig.bootstrap,
        "chime-figures-raw",
        &format!("{}-figures-raw", rig.prefix),
    )
    .set("enable.partition.eof", "true")
    .set("fetch.max.bytes", "52428800")
    .set("max.partition.fetch.bytes", "10485760")
    .create_with_context(QuietEof)?;
    let changelog = rig.topics().changelog;
    let mut tpl = TopicPartitionList::new();
    for p in 0..rig.partitions {
        tpl.add_partition_offset(&changelog, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let (mut records, mut at_end) = (0u64, 0);
    while at_end < rig.partitions {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "the bare read did not reach the changelog's end within 300 s"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => records += 1,
            Some(Err(KafkaError::PartitionEOF(_))) => at_end += 1,
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok((records, started.elapsed().as_millis() as u64))
}
