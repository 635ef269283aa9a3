//! The deployment under test: two `chime all` processes, `a` and `b`, with
//! stable instance ids on one topic prefix, and what they own — read from
//! their JSON logs (engine assignments and `partition live` lines, the
//! dispatcher's assignments and handovers).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use chime_wire::time::now_ms;

use crate::harness::eventually;
use crate::harness::spawn::{ChimeProcess, LogLine, ProcessSpec};

/// The instance ids (and process names) of the two processes.
pub const NAMES: [&str; 2] = ["a", "b"];

/// How the two processes are started.
pub struct Settings<'a> {
    pub exe: &'a Path,
    pub bootstrap: &'a str,
    pub prefix: &'a str,
    pub partitions: i32,
    pub session_timeout_ms: u64,
    pub static_membership: bool,
    pub rebalance: chime_kafka::Rebalance,
    pub logs: &'a Path,
}

/// What one process owns now, per its log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned {
    /// Engine partitions assigned and not revoked.
    pub engine: BTreeSet<i32>,
    /// Of those, the ones not yet live (rebuilding).
    pub loading: BTreeSet<i32>,
    /// Dispatcher partitions assigned and not handed over.
    pub dispatcher: BTreeSet<i32>,
}

impl Owned {
    /// Folds this incarnation's log lines, oldest first.
    pub fn from_lines(lines: &[LogLine]) -> Owned {
        let mut o = Owned::default();
        for l in lines {
            let is_engine = l.fields["role"] == "engine";
            match l.message.as_str() {
                "partitions assigned" if is_engine => {
                    o.engine.extend(l.partitions());
                    o.loading.extend(l.partitions());
                }
                "partitions revoked" if is_engine => {
                    for p in l.partitions() {
                        o.engine.remove(&p);
                        o.loading.remove(&p);
                    }
                }
                "partition live" => {
                    o.loading.remove(&(l.u64("partition") as i32));
                }
                "dispatcher partitions assigned" => o.dispatcher.extend(l.partitions()),
                "dispatcher partitions revoked; handing over" => {
                    for p in l.partitions() {
                        o.dispatcher.remove(&p);
                    }
                }
                _ => {}
            }
        }
        o
    }
}

/// Whether `owned` (one entry per running process) covers every partition
/// once in both groups, each process owning some, every engine partition live.
pub fn settled(owned: &[Owned], partitions: i32) -> bool {
    let n = partitions as usize;
    let split = |sets: Vec<&BTreeSet<i32>>| {
        let total: usize = sets.iter().map(|s| s.len()).sum();
        let union: BTreeSet<i32> = sets.iter().flat_map(|s| s.iter().copied()).collect();
        sets.iter().all(|s| !s.is_empty()) && total == n && union.len() == n
    };
    !owned.is_empty()
        && split(owned.iter().map(|o| &o.engine).collect())
        && split(owned.iter().map(|o| &o.dispatcher).collect())
        && owned.iter().all(|o| o.loading.is_empty())
}

/// One of the two processes.
pub struct Node {
    pub name: &'static str,
    pub process: ChimeProcess,
    /// Killed for good (`kill9-takeover`): not watched, not restarted.
    pub gone: bool,
}

pub struct Pair {
    pub nodes: Vec<Node>,
    partitions: i32,
    /// Processes that exited although nothing was done to them (a finding),
    /// and were started again.
    pub exits: Vec<String>,
}

impl Pair {
    pub fn start(s: &Settings<'_>) -> anyhow::Result<Pair> {
        let (partitions, session) = (s.partitions.to_string(), s.session_timeout_ms.to_string());
        let mut nodes = Vec::new();
        for name in NAMES {
            let mut args = vec![
                "--instance-id",
                name,
                "--listen",
                "127.0.0.1:0",
                "--partitions",
                &partitions,
                "--session-timeout-ms",
                &session,
                "--dispatcher-session-timeout-ms",
                &session,
            ];
            args.extend([
                "--static-membership",
                if s.static_membership { "true" } else { "false" },
            ]);
            let rebalance = s.rebalance.to_string();
            args.extend(["--rebalance", &rebalance]);
            let spec = ProcessSpec::role(
                &format!("{}-{name}", s.prefix),
                s.exe,
                s.bootstrap,
                s.prefix,
                "all",
                &args,
                s.logs,
            )
            // The receiver is on loopback, refused by default.
            .env("CHIME_CALLBACK_ALLOW", "127.0.0.0/8")
            .env("CHIME_API_KEYS", "");
            nodes.push(Node {
                name,
                process: ChimeProcess::spawn(spec)?,
                gone: false,
            });
        }
        Ok(Pair {
            nodes,
            partitions: s.partitions,
            exits: Vec::new(),
        })
    }

    pub fn node(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i]
    }

    /// What each process not gone owns now.
    pub fn owned(&self) -> Vec<Owned> {
        self.nodes
            .iter()
            .filter(|n| !n.gone)
            .map(|n| Owned::from_lines(&n.process.log_lines()))
            .collect()
    }

    /// Restarts any process (not gone, not `except`) that exited on its
    /// own, noting it.
    pub fn watch(&mut self, except: Option<usize>) -> anyhow::Result<()> {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if n.gone || except == Some(i) {
                continue;
            }
            if let Some(status) = n.process.exited()? {
                self.exits.push(format!(
                    "{} exited on its own ({status}) at {} and was started again; log {}",
                    n.name,
                    now_ms(),
                    n.process.log_path().display()
                ));
                n.process.restart()?;
            }
        }
        Ok(())
    }

    /// Sleeps until the wall clock reads `until_ms`, watching meanwhile.
    pub async fn watch_until(
        &mut self,
        until_ms: u64,
        except: Option<usize>,
    ) -> anyhow::Result<()> {
        loop {
            self.watch(except)?;
            let now = now_ms();
            if now >= until_ms {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis((until_ms - now).min(100))).await;
        }
    }

    /// Waits until the running processes share every partition of both
    /// groups, all live ([`settled`]); returns when (unix ms).
    pub async fn wait_settled(&mut self, what: &str, within: Duration) -> anyhow::Result<u64> {
        let partitions = self.partitions;
        let result = eventually(what, within, || {
            let settled = self
                .watch(None)
                .map(|()| settled(&self.owned(), partitions).then(now_ms));
            async move { settled }
        })
        .await;
        result.map_err(|e| e.context(format!("owned now: {:?}", self.owned())))
    }

    /// SIGTERM to every running process; the ones that did not exit cleanly.
    pub fn stop(&mut self, within: Duration) -> Vec<String> {
        let mut unclean = Vec::new();
        for n in self.nodes.iter_mut().filter(|n| !n.gone) {
            match n.process.terminate(within) {
                Ok(status) if status.success() => {}
                Ok(status) => unclean.push(format!("{} ({status})", n.name)),
                Err(e) => unclean.push(format!("{}: {e:#}", n.name)),
            }
        }
        unclean
    }

    /// The processes' log files.
    pub fn logs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| n.process.log_path().display().to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(engine: &[i32], loading: &[i32], dispatcher: &[i32]) -> Owned {
        Owned {
            engine: engine.iter().copied().collect(),
            loading: loading.iter().copied().collect(),
            dispatcher: dispatcher.iter().copied().collect(),
        }
    }

    #[test]
    fn settled_means_both_groups_split_once_over_both_and_all_live() {
        let a = owned(&[0, 1], &[], &[0]);
        let b = owned(&[2, 3], &[], &[1, 2, 3]);
        assert!(settled(&[a.clone(), b.clone()], 4));
        assert!(
            !settled(&[a.clone(), owned(&[2, 3], &[3], &[1, 2, 3])], 4),
            "loading"
        );
        assert!(
            !settled(&[a.clone(), owned(&[1, 2, 3], &[], &[1, 2, 3])], 4),
            "twice"
        );
        assert!(
            !settled(&[a.clone(), owned(&[2], &[], &[1, 2, 3])], 4),
            "one missing"
        );
        assert!(!settled(
            &[owned(&[0, 1, 2, 3], &[], &[0]), owned(&[], &[], &[1, 2, 3])],
            4
        ));
        // One process left (the other gone): it owns everything.
        assert!(settled(&[owned(&[0, 1, 2, 3], &[], &[0, 1, 2, 3])], 4));
        assert!(!settled(&[], 4));
    }
}
