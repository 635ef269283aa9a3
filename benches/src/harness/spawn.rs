//! chime as child processes: one role each (`all`, `ingest`, `engine`,
//! `dispatcher`), logging JSON to a file the tool reads back — for the
//! addresses the child bound, and for what the engines did (partitions
//! assigned, rebuilt, live). Children are signalled (`kill -9`, `SIGSTOP`,
//! `SIGCONT`, `SIGTERM`) and restarted with the same arguments.
//!
//! Listeners bind port 0 and the tool reads the bound address from the
//! child's `… listening` log line, so no port is ever handed over between
//! processes (a port found free and then given to a child can be taken by
//! anyone in between).

use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

/// The log line ingest writes once its REST API listens (`addr` field).
pub const INGEST_LISTENING: &str = "ingest listening";
/// The log line an engine writes once its status endpoint listens.
pub const ENGINE_STATUS_LISTENING: &str = "engine status endpoint listening";

/// Log filter of every child: info, so the `… listening` lines and the
/// engines' partition lines are written. `CHIME_BENCH_CHILD_LOG` replaces
/// it (keep `info` in it), e.g. with `CHIME_KAFKA_DEBUG=cgrp,eos` and
/// `info,librdkafka=debug` to see librdkafka's group and transaction steps.
const CHILD_LOG: &str = "info,librdkafka=warn,rdkafka=warn";

/// The chime executable: `explicit`, else `chime` next to this executable.
pub fn chime_exe(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("finding this executable")?
            .with_file_name("chime"),
    };
    anyhow::ensure!(
        path.is_file(),
        "{} not found: build it with `cargo build --release --bin chime --bin chime-bench`, \
         or name it with --chime-bin",
        path.display()
    );
    Ok(path)
}

/// How to start one chime child.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// A short name for messages (e.g. `engine-a`).
    pub name: String,
    pub exe: PathBuf,
    /// Everything after the executable, e.g. `--kafka … --topic-prefix p engine`.
    pub args: Vec<String>,
    /// Extra environment (the child also inherits this process's).
    pub env: Vec<(String, String)>,
    /// Its log (stderr), appended to across restarts.
    pub log: PathBuf,
}

impl ProcessSpec {
    /// `<exe> --kafka <bootstrap> --topic-prefix <prefix> <role> <args…>`,
    /// logging to `<dir>/<name>.log`.
    pub fn role(
        name: &str,
        exe: &Path,
        bootstrap: &str,
        prefix: &str,
        role: &str,
        args: &[&str],
        dir: &Path,
    ) -> ProcessSpec {
        let mut all: Vec<String> = ["--kafka", bootstrap, "--topic-prefix", prefix, role]
            .iter()
            .map(|s| s.to_string())
            .collect();
        all.extend(args.iter().map(|s| s.to_string()));
        ProcessSpec {
            name: name.to_string(),
            exe: exe.to_path_buf(),
            args: all,
            env: Vec::new(),
            log: dir.join(format!("{name}.log")),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> ProcessSpec {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
}

/// One line of a child's JSON log.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub message: String,
    pub fields: Value,
}

impl LogLine {
    fn parse(line: &str) -> Option<LogLine> {
        let v: Value = serde_json::from_str(line).ok()?;
        let at_ms = v["timestamp"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or(0, |t| t.timestamp_millis().max(0) as u64);
        let fields = v.get("fields").cloned().unwrap_or(Value::Null);
        Some(LogLine {
            at_ms,
            message: fields["message"].as_str().unwrap_or("").to_string(),
            fields,
        })
    }

    /// A numeric field (0 when absent).
    pub fn u64(&self, name: &str) -> u64 {
        self.fields[name].as_u64().unwrap_or(0)
    }

    /// A `partitions = [..]` field, as the engine logs it.
    pub fn partitions(&self) -> Vec<i32> {
        self.fields["partitions"]
            .as_str()
            .unwrap_or("")
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect()
    }
}

/// A running (or stopped, or exited) chime child. Dropping it kills it.
pub struct ChimeProcess {
    spec: ProcessSpec,
    child: Child,
    /// Where this incarnation's lines begin in the log.
    log_from: u64,
}

impl ChimeProcess {
    pub fn spawn(spec: ProcessSpec) -> anyhow::Result<ChimeProcess> {
        if let Some(dir) = spec.log.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("opening {}", spec.log.display()))?;
        let log_from = log.metadata().map(|m| m.len()).unwrap_or(0);
        let child = Command::new(&spec.exe)
            .args(&spec.args)
            .env("CHIME_LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                std::env::var("CHIME_BENCH_CHILD_LOG").unwrap_or_else(|_| CHILD_LOG.into()),
            )
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} ({})", spec.name, spec.exe.display()))?;
        Ok(ChimeProcess {
            spec,
            child,
            log_from,
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.spec.log
    }

    fn signal(&mut self, signal: libc::c_int) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!("{} has exited ({status})", self.spec.name);
        }
        let pid = libc::pid_t::try_from(self.pid()).context("pid out of range")?;
        // SAFETY: signalling our own child, which has not been reaped (just
        // checked), so its pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, signal) };
        anyhow::ensure!(
            rc == 0,
            "signal {signal} to {} (pid {pid}): {}",
            self.spec.name,
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// SIGSTOP: frozen, sockets open, no heartbeats.
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// SIGCONT after [`ChimeProcess::pause`].
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// kill -9, and reap it.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill()?;
        }
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, and wait up to `within` for it to exit; past that, kill -9
    /// and fail.
    pub fn terminate(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        // A stopped process would not act on SIGTERM.
        self.resume()?;
        self.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill9()?;
                anyhow::bail!(
                    "{} did not stop within {within:?} of SIGTERM; killed it. Its log ends:\n{}",
                    self.spec.name,
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again with the same arguments, once the last incarnation is
    /// gone; the log goes on in the same file.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.child.try_wait()?.is_some(),
            "{} is still running; stop it before restarting it",
            self.spec.name
        );
        // The old incarnation is reaped, so dropping it kills nothing.
        *self = ChimeProcess::spawn(self.spec.clone())?;
        Ok(())
    }

    /// Its exit status, if this incarnation has exited.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Fails, with the end of its log, if this incarnation has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.exited()? {
            anyhow::bail!(
                "{} exited ({status}); its log ({}) ends:\n{}",
                self.spec.name,
                self.spec.log.display(),
                self.log_tail(20)
            );
        }
        Ok(())
    }

    /// The JSON lines this incarnation has logged so far.
    pub fn log_lines(&self) -> Vec<LogLine> {
        let Ok(mut file) = fs::File::open(&self.spec.log) else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.log_from)).is_err() {
            return Vec::new();
        }
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| LogLine::parse(&l))
            .collect()
    }

    /// This incarnation's lines with `message`.
    pub fn lines(&self, message: &str) -> Vec<LogLine> {
        self.log_lines()
            .into_iter()
            .filter(|l| l.message == message)
            .collect()
    }

    /// The `addr` of this incarnation's `message` line, once written.
    pub fn listening(&self, message: &str) -> Option<SocketAddr> {
        self.lines(message)
            .iter()
            .find_map(|l| l.fields["addr"].as_str()?.parse().ok())
    }

    /// Waits until this incarnation logged `message` with its bound address.
    pub async fn wait_listening(
        &mut self,
        message: &str,
        within: Duration,
    ) -> anyhow::Result<SocketAddr> {
        let name = self.spec.name.clone();
        super::eventually(&format!("{name} to log {message:?}"), within, || {
            let found = self.ensure_running().map(|()| self.listening(message));
            async move { found }
        })
        .await
        .map_err(|e| e.context(format!("its log ends:\n{}", self.log_tail(20))))
    }

    /// The last `n` lines of the log, as written.
    pub fn log_tail(&self, n: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(&self.spec.log) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for ChimeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `--spawn`: `chime all` on its own topic prefix, its REST API on a port
/// it chose, stopped when the run ends.
pub struct SpawnedChime {
    pub process: ChimeProcess,
    pub api: String,
}

impl SpawnedChime {
    /// Starts `<exe> all` and waits until its REST API answers `/healthz`.
    pub async fn start(
        exe: &Path,
        bootstrap: &str,
        prefix: &str,
        partitions: i32,
        api_key: Option<&str>,
    ) -> anyhow::Result<SpawnedChime> {
        let partitions = partitions.to_string();
        let spec = ProcessSpec::role(
            prefix,
            exe,
            bootstrap,
            prefix,
            "all",
            &["--listen", "127.0.0.1:0", "--partitions", &partitions],
            &std::env::temp_dir(),
        )
        // The dispatcher refuses loopback callbacks unless allow-listed,
        // and the bench's receiver is on loopback.
        .env("CHIME_CALLBACK_ALLOW", "127.0.0.0/8")
        // Keys from the caller's environment would lock the bench out.
        .env("CHIME_API_KEYS", api_key.unwrap_or_default());
        let mut process = ChimeProcess::spawn(spec)?;
        let addr = process
            .wait_listening(INGEST_LISTENING, Duration::from_secs(60))
            .await?;
        let chime = SpawnedChime {
            process,
            api: format!("http://{addr}"),
        };
        chime.wait_healthy(Duration::from_secs(30)).await?;
        Ok(chime)
    }

    async fn wait_healthy(&self, within: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let url = format!("{}/healthz", self.api);
        super::eventually(&format!("{url} to answer"), within, || async {
            let healthy = http
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            Ok(healthy.then_some(()))
        })
        .await
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log_tail(&self) -> String {
        self.process.log_tail(20)
    }

    /// SIGTERM and a clean exit within 15 s (else kill -9 and an error);
    /// the log is removed when it stopped cleanly.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let status =
            tokio::task::block_in_place(|| self.process.terminate(Duration::from_secs(15)))?;
        anyhow::ensure!(
            status.success(),
            "the spawned chime exited with {status}; its log ends:\n{}",
            self.log_tail()
        );
        let _ = fs::remove_file(self.process.log_path());
        Ok(())
    }
}
