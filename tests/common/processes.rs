//! chime roles as real child processes (the `chime` binary), for tests that
//! kill, stop and restart them, and a watcher of the fires topic.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

use chime_wire::headers::FIRED_AT_MS as HEADER_FIRED_AT_MS;
use chime_wire::{TimerCommand, Topics};

use super::bootstrap;

pub const SESSION_TIMEOUT_MS: u64 = 6_000;

/// A `chime engine` child process.
pub struct EngineProcess {
    pub instance: String,
    child: Child,
}

impl EngineProcess {
    pub fn spawn(prefix: &str, instance: &str) -> EngineProcess {
        let log_dir = std::env::temp_dir().join("chime-test-logs");
        let _ = std::fs::create_dir_all(&log_dir);
        let log: PathBuf = log_dir.join(format!("{prefix}-{instance}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open engine log");
        let child = Command::new(env!("CARGO_BIN_EXE_chime"))
            .args([
                "engine",
                "--topic-prefix",
                prefix,
                "--instance-id",
                instance,
                "--session-timeout-ms",
                &SESSION_TIMEOUT_MS.to_string(),
            ])
            .env("CHIME_KAFKA_BOOTSTRAP", bootstrap())
            .env(
                "RUST_LOG",
                std::env::var("CHIME_TEST_ENGINE_LOG")
                    .unwrap_or_else(|_| "info,librdkafka=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn chime engine");
        EngineProcess {
            instance: instance.to_string(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} {}", self.pid());
    }

    /// kill -9: no chance to leave the group or finish a transaction.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait engine") {
                assert!(
                    status.success(),
                    "engine {} exited with {status}",
                    self.instance
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "engine {} did not stop on SIGTERM",
                self.instance
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
        let consumer: BaseConsumer = chime_kafka::consumer_config(
            &bootstrap(),
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
        TimerProducer {
            producer: chime_kafka::producer_config(&bootstrap(), "test-producer")
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
