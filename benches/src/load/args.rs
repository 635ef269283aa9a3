//! The load test's arguments (`chime-bench [FLAGS]`, or `chime bench`) and
//! the workload they describe.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::create::Via;

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
}

/// What one run is asked to do, checked.
#[derive(Debug)]
pub struct Workload {
    pub count: u64,
    /// Due offset of timer i from the first due time, ms.
    pub offsets_ms: Vec<u64>,
    pub offered_rate: Option<f64>,
    pub duration_s: f64,
}

impl BenchArgs {
    pub fn workload(&self) -> anyhow::Result<Workload> {
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

    pub fn check(&self) -> anyhow::Result<()> {
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
