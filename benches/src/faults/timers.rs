//! The run's timers: due at a steady rate from a start time on, produced
//! straight to `<prefix>.timers` (acks=all, idempotent, murmur2) as a
//! client would create them — a few seconds ahead of their due time, so
//! the engines hold a realistic number pending, and input keeps arriving
//! through the fault. Before a broker is killed, every timer due during
//! its outage is produced first ([`Timers::hold_until`]), and the engines
//! take them in ([`wait_applied`]) before the first is due. Production ends
//! at the due time set by [`Timers::end_at`], once the run knows when its
//! fault window closes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use chime_wire::time::now_ms;

use crate::harness::deployment::Deployment;
use crate::harness::eventually;
use crate::load::create::Plan;
use crate::soak::traffic::Quiet;

/// Timers are produced this long before they are due.
pub const AHEAD_MS: u64 = 5_000;

pub struct Timers {
    plan: Arc<Plan>,
    produced: Arc<AtomicUsize>,
    /// Produce every timer due up to here, whatever the clock says.
    hold: Arc<AtomicU64>,
    /// Produce no timer due after this.
    end: Arc<AtomicU64>,
    /// Timers whose acknowledgement came after their due time.
    acked_late: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Timers {
    /// Starts producing `plan`'s timers (in due order) to `topic`.
    pub fn start(bootstrap: &str, topic: &str, plan: Arc<Plan>) -> anyhow::Result<Timers> {
        // Quiet: the broker going away may be the point of the run.
        let producer: FutureProducer<Quiet> =
            chime_kafka::producer_config(bootstrap, "chime-bench-faults")
                .set("queue.buffering.max.messages", "1000000")
                .create_with_context(Quiet)
                .context("creating the timers' producer")?;
        let produced = Arc::new(AtomicUsize::new(0));
        let hold = Arc::new(AtomicU64::new(0));
        let end = Arc::new(AtomicU64::new(u64::MAX));
        let acked_late = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(produce(
            producer,
            topic.to_string(),
            plan.clone(),
            produced.clone(),
            hold.clone(),
            end.clone(),
            acked_late.clone(),
        ));
        Ok(Timers {
            plan,
            produced,
            hold,
            end,
            acked_late,
            task,
        })
    }

    /// Produces every timer due up to `due_ms` now, and waits (up to
    /// `within`) until all of them are acknowledged.
    pub async fn hold_until(&self, due_ms: u64, within: Duration) -> anyhow::Result<()> {
        self.hold.fetch_max(due_ms, Ordering::AcqRel);
        let wanted = self.plan.due_ms.partition_point(|&d| d <= due_ms);
        eventually("the timers due during the fault produced", within, || {
            let done = if self.produced() >= wanted {
                Ok(Some(()))
            } else if self.task.is_finished() {
                Err(anyhow::anyhow!("producing the timers stopped early"))
            } else {
                Ok(None)
            };
            async move { done }
        })
        .await
    }

    /// No timer due after `due_ms` is produced.
    pub fn end_at(&self, due_ms: u64) {
        self.end.store(due_ms, Ordering::Release);
    }

    /// Timers produced and acknowledged so far (the first n of the plan).
    pub fn produced(&self) -> usize {
        self.produced.load(Ordering::Acquire)
    }

    /// Waits until production ended (the end was set and reached); the
    /// number of timers produced, and how many of them were acknowledged
    /// only after their due time.
    pub async fn finish(self) -> anyhow::Result<(usize, usize)> {
        let Timers {
            task,
            produced,
            acked_late,
            ..
        } = self;
        task.await??;
        Ok((
            produced.load(Ordering::Acquire),
            acked_late.load(Ordering::Acquire),
        ))
    }
}

async fn produce(
    producer: FutureProducer<Quiet>,
    topic: String,
    plan: Arc<Plan>,
    produced: Arc<AtomicUsize>,
    hold: Arc<AtomicU64>,
    end: Arc<AtomicU64>,
    acked_late: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let mut next = 0usize;
    loop {
        let end = end.load(Ordering::Acquire);
        let horizon = (now_ms() + AHEAD_MS)
            .max(hold.load(Ordering::Acquire))
            .min(end);
        let mut pending: VecDeque<(u64, DeliveryFuture)> = VecDeque::new();
        while next < plan.due_ms.len() && plan.due_ms[next] <= horizon {
            let (key, value) = (plan.id(next), plan.command(next).encode());
            let record = FutureRecord::to(&topic).key(key.as_bytes()).payload(&value);
            let delivery = producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .context("producing a timer")?;
            pending.push_back((plan.due_ms[next], delivery));
            next += 1;
        }
        for (due, delivery) in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(e).context("Kafka refused a timer"),
                Err(_) => anyhow::bail!("the producer dropped a timer"),
            }
            if now_ms() > due {
                acked_late.fetch_add(1, Ordering::Relaxed);
            }
        }
        produced.store(next, Ordering::Release);
        if next >= plan.due_ms.len() || plan.due_ms[next] > end {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the engines have applied every record of the timers topic:
/// their group's committed offsets stand at the end of each partition.
pub async fn wait_applied(d: &Deployment, within: Duration) -> anyhow::Result<()> {
    let reader: BaseConsumer = chime_kafka::consumer_config(
        &d.bootstrap,
        "chime-bench-faults-offsets",
        &format!("{}-engine", d.prefix),
    )
    .create()?;
    let (topic, partitions) = (d.topics.timers.clone(), d.partitions);
    eventually("the engines to apply every timer", within, || {
        let applied = tokio::task::block_in_place(|| -> anyhow::Result<Option<()>> {
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(&topic, p);
            }
            let committed = reader.committed_offsets(tpl, Duration::from_secs(10))?;
            for p in 0..partitions {
                let (_, high) = reader.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
                let at = committed.find_partition(&topic, p).map(|e| e.offset());
                if high > 0 && at != Some(Offset::Offset(high)) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        });
        async move { applied }
    })
    .await
}
