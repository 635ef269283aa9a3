//! `chime-bench lateness`: one engine per `--tick-ms` (and `--lead-ms`);
//! timers due at a sustained rate over a window, scheduled (and applied)
//! before the window opens. Engine lateness (`chime-fired-at-ms` − due time,
//! as `chime check` reports it), visible lateness (when a read_committed
//! reader received the fire − due time), and the engine's CPU during the
//! window. The lead is 0 by default here, to measure the engine itself (the
//! engine's own default is `chime_engine::DEFAULT_LEAD`); the table also
//! shows what a dispatcher holding early fires would call late.

use std::time::Duration;

use clap::Args;

use chime_wire::time::now_ms;

use super::{loadavg, on_fresh_deployment, pct, wait_until_ms, FigureArgs, FireWatcher, Rig};
use crate::harness::eventually;
use crate::Common;

#[derive(Args, Debug, Clone)]
pub struct LatenessArgs {
    #[command(flatten)]
    pub figures: FigureArgs,
    /// Timers due per second.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Seconds of the window they fall due in.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Engine ticks to measure, comma-separated: one run each.
    #[arg(long, value_delimiter = ',', default_values_t = [2, 10, 50])]
    pub tick_ms: Vec<u64>,
    /// Engine leads to measure, comma-separated: one run per tick each.
    #[arg(long, value_delimiter = ',', default_values_t = [0])]
    pub lead_ms: Vec<u64>,
    /// How far ahead of the window the timers are created.
    #[arg(long, default_value_t = 20_000)]
    pub schedule_ahead_ms: u64,
}

pub async fn run(args: &LatenessArgs, common: &Common) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0 && args.seconds > 0 && args.rate * args.seconds <= crate::load::MAX_TIMERS,
        "--rate × --seconds: between 1 and {} timers",
        crate::load::MAX_TIMERS
    );
    let mut rows = Vec::new();
    for &lead in &args.lead_ms {
        for &tick in &args.tick_ms {
            println!("-- tick {tick} ms, lead {lead} ms");
            let row = on_fresh_deployment("lateness", common, &args.figures, |rig| {
                measure(rig, args, tick, lead)
            })
            .await?;
            rows.push(row);
        }
    }
    println!();
    println!("| tick ms | lead ms | timers | engine lateness p50 / p90 / p99 / max ms | received − fired-at p50 / p99 ms | received − due p50 / p99 / max ms | late at the dispatcher (received after due, or held to due): p99 ms, with a lead of 0 / 50 / 100 / 200 ms | engine CPU in window | checker | load avg |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

/// One engine, one window: the table row.
async fn measure(rig: Rig, args: &LatenessArgs, tick: u64, lead: u64) -> anyhow::Result<String> {
    let (rate, seconds, ahead_ms) = (args.rate, args.seconds, args.schedule_ahead_ms);
    let (tick_s, lead_s) = (tick.to_string(), lead.to_string());
    let mut engine = rig.engine("solo", &["--tick-ms", &tick_s, "--lead-ms", &lead_s])?;
    engine
        .wait_live(rig.partitions as usize, Duration::from_secs(60))
        .await?;
    let watcher = FireWatcher::start(&rig)?;
    let n = rate * seconds;
    let window_start = now_ms() + ahead_ms;
    let produce_rate = rig
        .produce((0..n).map(|i| window_start + i * 1000 / rate).collect())
        .await?;
    rig.wait_applied(Duration::from_secs(ahead_ms / 1000 + 120))
        .await?;
    let applied_by = now_ms();
    println!(
        "produced {n} at {produce_rate:.0}/s; all applied {} ms before the window",
        window_start as i64 - applied_by as i64
    );
    if applied_by + lead > window_start {
        println!(
            "warning: input still being applied when the window opened (raise --schedule-ahead-ms)"
        );
    }
    // The window as the engine sees it: it fires `lead` ahead.
    let engine_start = window_start - lead;
    wait_until_ms(engine_start).await;
    let cpu_start = engine.cpu_seconds();
    let load_start = loadavg();
    wait_until_ms(engine_start + seconds * 1000).await;
    let cpu = (engine.cpu_seconds() - cpu_start) / seconds as f64;
    eventually("every fire received", Duration::from_secs(120), || {
        let done = watcher.count() as u64 >= n;
        async move { Ok(done.then_some(())) }
    })
    .await?;
    engine.terminate()?;
    let report = rig.audit(lead, tick).await?;
    println!("{report}");

    let fires = watcher.snapshot();
    let sorted = |f: &dyn Fn(&super::Fire) -> i64| {
        let mut v: Vec<i64> = fires.iter().map(f).collect();
        v.sort_unstable();
        v
    };
    let engine_late = sorted(&|f| f.fired_at_ms as i64 - f.fire_at_ms as i64);
    let received = sorted(&|f| f.received_ms as i64 - f.fire_at_ms as i64);
    // Emit stamp → visible to a read_committed reader: the transaction's
    // commit plus the fetch.
    let visibility = sorted(&|f| f.received_ms as i64 - f.fired_at_ms as i64);
    // A dispatcher holds a fire received early until it is due, so what it
    // calls late is max(0, received − due). For a run without a lead, the
    // same fires emitted `extra` earlier would have been received `extra`
    // earlier (the emit cycle does not depend on the due time).
    let held_p99 = |extra: u64| -> String {
        if lead != 0 && extra != lead {
            return "–".into();
        }
        let shift = if lead == 0 { extra as i64 } else { 0 };
        let mut v: Vec<i64> = received.iter().map(|r| (r - shift).max(0)).collect();
        v.sort_unstable();
        let p = pct(&v, 0.99).to_string();
        if lead == 0 && extra != 0 {
            format!("{p} (projected)")
        } else {
            p
        }
    };
    Ok(format!(
        "| {tick} | {lead} | {n} | {} / {} / {} / {} | {} / {} | {} / {} / {} | {} / {} / {} / {} | {:.0}% of a core | {} | {load_start} |",
        pct(&engine_late, 0.5),
        pct(&engine_late, 0.9),
        pct(&engine_late, 0.99),
        pct(&engine_late, 1.0),
        pct(&visibility, 0.5),
        pct(&visibility, 0.99),
        pct(&received, 0.5),
        pct(&received, 0.99),
        pct(&received, 1.0),
        held_p99(0),
        held_p99(50),
        held_p99(100),
        held_p99(200),
        cpu * 100.0,
        if report.is_clean() { "clean" } else { "PROBLEMS" },
    ))
}
