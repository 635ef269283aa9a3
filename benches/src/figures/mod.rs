//! The engine's figures for docs/performance.md, measured against the real
//! broker with real `chime engine` processes and printed as Markdown tables:
//!
//! * `chime-bench rebuild` ([`rebuild`]) — changelog rebuild rate at 10^6
//!   pending timers, beside a bare consumer reading the same changelog;
//! * `chime-bench failover` ([`failover`]) — kill -9 of one of three
//!   engines: the time until every moved partition fires again;
//! * `chime-bench lateness` ([`lateness`]) — engine fire lateness at a
//!   sustained rate, per tick and lead.
//!
//! Every run uses its own topic prefix (`figures-<mode>-<random>`), touches
//! no other topic, deletes its topics at the end (unless `--keep`) and ends
//! with the checker. Engine logs (JSON) go to `$TMPDIR/chime-figures/`.

pub mod failover;
pub mod lateness;
pub mod rebuild;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use chime_check::{check, CheckConfig, CheckReport};
use chime_wire::headers::FIRED_AT_MS;
use chime_wire::time::now_ms;
use chime_wire::{FiresRecord, RecordHeaders};

use crate::harness::deployment::Deployment;
use crate::harness::spawn::{chime_exe, ChimeProcess, LogLine, ProcessSpec};
use crate::harness::{cpu, eventually};
use crate::load::create::{self, Plan, Via};
use crate::Common;

/// Options every figures mode takes.
#[derive(Args, Debug, Clone)]
pub struct FigureArgs {
    /// Partitions of the run's topics.
    #[arg(long, default_value_t = 12)]
    pub partitions: i32,
    /// Leave the run's topics on the broker.
    #[arg(long)]
    pub keep: bool,
}

/// Runs one figures mode on a fresh deployment of `mode`, removing its
/// topics afterwards (unless `--keep`) whatever happened.
async fn on_fresh_deployment<T, F, Fut>(
    mode: &str,
    common: &Common,
    args: &FigureArgs,
    body: F,
) -> anyhow::Result<T>
where
    F: FnOnce(Rig) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    anyhow::ensure!(
        (1..=1000).contains(&args.partitions),
        "--partitions: must be between 1 and 1000"
    );
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("figures-{mode}-{}", &id[..8]);
    let deployment = Deployment::create(&common.bootstrap, &prefix, args.partitions).await?;
    println!("topic prefix {prefix}, {} partitions", args.partitions);
    let rig = Rig {
        exe: chime_exe(common.chime_bin.as_deref())?,
        bootstrap: common.bootstrap.clone(),
        prefix: prefix.clone(),
        partitions: args.partitions,
        logs: std::env::temp_dir().join("chime-figures"),
    };
    println!("engine logs: {}/{prefix}-*.log", rig.logs.display());
    let result = body(rig).await;
    if args.keep {
        println!("kept the topics of {prefix}");
    } else {
        deployment.remove().await;
    }
    result
}

/// What a mode works with: the deployment and how to start engines on it.
pub struct Rig {
    exe: PathBuf,
    bootstrap: String,
    prefix: String,
    partitions: i32,
    logs: PathBuf,
}

impl Rig {
    fn topics(&self) -> chime_wire::Topics {
        chime_wire::Topics::new(&self.prefix)
    }

    /// Starts `chime engine --instance-id <instance> <extra…>`.
    fn engine(&self, instance: &str, extra: &[&str]) -> anyhow::Result<Engine> {
        let mut args = vec!["--instance-id", instance];
        args.extend_from_slice(extra);
        let spec = ProcessSpec::role(
            &format!("{}-{instance}", self.prefix),
            &self.exe,
            &self.bootstrap,
            &self.prefix,
            "engine",
            &args,
            &self.logs,
        );
        Ok(Engine {
            instance: instance.to_string(),
            process: ChimeProcess::spawn(spec)?,
        })
    }

    /// Produces `due_ms.len()` schedule commands (ids `t-<i>`, calling
    /// nowhere) to the timers topic as fast as the broker takes them;
    /// returns records per second.
    async fn produce(&self, due_ms: Vec<u64>) -> anyhow::Result<f64> {
        let n = due_ms.len();
        let plan = Plan {
            run_id: "t".into(),
            due_ms,
            callback_url: "http://127.0.0.1:9/unused".into(),
        };
        let topics = self.topics();
        // The Kafka path uses neither the REST API nor its concurrency.
        let target = create::Target {
            api: "",
            bootstrap: &self.bootstrap,
            timers_topic: &topics.timers,
            concurrency: 1,
            batch_size: 1,
            api_key: None,
        };
        let created = AtomicU64::new(0);
        let started = Instant::now();
        create::create_all(Via::Kafka, &plan, &target, &created).await?;
        Ok(n as f64 / started.elapsed().as_secs_f64().max(1e-6))
    }

    /// Input records the engines have applied and committed, and the total
    /// written: the group's committed offsets against the high watermarks.
    fn applied(&self, reader: &BaseConsumer) -> anyhow::Result<(i64, i64)> {
        let topic = &self.topics().timers;
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(topic, p);
        }
        let committed = reader.committed_offsets(tpl, Duration::from_secs(30))?;
        let (mut done, mut total) = (0, 0);
        for p in 0..self.partitions {
            let (low, high) = reader.fetch_watermarks(topic, p, Duration::from_secs(10))?;
            total += high - low;
            if let Some(Offset::Offset(o)) = committed.find_partition(topic, p).map(|e| e.offset())
            {
                done += o - low;
            }
        }
        Ok((done, total))
    }

    /// Waits until every input record is applied; returns when that was.
    async fn wait_applied(&self, within: Duration) -> anyhow::Result<Instant> {
        let reader: BaseConsumer = chime_kafka::consumer_config(
            &self.bootstrap,
            "chime-figures-offsets",
            &format!("{}-engine", self.prefix),
        )
        .create()?;
        let mut last_print = Instant::now();
        eventually("every input record applied", within, || {
            let progress = tokio::task::block_in_place(|| self.applied(&reader));
            let result = progress.map(|(done, total)| {
                if last_print.elapsed() > Duration::from_secs(5) {
                    println!("  applied {done} / {total}");
                    last_print = Instant::now();
                }
                (done >= total).then(Instant::now)
            });
            async move { result }
        })
        .await
    }

    /// The checker on this deployment: every due timer fired once, none
    /// early (by more than the engines' `lead_ms`).
    async fn audit(&self, lead_ms: u64, tick_ms: u64) -> anyhow::Result<CheckReport> {
        let mut config = CheckConfig::new(
            &self.bootstrap,
            &self.prefix,
            Duration::from_millis(lead_ms),
            Duration::from_millis(tick_ms),
        );
        config.grace = Duration::ZERO;
        tokio::task::spawn_blocking(move || check(&config)).await?
    }
}

/// A `chime engine` child of a figures run.
struct Engine {
    instance: String,
    process: ChimeProcess,
}

impl Engine {
    /// Partitions owned now, per the assigned/revoked log lines.
    fn owned(&self) -> BTreeSet<i32> {
        let mut owned = BTreeSet::new();
        for l in self.process.log_lines() {
            match l.message.as_str() {
                "partitions assigned" => owned.extend(l.partitions()),
                "partitions revoked" => {
                    for p in l.partitions() {
                        owned.remove(&p);
                    }
                }
                _ => {}
            }
        }
        owned
    }

    fn lines(&self, message: &str) -> Vec<LogLine> {
        self.process.lines(message)
    }

    fn cpu_seconds(&self) -> f64 {
        cpu::cpu_seconds(self.process.pid()).unwrap_or(f64::NAN)
    }

    fn memory_mib(&self, field: &str) -> f64 {
        cpu::memory_kib(self.process.pid(), field).map_or(f64::NAN, |kib| kib as f64 / 1024.0)
    }

    /// Waits until it owns `expected` partitions and has made each live.
    async fn wait_live(&mut self, expected: usize, within: Duration) -> anyhow::Result<()> {
        let what = format!("engine {} live on {expected} partitions", self.instance);
        eventually(&what, within, || {
            let live = self.process.ensure_running().map(|()| {
                let live: BTreeSet<u64> = self
                    .lines("partition live")
                    .iter()
                    .map(|l| l.u64("partition"))
                    .collect();
                (self.owned().len() == expected && live.len() >= expected).then_some(())
            });
            async move { live }
        })
        .await
    }

    fn terminate(mut self) -> anyhow::Result<()> {
        let status =
            tokio::task::block_in_place(|| self.process.terminate(Duration::from_secs(30)))?;
        anyhow::ensure!(
            status.success(),
            "engine {} exited with {status}",
            self.instance
        );
        Ok(())
    }

    fn kill9(mut self) -> anyhow::Result<()> {
        self.process.kill9()
    }
}

/// One fire record as a read_committed reader received it.
#[derive(Debug, Clone, Copy)]
struct Fire {
    partition: i32,
    fire_at_ms: u64,
    fired_at_ms: u64,
    received_ms: u64,
}

/// Reads the fires topic (read_committed) on a thread of its own.
struct FireWatcher {
    fires: Arc<Mutex<Vec<Fire>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FireWatcher {
    fn start(rig: &Rig) -> anyhow::Result<FireWatcher> {
        let consumer: BaseConsumer = chime_kafka::consumer_config(
            &rig.bootstrap,
            "chime-figures-watcher",
            &format!("{}-figures-watcher", rig.prefix),
        )
        .create()?;
        consumer.subscribe(&[&rig.topics().fires])?;
        let fires = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (fires.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let received_ms = now_ms();
                let headers = chime_kafka::MessageHeaders(&m);
                let fired_at = headers.get_u64(FIRED_AT_MS);
                // The due time from the payload: with a lead the engine emits
                // ahead, so fired_at − lateness would not give it back. A
                // revoke is not a fire.
                let decoded = FiresRecord::decode(m.key(), m.payload(), &headers);
                if let (Some(fired_at_ms), Ok(FiresRecord::Fire(fire))) = (fired_at, decoded) {
                    lock(&f).push(Fire {
                        partition: m.partition(),
                        fire_at_ms: fire.spec.fire_at_ms,
                        fired_at_ms,
                        received_ms,
                    });
                }
            }
        });
        Ok(FireWatcher {
            fires,
            stop,
            thread: Some(thread),
        })
    }

    fn snapshot(&self) -> Vec<Fire> {
        lock(&self.fires).clone()
    }

    fn count(&self) -> usize {
        lock(&self.fires).len()
    }
}

impl Drop for FireWatcher {
    /// Stops the reader before the run deletes its topics.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A poisoned lock only means the watcher thread panicked mid-push; the
/// fires already recorded are still good.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits until the wall clock reads `at_ms`.
async fn wait_until_ms(at_ms: u64) {
    crate::harness::sleep_until_ms(at_ms).await;
}

/// The machine the figures were measured on, for the table's caption.
pub fn print_machine() {
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    let model = run("lscpu", &[])
        .lines()
        .find(|l| l.starts_with("Model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "?".into());
    println!(
        "machine: {model}, {} cores; date {}; commit {}; load average {}",
        run("nproc", &[]),
        run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        run("git", &["rev-parse", "--short", "HEAD"]),
        loadavg()
    );
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Nearest-rank percentile of ascending `v` (0 when empty).
fn pct(v: &[i64], q: f64) -> i64 {
    chime_check::nearest_rank(v, q).unwrap_or(0)
}
