//! The ceilings chime is compared with, measured in the same run:
//! * raw produce → consume of as many records of the same size on the same
//!   broker (chime's producer settings, a read_committed consumer);
//! * raw HTTP POSTs from the same client library to the same receiver.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::stream::{self, StreamExt, TryStreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::harness::receiver::Receiver;

/// Records produced to a fresh topic and read back by a read_committed
/// consumer; returns (records, seconds from the first send to the last read).
pub async fn kafka_produce_consume(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    records: u64,
    record_bytes: usize,
) -> anyhow::Result<(u64, f64)> {
    let admin: AdminClient<DefaultClientContext> =
        chime_kafka::client_config(bootstrap, "chime-bench-baseline").create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &opts,
        )
        .await?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|(name, code)| anyhow::anyhow!("creating topic {name}: {code}"))?;

    let consumer: BaseConsumer = chime_kafka::consumer_config(
        bootstrap,
        "chime-bench-baseline",
        &format!("{topic}-reader"),
    )
    .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let deadline = Duration::from_secs(120);
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<Instant> {
        let start = Instant::now();
        let mut read = 0u64;
        while read < records {
            anyhow::ensure!(
                start.elapsed() < deadline,
                "read {read} of {records} baseline records within {deadline:?}"
            );
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                m.context("reading baseline records")?;
                read += 1;
            }
        }
        Ok(Instant::now())
    });

    let producer: FutureProducer = chime_kafka::producer_config(bootstrap, "chime-bench-baseline")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let payload = vec![b'x'; record_bytes];
    let start = Instant::now();
    let acked = AtomicU64::new(0);
    stream::iter(0..records)
        .map(|i| {
            let key = i.to_string();
            let producer = &producer;
            let payload = &payload;
            let acked = &acked;
            async move {
                let record = FutureRecord::to(topic).key(&key).payload(payload);
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map_err(|(e, _)| e)
                    .context("producing a baseline record")?;
                acked.fetch_add(1, Ordering::Relaxed);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(50_000)
        .try_collect::<()>()
        .await?;
    let last_read = reader.await.context("baseline reader panicked")??;
    let seconds = last_read.saturating_duration_since(start).as_secs_f64();
    if let Err(e) = admin.delete_topics(&[topic], &opts).await {
        tracing::warn!(error = %e, "could not delete the baseline topic");
    }
    Ok((acked.load(Ordering::Relaxed), seconds))
}

/// `requests` empty POSTs to the receiver, `concurrency` at a time; returns
/// (requests, seconds).
pub async fn http_posts(
    receiver: &Receiver,
    requests: u64,
    concurrency: usize,
) -> anyhow::Result<(u64, f64)> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = receiver.url("/baseline");
    let before = receiver.baseline_posts();
    let start = Instant::now();
    stream::iter(0..requests)
        .map(|_| {
            let request = http.post(&url).send();
            async move {
                let status = request.await.context("baseline POST")?.status();
                anyhow::ensure!(status.is_success(), "baseline POST answered {status}");
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await?;
    let seconds = start.elapsed().as_secs_f64();
    Ok((receiver.baseline_posts() - before, seconds))
}
