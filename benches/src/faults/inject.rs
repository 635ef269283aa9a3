//! Injecting the fault from outside, as an operator (or a crash) would, and
//! the timeline of what happened.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use chime_wire::time::now_ms;

use super::pair::Pair;
use super::plan::{Fault, FaultKind};
use crate::harness::broker;

/// How long a SIGTERMed process may take to hand over and exit.
const STOP_WITHIN: Duration = Duration::from_secs(30);
/// How long the processes may take to share the partitions again.
const SETTLE_WITHIN: Duration = Duration::from_secs(120);
/// How often the broker is asked whether it answers, while it restarts.
const BROKER_POLL: Duration = Duration::from_millis(100);

/// One thing that happened, unix ms.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub at_ms: u64,
    pub what: String,
}

/// The fault as it happened.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// When the fault began (the kill, the stop, the first SIGTERM).
    pub fault_at_ms: u64,
    /// When the processes were back ([`Fault::back_means`]).
    pub back_at_ms: u64,
    /// `broker-kill`: when the broker answered again.
    pub broker_answered_ms: Option<u64>,
    pub steps: Vec<Step>,
}

impl Applied {
    fn step(&mut self, what: impl Into<String>) -> u64 {
        let at_ms = now_ms();
        self.steps.push(Step {
            at_ms,
            what: what.into(),
        });
        at_ms
    }
}

/// Applies `fault` to process `a` (index 0), `b`, or the broker, and waits
/// until the processes are back and share every partition again (or, for
/// a takeover, `b` owns them all).
pub async fn apply(
    fault: &Fault,
    pair: &mut Pair,
    session_timeout_ms: u64,
    bootstrap: &str,
    broker_script: Option<&Path>,
) -> anyhow::Result<Applied> {
    let mut a = Applied::default();
    match fault.kind {
        FaultKind::Kill9Restart => {
            a.fault_at_ms = a.step("kill -9 a");
            pair.node(0).process.kill9()?;
            pair.watch_until(a.fault_at_ms + fault.after_ms, Some(0))
                .await?;
            pair.node(0).process.restart()?;
            a.back_at_ms = a.step("a started again (same instance id)");
            settle(pair, &mut a, "a and b share the partitions again").await?;
        }
        FaultKind::Kill9Takeover => {
            a.fault_at_ms = a.step("kill -9 a (for good)");
            pair.node(0).process.kill9()?;
            pair.node(0).gone = true;
            a.back_at_ms = a.fault_at_ms + session_timeout_ms;
            settle(pair, &mut a, "b owns every partition").await?;
        }
        FaultKind::Sigstop => {
            a.fault_at_ms = a.step("SIGSTOP a");
            pair.node(0).process.pause()?;
            pair.watch_until(a.fault_at_ms + fault.pause_ms, Some(0))
                .await?;
            pair.node(0).process.resume()?;
            a.back_at_ms = a.step("SIGCONT a");
            settle(pair, &mut a, "a and b share the partitions again").await?;
        }
        FaultKind::SigtermRolling => {
            for i in 0..pair.nodes.len() {
                let name = pair.nodes[i].name;
                let sent = now_ms();
                let status =
                    tokio::task::block_in_place(|| pair.node(i).process.terminate(STOP_WITHIN))?;
                let sent_step = Step {
                    at_ms: sent,
                    what: format!("SIGTERM {name}"),
                };
                a.steps.push(sent_step);
                if i == 0 {
                    a.fault_at_ms = sent;
                }
                a.step(format!("{name} exited ({status})"));
                pair.watch_until(sent + fault.back_ms, Some(i)).await?;
                pair.node(i).process.restart()?;
                a.back_at_ms = a.step(format!("{name} started again (same instance id)"));
                settle(pair, &mut a, "a and b share the partitions again").await?;
            }
        }
        FaultKind::BrokerKill => {
            let script = broker_script.context(
                "broker-kill needs --broker-script: the scripts/kafka that manages this broker \
                 (see the README's load-testing section)",
            )?;
            // The kill happens inside the script: the fault begins when it is run.
            a.fault_at_ms = a.step("kill -9 the broker");
            broker::script(script, "kill").await?;
            a.step("the broker's process is gone");
            anyhow::ensure!(
                !broker::answers(bootstrap, Duration::from_secs(1)).await,
                "a broker still answers on {bootstrap} after `scripts/kafka kill`: it is not the \
                 broker that script manages (give the same CHIME_KAFKA_PORT / CHIME_KAFKA_HOME)"
            );
            pair.watch_until(a.fault_at_ms + fault.restart_after_ms, None)
                .await?;
            a.step("broker restart begun");
            let mut starting = Some({
                let script = script.to_path_buf();
                tokio::spawn(async move { broker::script(&script, "start").await })
            });
            // Asked every 100 ms; `scripts/kafka start` returns once it answers.
            let answered = loop {
                if broker::answers(bootstrap, BROKER_POLL).await {
                    break now_ms();
                }
                if let Some(start) = starting.take_if(|s| s.is_finished()) {
                    start.await??;
                    anyhow::ensure!(
                        broker::answers(bootstrap, Duration::from_secs(1)).await,
                        "`scripts/kafka start` returned, yet no broker answers on {bootstrap}"
                    );
                    break now_ms();
                }
                pair.watch_until(now_ms() + BROKER_POLL.as_millis() as u64, None)
                    .await?;
            };
            a.steps.push(Step {
                at_ms: answered,
                what: "the broker answers again".into(),
            });
            a.back_at_ms = answered;
            a.broker_answered_ms = Some(answered);
            if let Some(start) = starting {
                start.await??;
            }
            settle(pair, &mut a, "a and b share the partitions").await?;
        }
    }
    Ok(a)
}

/// Waits until the processes share every partition again, all live.
async fn settle(pair: &mut Pair, a: &mut Applied, what: &str) -> anyhow::Result<()> {
    let at = pair.wait_settled(what, SETTLE_WITHIN).await?;
    a.steps.push(Step {
        at_ms: at,
        what: format!("{what}, every partition live"),
    });
    Ok(())
}
