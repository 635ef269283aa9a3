//! The soak's chime: two ingest, two engine and two dispatcher processes on
//! one topic prefix, and the faults applied to them (and to the broker).
//! Between faults it watches for processes that exit on their own — a
//! finding — and starts them again so the run goes on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;

use chime_wire::time::now_ms;

use super::plan::{Fault, FaultKind, Role};
use crate::harness::broker::script as broker;
use crate::harness::spawn::{ChimeProcess, ProcessSpec, INGEST_LISTENING};

/// How the processes are configured.
pub struct Settings<'a> {
    pub exe: &'a Path,
    pub bootstrap: &'a str,
    pub prefix: &'a str,
    pub lead_ms: u64,
    pub tick_ms: u64,
    pub session_timeout_ms: u64,
    pub logs: &'a Path,
}

/// The REST base URLs of the two ingests; `None` while one is down.
#[derive(Default)]
pub struct IngestUrls([RwLock<Option<String>>; 2]);

impl IngestUrls {
    pub fn get(&self, i: usize) -> Option<String> {
        self.0[i].read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, i: usize, url: Option<String>) {
        *self.0[i].write().unwrap_or_else(|p| p.into_inner()) = url;
    }
}

/// A fault as it happened: unix ms, and what was noticed.
#[derive(Debug, Clone)]
pub struct Applied {
    pub fault: Fault,
    pub started_ms: u64,
    pub ended_ms: u64,
    pub note: Option<String>,
}

/// A process that exited although nothing was done to it.
#[derive(Debug, Clone)]
pub struct Exit {
    pub name: String,
    pub at_ms: u64,
    pub status: String,
    pub log: PathBuf,
}

pub struct Fleet {
    processes: Vec<(Role, usize, ChimeProcess)>,
    pub ingest_urls: Arc<IngestUrls>,
    /// `scripts/kafka`, when the soak may restart the broker.
    broker_script: Option<PathBuf>,
    /// The process a fault is being applied to (not watched meanwhile).
    under_fault: Option<(Role, usize)>,
    pub exits: Vec<Exit>,
}

impl Fleet {
    /// Starts all six and waits until both ingests listen.
    pub async fn start(s: &Settings<'_>, broker_script: Option<PathBuf>) -> anyhow::Result<Fleet> {
        let (lead, tick, session) = (
            s.lead_ms.to_string(),
            s.tick_ms.to_string(),
            s.session_timeout_ms.to_string(),
        );
        let mut processes = Vec::new();
        for role in Role::ALL {
            for i in 0..2 {
                let name = format!("{}-{}", role.name(), i + 1);
                let args: Vec<&str> = match role {
                    Role::Ingest => vec!["--listen", "127.0.0.1:0"],
                    Role::Engine => vec![
                        "--instance-id",
                        &name,
                        "--status-listen",
                        "127.0.0.1:0",
                        "--lead-ms",
                        &lead,
                        "--tick-ms",
                        &tick,
                        "--session-timeout-ms",
                        &session,
                    ],
                    Role::Dispatcher => vec!["--dispatcher-session-timeout-ms", &session],
                };
                let spec = ProcessSpec::role(
                    &name,
                    s.exe,
                    s.bootstrap,
                    s.prefix,
                    role.name(),
                    &args,
                    s.logs,
                )
                .env("CHIME_CALLBACK_ALLOW", "127.0.0.0/8")
                .env("CHIME_API_KEYS", "");
                processes.push((role, i, ChimeProcess::spawn(spec)?));
            }
        }
        let mut fleet = Fleet {
            processes,
            ingest_urls: Arc::new(IngestUrls::default()),
            broker_script,
            under_fault: None,
            exits: Vec::new(),
        };
        for i in 0..2 {
            fleet.await_ingest(i).await?;
        }
        Ok(fleet)
    }

    fn process(&mut self, role: Role, instance: usize) -> anyhow::Result<&mut ChimeProcess> {
        self.processes
            .iter_mut()
            .find(|(r, i, _)| *r == role && *i == instance)
            .map(|(_, _, p)| p)
            .with_context(|| format!("no {}-{}", role.name(), instance + 1))
    }

    /// Waits for ingest `i`'s (new) address and publishes it.
    async fn await_ingest(&mut self, i: usize) -> anyhow::Result<()> {
        let process = self.process(Role::Ingest, i)?;
        let addr = process
            .wait_listening(INGEST_LISTENING, Duration::from_secs(60))
            .await?;
        self.ingest_urls.set(i, Some(format!("http://{addr}")));
        Ok(())
    }

    /// Applies `fault` (planned at `start_ms + fault.at`), waiting out its
    /// duration while watching the other processes.
    pub async fn apply(&mut self, fault: &Fault, start_ms: u64) -> anyhow::Result<Applied> {
        self.watch_until(start_ms + fault.at).await?;
        let started_ms = now_ms();
        let end = started_ms + fault.for_ms;
        let mut note = None;
        match fault.kind {
            FaultKind::Kill { role, instance } => {
                self.under_fault = Some((role, instance));
                if role == Role::Ingest {
                    self.ingest_urls.set(instance, None);
                }
                self.process(role, instance)?.kill9()?;
                self.watch_until(end).await?;
                self.process(role, instance)?.restart()?;
                if role == Role::Ingest {
                    self.await_ingest(instance).await?;
                }
            }
            FaultKind::Pause { role, instance } => {
                self.under_fault = Some((role, instance));
                self.process(role, instance)?.pause()?;
                self.watch_until(end).await?;
                self.process(role, instance)?.resume()?;
            }
            FaultKind::BrokerRestart => {
                let script = self
                    .broker_script
                    .clone()
                    .context("a broker restart was planned without a broker script")?;
                broker(&script, "stop").await?;
                if broker(&script, "status").await.is_ok() {
                    note = Some(
                        "the broker still answered after `scripts/kafka stop` (not started by \
                         that script?): it was not restarted"
                            .to_string(),
                    );
                }
                self.watch_until(end).await?;
                broker(&script, "start").await?;
            }
        }
        let ended_ms = now_ms();
        self.under_fault = None;
        Ok(Applied {
            fault: *fault,
            started_ms,
            ended_ms,
            note,
        })
    }

    /// Until the wall clock reads `until_ms`, restarts any process (other
    /// than the one under fault) that exited on its own, recording it.
    pub async fn watch_until(&mut self, until_ms: u64) -> anyhow::Result<()> {
        loop {
            self.restart_exited().await?;
            let now = now_ms();
            if now >= until_ms {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis((until_ms - now).min(250))).await;
        }
    }

    async fn restart_exited(&mut self) -> anyhow::Result<()> {
        let mut exited = Vec::new();
        for (role, i, p) in &mut self.processes {
            if self.under_fault == Some((*role, *i)) {
                continue;
            }
            if let Some(status) = p.exited()? {
                self.exits.push(Exit {
                    name: p.name().to_string(),
                    at_ms: now_ms(),
                    status: status.to_string(),
                    log: p.log_path().to_path_buf(),
                });
                p.restart()?;
                exited.push((*role, *i));
            }
        }
        for (role, i) in exited {
            if role == Role::Ingest {
                self.ingest_urls.set(i, None);
                self.await_ingest(i).await?;
            }
        }
        Ok(())
    }

    /// SIGTERM to every process (resumed first), each given `within`;
    /// the names of those that did not exit cleanly.
    pub fn stop(&mut self, within: Duration) -> Vec<String> {
        let mut unclean = Vec::new();
        for (_, _, p) in &mut self.processes {
            match p.terminate(within) {
                Ok(status) if status.success() => {}
                Ok(status) => unclean.push(format!("{} ({status})", p.name())),
                Err(e) => unclean.push(format!("{}: {e:#}", p.name())),
            }
        }
        unclean
    }

    /// (name, pid) of every process now, for the report.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.processes
            .iter()
            .map(|(_, _, p)| (p.name().to_string(), p.pid()))
            .collect()
    }
}
