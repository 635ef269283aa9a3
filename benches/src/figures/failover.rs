//! `chime-bench failover`: three engines, timers due continuously, `kill -9`
//! of one; the time from the kill to the first fire on each of its
//! partitions (the fires partition of a timer equals its timers partition:
//! murmur2 over the same partition count), with the survivors' log timeline.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use clap::Args;

use chime_wire::time::now_ms;

use super::{
    loadavg, on_fresh_deployment, wait_until_ms, Engine, FigureArgs, Fire, FireWatcher, Rig,
};
use crate::harness::eventually;
use crate::Common;

#[derive(Args, Debug, Clone)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub figures: FigureArgs,
    /// Timers due per second.
    #[arg(long, default_value_t = 2_000)]
    pub rate: u64,
    /// Seconds over which they fall due.
    #[arg(long, default_value_t = 40)]
    pub seconds: u64,
    /// The engines' session timeout.
    #[arg(long, default_value_t = 6_000)]
    pub session_timeout_ms: u64,
    /// The engines' transaction timeout (default: the engine's).
    #[arg(long)]
    pub transaction_timeout_ms: Option<u64>,
    /// The engines' lead.
    #[arg(long, default_value_t = chime_engine::DEFAULT_LEAD.as_millis() as u64)]
    pub lead_ms: u64,
}

pub async fn run(args: &FailoverArgs, common: &Common) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0 && args.seconds > 0 && args.rate * args.seconds <= crate::load::MAX_TIMERS,
        "--rate × --seconds: between 1 and {} timers",
        crate::load::MAX_TIMERS
    );
    on_fresh_deployment("failover", common, &args.figures, |rig| measure(rig, args)).await
}

async fn measure(rig: Rig, args: &FailoverArgs) -> anyhow::Result<()> {
    let (rate, seconds, lead_ms) = (args.rate, args.seconds, args.lead_ms);
    let p = rig.partitions as usize;
    let session = args.session_timeout_ms.to_string();
    let lead = lead_ms.to_string();
    let txn = args.transaction_timeout_ms.map(|t| t.to_string());
    let mut extra = vec!["--session-timeout-ms", &session, "--lead-ms", &lead];
    if let Some(t) = &txn {
        extra.extend(["--transaction-timeout-ms", t]);
    }
    let mut engines: Vec<Engine> = ["a", "b", "c"]
        .iter()
        .map(|i| rig.engine(i, &extra))
        .collect::<anyhow::Result<_>>()?;
    // A stable assignment: every partition owned by exactly one of three.
    let mut stable_since: Option<(Instant, Vec<BTreeSet<i32>>)> = None;
    eventually(
        "a stable three-way assignment",
        Duration::from_secs(90),
        || {
            let stable = stable_assignment(&mut engines, p, &mut stable_since);
            async move { stable }
        },
    )
    .await?;
    for e in &engines {
        println!("engine {} owns {:?}", e.instance, e.owned());
    }

    let watcher = FireWatcher::start(&rig)?;
    let n = rate * seconds;
    let first_due = now_ms() + 5_000;
    let produce_rate = rig
        .produce((0..n).map(|i| first_due + i * 1000 / rate).collect())
        .await?;
    println!("produced {n} timers ({rate}/s over {seconds} s) at {produce_rate:.0}/s");

    // Fire steadily for a while, then kill the middle engine.
    wait_until_ms(first_due + (seconds * 1000 / 3).max(8_000)).await;
    let victim = engines.remove(1);
    let moved = victim.owned();
    let killed_at = now_ms();
    victim.kill9()?;
    println!("kill -9 engine b at {killed_at}; its partitions {moved:?}");

    // The first fire after the kill on each moved partition.
    let mut first: BTreeMap<i32, Fire> = BTreeMap::new();
    eventually(
        "a fire on every moved partition",
        Duration::from_secs(120),
        || {
            for f in watcher.snapshot() {
                if moved.contains(&f.partition) && f.fired_at_ms >= killed_at {
                    let e = first.entry(f.partition).or_insert(f);
                    if f.fired_at_ms < e.fired_at_ms {
                        *e = f;
                    }
                }
            }
            let done = first.len() == moved.len();
            async move { Ok(done.then_some(())) }
        },
    )
    .await?;

    println!(
        "timeline after the kill:\n{}",
        timeline(&engines, &moved, killed_at).join("\n")
    );

    // Let the rest fire, then audit.
    let all_due = first_due + seconds * 1000;
    let all_fired = eventually(
        "every timer fired",
        Duration::from_secs(seconds + 120),
        || {
            let done = now_ms() > all_due + 2_000 && watcher.count() as u64 >= n;
            async move { Ok(done.then_some(())) }
        },
    )
    .await;
    if let Err(e) = all_fired {
        println!("warning: {e}");
    }
    for e in engines {
        e.terminate()?;
    }
    let report = rig.audit(lead_ms, 10).await?;

    let fires = watcher.snapshot();
    let gaps: Vec<u64> = first.values().map(|f| f.fired_at_ms - killed_at).collect();
    let seen: Vec<u64> = first.values().map(|f| f.received_ms - killed_at).collect();
    let worst = |on_moved: bool| {
        fires
            .iter()
            .filter(|f| moved.contains(&f.partition) == on_moved)
            .filter(|f| {
                if on_moved {
                    f.fired_at_ms >= killed_at
                } else {
                    f.fire_at_ms >= killed_at
                }
            })
            .map(|f| f.received_ms as i64 - f.fire_at_ms as i64)
            .max()
            .unwrap_or(0)
    };
    // Partitions that did not move can pause too: a rebalance fails the
    // survivors' open transaction, and they rebuild what they own.
    let (worst_moved, worst_stayed) = (worst(true), worst(false));
    println!();
    println!("| session timeout ms | transaction timeout ms | lead ms | moved partitions | kill → first fire emitted on a moved partition, ms (first / last partition) | kill → that fire received by a read_committed reader, ms (first / last) | worst received − due after the kill, ms: moved / other partitions | checker | load avg |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {lead_ms} | {} | {} / {} | {} / {} | {worst_moved} / {worst_stayed} | {} ({} fires of {} expected) | {} |",
        args.session_timeout_ms,
        txn.unwrap_or_else(|| "10000 (default)".to_string()),
        moved.len(),
        gaps.iter().min().unwrap_or(&0),
        gaps.iter().max().unwrap_or(&0),
        seen.iter().min().unwrap_or(&0),
        seen.iter().max().unwrap_or(&0),
        if report.is_clean() { "clean" } else { "PROBLEMS" },
        report.fires,
        report.expected,
        loadavg()
    );
    if !report.is_clean() {
        println!("{report}");
    }
    Ok(())
}

/// Some(()) once every partition has been owned by exactly one engine, each
/// owning some, unchanged for 3 s.
fn stable_assignment(
    engines: &mut [Engine],
    partitions: usize,
    stable_since: &mut Option<(Instant, Vec<BTreeSet<i32>>)>,
) -> anyhow::Result<Option<()>> {
    for e in engines.iter_mut() {
        e.process.ensure_running()?;
    }
    let owned: Vec<BTreeSet<i32>> = engines.iter().map(Engine::owned).collect();
    let total: usize = owned.iter().map(BTreeSet::len).sum();
    let union: BTreeSet<i32> = owned.iter().flatten().copied().collect();
    if total != partitions || union.len() != partitions || owned.iter().any(BTreeSet::is_empty) {
        *stable_since = None;
        return Ok(None);
    }
    match stable_since {
        Some((since, was)) if *was == owned => {
            Ok((since.elapsed() > Duration::from_secs(3)).then_some(()))
        }
        _ => {
            *stable_since = Some((Instant::now(), owned));
            Ok(None)
        }
    }
}

/// The survivors' view after the kill: when they were assigned the moved
/// partitions and how long the rebuild took.
fn timeline(engines: &[Engine], moved: &BTreeSet<i32>, killed_at: u64) -> Vec<String> {
    let mut timeline = Vec::new();
    for e in engines {
        for l in e.process.log_lines() {
            if l.at_ms < killed_at {
                continue;
            }
            let parts: BTreeSet<i32> = l.partitions().into_iter().collect();
            let after = l.at_ms - killed_at;
            match l.message.as_str() {
                "partitions assigned" if !parts.is_disjoint(moved) => timeline.push(format!(
                    "  +{after:>6} ms  engine {} assigned {parts:?}",
                    e.instance
                )),
                "partitions revoked" => timeline.push(format!(
                    "  +{after:>6} ms  engine {} revoked {parts:?}",
                    e.instance
                )),
                "changelog rebuilt" => timeline.push(format!(
                    "  +{after:>6} ms  engine {} rebuilt {parts:?}: {} records in {} ms",
                    e.instance,
                    l.u64("records"),
                    l.u64("elapsed_ms")
                )),
                _ => {}
            }
        }
    }
    timeline.sort();
    timeline
}
