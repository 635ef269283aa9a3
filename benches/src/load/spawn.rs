//! `--spawn`: `chime all` as a child process on its own topic prefix and a
//! free loopback port, stopped (and its topics deleted) when the run ends.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use tokio::process::{Child, Command};

use chime_wire::Topics;

pub struct SpawnedChime {
    child: Child,
    pub pid: u32,
    pub api: String,
    pub prefix: String,
    pub log: PathBuf,
    bootstrap: String,
}

/// A port that was free a moment ago (the child binds it next).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
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
        let addr = format!("127.0.0.1:{}", free_port()?);
        let log = std::env::temp_dir().join(format!("{prefix}.log"));
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(exe)
            .args(["--kafka", bootstrap, "--topic-prefix", prefix, "all"])
            .args(["--listen", &addr, "--partitions", &partitions.to_string()])
            // The dispatcher refuses loopback callbacks unless allow-listed,
            // and the bench's receiver is on loopback.
            .env("CHIME_CALLBACK_ALLOW", "127.0.0.0/8")
            // Keys from the caller's environment would lock the bench out.
            .env("CHIME_API_KEYS", api_key.unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} all", exe.display()))?;
        let pid = child.id().context("spawned chime has no pid")?;
        let mut chime = SpawnedChime {
            child,
            pid,
            api: format!("http://{addr}"),
            prefix: prefix.to_string(),
            log,
            bootstrap: bootstrap.to_string(),
        };
        chime.wait_healthy(Duration::from_secs(60)).await?;
        Ok(chime)
    }

    async fn wait_healthy(&mut self, within: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "spawned chime exited ({status}) before serving; its log:\n{}",
                    self.log_tail()
                );
            }
            let healthy = http
                .get(format!("{}/healthz", self.api))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if healthy {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "spawned chime did not answer {}/healthz within {within:?}; its log:\n{}",
                self.api,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of the child's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, a clean exit within 15 s (else SIGKILL), then deletes the
    /// run's topics so repeated runs do not pile up partitions on the broker.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.pid).context("pid out of range")?;
        // SAFETY: signalling our own child, whose pid we hold and have not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                tracing::warn!(pid = self.pid, "spawned chime ignored SIGTERM; killing it");
                self.child.kill().await?;
            }
        }
        delete_topics(&self.bootstrap, &Topics::new(&self.prefix)).await;
        let _ = std::fs::remove_file(&self.log);
        Ok(())
    }
}

/// Best effort: a topic left behind only costs broker disk.
pub async fn delete_topics(bootstrap: &str, topics: &Topics) {
    let admin: Result<AdminClient<DefaultClientContext>, _> =
        chime_kafka::client_config(bootstrap, "chime-bench-admin").create();
    let Ok(admin) = admin else { return };
    let names = [
        topics.timers.as_str(),
        topics.changelog.as_str(),
        topics.fires.as_str(),
        topics.dead_letters.as_str(),
    ];
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    if let Err(e) = admin.delete_topics(&names, &opts).await {
        tracing::warn!(error = %e, "could not delete the bench's topics");
    }
}
