//! chime roles as real child processes (the `chime` binary), for tests that
//! kill, stop and restart them, and a watcher of the fires topic.
//!
//! [`ChimeProcess`] is the one way tests start a chime child. Each child
//! logs JSON to `$TMPDIR/chime-test-logs/<name>.log` (at the level in
//! `CHIME_TEST_CHILD_LOG`, default info). A listener is bound to port 0 by
//! the child itself and its address read back from the child's
//! `… listening` log line: no port is found free here and handed over, which
//! another process could take in between.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

use chime_wire::headers::FIRED_AT_MS as HEADER_FIRED_AT_MS;
use chime_wire::{TimerCommand, Topics};

use super::bootstrap;

pub const SESSION_TIMEOUT_MS: u64 = 6_000;

/// The log line ingest writes once its REST API listens (field `addr`).
pub const INGEST_LISTENING: &str = "ingest listening";
/// The log line an engine writes once its status endpoint listens.
pub const ENGINE_STATUS_LISTENING: &str = "engine status endpoint listening";

/// A `chime` child process, killed if the test ends without stopping it.
pub struct ChimeProcess {
    pub name: String,
    child: Child,
    pub log: PathBuf,
    /// Where this process's lines begin in its (appended) log.
    log_from: u64,
}

/// The `chime` binary the tests run: `CHIME_TEST_BIN` when set (scripts/test
/// sets it to the release build, so the process tests run chime as it is
/// deployed and keep up with their load on a 2-core machine), else the debug
/// build cargo made for this test.
pub fn chime_binary() -> std::path::PathBuf {
    std::env::var_os("CHIME_TEST_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_chime").into())
}

impl ChimeProcess {
    /// Starts `chime <args…>` against the test broker, allowed to call
    /// loopback receivers, logging JSON to `<name>.log`.
    pub fn spawn(name: &str, args: &[&str]) -> ChimeProcess {
        ChimeProcess::spawn_env(name, args, &[])
    }

    /// [`ChimeProcess::spawn`] with more environment variables, which win
    /// over the harness's own (`CHIME_KAFKA_BOOTSTRAP` names another Kafka).
    pub fn spawn_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> ChimeProcess {
        let log_dir = std::env::temp_dir().join("chime-test-logs");
        std::fs::create_dir_all(&log_dir).expect("create the log directory");
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the child's log");
        let log_from = file.metadata().map(|m| m.len()).unwrap_or(0);
        let level = std::env::var("CHIME_TEST_CHILD_LOG")
            .unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".into());
        let child = Command::new(chime_binary())
            .args(args)
            .env("CHIME_KAFKA_BOOTSTRAP", bootstrap())
            .env("CHIME_CALLBACK_ALLOW", "127.0.0.0/8")
            .env("CHIME_LOG_FORMAT", "json")
            // The listening lines are what tests find the addresses by.
            .env(
                "RUST_LOG",
                format!("{level},chime_ingest=info,chime_engine::status_server=info"),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn chime");
        ChimeProcess {
            name: name.to_string(),
            child,
            log,
            log_from,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for the child")
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} {} ({})", self.pid(), self.name);
    }

    /// kill -9: no chance to leave a group or finish a transaction.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// SIGTERM, then its exit status, waited for up to 30 s.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop on SIGTERM; log {:?}",
                self.name,
                self.log
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGSTOP: frozen, connections open, no heartbeats.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`ChimeProcess::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// The `addr` this process logged with `message` (its bound listener),
    /// waited for up to 60 s.
    pub fn listening(&mut self, message: &str) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(addr) = self.logged_addr(message) {
                return addr;
            }
            if let Some(status) = self.child.try_wait().expect("wait for the child") {
                panic!(
                    "{} exited ({status}) before listening; log {:?}",
                    self.name, self.log
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not log {message:?} within 60 s; log {:?}",
                self.name,
                self.log
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn logged_addr(&self, message: &str) -> Option<SocketAddr> {
        self.log_lines()
            .into_iter()
            .find(|line| line["fields"]["message"] == message)
            .and_then(|line| line["fields"]["addr"].as_str()?.parse().ok())
    }

    /// Everything this process has written to its log so far, JSON or not
    /// (its last words on a fatal error are a plain `Error: …` line).
    pub fn log_text(&self) -> String {
        let mut bytes = Vec::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            if file.seek(SeekFrom::Start(self.log_from)).is_ok() {
                let _ = file.read_to_end(&mut bytes);
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The JSON lines this process has logged so far (not those of an
    /// earlier process that wrote to the same log).
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Drop for ChimeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `chime engine` child process.
pub struct EngineProcess {
    pub instance: String,
    process: ChimeProcess,
}

impl EngineProcess {
    pub fn spawn(prefix: &str, instance: &str) -> EngineProcess {
        EngineProcess::spawn_with(prefix, instance, &[])
    }

    /// [`EngineProcess::spawn`] with more `chime engine` flags.
    pub fn spawn_with(prefix: &str, instance: &str, flags: &[&str]) -> EngineProcess {
        let session = SESSION_TIMEOUT_MS.to_string();
        let mut args = vec![
            "--topic-prefix",
            prefix,
            "engine",
            "--instance-id",
            instance,
            "--session-timeout-ms",
            &session,
        ];
        args.extend_from_slice(flags);
        EngineProcess {
            instance: instance.to_string(),
            process: ChimeProcess::spawn(&format!("{prefix}-{instance}"), &args),
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// kill -9: no chance to leave the group or finish a transaction.
    pub fn kill9(mut self) {
        self.process.kill9();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) {
        let status = self.process.terminate();
        assert!(
            status.success(),
            "engine {} exited with {status}",
            self.instance
        );
    }

    pub fn pause(&self) {
        self.process.pause();
    }

    pub fn resume(&self) {
        self.process.resume();
    }

    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.process.log_lines()
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// The exit status if the process has exited, without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.process.exited()
    }
}

/// A `chime dispatcher` child on `prefix` (session timeout as the engines').
pub fn dispatcher_process(prefix: &str) -> ChimeProcess {
    ChimeProcess::spawn(
        &format!("{prefix}-dispatcher-{}", uuid::Uuid::new_v4().simple()),
        &[
            "--topic-prefix",
            prefix,
            "dispatcher",
            "--dispatcher-session-timeout-ms",
            &SESSION_TIMEOUT_MS.to_string(),
        ],
    )
}

/// One fire record seen by the watcher.
#[derive(Debug, Clone)]
pub struct SeenFire {
    pub id: String,
    pub partition: i32,
    pub fire_at_ms: u64,
    pub fired_at_ms: u64,
}

/// Reads the fires topic (read_committed) in the background.
pub struct FireWatcher {
    seen: Arc<Mutex<Vec<SeenFire>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl FireWatcher {
    pub fn start(topics: &Topics) -> FireWatcher {
        FireWatcher::start_on(&bootstrap(), topics)
    }

    /// [`FireWatcher::start`] on the Kafka at `bootstrap`.
    pub fn start_on(bootstrap: &str, topics: &Topics) -> FireWatcher {
        let consumer: BaseConsumer = chime_kafka::consumer_config(
            bootstrap,
            "test-fire-watcher",
            &format!("watcher-{}", uuid::Uuid::new_v4().simple()),
        )
        .create()
        .expect("watcher consumer");
        consumer
            .subscribe(&[&topics.fires])
            .expect("subscribe fires");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let Ok(TimerCommand::Schedule(spec)) = TimerCommand::decode(m.key(), m.payload())
                else {
                    continue;
                };
                let fired_at_ms = chime_wire::RecordHeaders::get_u64(
                    &chime_kafka::MessageHeaders(&m),
                    HEADER_FIRED_AT_MS,
                )
                .unwrap_or(0);
                s.lock().unwrap().push(SeenFire {
                    id: spec.id,
                    partition: m.partition(),
                    fire_at_ms: spec.fire_at_ms,
                    fired_at_ms,
                });
            }
        });
        FireWatcher { seen, stop }
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn snapshot(&self) -> Vec<SeenFire> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the fires seen so far, or panics at `timeout`.
    pub fn wait_until(&self, what: &str, timeout: Duration, pred: impl Fn(&[SeenFire]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.seen.lock().unwrap()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what} ({} fires seen)",
                self.count()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fires seen per id.
    pub fn per_id(&self) -> HashMap<String, Vec<SeenFire>> {
        let mut m: HashMap<String, Vec<SeenFire>> = HashMap::new();
        for f in self.snapshot() {
            m.entry(f.id.clone()).or_default().push(f);
        }
        m
    }
}

impl Drop for FireWatcher {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Produces timer commands to `chime.timers` as any client would (murmur2, acks=all).
pub struct TimerProducer {
    producer: FutureProducer,
    topic: String,
}

impl TimerProducer {
    pub fn new(topics: &Topics) -> TimerProducer {
        TimerProducer::on(&bootstrap(), topics)
    }

    /// [`TimerProducer::new`] on the Kafka at `bootstrap`.
    pub fn on(bootstrap: &str, topics: &Topics) -> TimerProducer {
        TimerProducer {
            producer: chime_kafka::producer_config(bootstrap, "test-producer")
                .create()
                .expect("producer"),
            topic: topics.timers.clone(),
        }
    }

    /// Sends all commands and waits until Kafka acknowledged every one.
    pub async fn send_all(&self, commands: &[TimerCommand]) {
        let mut acks = Vec::with_capacity(commands.len());
        for c in commands {
            let value = c.encode();
            let record = FutureRecord::to(&self.topic).key(c.id()).payload(&value);
            acks.push(
                self.producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .expect("enqueue"),
            );
        }
        for ack in acks {
            ack.await
                .expect("delivery future")
                .map_err(|(e, _)| e)
                .expect("acknowledged");
        }
    }
}

/// A schedule command for a timer that calls nowhere (these tests read the
/// fires topic, no dispatcher runs).
pub fn schedule(id: &str, fire_at_ms: u64) -> TimerCommand {
    TimerCommand::Schedule(chime_wire::TimerSpec {
        id: id.to_string(),
        fire_at_ms,
        callback: chime_wire::Callback {
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
