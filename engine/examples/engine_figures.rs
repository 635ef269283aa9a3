//! Engine benchmark figures (issue 4, "Benchmarks (not tests)"): rebuild rate,
//! failover time and fire lateness, measured against the real broker with real
//! `chime engine` processes, printed as a table for docs/performance.md.
//!
//! ```text
//! cargo build --release            # the tool runs target/release/chime
//! cargo run --release -p chime-engine --example engine_figures -- rebuild  [--timers 1000000] [--repeats 3]
//! cargo run --release -p chime-engine --example engine_figures -- failover [--rate 2000] [--seconds 40] [--session-timeout-ms 6000] [--lead-ms 200]
//! cargo run --release -p chime-engine --example engine_figures -- lateness [--rate 20000] [--seconds 20] [--tick-ms 2,10,50] [--lead-ms 0,200]
//! ```
//!
//! Common options: `--partitions 12`, `--keep` (leave the topics; by default
//! each run deletes the topics it created). The broker is `CHIME_KAFKA_BOOTSTRAP`
//! (default 127.0.0.1:9092); the binary is `CHIME_BIN` (default: `chime` next to
//! this example's directory). Every run uses its own topic prefix
//! (`figures-<mode>-<random>`) and touches no other topic. Engine logs (JSON)
//! go to `$TMPDIR/chime-figures/`.
//!
//! * **rebuild**: produces N schedule commands due in a day, lets one engine
//!   apply them (so its changelog holds N pending records), stops it, then
//!   starts fresh engines and reads their `changelog rebuilt` log lines. Also
//!   reads the same changelog with a bare consumer (no processing): Kafka's
//!   own ceiling for the rebuild on this machine.
//! * **failover**: three engines, timers due continuously, `kill -9` of one;
//!   the time from the kill to the first fire on each of its partitions (the
//!   fires partition of a timer equals its timers partition: murmur2 over the
//!   same partition count), with the survivors' log timeline.
//! * **lateness**: one engine per `--tick-ms`; timers due at a sustained rate
//!   over a window, scheduled (and applied) before the window opens. Engine
//!   lateness (`chime-fired-at-ms` − due time, as `chime check` reports it),
//!   visible lateness (when a read_committed reader received the fire − due
//!   time), and the engine's CPU during the window. `--lead-ms` is the
//!   engine's fire lead (0 by default here, to measure the engine itself;
//!   the engine's own default is `chime_engine::DEFAULT_LEAD`); the table
//!   also shows what a dispatcher holding early fires would call late.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::Value;

use chime_engine::checker::{check, CheckConfig};
use chime_wire::headers::FIRED_AT_MS as HEADER_FIRED_AT_MS;
use chime_wire::time::now_ms;
use chime_wire::{Callback, TimerCommand, TimerSpec, Topics};

const USAGE: &str = "usage: engine_figures <rebuild|failover|lateness> [--partitions N] [--keep] \
[rebuild: --timers N --repeats N] [failover: --rate N --seconds N --session-timeout-ms N \
--transaction-timeout-ms N --lead-ms N] [lateness: --rate N --seconds N --tick-ms a,b,c \
--lead-ms a,b --schedule-ahead-ms N]";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first().cloned() else {
        bail!("{USAGE}");
    };
    let opts = Opts::parse(&args[1..])?;
    print_machine();
    match mode.as_str() {
        "rebuild" => rebuild(&opts),
        "failover" => failover(&opts),
        "lateness" => lateness(&opts),
        other => bail!("unknown mode {other:?}; {USAGE}"),
    }
}

// ---------------------------------------------------------------- options

/// `--name value` pairs and `--flag`s.
struct Opts {
    values: BTreeMap<String, String>,
    flags: BTreeSet<String>,
}

impl Opts {
    fn parse(args: &[String]) -> anyhow::Result<Opts> {
        let (mut values, mut flags) = (BTreeMap::new(), BTreeSet::new());
        let mut it = args.iter().peekable();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                bail!("unexpected argument {a:?}; {USAGE}");
            };
            match it.peek() {
                Some(v) if !v.starts_with("--") => {
                    values.insert(name.to_string(), it.next().cloned().unwrap_or_default());
                }
                _ => {
                    flags.insert(name.to_string());
                }
            }
        }
        Ok(Opts { values, flags })
    }

    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.values.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|e| anyhow::anyhow!("--{name} {v:?}: {e}")),
        }
    }

    fn list(&self, name: &str, default: &[u64]) -> anyhow::Result<Vec<u64>> {
        match self.values.get(name) {
            None => Ok(default.to_vec()),
            Some(v) => v
                .split(',')
                .map(|s| {
                    s.trim()
                        .parse()
                        .map_err(|e| anyhow::anyhow!("--{name} {s:?}: {e}"))
                })
                .collect(),
        }
    }

    fn partitions(&self) -> anyhow::Result<i32> {
        let p = self.get("partitions", 12)?;
        anyhow::ensure!(p > 0, "--partitions must be positive, got {p}");
        Ok(p)
    }

    fn keep(&self) -> bool {
        self.flags.contains("keep")
    }
}

fn bootstrap() -> String {
    std::env::var("CHIME_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn print_machine() {
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

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------- topics

/// A fresh topic prefix with chime's four topics; deletes them on drop
/// unless asked to keep them.
struct Deployment {
    prefix: String,
    topics: Topics,
    partitions: i32,
    keep: bool,
}

impl Deployment {
    fn create(mode: &str, opts: &Opts) -> anyhow::Result<Deployment> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("figures-{mode}-{}", &id[..8]);
        let topics = Topics::new(&prefix);
        let partitions = opts.partitions()?;
        runtime()?.block_on(chime_kafka::admin::create_topics(
            &bootstrap(),
            &topics,
            partitions,
        ))?;
        println!("topic prefix {prefix}, {partitions} partitions");
        Ok(Deployment {
            prefix,
            topics,
            partitions,
            keep: opts.keep(),
        })
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let t = &self.topics;
        let names = [&t.timers, &t.changelog, &t.fires, &t.dead_letters];
        let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let deleted = runtime().and_then(|rt| {
            rt.block_on(async {
                let admin: AdminClient<DefaultClientContext> =
                    chime_kafka::client_config(&bootstrap(), "chime-figures-admin").create()?;
                admin.delete_topics(&names, &AdminOptions::new()).await?;
                Ok(())
            })
        });
        if let Err(e) = deleted {
            eprintln!("could not delete topics of {}: {e}", self.prefix);
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

// ---------------------------------------------------------------- producing

/// Counts failed deliveries, so a run never reports figures for timers that
/// were not all written.
#[derive(Default)]
struct DeliveryCounter {
    failed: AtomicU64,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn schedule(id: &str, fire_at_ms: u64) -> TimerCommand {
    TimerCommand::Schedule(TimerSpec {
        id: id.to_string(),
        fire_at_ms,
        callback: Callback {
            url: "http://127.0.0.1:9/unused".into(),
            method: "POST".into(),
            headers: Default::default(),
            body: String::new(),
        },
        attempt: 1,
        retry: Default::default(),
        first_fire_at_ms: None,
        schedule_id: None,
        delivery: None,
    })
}

/// Writes `n` schedule commands (timer `i` due at `due(i)`) to the timers
/// topic as fast as the broker takes them; returns records per second.
fn produce(topics: &Topics, n: usize, due: impl Fn(usize) -> u64) -> anyhow::Result<f64> {
    let producer: BaseProducer<DeliveryCounter> =
        chime_kafka::producer_config(&bootstrap(), "chime-figures-producer")
            .set("linger.ms", "5")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .create_with_context(DeliveryCounter::default())?;
    let started = Instant::now();
    for i in 0..n {
        let command = schedule(&format!("t{i}"), due(i));
        let value = command.encode();
        let mut record = BaseRecord::to(&topics.timers)
            .key(command.id())
            .payload(&value[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e).context("producing timers"),
            }
        }
        if i % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .context("flushing timers")?;
    let secs = started.elapsed().as_secs_f64();
    let failed = producer.context().failed.load(Ordering::Relaxed);
    anyhow::ensure!(failed == 0, "{failed} of {n} timers were not delivered");
    Ok(n as f64 / secs)
}

/// Input records the engines have applied and committed, and the total
/// written: the group's committed offsets against the high watermarks.
fn applied(deployment: &Deployment, reader: &BaseConsumer) -> anyhow::Result<(i64, i64)> {
    let topic = &deployment.topics.timers;
    let mut tpl = TopicPartitionList::new();
    for p in 0..deployment.partitions {
        tpl.add_partition(topic, p);
    }
    let committed = reader.committed_offsets(tpl, Duration::from_secs(30))?;
    let (mut done, mut total) = (0, 0);
    for p in 0..deployment.partitions {
        let (low, high) = reader.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        total += high - low;
        if let Some(Offset::Offset(o)) = committed.find_partition(topic, p).map(|e| e.offset()) {
            done += o - low;
        }
    }
    Ok((done, total))
}

fn offsets_reader(deployment: &Deployment) -> anyhow::Result<BaseConsumer> {
    Ok(chime_kafka::consumer_config(
        &bootstrap(),
        "chime-figures-offsets",
        &format!("{}-engine", deployment.prefix),
    )
    .create()?)
}

/// Waits until every input record is applied; returns when that was.
fn wait_applied(deployment: &Deployment, timeout: Duration) -> anyhow::Result<Instant> {
    let reader = offsets_reader(deployment)?;
    let deadline = Instant::now() + timeout;
    let mut last_print = Instant::now();
    loop {
        let (done, total) = applied(deployment, &reader)?;
        if done >= total {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("engine applied {done} of {total} input records within {timeout:?}");
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            println!("  applied {done} / {total}");
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------- engines

/// A `chime engine` child process logging JSON to a file.
struct Engine {
    instance: String,
    child: Child,
    log: PathBuf,
}

/// One line of an engine's JSON log.
#[derive(Debug, Clone)]
struct LogLine {
    at_ms: u64,
    message: String,
    fields: Value,
}

impl LogLine {
    fn u64(&self, name: &str) -> u64 {
        self.fields[name].as_u64().unwrap_or(0)
    }

    /// A `partitions = ?[..]` field.
    fn partitions(&self) -> Vec<i32> {
        let s = self.fields["partitions"].as_str().unwrap_or("");
        s.trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect()
    }
}

fn chime_binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("CHIME_BIN") {
        Some(p) => PathBuf::from(p),
        // target/<profile>/examples/engine_figures → target/<profile>/chime
        None => std::env::current_exe()?
            .parent()
            .and_then(|d| d.parent())
            .map(|d| d.join("chime"))
            .context("locating the chime binary")?,
    };
    anyhow::ensure!(
        path.exists(),
        "{} not found: run `cargo build --release` first or set CHIME_BIN",
        path.display()
    );
    Ok(path)
}

impl Engine {
    fn spawn(deployment: &Deployment, instance: &str, extra: &[String]) -> anyhow::Result<Engine> {
        let dir = std::env::temp_dir().join("chime-figures");
        fs::create_dir_all(&dir)?;
        let log = dir.join(format!("{}-{instance}.log", deployment.prefix));
        let file = fs::File::create(&log)?;
        let child = Command::new(chime_binary()?)
            .args(["engine", "--topic-prefix", &deployment.prefix])
            .args(["--instance-id", instance])
            .args(extra)
            .env("CHIME_KAFKA_BOOTSTRAP", bootstrap())
            .env("CHIME_LOG_FORMAT", "json")
            .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .context("spawning chime engine")?;
        Ok(Engine {
            instance: instance.to_string(),
            child,
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_lines(&self) -> Vec<LogLine> {
        let Ok(file) = fs::File::open(&self.log) else {
            return Vec::new();
        };
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .map(|v| LogLine {
                at_ms: v["timestamp"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map_or(0, |t| t.timestamp_millis() as u64),
                message: v["fields"]["message"].as_str().unwrap_or("").to_string(),
                fields: v["fields"].clone(),
            })
            .collect()
    }

    fn lines(&self, message: &str) -> Vec<LogLine> {
        self.log_lines()
            .into_iter()
            .filter(|l| l.message == message)
            .collect()
    }

    /// Partitions owned now, per the assigned/revoked log lines.
    fn owned(&self) -> BTreeSet<i32> {
        let mut owned = BTreeSet::new();
        for l in self.log_lines() {
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

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "engine {} exited with {status}; see {}",
                self.instance,
                self.log.display()
            );
        }
        Ok(())
    }

    /// A `VmRSS`-style field of /proc/<pid>/status, in MiB.
    fn memory_mib(&self, field: &str) -> f64 {
        fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kib| kib.parse::<f64>().ok())
            })
            .map_or(f64::NAN, |kib| kib / 1024.0)
    }

    /// utime + stime so far, seconds.
    fn cpu_seconds(&self) -> f64 {
        let ticks = fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .ok()
            .and_then(|s| {
                let after_name = s.rsplit_once(')')?.1.to_string();
                let f: Vec<&str> = after_name.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0);
        ticks as f64 / clock_ticks_per_second()
    }

    fn terminate(mut self) -> anyhow::Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("engine {} did not stop on SIGTERM", self.instance);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn kill9(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Waits until `cond` holds, checking every 100 ms, or fails naming `what`.
fn wait_for(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond()? {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Waits until `engine` has made every one of its assigned partitions live
/// and owns `expected` of them.
fn wait_live(engine: &mut Engine, expected: usize, timeout: Duration) -> anyhow::Result<()> {
    wait_for(
        &format!("engine {} live on {expected} partitions", engine.instance),
        timeout,
        || {
            engine.check_alive()?;
            let live: BTreeSet<u64> = engine
                .lines("partition live")
                .iter()
                .map(|l| l.u64("partition"))
                .collect();
            Ok(engine.owned().len() == expected && live.len() >= expected)
        },
    )
}

// ---------------------------------------------------------------- fire watcher

/// One fire record as a read_committed reader received it.
#[derive(Debug, Clone, Copy)]
struct Fire {
    partition: i32,
    fire_at_ms: u64,
    fired_at_ms: u64,
    received_ms: u64,
}

/// Reads the fires topic (read_committed) on a thread.
struct FireWatcher {
    fires: Arc<Mutex<Vec<Fire>>>,
    stop: Arc<AtomicBool>,
}

impl FireWatcher {
    fn start(deployment: &Deployment) -> anyhow::Result<FireWatcher> {
        let consumer: BaseConsumer = chime_kafka::consumer_config(
            &bootstrap(),
            "chime-figures-watcher",
            &format!("{}-figures-watcher", deployment.prefix),
        )
        .create()?;
        consumer.subscribe(&[&deployment.topics.fires])?;
        let fires = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (fires.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let received_ms = now_ms();
                let fired_at = chime_wire::RecordHeaders::get_u64(
                    &chime_kafka::MessageHeaders(&m),
                    HEADER_FIRED_AT_MS,
                );
                // The due time from the payload: with a lead the engine emits
                // ahead, so fired_at − lateness would not give it back. A
                // revoke (a cancel record) is not a fire.
                let decoded = TimerCommand::decode(m.key(), m.payload());
                if let (Some(fired_at_ms), Ok(TimerCommand::Schedule(spec))) = (fired_at, decoded) {
                    f.lock().unwrap_or_else(|e| e.into_inner()).push(Fire {
                        partition: m.partition(),
                        fire_at_ms: spec.fire_at_ms,
                        fired_at_ms,
                        received_ms,
                    });
                }
            }
        });
        Ok(FireWatcher { fires, stop })
    }

    fn snapshot(&self) -> Vec<Fire> {
        self.fires.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn count(&self) -> usize {
        self.fires.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for FireWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `chime check` on the deployment: every due timer fired once, none early
/// (by more than the engines' `lead_ms`).
fn audit(
    deployment: &Deployment,
    lead_ms: u64,
) -> anyhow::Result<chime_engine::checker::CheckReport> {
    let mut config = CheckConfig::new(&bootstrap(), &deployment.prefix);
    config.grace = Duration::ZERO;
    config.lead = Duration::from_millis(lead_ms);
    check(&config)
}

// ---------------------------------------------------------------- rebuild

fn rebuild(opts: &Opts) -> anyhow::Result<()> {
    let n: usize = opts.get("timers", 1_000_000)?;
    let repeats: usize = opts.get("repeats", 3)?;
    let deployment = Deployment::create("rebuild", opts)?;
    let p = deployment.partitions as usize;

    let day_ahead = now_ms() + 86_400_000;
    let produce_rate = produce(&deployment.topics, n, |i| day_ahead + i as u64)?;
    println!("produced {n} schedule commands at {produce_rate:.0}/s");

    let mut loader = Engine::spawn(&deployment, "loader", &[])?;
    wait_live(&mut loader, p, Duration::from_secs(60))?;
    let live_at = Instant::now();
    let applied_at = wait_applied(&deployment, Duration::from_secs(600))?;
    let apply_secs = applied_at.duration_since(live_at).as_secs_f64();
    let loader_rss = loader.memory_mib("VmRSS");
    println!(
        "loader applied {n} commands in {apply_secs:.1} s ({:.0}/s; includes its first rebuild); RSS {loader_rss:.0} MiB",
        n as f64 / apply_secs
    );
    loader.terminate()?;

    let raw = raw_changelog_read(&deployment)?;

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
        let mut engine = Engine::spawn(&deployment, &format!("rebuilder-{run}"), &[])?;
        wait_live(&mut engine, p, Duration::from_secs(600))?;
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
fn raw_changelog_read(deployment: &Deployment) -> anyhow::Result<(u64, u64)> {
    let consumer: BaseConsumer = chime_kafka::consumer_config(
        &bootstrap(),
        "chime-figures-raw",
        &format!("{}-figures-raw", deployment.prefix),
    )
    .set("enable.partition.eof", "true")
    .set("fetch.max.bytes", "52428800")
    .set("max.partition.fetch.bytes", "10485760")
    .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..deployment.partitions {
        tpl.add_partition_offset(&deployment.topics.changelog, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let (mut records, mut at_end) = (0u64, 0);
    while at_end < deployment.partitions {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "bare read too slow"
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

// ---------------------------------------------------------------- failover

fn failover(opts: &Opts) -> anyhow::Result<()> {
    let rate: u64 = opts.get("rate", 2_000)?;
    let seconds: u64 = opts.get("seconds", 40)?;
    let session_ms: u64 = opts.get("session-timeout-ms", 6_000)?;
    let lead_ms: u64 = opts.get("lead-ms", chime_engine::DEFAULT_LEAD.as_millis() as u64)?;
    let txn_ms: Option<u64> = match opts.values.contains_key("transaction-timeout-ms") {
        true => Some(opts.get("transaction-timeout-ms", 0)?),
        false => None,
    };
    let deployment = Deployment::create("failover", opts)?;
    let p = deployment.partitions as usize;
    let mut extra = vec![
        "--session-timeout-ms".to_string(),
        session_ms.to_string(),
        "--lead-ms".to_string(),
        lead_ms.to_string(),
    ];
    if let Some(t) = txn_ms {
        extra.extend(["--transaction-timeout-ms".to_string(), t.to_string()]);
    }
    let mut engines: Vec<Engine> = ["a", "b", "c"]
        .iter()
        .map(|i| Engine::spawn(&deployment, i, &extra))
        .collect::<anyhow::Result<_>>()?;
    // A stable assignment: every partition owned by exactly one of three.
    let mut stable_since: Option<(Instant, Vec<BTreeSet<i32>>)> = None;
    wait_for(
        "a stable three-way assignment",
        Duration::from_secs(90),
        || {
            for e in engines.iter_mut() {
                e.check_alive()?;
            }
            let owned: Vec<BTreeSet<i32>> = engines.iter().map(Engine::owned).collect();
            let total: usize = owned.iter().map(BTreeSet::len).sum();
            let union: BTreeSet<i32> = owned.iter().flatten().copied().collect();
            if total != p || union.len() != p || owned.iter().any(BTreeSet::is_empty) {
                stable_since = None;
                return Ok(false);
            }
            match &stable_since {
                Some((since, was)) if *was == owned => Ok(since.elapsed() > Duration::from_secs(3)),
                _ => {
                    stable_since = Some((Instant::now(), owned));
                    Ok(false)
                }
            }
        },
    )?;
    for e in &engines {
        println!("engine {} owns {:?}", e.instance, e.owned());
    }

    let watcher = FireWatcher::start(&deployment)?;
    let n = (rate * seconds) as usize;
    let first_due = now_ms() + 5_000;
    let produce_rate = produce(&deployment.topics, n, |i| {
        first_due + i as u64 * 1000 / rate
    })?;
    println!("produced {n} timers ({rate}/s over {seconds} s) at {produce_rate:.0}/s");

    // Fire steadily for a while, then kill the middle engine.
    let kill_after = first_due + (seconds * 1000 / 3).max(8_000);
    wait_for(
        "the steady phase",
        Duration::from_secs(seconds + 60),
        || Ok(now_ms() >= kill_after),
    )?;
    let victim = engines.remove(1);
    let moved = victim.owned();
    let killed_at = now_ms();
    victim.kill9()?;
    println!("kill -9 engine b at {killed_at}; its partitions {moved:?}");

    // The first fire after the kill on each moved partition.
    let mut first: BTreeMap<i32, Fire> = BTreeMap::new();
    let failover_deadline = Duration::from_secs(120);
    wait_for("a fire on every moved partition", failover_deadline, || {
        for f in watcher.snapshot() {
            if moved.contains(&f.partition) && f.fired_at_ms >= killed_at {
                let e = first.entry(f.partition).or_insert(f);
                if f.fired_at_ms < e.fired_at_ms {
                    *e = f;
                }
            }
        }
        Ok(first.len() == moved.len())
    })?;

    // The survivors' view: when they were assigned the moved partitions and
    // how long the rebuild took.
    let mut timeline = Vec::new();
    for e in &engines {
        for l in e.log_lines() {
            if l.at_ms < killed_at {
                continue;
            }
            let parts: BTreeSet<i32> = l.partitions().into_iter().collect();
            match l.message.as_str() {
                "partitions assigned" if !parts.is_disjoint(&moved) => timeline.push(format!(
                    "  +{:>6} ms  engine {} assigned {:?}",
                    l.at_ms - killed_at,
                    e.instance,
                    parts
                )),
                "partitions revoked" => timeline.push(format!(
                    "  +{:>6} ms  engine {} revoked {:?}",
                    l.at_ms - killed_at,
                    e.instance,
                    parts
                )),
                "changelog rebuilt" => timeline.push(format!(
                    "  +{:>6} ms  engine {} rebuilt {:?}: {} records in {} ms",
                    l.at_ms - killed_at,
                    e.instance,
                    parts,
                    l.u64("records"),
                    l.u64("elapsed_ms")
                )),
                _ => {}
            }
        }
    }
    timeline.sort();
    println!("timeline after the kill:\n{}", timeline.join("\n"));

    // Let the rest fire, then audit.
    let all_due = first_due + seconds * 1000;
    wait_for(
        "every timer fired",
        Duration::from_secs(seconds + 120),
        || Ok(now_ms() > all_due + 2_000 && watcher.count() >= n),
    )
    .unwrap_or_else(|e| println!("warning: {e}"));
    for e in engines {
        e.terminate()?;
    }
    let report = audit(&deployment, lead_ms)?;

    let gaps: Vec<u64> = first.values().map(|f| f.fired_at_ms - killed_at).collect();
    let worst_moved = watcher
        .snapshot()
        .iter()
        .filter(|f| moved.contains(&f.partition) && f.fired_at_ms >= killed_at)
        .map(|f| f.received_ms as i64 - f.fire_at_ms as i64)
        .max()
        .unwrap_or(0);
    println!();
    // Partitions that did not move can pause too: a rebalance fails the
    // survivors' open transaction, and they rebuild what they own.
    let worst_stayed = watcher
        .snapshot()
        .iter()
        .filter(|f| !moved.contains(&f.partition) && f.fire_at_ms >= killed_at)
        .map(|f| f.received_ms as i64 - f.fire_at_ms as i64)
        .max()
        .unwrap_or(0);
    let seen: Vec<u64> = first.values().map(|f| f.received_ms - killed_at).collect();
    println!("| session timeout ms | transaction timeout ms | lead ms | moved partitions | kill → first fire emitted on a moved partition, ms (first / last partition) | kill → that fire received by a read_committed reader, ms (first / last) | worst received − due after the kill, ms: moved / other partitions | checker | load avg |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {session_ms} | {} | {lead_ms} | {} | {} / {} | {} / {} | {worst_moved} / {worst_stayed} | {} ({} fires of {} expected) | {} |",
        txn_ms.map_or("10000 (default)".to_string(), |t| t.to_string()),
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

// ---------------------------------------------------------------- lateness

fn lateness(opts: &Opts) -> anyhow::Result<()> {
    let rate: u64 = opts.get("rate", 20_000)?;
    let seconds: u64 = opts.get("seconds", 20)?;
    let ticks = opts.list("tick-ms", &[2, 10, 50])?;
    let leads = opts.list("lead-ms", &[0])?;
    let ahead_ms: u64 = opts.get("schedule-ahead-ms", 20_000)?;
    let mut rows = Vec::new();
    for &lead in &leads {
        for &tick in &ticks {
            rows.push(lateness_run(opts, rate, seconds, tick, lead, ahead_ms)?);
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

/// Nearest-rank percentile of sorted `v`.
fn pct(v: &[i64], q: f64) -> i64 {
    if v.is_empty() {
        return 0;
    }
    v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

fn lateness_run(
    opts: &Opts,
    rate: u64,
    seconds: u64,
    tick: u64,
    lead: u64,
    ahead_ms: u64,
) -> anyhow::Result<String> {
    println!("-- tick {tick} ms, lead {lead} ms");
    let deployment = Deployment::create("lateness", opts)?;
    let args = [
        "--tick-ms",
        &tick.to_string(),
        "--lead-ms",
        &lead.to_string(),
    ];
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut engine = Engine::spawn(&deployment, "solo", &args)?;
    wait_live(
        &mut engine,
        deployment.partitions as usize,
        Duration::from_secs(60),
    )?;
    let watcher = FireWatcher::start(&deployment)?;
    let n = (rate * seconds) as usize;
    let window_start = now_ms() + ahead_ms;
    let produce_rate = produce(&deployment.topics, n, |i| {
        window_start + i as u64 * 1000 / rate
    })?;
    wait_applied(&deployment, Duration::from_secs(ahead_ms / 1000 + 120))?;
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
    wait_for(
        "the window to open",
        Duration::from_millis(ahead_ms + 60_000),
        || Ok(now_ms() >= engine_start),
    )?;
    let cpu_start = engine.cpu_seconds();
    let load_start = loadavg();
    wait_for(
        "the window to close",
        Duration::from_secs(seconds + 60),
        || Ok(now_ms() >= engine_start + seconds * 1000),
    )?;
    let cpu = (engine.cpu_seconds() - cpu_start) / seconds as f64;
    wait_for("every fire received", Duration::from_secs(120), || {
        Ok(watcher.count() >= n)
    })?;
    engine.terminate()?;
    let report = audit(&deployment, lead)?;
    println!("{report}");

    let fires = watcher.snapshot();
    let mut engine_late: Vec<i64> = fires
        .iter()
        .map(|f| f.fired_at_ms as i64 - f.fire_at_ms as i64)
        .collect();
    engine_late.sort_unstable();
    let mut received: Vec<i64> = fires
        .iter()
        .map(|f| f.received_ms as i64 - f.fire_at_ms as i64)
        .collect();
    received.sort_unstable();
    // Emit stamp → visible to a read_committed reader: the transaction's
    // commit plus the fetch.
    let mut visibility: Vec<i64> = fires
        .iter()
        .map(|f| f.received_ms as i64 - f.fired_at_ms as i64)
        .collect();
    visibility.sort_unstable();
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
        engine_late.last().unwrap_or(&0),
        pct(&visibility, 0.5),
        pct(&visibility, 0.99),
        pct(&received, 0.5),
        pct(&received, 0.99),
        received.last().unwrap_or(&0),
        held_p99(0),
        held_p99(50),
        held_p99(100),
        held_p99(200),
        cpu * 100.0,
        if report.is_clean() { "clean" } else { "PROBLEMS" },
    ))
}
