//! The dispatcher's consumer, polled on a thread of its own.
//!
//! Records and group changes reach the dispatcher's loop, in the order
//! librdkafka reported them, as [`Polled`] events on one channel. A
//! revocation is a handover: the rebalance callback tells the loop which
//! partitions are going and waits (bounded) until the loop has finished or
//! given up their calls in flight and committed them. Only then does
//! librdkafka let the partitions go, so their next owner starts after what
//! was delivered here, and no callback is made twice by a rebalance or a
//! graceful stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chime_kafka::group::Rejoin;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::mpsc;

use crate::delivery::FireRecord;
use crate::DispatcherConfig;

/// What the consumer thread reports to the dispatcher's loop.
pub enum Polled {
    Record(Box<FireRecord>),
    Assigned(Vec<i32>),
    /// These partitions are being revoked: finish or give up their calls,
    /// commit, then answer on `done`.
    Revoking {
        partitions: Vec<i32>,
        done: std_mpsc::SyncSender<()>,
    },
    /// The thread stopped: it left the group (or could not poll).
    Stopped,
    /// The consumer hit a fatal error (why); the thread stopped.
    Failed(String),
}

/// The consumer and the thread polling it.
pub struct Poller {
    pub consumer: Arc<BaseConsumer<HandoverContext>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    /// Subscribes to the fires topic and starts polling; events arrive on
    /// the returned channel.
    pub fn start(
        config: &DispatcherConfig,
    ) -> anyhow::Result<(Self, mpsc::UnboundedReceiver<Polled>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut settings = chime_kafka::group_member_config(
            &config.bootstrap,
            &config.client_id(),
            &config.group_id,
            config.session_timeout,
            config.rebalance,
        );
        // Offsets are committed only in the dispatcher's transactions.
        settings
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        if config.static_membership {
            settings.set("group.instance.id", &config.instance_id);
        }
        let context = HandoverContext {
            topic: config.topics.fires.clone(),
            events: tx.clone(),
            // The loop waits for due times (at most the engine's lead) and
            // calls in flight; past this the rest is re-delivered.
            patience: config.shutdown_grace + Duration::from_secs(1),
            rejoin: Rejoin::new(
                &config.bootstrap,
                &config.group_id,
                &config.topics.fires,
                "dispatcher",
            ),
            instance_id: config.instance_id.clone(),
        };
        let consumer: Arc<BaseConsumer<HandoverContext>> =
            Arc::new(settings.create_with_context(context)?);
        consumer.subscribe(&[&config.topics.fires])?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let consumer = consumer.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("chime-dispatch-poll".into())
                .spawn(move || poll_until_stopped(&consumer, &stop, &tx))?
        };
        Ok((
            Poller {
                consumer,
                stop,
                thread: Some(thread),
            },
            rx,
        ))
    }

    /// Asks the thread to leave the group (handing every partition over)
    /// and stop; [`Polled::Stopped`] follows the last handover.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn poll_until_stopped(
    consumer: &BaseConsumer<HandoverContext>,
    stop: &AtomicBool,
    events: &mpsc::UnboundedSender<Polled>,
) {
    let context = consumer.context();
    while !stop.load(Ordering::Relaxed) {
        context.rejoin.serve(consumer);
        match consumer.poll(context.rejoin.poll_wait(Duration::from_millis(100))) {
            None => {}
            Some(Ok(m))
                if events
                    .send(Polled::Record(Box::new(FireRecord::from_message(&m))))
                    .is_err() =>
            {
                break; // the loop is gone
            }
            Some(Ok(_)) => {}
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => {
                if let Some(why) = chime_kafka::group::fatal_error(consumer, &context.instance_id) {
                    let _ = events.send(Polled::Failed(why));
                    return;
                }
                tracing::warn!(error = %e, "dispatcher consumer error");
            }
        }
    }
    // Leaving the group revokes every partition: the handover runs in the
    // rebalance callback, served by these polls.
    consumer.unsubscribe();
    let deadline = Instant::now() + consumer.context().patience + Duration::from_secs(5);
    while Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(50));
        if consumer.assignment().is_ok_and(|a| a.count() == 0) {
            break;
        }
    }
    if !chime_kafka::group::serve_until_left(consumer, deadline) {
        tracing::warn!("dispatcher stopped without its leave request sent; its partitions move after the session timeout");
    }
    let _ = events.send(Polled::Stopped);
}

/// Consumer context: reports assignments, and turns each revocation into a
/// handover the dispatcher's loop completes.
pub struct HandoverContext {
    topic: String,
    events: mpsc::UnboundedSender<Polled>,
    patience: Duration,
    rejoin: Rejoin,
    instance_id: String,
}

impl HandoverContext {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }
}

impl ClientContext for HandoverContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !chime_kafka::group::is_partition_eof(&error) {
            tracing::error!(%error, reason, "dispatcher consumer error");
        }
    }
}

impl ConsumerContext for HandoverContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                // A lost assignment (expired session) may be another
                // member's already, and its commits are refused: the loop
                // drops its partitions, and nothing is waited for.
                let lost = consumer.assignment_lost();
                self.rejoin.after_revoke(consumer);
                let partitions = self.partitions(tpl);
                if partitions.is_empty() {
                    return;
                }
                tracing::info!(
                    ?partitions,
                    lost,
                    "dispatcher partitions revoked; handing over"
                );
                let (done, handed_over) = std_mpsc::sync_channel(1);
                let started = Instant::now();
                if self
                    .events
                    .send(Polled::Revoking {
                        partitions: partitions.clone(),
                        done,
                    })
                    .is_ok()
                    && !lost
                {
                    // Blocks this consumer thread only; the loop runs elsewhere.
                    let _ = handed_over.recv_timeout(self.patience);
                }
                tracing::info!(
                    ?partitions,
                    took_ms = started.elapsed().as_millis() as u64,
                    "handover done"
                );
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "dispatcher rebalance error"),
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.rejoin.after_assign(consumer);
            let partitions = self.partitions(tpl);
            tracing::info!(?partitions, "dispatcher partitions assigned");
            let _ = self.events.send(Polled::Assigned(partitions));
        }
    }
}
