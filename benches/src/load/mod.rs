//! `chime bench`: drives a chime (a running one, or `chime all` it spawns)
//! with timers at a steady rate or in one burst, receives their callbacks on
//! loopback and reports what arrived, how late, and at what cost.
//!
//! Creation and firing are measured apart: every timer is created before
//! the first one is due (plus a margin), then the tool watches them fire.

mod baseline;
mod cpu;
mod create;
mod plot;
mod receiver;
pub mod report;
mod spawn;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;

use chime_wire::time::now_ms;
use chime_wire::Topics;

pub use create::Via;
use receiver::{Expected, Receiver};
use report::{Ceiling, Cpu, Creation, Report};
use spawn::SpawnedChime;

/// Calls in flight in the raw HTTP baseline.
const HTTP_BASELINE_IN_FLIGHT: usize = 256;

/// Most timers one run may create.
pub const MAX_TIMERS: u64 = 2_000_000;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// REST base URL of the chime under test (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Start `chime all` as a child process (own topic prefix, free port)
    /// instead of using a running chime.
    #[arg(long)]
    pub spawn: bool,
    /// Partitions of the spawned chime's topics.
    #[arg(long, default_value_t = 12)]
    pub partitions: i32,
    /// Timers due per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds over which the timers fall due.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Instead of a rate: this many timers, all due at the same instant.
    #[arg(long, conflicts_with_all = ["rate", "duration"])]
    pub burst: Option<u64>,
    /// How timers are created.
    #[arg(long, value_enum, default_value_t = Via::Kafka)]
    pub via: Via,
    /// REST create requests in flight (`--via rest`).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Timers per batch request (`--via batch`).
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Milliseconds from the start of creation to the first due time
    /// (default: a guess from the count and the creation path, plus 2 s).
    #[arg(long)]
    pub lead_ms: Option<u64>,
    /// Seconds to wait past the last due time for stragglers.
    #[arg(long, default_value_t = 30.0)]
    pub grace: f64,
    /// Also report the CPU of this (external) chime process; repeatable.
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Measure the Kafka and HTTP ceilings in the same run.
    #[arg(long)]
    pub baselines: bool,
    /// Print the report as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write lateness over time and the delivered rate to this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// API key for a chime that requires one (`CHIME_API_KEYS`); a spawned
    /// chime is started with it.
    #[arg(long, env = "CHIME_BENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The chime executable `--spawn` runs (default: this executable).
    #[arg(long)]
    pub chime_bin: Option<PathBuf>,
}

/// What one run is asked to do, checked.
#[derive(Debug)]
struct Workload {
    count: u64,
    /// Due offset of timer i from the first due time, ms.
    offsets_ms: Vec<u64>,
    offered_rate: Option<f64>,
    duration_s: f64,
}

impl BenchArgs {
    fn workload(&self) -> anyhow::Result<Workload> {
        if let Some(n) = self.burst {
            anyhow::ensure!(n > 0, "--burst: must be at least 1");
            anyhow::ensure!(
                n <= MAX_TIMERS,
                "--burst: at most {MAX_TIMERS} timers per run"
            );
            return Ok(Workload {
                count: n,
                offsets_ms: vec![0; n as usize],
                offered_rate: None,
                duration_s: 0.0,
            });
        }
        anyhow::ensure!(
            self.rate.is_finite() && self.rate > 0.0,
            "--rate: must be a positive number of timers per second"
        );
        anyhow::ensure!(
            self.duration.is_finite() && self.duration > 0.0 && self.duration <= 3600.0,
            "--duration: must be between 0 and 3600 seconds"
        );
        let count = (self.rate * self.duration).round() as u64;
        anyhow::ensure!(count > 0, "--rate × --duration gives no timers");
        anyhow::ensure!(
            count <= MAX_TIMERS,
            "--rate × --duration is {count} timers; at most {MAX_TIMERS} per run"
        );
        let offsets_ms = (0..count)
            .map(|i| (i as f64 * 1000.0 / self.rate) as u64)
            .collect();
        Ok(Workload {
            count,
            offsets_ms,
            offered_rate: Some(self.rate),
            duration_s: self.duration,
        })
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.grace.is_finite() && (0.0..=600.0).contains(&self.grace),
            "--grace: must be between 0 and 600 seconds"
        );
        anyhow::ensure!(
            (1..=4096).contains(&self.concurrency),
            "--concurrency: must be between 1 and 4096"
        );
        anyhow::ensure!(
            (1..=100_000).contains(&self.batch_size),
            "--batch-size: must be between 1 and 100000"
        );
        anyhow::ensure!(
            (1..=1000).contains(&self.partitions),
            "--partitions: must be between 1 and 1000"
        );
        if !self.spawn {
            check_loopback(&self.url)?;
        }
        Ok(())
    }
}

/// The tool only ever loads a chime on this machine.
fn check_loopback(url: &str) -> anyhow::Result<()> {
    let parsed =
        reqwest::Url::parse(url).with_context(|| format!("--url: {url:?} is not a URL"))?;
    anyhow::ensure!(
        parsed.scheme() == "http",
        "--url: only http:// is supported, not {url:?}"
    );
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    anyhow::ensure!(
        loopback,
        "--url: {url:?} is not a loopback address; chime bench only loads a chime on this machine"
    );
    Ok(())
}

/// A run's report plus what the plot needs.
pub struct Outcome {
    pub report: Report,
    /// Size of one timer record, for the Kafka baseline.
    pub record_bytes: usize,
    pub due_ms: Vec<u64>,
    pub arrivals: Vec<report::Arrival>,
}

/// `chime bench`: runs, prints the table (or JSON), writes the plot.
pub async fn main(
    args: BenchArgs,
    bootstrap: &str,
    topic_prefix: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let outcome = tokio::select! {
        outcome = run(&args, bootstrap, topic_prefix) => outcome?,
        _ = shutdown.cancelled() => anyhow::bail!("interrupted"),
    };
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
pub async fn run(args: &BenchArgs, bootstrap: &str, topic_prefix: &str) -> anyhow::Result<Outcome> {
    args.check()?;
    let workload = args.workload()?;
    let receiver = Receiver::start().await?;
    let run_id = format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let outcome = if args.spawn {
        let exe = match &args.chime_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe().context("finding the chime executable")?,
        };
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
            processes: vec![("chime all (spawned)".to_string(), chime.pid)],
        };
        let outcome = drive(args, bootstrap, &run_id, workload, &receiver, &target)
            .await
            .map_err(|e| {
                e.context(format!(
                    "the spawned chime's log ends:\n{}",
                    chime.log_tail()
                ))
            });
        let stopped = chime.stop().await;
        let outcome = outcome?;
        stopped.context("stopping the spawned chime")?;
        (outcome, args.partitions)
    } else {
        let target = Chime {
            api: args.url.trim_end_matches('/').to_string(),
            prefix: topic_prefix.to_string(),
            partitions: timers_partitions(bootstrap, &Topics::new(topic_prefix).timers)?,
            processes: Vec::new(),
        };
        let outcome = drive(args, bootstrap, &run_id, workload, &receiver, &target).await?;
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

async fn drive(
    args: &BenchArgs,
    bootstrap: &str,
    run_id: &str,
    workload: Workload,
    receiver: &Receiver,
    chime: &Chime,
) -> anyhow::Result<Outcome> {
    warm_up(chime, receiver, args.api_key.as_deref()).await?;

    let mut processes = chime.processes.clone();
    processes.extend(args.pids.iter().map(|&pid| (cpu::process_name(pid), pid)));
    processes.push(("chime bench (client + receiver)".into(), std::process::id()));
    let cpu_at_start = cpu_snapshot(&processes)?;

    let lead_ms = args
        .lead_ms
        .unwrap_or_else(|| 2000 + workload.count * 1000 / args.via.assumed_rate_per_s());
    let created_from_ms = now_ms();
    let first_due_ms = created_from_ms + lead_ms;
    let plan = create::Plan {
        run_id: run_id.to_string(),
        due_ms: workload
            .offsets_ms
            .iter()
            .map(|o| first_due_ms + o)
            .collect(),
        callback_url: receiver.url("/t"),
    };
    receiver.expect(Arc::new(Expected {
        run_id: plan.run_id.clone(),
        due_ms: plan.due_ms.clone(),
    }));

    let bar = ProgressBar::new(workload.count);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:40}] {pos}/{len} {msg}")
            .expect("static progress template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("created via {}", args.via.name()));
    bar.enable_steady_tick(Duration::from_millis(200));

    // Create, with the bar following the acknowledgements.
    let created = AtomicU64::new(0);
    let topics = Topics::new(&chime.prefix);
    let target = create::Target {
        api: &chime.api,
        bootstrap,
        timers_topic: &topics.timers,
        concurrency: args.concurrency,
        batch_size: args.batch_size,
        api_key: args.api_key.as_deref(),
    };
    let creating = Instant::now();
    {
        let creation = create::create_all(args.via, &plan, &target, &created);
        tokio::pin!(creation);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                result = &mut creation => { result?; break; }
                _ = tick.tick() => bar.set_position(created.load(Ordering::Relaxed)),
            }
        }
    }
    let creation_s = creating.elapsed().as_secs_f64();
    let created_at_ms = now_ms();
    let creation = Creation {
        via: args.via.name().to_string(),
        timers: workload.count,
        seconds: creation_s,
        rate_per_s: workload.count as f64 / creation_s.max(1e-6),
        done_before_first_due_ms: first_due_ms as i64 - created_at_ms as i64,
    };
    if creation.done_before_first_due_ms < 0 {
        bar.println(format!(
            "warning: creating took {:.1} s, past the first due time; give --lead-ms more than {}",
            creation_s,
            (creation_s * 1000.0) as u64 + 1000
        ));
    }

    // Deliver: from the first due time until every timer arrived or the deadline.
    let cpu_at_created = cpu_snapshot(&processes)?;
    let last_due_ms = plan.due_ms.iter().copied().max().unwrap_or(first_due_ms);
    let deadline_ms = last_due_ms + (args.grace * 1000.0) as u64;
    bar.reset();
    bar.set_length(workload.count);
    let mut cpu_at_first_due = None;
    let delivered_all = loop {
        let (delivered, p99, max) = receiver.progress();
        bar.set_position(delivered);
        let now = now_ms();
        if now < first_due_ms {
            bar.set_message(format!(
                "delivered; first due in {:.1} s",
                (first_due_ms - now) as f64 / 1000.0
            ));
        } else {
            if cpu_at_first_due.is_none() {
                cpu_at_first_due = Some((Instant::now(), cpu_snapshot(&processes)?));
            }
            bar.set_message(format!(
                "delivered; lateness p99 {p99:.1} ms, max {max:.1} ms"
            ));
        }
        if delivered >= workload.count {
            break true;
        }
        if now >= deadline_ms {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let delivery_end = Instant::now();
    let cpu_at_end = cpu_snapshot(&processes)?;
    // Late duplicates have a moment to show up before the books close.
    tokio::time::sleep(Duration::from_millis(500)).await;
    bar.finish_and_clear();

    let arrivals = receiver.arrivals();
    let delivery = report::account(&plan.due_ms, &arrivals);
    let (delivery_from, cpu_at_delivery) =
        cpu_at_first_due.unwrap_or((delivery_end, cpu_at_end.clone()));
    let delivery_wall_s = delivery_end
        .saturating_duration_since(delivery_from)
        .as_secs_f64();
    let cpu = processes
        .iter()
        .enumerate()
        .map(|(i, (label, pid))| {
            let delivery_cpu_s = cpu_at_end[i] - cpu_at_delivery[i];
            Cpu {
                label: label.clone(),
                pid: *pid,
                creation_cpu_s: cpu_at_created[i] - cpu_at_start[i],
                delivery_cpu_s,
                delivery_cores: delivery_cpu_s / delivery_wall_s.max(1e-3),
            }
        })
        .collect();

    let report = Report {
        mode: if args.burst.is_some() {
            "burst"
        } else {
            "rate"
        }
        .to_string(),
        timers: workload.count,
        offered_rate_per_s: workload.offered_rate,
        duration_s: workload.duration_s,
        target: format!(
            "{} (topics {}.*, {} partitions)",
            chime.api, chime.prefix, chime.partitions
        ),
        creation,
        delivery,
        timed_out: !delivered_all,
        cpu,
        baselines: Vec::new(),
    };
    Ok(Outcome {
        report,
        record_bytes: plan.command(0).encode().len(),
        due_ms: plan.due_ms,
        arrivals,
    })
}

fn cpu_snapshot(processes: &[(String, u32)]) -> anyhow::Result<Vec<f64>> {
    processes
        .iter()
        .map(|(label, pid)| cpu::cpu_seconds(*pid).with_context(|| format!("CPU of {label}")))
        .collect()
}

/// One timer due now on every partition, each awaited: afterwards every
/// engine owns its partitions and every partition is live, so the run does
/// not measure start-up.
async fn warm_up(chime: &Chime, receiver: &Receiver, api_key: Option<&str>) -> anyhow::Result<()> {
    let http = create::rest_client(api_key, 1)?;
    let before = receiver.probes();
    let mut probes = 0u64;
    for p in 0..chime.partitions {
        let id = (0..)
            .map(|i| format!("probe-{}-{i}", uuid::Uuid::new_v4().simple()))
            .find(|id| {
                chime_wire::partition::partition_for_key(id.as_bytes(), chime.partitions) == p
            })
            .context("no probe id for a partition")?;
        let url = format!("{}/v1/timers", chime.api);
        let response = http
            .post(&url)
            .json(&serde_json::json!({"id": id, "delay_ms": 0, "callback": {"url": receiver.url("/probe")}}))
            .send()
            .await
            .with_context(|| format!("POST {url}: is chime running? (or use --spawn)"))?;
        let status = response.status();
        anyhow::ensure!(
            status.as_u16() == 201,
            "POST {url} answered {status}: {}",
            response.text().await.unwrap_or_default()
        );
        probes += 1;
    }
    let within = Duration::from_secs(60);
    let deadline = Instant::now() + within;
    while receiver.probes() - before < probes {
        anyhow::ensure!(
            Instant::now() < deadline,
            "warm-up: {} of {probes} probe timers called back within {within:?}; \
             is the dispatcher allowed to call loopback (CHIME_CALLBACK_ALLOW=127.0.0.0/8)?",
            receiver.probes() - before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(line: &[&str]) -> anyhow::Result<BenchArgs> {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(line);
        Ok(Cli::try_parse_from(argv)?.bench)
    }

    #[test]
    fn rate_spreads_timers_evenly_over_the_duration() {
        let w = args(&["--rate", "4", "--duration", "2"])
            .unwrap()
            .workload()
            .unwrap();
        assert_eq!(w.count, 8);
        assert_eq!(w.offsets_ms, vec![0, 250, 500, 750, 1000, 1250, 1500, 1750]);
    }

    #[test]
    fn burst_is_due_at_one_instant_and_excludes_rate() {
        let w = args(&["--burst", "3"]).unwrap().workload().unwrap();
        assert_eq!(w.offsets_ms, vec![0, 0, 0]);
        assert!(args(&["--burst", "3", "--rate", "5"]).is_err());
    }

    #[test]
    fn unbounded_or_nonsense_loads_are_refused_by_name() {
        let err = |line: &[&str]| args(line).unwrap().workload().unwrap_err().to_string();
        assert!(err(&["--rate", "1000000", "--duration", "3600"]).contains("at most"));
        assert!(err(&["--rate", "0"]).contains("--rate"));
        assert!(err(&["--duration=-1"]).contains("--duration"));
        assert!(err(&["--burst", "0"]).contains("--burst"));
    }

    #[test]
    fn only_loopback_targets() {
        assert!(check_loopback("http://127.0.0.1:8080").is_ok());
        assert!(check_loopback("http://localhost:8080/").is_ok());
        assert!(check_loopback("http://[::1]:8080").is_ok());
        let refused = check_loopback("http://10.0.0.5:8080")
            .unwrap_err()
            .to_string();
        assert!(refused.contains("not a loopback"), "{refused}");
        assert!(check_loopback("http://example.com").is_err());
        assert!(check_loopback("not a url").is_err());
    }
}
