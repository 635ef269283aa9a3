//! The chime dispatcher: consumes `chime.fires` and makes each timer's HTTP
//! call, never before its due time, at least once.
//!
//! Many calls run at once ([`DispatcherConfig::max_in_flight`]); a record's
//! offset is committed only once it and every record before it on its
//! partition have finished ([`progress::PartitionProgress`]), so a crash
//! re-delivers what was in flight and nothing else is lost.

pub mod delivery;
pub mod progress;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use chime_wire::Topics;

use crate::delivery::{Delivery, Outcome};
use crate::progress::{PartitionProgress, RevocationContext};

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub bootstrap: String,
    pub topics: Topics,
    pub group_id: String,
    /// Calls in flight at once, over all partitions.
    pub max_in_flight: usize,
    /// Deadline for one HTTP call.
    pub request_timeout: Duration,
}

impl DispatcherConfig {
    pub fn new(bootstrap: &str, topic_prefix: &str) -> Self {
        DispatcherConfig {
            bootstrap: bootstrap.to_string(),
            topics: Topics::new(topic_prefix),
            group_id: format!("{topic_prefix}-dispatcher"),
            max_in_flight: 1024,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A finished call: which record may now count as done.
struct Finished {
    partition: i32,
    offset: i64,
}

/// Runs a dispatcher until `shutdown`; in-flight calls are finished first.
pub async fn serve(config: DispatcherConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let consumer: StreamConsumer<RevocationContext> =
        chime_wire::kafka::consumer_config(&config.bootstrap, "chime-dispatcher", &config.group_id)
            .set("partition.assignment.strategy", "cooperative-sticky")
            // Offsets are stored by hand (only finished records) and committed by
            // librdkafka every 100 ms and on revocation.
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "100")
            .create_with_context(RevocationContext::default())?;
    consumer.subscribe(&[&config.topics.fires])?;
    let producer: FutureProducer =
        chime_wire::kafka::producer_config(&config.bootstrap, "chime-dispatcher").create()?;
    let delivery = Arc::new(Delivery::new(&config, producer)?);
    let slots = Arc::new(Semaphore::new(config.max_in_flight));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
    let mut progress: std::collections::HashMap<i32, PartitionProgress> = Default::default();
    tracing::info!(group = %config.group_id, "dispatcher started");

    loop {
        for p in consumer.context().take_revoked() {
            progress.remove(&p);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = done_rx.recv() => {
                let Some(track) = progress.get_mut(&done.partition) else { continue };
                if let Some(commit_at) = track.finish(done.offset) {
                    store_offset(&consumer, &config.topics.fires, done.partition, commit_at);
                }
            }
            permit = slots.clone().acquire_owned() => {
                let permit = permit?;
                let msg = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    msg = consumer.recv() => msg,
                };
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        continue;
                    }
                };
                let (partition, offset) = (msg.partition(), msg.offset());
                progress.entry(partition).or_default().start(offset);
                let fire = delivery::FireRecord::from_message(&msg);
                let delivery = delivery.clone();
                let done_tx = done_tx.clone();
                tokio::spawn(async move {
                    let outcome = delivery.deliver(fire).await;
                    if let Outcome::Failed(e) = &outcome {
                        // Not even the dead letter could be written: leave the
                        // offset uncommitted so a restart tries again.
                        tracing::error!(partition, offset, error = %e, "fire not settled");
                    } else {
                        let _ = done_tx.send(Finished { partition, offset });
                    }
                    drop(permit);
                });
            }
        }
    }
    // Let in-flight calls finish, bounded by the request timeout.
    let drain_deadline = tokio::time::Instant::now() + config.request_timeout;
    while slots.available_permits() < config.max_in_flight {
        tokio::select! {
            Some(done) = done_rx.recv() => {
                if let Some(track) = progress.get_mut(&done.partition) {
                    if let Some(commit_at) = track.finish(done.offset) {
                        store_offset(&consumer, &config.topics.fires, done.partition, commit_at);
                    }
                }
            }
            _ = tokio::time::sleep_until(drain_deadline) => break,
        }
    }
    if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
        tracing::debug!(error = %e, "final commit");
    }
    consumer.unsubscribe();
    tracing::info!("dispatcher stopped");
    Ok(())
}

fn store_offset<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    topic: &str,
    partition: i32,
    next: i64,
) {
    let mut tpl = TopicPartitionList::new();
    if tpl
        .add_partition_offset(topic, partition, Offset::Offset(next))
        .is_ok()
    {
        if let Err(e) = consumer.store_offsets(&tpl) {
            // The partition moved away; its new owner re-delivers from the
            // last committed offset.
            tracing::debug!(partition, error = %e, "offset not stored");
        }
    }
}
