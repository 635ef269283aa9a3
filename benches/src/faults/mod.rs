//! `chime-bench faults`: the failover figures of issue #16, measured as an
//! operator would see them. Two `chime all` processes (`a` and `b`, stable
//! instance ids) on a fresh topic prefix; timers due at a steady rate well
//! before, during and after a fault injected from outside — kill -9 and
//! restart, kill -9 for good, SIGSTOP, a rolling SIGTERM restart, or kill
//! -9 of the broker — and called back on a loopback receiver. It prints
//! the lateness of the timers due before, during and after the fault window
//! ([`plan::window`]), for the broker how soon callbacks resumed, the
//! callbacks made twice, the checker's verdict and the target.
//!
//! [`pair`] runs the processes, [`timers`] creates the load, [`inject`]
//! applies the fault, [`report`] keeps the books.

pub mod inject;
pub mod pair;
pub mod plan;
pub mod report;
pub mod timers;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use chime_check::{check, CheckConfig};
use chime_wire::time::now_ms;

use crate::figures::loadavg;
use crate::harness::deployment::Deployment;
use crate::harness::eventually;
use crate::harness::receiver::{Expected, Receiver};
use crate::harness::spawn::chime_exe;
use crate::load::create::Plan;
use crate::Common;
use pair::Pair;
use plan::{Fault, FaultKind};
use report::{Books, Checker, Report};
use timers::Timers;

#[derive(Args, Debug, Clone)]
pub struct FaultsArgs {
    /// The fault to inject.
    #[arg(long, value_enum)]
    pub fault: FaultKind,
    /// kill9-restart: restart the killed process this long after the kill.
    #[arg(long, default_value_t = 3_000)]
    pub after_ms: u64,
    /// sigstop: SIGCONT this long after SIGSTOP.
    #[arg(long, default_value_t = 20_000)]
    pub pause_ms: u64,
    /// sigterm-rolling: start each process again this long after its SIGTERM.
    #[arg(long, default_value_t = 5_000)]
    pub back_ms: u64,
    /// broker-kill: begin the broker's restart this long after the kill.
    #[arg(long, default_value_t = 6_000)]
    pub restart_after_ms: u64,
    /// broker-kill: the `scripts/kafka` that manages the broker at
    /// CHIME_KAFKA_BOOTSTRAP (same CHIME_KAFKA_PORT / CHIME_KAFKA_HOME): the
    /// tool kills it (`kill`) and starts it (`start`). Give it only for a
    /// broker this run may kill.
    #[arg(long)]
    pub broker_script: Option<PathBuf>,
    /// Static group membership for both processes (CHIME_STATIC_MEMBERSHIP).
    #[arg(long)]
    pub static_membership: bool,
    /// Rebalance protocol of both processes' groups (CHIME_REBALANCE).
    #[arg(long, default_value = "eager")]
    pub rebalance: chime_kafka::Rebalance,
    /// Timers due per second.
    #[arg(long, default_value_t = 2_000)]
    pub rate: u64,
    /// Seconds of timers due before the fault.
    #[arg(long, default_value_t = 10)]
    pub before_s: u64,
    /// Seconds of timers due after the fault window.
    #[arg(long, default_value_t = 15)]
    pub tail_s: u64,
    /// Session timeout of the engines and dispatchers.
    #[arg(long, default_value_t = chime_engine::DEFAULT_SESSION_TIMEOUT.as_millis() as u64)]
    pub session_timeout_ms: u64,
    /// Partitions of the run's topics.
    #[arg(long, default_value_t = 12)]
    pub partitions: i32,
    /// Longest wait, after the last timer is due, for callbacks still missing.
    #[arg(long, default_value_t = 60)]
    pub grace_s: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Leave the run's topics (kept anyway when the run finds a violation).
    #[arg(long)]
    pub keep: bool,
}

/// The longest run, for sizing the plan: any fault must be over by then.
const MAX_RUN_S: u64 = 600;
/// `broker-kill`: time to create the timers due during the outage, and for
/// the engines to take them in, before the first timer is due.
const BROKER_PREPARATION_MS: u64 = 30_000;

impl FaultsArgs {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=20_000).contains(&self.rate),
            "--rate: between 1 and 20000"
        );
        anyhow::ensure!(
            (2..=1000).contains(&self.partitions),
            "--partitions: between 2 and 1000"
        );
        anyhow::ensure!(
            (1_000..=60_000).contains(&self.session_timeout_ms),
            "--session-timeout-ms: between 1000 and 60000"
        );
        let longest = [
            self.after_ms,
            self.pause_ms,
            self.back_ms,
            self.restart_after_ms,
        ];
        anyhow::ensure!(
            longest.iter().all(|&ms| ms <= 120_000),
            "fault durations: at most 120000 ms"
        );
        anyhow::ensure!(
            self.before_s >= 2 && self.before_s + self.tail_s <= 120,
            "--before-s at least 2; --before-s + --tail-s at most 120"
        );
        anyhow::ensure!(
            self.fault != FaultKind::BrokerKill || self.broker_script.is_some(),
            "--fault broker-kill needs --broker-script (the scripts/kafka of a broker this run may \
             kill and restart)"
        );
        Ok(())
    }

    fn fault(&self) -> Fault {
        Fault {
            kind: self.fault,
            after_ms: self.after_ms,
            pause_ms: self.pause_ms,
            back_ms: self.back_ms,
            restart_after_ms: self.restart_after_ms,
        }
    }
}

pub async fn run(args: &FaultsArgs, common: &Common) -> anyhow::Result<()> {
    args.check()?;
    let fault = args.fault();
    let load_before = loadavg();
    let exe = chime_exe(common.chime_bin.as_deref())?;
    let run_id = format!("f{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let prefix = format!("faults-{}-{run_id}", fault.name());
    let logs = std::env::temp_dir().join("chime-faults").join(&prefix);
    let session = args.session_timeout_ms;
    eprintln!(
        "{}: {}; topics {prefix}.* ({} partitions) on {}; logs {}/",
        fault.name(),
        fault.describe(),
        args.partitions,
        common.bootstrap,
        logs.display()
    );
    let deployment = Deployment::create(&common.bootstrap, &prefix, args.partitions).await?;
    let receiver = Receiver::start().await?;
    let settings = pair::Settings {
        exe: &exe,
        bootstrap: &common.bootstrap,
        prefix: &prefix,
        partitions: args.partitions,
        session_timeout_ms: session,
        static_membership: args.static_membership,
        rebalance: args.rebalance,
        logs: &logs,
    };
    let mut pair = Pair::start(&settings)?;
    let result = measure(
        args,
        &fault,
        common,
        &run_id,
        &deployment,
        &receiver,
        &mut pair,
    )
    .await;
    let unclean = tokio::task::block_in_place(|| pair.stop(Duration::from_secs(30)));
    receiver.stop();
    let mut report = match result {
        Ok(report) => report,
        Err(e) => {
            println!("topics kept: {prefix}.*; logs {}", pair.logs().join(", "));
            return Err(e);
        }
    };
    report.load_average_before = load_before;
    report.notes.extend(pair.exits.iter().cloned());
    for u in unclean {
        report
            .notes
            .push(format!("did not stop cleanly on SIGTERM at the end: {u}"));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    let violations = report.violations();
    if args.keep || !violations.is_empty() {
        eprintln!("topics kept: {prefix}.*; logs {}", pair.logs().join(", "));
    } else {
        deployment.remove().await;
    }
    anyhow::ensure!(violations.is_empty(), "{}", violations.join("; "));
    Ok(())
}

/// The run between starting the processes and stopping them.
async fn measure(
    args: &FaultsArgs,
    fault: &Fault,
    common: &Common,
    run_id: &str,
    deployment: &Deployment,
    receiver: &Receiver,
    pair: &mut Pair,
) -> anyhow::Result<Report> {
    let session = args.session_timeout_ms;
    pair.wait_settled("a and b sharing every partition", Duration::from_secs(120))
        .await?;
    warm_up(deployment, receiver).await?;
    eprintln!("both processes up, every partition live and calling back");

    // Timers due from a moment from now, at the rate, for as long as a run
    // may last; produced a few seconds ahead, until the window's tail.
    // Before a broker is killed, every timer due while it is away is created
    // first, and the engines take them in before the first one is due.
    let broker = fault.kind == FaultKind::BrokerKill;
    let start_ms = now_ms() + if broker { BROKER_PREPARATION_MS } else { 2_000 };
    let capacity = (args.rate * MAX_RUN_S).min(crate::load::MAX_TIMERS);
    let plan = Arc::new(Plan {
        run_id: run_id.to_string(),
        due_ms: (0..capacity)
            .map(|i| start_ms + i * 1000 / args.rate)
            .collect(),
        callback_url: receiver.url("/t"),
    });
    receiver.expect(Arc::new(Expected {
        run_id: plan.run_id.clone(),
        due_ms: plan.due_ms.clone(),
    }));
    let timers = Timers::start(&common.bootstrap, &deployment.topics.timers, plan.clone())?;
    let fault_at = start_ms + args.before_s * 1000;
    if broker {
        let through = fault_at + fault.restart_after_ms + plan::BROKER_START_ALLOWANCE_MS;
        timers.hold_until(through, Duration::from_secs(120)).await?;
        timers::wait_applied(deployment, Duration::from_secs(120)).await?;
        if now_ms() > start_ms {
            eprintln!(
                "warning: the engines took the timers in only {} ms after the first was due",
                now_ms() - start_ms
            );
        }
    }
    pair.watch_until(fault_at, None).await?;
    eprintln!("injecting: {}", fault.describe());
    let applied = inject::apply(
        fault,
        pair,
        session,
        &common.bootstrap,
        args.broker_script.as_deref(),
    )
    .await?;
    let window = plan::window(applied.fault_at_ms, applied.back_at_ms, session);
    let end = window.1.max(now_ms()) + args.tail_s * 1000;
    timers.end_at(end);
    eprintln!(
        "fault over; timers go on until {:.1} s after the fault",
        (end - applied.fault_at_ms) as f64 / 1000.0
    );
    pair.watch_until(end, None).await?;
    let (produced, acked_late) = timers.finish().await?;
    let due_ms = &plan.due_ms[..produced];

    // Every timer called back, or the grace is over; then a moment for
    // late duplicates.
    let all: Vec<usize> = (0..produced).collect();
    let deadline = end + args.grace_s * 1000;
    loop {
        let missing = receiver.undelivered(&all).len();
        if missing == 0 || now_ms() >= deadline {
            break;
        }
        pair.watch_until(now_ms() + 500, None).await?;
    }
    pair.watch_until(now_ms() + 2_000, None).await?;
    let load_after = loadavg();

    let mut config = CheckConfig::new(
        &common.bootstrap,
        &deployment.prefix,
        chime_engine::DEFAULT_LEAD,
        Duration::from_millis(10),
    );
    config.grace = Duration::ZERO;
    let checked = tokio::task::spawn_blocking(move || check(&config)).await??;

    let arrivals = receiver.arrivals();
    let partitions: Vec<i32> = (0..produced)
        .map(|i| chime_wire::partition::partition_for_key(plan.id(i).as_bytes(), args.partitions))
        .collect();
    let m = report::measure(&Books {
        due_ms,
        partition: &partitions,
        arrivals: &arrivals,
        fault_at_ms: applied.fault_at_ms,
        window,
        broker_answered_ms: applied.broker_answered_ms,
    });
    let target = fault.target(session);
    let target_met = target.met(
        m.window_max_ms,
        m.called_twice_timers,
        m.resumed_after_broker_ms,
    );
    let rel = |t: u64| t as i64 - applied.fault_at_ms as i64;
    let mut notes = Vec::new();
    if m.rows.last().is_some_and(|r| r.timers == 0) {
        notes.push("no timer was due after the window: give a larger --tail-s".to_string());
    }
    Ok(Report {
        fault: *fault,
        description: fault.describe(),
        membership: format!(
            "{} membership, {} rebalancing",
            if args.static_membership {
                "static"
            } else {
                "dynamic"
            },
            args.rebalance
        ),
        rate_per_s: args.rate,
        partitions: args.partitions,
        session_timeout_ms: session,
        commit: git_commit(),
        load_average_before: String::new(),
        load_average_after: load_after,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        timeline: applied
            .steps
            .iter()
            .map(|s| (rel(s.at_ms), s.what.clone()))
            .collect(),
        window_ms: (rel(window.0), rel(window.1)),
        window_means: fault.back_means().to_string(),
        rows: m.rows,
        window_max_by_partition: m.window_max_by_partition,
        window_max_by_second: m.window_max_by_second,
        resumed_after_broker_ms: m.resumed_after_broker_ms,
        called_twice_timers: m.called_twice_timers,
        extra_callbacks: m.extra_callbacks,
        not_called_back: m.not_called_back,
        early_callbacks: m.early_callbacks,
        acknowledged_after_due: acked_late,
        checker: Checker::of(&checked),
        target,
        target_met,
        notes,
    })
}

/// One timer due at once on every partition, produced straight to Kafka,
/// each called back: every partition is live and its dispatcher calls.
async fn warm_up(deployment: &Deployment, receiver: &Receiver) -> anyhow::Result<()> {
    let partitions = deployment.partitions;
    let before = receiver.probes();
    let now = now_ms();
    let ids: Vec<String> = (0..partitions)
        .map(|p| {
            (0..)
                .map(|i| format!("probe-{p}-{i}"))
                .find(|id| chime_wire::partition::partition_for_key(id.as_bytes(), partitions) == p)
                .unwrap_or_default()
        })
        .collect();
    let probes = Plan {
        run_id: "probe".into(),
        due_ms: vec![now; ids.len()],
        callback_url: receiver.url("/probe"),
    };
    let producer: rdkafka::producer::FutureProducer =
        chime_kafka::producer_config(&deployment.bootstrap, "chime-bench-faults-probe").create()?;
    for (i, id) in ids.iter().enumerate() {
        let mut command = probes.command(i);
        if let chime_wire::TimerCommand::Schedule(spec) = &mut command {
            spec.id = id.clone();
        }
        let value = command.encode();
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&deployment.topics.timers)
                    .key(id.as_bytes())
                    .payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    let sent = ids.len() as u64;
    eventually(
        "every probe timer called back",
        Duration::from_secs(90),
        || async { Ok((receiver.probes() - before >= sent).then_some(())) },
    )
    .await
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        faults: FaultsArgs,
    }

    fn args(line: &[&str]) -> FaultsArgs {
        Cli::try_parse_from(std::iter::once("faults").chain(line.iter().copied()))
            .expect("valid flags")
            .faults
    }

    #[test]
    fn a_broker_kill_needs_the_script_that_may_restart_the_broker() {
        let err = args(&["--fault", "broker-kill"]).check().unwrap_err();
        assert!(err.to_string().contains("--broker-script"), "{err}");
        let ok = args(&["--fault", "broker-kill", "--broker-script", "scripts/kafka"]);
        assert!(ok.check().is_ok());
        let restart = args(&["--fault", "kill9-restart", "--after-ms", "4000"]);
        assert!(restart.check().is_ok());
        assert_eq!(restart.fault().after_ms, 4000);
        assert!(args(&["--fault", "sigstop", "--rate", "0"])
            .check()
            .is_err());
    }
}
