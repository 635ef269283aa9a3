//! `chime-bench soak`: the chaos soak. For a bounded time, at a steady
//! rate, timers are created through both ingests and by direct produce,
//! with some cancelled, while a seeded schedule kill -9s, SIGSTOPs and
//! restarts engine, dispatcher and ingest processes (two of each) and, when
//! the broker is the soak's to restart, the broker once. After a quiet tail
//! it requires the checker's audit to be clean and every acknowledged, not
//! cancelled timer to have been called back, and reports what it counted —
//! acknowledged, unknown outcome, cancelled, delivered, duplicated — and
//! the lateness of timers due during faults. Any violation fails the run.
//!
//! The plan ([`plan`]) is a pure function of the seed; the fleet of
//! processes ([`fleet`]), the clients ([`traffic`]) and the books
//! ([`verdict`]) follow it.

pub mod fleet;
pub mod plan;
pub mod traffic;
pub mod verdict;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use chime_check::{check, CheckConfig};
use chime_wire::time::now_ms;

use crate::harness::deployment::Deployment;
use crate::harness::receiver::{Expected, Receiver};
use crate::harness::spawn::chime_exe;
use crate::load::create::Plan;
use crate::Common;
use fleet::{Fleet, Settings};
use plan::{FaultKind, Shape};

#[derive(Args, Debug, Clone)]
pub struct SoakArgs {
    /// Seconds of traffic and faults; a quiet tail follows.
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
    /// Timers created per second (half through the two ingests, half
    /// produced straight to Kafka).
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Seed of the schedule (default: from the clock). The same seed and
    /// settings give the same timers and faults.
    #[arg(long, env = "CHIME_SOAK_SEED")]
    pub seed: Option<u64>,
    /// Partitions of the run's topics.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Percent of timers cancelled (through REST or a produced cancel).
    #[arg(long, default_value_t = 3)]
    pub cancel_percent: u64,
    /// Session timeout of the engines and dispatchers.
    #[arg(long, default_value_t = 6_000)]
    pub session_timeout_ms: u64,
    /// The engines' lead.
    #[arg(long, default_value_t = chime_engine::DEFAULT_LEAD.as_millis() as u64)]
    pub lead_ms: u64,
    /// The engines' transaction interval.
    #[arg(long, default_value_t = 10)]
    pub tick_ms: u64,
    /// Restart the broker once, with this script (`scripts/kafka stop`,
    /// then `start`). Give it only when the broker is the soak's to restart.
    #[arg(long)]
    pub broker_script: Option<PathBuf>,
    /// Longest wait after the last due time for callbacks still missing.
    #[arg(long, default_value_t = 60)]
    pub tail_seconds: u64,
    /// Leave the run's topics on the broker (they are kept anyway when the
    /// run finds a violation).
    #[arg(long)]
    pub keep: bool,
}

impl SoakArgs {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (30..=3600).contains(&self.seconds),
            "--seconds: between 30 and 3600"
        );
        anyhow::ensure!(
            (1..=20_000).contains(&self.rate),
            "--rate: between 1 and 20000 timers per second"
        );
        anyhow::ensure!(
            self.rate * self.seconds <= crate::load::MAX_TIMERS,
            "--rate × --seconds: at most {} timers",
            crate::load::MAX_TIMERS
        );
        anyhow::ensure!(
            (2..=1000).contains(&self.partitions),
            "--partitions: between 2 and 1000"
        );
        anyhow::ensure!(self.cancel_percent <= 50, "--cancel-percent: at most 50");
        anyhow::ensure!(
            (1_000..=60_000).contains(&self.session_timeout_ms),
            "--session-timeout-ms: between 1000 and 60000"
        );
        anyhow::ensure!(self.tail_seconds <= 600, "--tail-seconds: at most 600");
        Ok(())
    }
}

pub async fn run(args: &SoakArgs, common: &Common) -> anyhow::Result<()> {
    args.check()?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let shape = Shape {
        window_ms: args.seconds * 1000,
        rate: args.rate,
        cancel_percent: args.cancel_percent,
        session_timeout_ms: args.session_timeout_ms,
        broker_restart: args.broker_script.is_some(),
    };
    let timers = plan::timers(seed, &shape);
    let faults = plan::faults(seed, &shape);
    let exe = chime_exe(common.chime_bin.as_deref())?;
    let run_id = format!("s{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let prefix = format!("soak-{run_id}");
    let header = format!(
        "chime soak — seed {seed} (rerun: --seed {seed}), {} s at {}/s: {} timers, {} faults; \
         topics {prefix}.* ({} partitions) on {}; lead {} ms, tick {} ms, session timeout {} ms",
        args.seconds,
        args.rate,
        timers.len(),
        faults.len(),
        args.partitions,
        common.bootstrap,
        args.lead_ms,
        args.tick_ms,
        args.session_timeout_ms
    );
    eprintln!("{header}");
    let broker_note = match (
        &args.broker_script,
        faults.iter().any(|f| f.kind == FaultKind::BrokerRestart),
    ) {
        (Some(_), true) => "broker: restarted once (above)".to_string(),
        (Some(_), false) => "broker: no restart fitted the window".to_string(),
        (None, _) => {
            "broker: restart skipped — the soak did not start this broker and was not told it may \
                      (scripts/soak --restart-broker)"
                .to_string()
        }
    };
    eprintln!("{broker_note}");

    let deployment = Deployment::create(&common.bootstrap, &prefix, args.partitions).await?;
    let logs = std::env::temp_dir().join("chime-soak").join(&prefix);
    let receiver = Receiver::start().await?;
    let settings = Settings {
        exe: &exe,
        bootstrap: &common.bootstrap,
        prefix: &prefix,
        lead_ms: args.lead_ms,
        tick_ms: args.tick_ms,
        session_timeout_ms: args.session_timeout_ms,
        logs: &logs,
    };
    let mut fleet = Fleet::start(&settings, args.broker_script.clone()).await?;
    warm_up(&fleet, &receiver, args.partitions).await?;
    eprintln!("all six processes up and every partition firing; traffic and faults begin");

    // Time zero of the plan, a moment from now.
    let start_ms = now_ms() + 500;
    let ids = Arc::new(Plan {
        run_id: run_id.clone(),
        due_ms: timers.iter().map(|t| start_ms + t.due_at).collect(),
        callback_url: receiver.url("/t"),
    });
    receiver.expect(Arc::new(Expected {
        run_id: run_id.clone(),
        due_ms: ids.due_ms.clone(),
    }));
    let outcomes = Arc::new(traffic::Outcomes::new(timers.len()));
    let sending = {
        let (timers, ids, outcomes) = (timers.clone(), ids.clone(), outcomes.clone());
        let ingests = fleet.ingest_urls.clone();
        let producer = traffic::producer(&common.bootstrap)?;
        let topic = deployment.topics.timers.clone();
        tokio::spawn(async move {
            traffic::run(&timers, ids, start_ms, ingests, producer, &topic, outcomes).await
        })
    };
    let mut applied = Vec::new();
    for fault in &faults {
        let done = fleet.apply(fault, start_ms).await?;
        eprintln!(
            "+{:.1} s {}{}",
            fault.at as f64 / 1000.0,
            fault,
            done.note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
        applied.push(done);
    }
    fleet.watch_until(start_ms + shape.window_ms).await?;
    sending.await??;
    eprintln!("traffic over; quiet tail");

    // The tail: until every answer is in and every timer that must be
    // called back was, or the deadline.
    let last_due = ids.due_ms.iter().copied().max().unwrap_or(start_ms);
    let deadline = last_due + args.tail_seconds * 1000;
    while outcomes.in_flight() > 0 && now_ms() < deadline {
        fleet.watch_until(now_ms() + 500).await?;
    }
    let mut waiting: Vec<usize> = (0..timers.len())
        .filter(|&i| must_call_back(&outcomes, &timers[i], i))
        .collect();
    loop {
        waiting = receiver.undelivered(&waiting);
        let now = now_ms();
        if (waiting.is_empty() && now > last_due + 2_000) || now >= deadline {
            break;
        }
        fleet.watch_until(now + 1_000).await?;
    }
    // Late duplicates have a moment to show up before the books close.
    fleet.watch_until(now_ms() + 2_000).await?;

    let mut config = CheckConfig::new(
        &common.bootstrap,
        &prefix,
        Duration::from_millis(args.lead_ms),
        Duration::from_millis(args.tick_ms),
    );
    config.grace = Duration::from_secs(1);
    let allowance = config.cancel_allowance().as_millis() as u64;
    let report = tokio::task::spawn_blocking(move || check(&config)).await??;
    let arrivals = receiver.arrivals();
    let unclean = tokio::task::block_in_place(|| fleet.stop(Duration::from_secs(20)));
    receiver.stop();

    let id_of = |i: usize| ids.id(i);
    let verdict = verdict::judge(&verdict::Books {
        header,
        timers: &timers,
        due_ms: &ids.due_ms,
        ids: &id_of,
        outcomes: &outcomes,
        arrivals: &arrivals,
        faults: &applied,
        broker_note: &broker_note,
        cancel_allowance_ms: allowance,
        check: &report,
        exits: &fleet.exits,
        start_ms,
        unclean_stops: &unclean,
        logs: &format!("{}/", logs.display()),
    });
    print!("{}", verdict.text);
    if args.keep || !verdict.violations.is_empty() {
        println!("topics kept: {prefix}.*");
    } else {
        deployment.remove().await;
    }
    anyhow::ensure!(
        verdict.violations.is_empty(),
        "the soak found {} violation(s) (seed {seed})",
        verdict.violations.len()
    );
    Ok(())
}

/// An acknowledged create whose cancel, if it had one, was not acknowledged
/// and may not have landed: its callback must arrive.
fn must_call_back(o: &traffic::Outcomes, t: &plan::PlannedTimer, i: usize) -> bool {
    o.create_of(i) == traffic::ACKNOWLEDGED
        && (t.cancel.is_none() || matches!(o.cancel_of(i), traffic::NOT_SENT | traffic::SKIPPED))
}

/// One timer due at once on every partition through each ingest, each
/// awaited: afterwards both ingests answer, every partition is live and a
/// dispatcher calls back.
async fn warm_up(fleet: &Fleet, receiver: &Receiver, partitions: i32) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let before = receiver.probes();
    let mut sent = 0u64;
    for ingest in 0..2 {
        for p in 0..partitions {
            let id = (0..)
                .map(|i| format!("probe-{ingest}-{p}-{i}"))
                .find(|id| chime_wire::partition::partition_for_key(id.as_bytes(), partitions) == p)
                .unwrap_or_default();
            let body = serde_json::json!({"id": id, "delay_ms": 0, "callback": {"url": receiver.url("/probe")}});
            crate::harness::eventually(
                &format!("ingest-{} to take a probe timer", ingest + 1),
                Duration::from_secs(60),
                || async {
                    let Some(base) = fleet.ingest_urls.get(ingest) else {
                        return Ok(None);
                    };
                    let sent = http
                        .post(format!("{base}/v1/timers"))
                        .json(&body)
                        .send()
                        .await;
                    Ok(sent.is_ok_and(|r| r.status().as_u16() == 201).then_some(()))
                },
            )
            .await?;
            sent += 1;
        }
    }
    crate::harness::eventually(
        "every probe timer called back",
        Duration::from_secs(90),
        || async { Ok((receiver.probes() - before >= sent).then_some(())) },
    )
    .await
}
