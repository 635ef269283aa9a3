//! Client settings every chime producer and consumer shares.

use std::time::Duration;

use rdkafka::config::ClientConfig;

/// Base settings for any client of the cluster at `bootstrap`.
pub fn client_config(bootstrap: &str, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("client.id", client_id)
        // Loopback and small clusters: notice a dead broker quickly.
        .set("socket.keepalive.enable", "true")
        // Reconnect to a broker that comes back within a second, not the
        // default ten: callbacks resume promptly after an outage.
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "1000");
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
        .set("fetch.wait.max.ms", fetch_wait_ms().to_string());
    c
}

/// How long the broker may hold a fetch that finds no new data
/// (`CHIME_FETCH_WAIT_MS`, default 10). New data ends the wait at once, so
/// this is what an idle consumer costs (one fetch per wait, on the client
/// and the broker), and how late a partition newly assigned, or resumed
/// after a pause, is first fetched. Kafka's default of 500 ms would hold up
/// a rebuilt partition's first records.
pub fn fetch_wait_ms() -> u64 {
    std::env::var("CHIME_FETCH_WAIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_FETCH_WAIT_MS)
}

const DEFAULT_FETCH_WAIT_MS: u64 = 10;

/// Settings for a member of a chime consumer group: read_committed,
/// cooperative-sticky rebalancing, and the given session timeout (how soon a
/// dead member's partitions move) with heartbeats at a tenth of it. A member
/// hears of a rebalance at its next heartbeat, and a returning member's
/// partitions move back in two rounds, each waiting for one: 300 ms rather
/// than 600 ms each, with the 3 s default, for a request a broker answers
/// in microseconds.
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
            (session_timeout.as_millis() / 10).max(100).to_string(),
        );
    c
}
