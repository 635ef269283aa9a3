//! Kafka client settings shared by every chime role, and topic creation.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message, ToBytes};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::Topics;

/// Base settings for any client of the cluster at `bootstrap`.
pub fn client_config(bootstrap: &str, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("client.id", client_id)
        // Loopback and small clusters: notice a dead broker quickly.
        .set("socket.keepalive.enable", "true");
    // librdkafka's own debug contexts (e.g. "cgrp,eos"), for diagnosing a live system.
    if let Ok(contexts) = std::env::var("CHIME_KAFKA_DEBUG") {
        c.set("debug", contexts);
    }
    c
}

/// Settings for a producer of keyed chime records: durable (acks=all,
/// idempotent) and partitioned exactly like the Java client (murmur2), so a
/// cancel lands on the same partition as its schedule whoever wrote either.
pub fn producer_config(bootstrap: &str, client_id: &str) -> ClientConfig {
    let mut c = client_config(bootstrap, client_id);
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "1")
        .set("compression.type", "lz4");
    c
}

/// Settings for a consumer that only ever sees committed transactional data.
pub fn consumer_config(bootstrap: &str, client_id: &str, group_id: &str) -> ClientConfig {
    let mut c = client_config(bootstrap, client_id);
    c.set("group.id", group_id)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // Timers are latency-sensitive: do not let the broker hold a fetch
        // for the default 500 ms waiting for more data.
        .set("fetch.wait.max.ms", "10");
    c
}

/// Settings for a member of a chime consumer group: read_committed,
/// cooperative-sticky rebalancing, and the given session timeout (how soon a
/// dead member's partitions move) with heartbeats at a fifth of it.
pub fn group_member_config(
    bootstrap: &str,
    client_id: &str,
    group_id: &str,
    session_timeout: Duration,
) -> ClientConfig {
    let mut c = consumer_config(bootstrap, client_id, group_id);
    c.set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "session.timeout.ms",
            session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (session_timeout.as_millis() / 5).max(100).to_string(),
        );
    c
}

/// Enqueues a record, waiting for room when librdkafka's queue is full.
pub fn send_waiting<K, P>(
    producer: &BaseProducer,
    mut record: BaseRecord<'_, K, P>,
) -> anyhow::Result<()>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

/// Waits until every record `producer` holds is delivered, for at most
/// `timeout`. Call before `commit_transaction`: librdkafka's flush inside the
/// commit polls in 100 ms slices that do not end early, so a commit with
/// deliveries outstanding costs ≥ 100 ms; drained, it takes ~1 ms (and a
/// failed transaction has nothing in flight to abort).
pub fn drain(producer: &BaseProducer, timeout: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while producer.in_flight_count() > 0 {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "records not delivered within {timeout:?}"
        );
        producer.poll(Duration::from_millis(1));
    }
    Ok(())
}

/// The value of header `name` of a record, as UTF-8.
pub fn header<'a, M: Message>(m: &'a M, name: &str) -> Option<&'a str> {
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// The value of header `name` of a record, as a number (the `*-ms` headers).
pub fn header_u64<M: Message>(m: &M, name: &str) -> Option<u64> {
    header(m, name)?.parse().ok()
}

/// Creates chime's four topics if they do not exist. The changelog must have
/// exactly as many partitions as `timers` (one state partition per input
/// partition) and is compacted; the rest use the broker's retention.
pub async fn create_topics(
    bootstrap: &str,
    topics: &Topics,
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(bootstrap, "chime-admin").create()?;
    let new = [
        NewTopic::new(&topics.timers, partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&topics.changelog, partitions, TopicReplication::Fixed(1))
            .set("cleanup.policy", "compact")
            // Tombstones must outlive the slowest rebuild that could still see
            // the pending record they delete.
            .set("delete.retention.ms", "86400000"),
        NewTopic::new(&topics.fires, partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&topics.dead_letters, partitions, TopicReplication::Fixed(1)),
    ];
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(name) => tracing::info!(topic = %name, partitions, "created topic"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %name, "topic exists")
            }
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}
