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

/// How a consumer group moves partitions when its members change.
///
/// librdkafka sends a member's JoinGroup at most once a second unless the
/// member itself gave partitions up (`rkcg_join_intvl` in `rdkafka_cgrp.c`).
/// A cooperative rebalance that moves partitions takes two rounds, and the
/// member receiving them hears of the second by heartbeat, so it waits out
/// the rest of that second while the partitions have no owner; a member
/// that leaves soon after another joined costs the same. An eager rebalance
/// is one round in which every member gives up everything and rejoins at
/// once: no such wait, but every member rebuilds every partition it is
/// given. docs/design.md ("Rebalance protocol") has the measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rebalance {
    /// One round; every partition of every member is revoked and assigned
    /// again (`roundrobin`).
    #[default]
    Eager,
    /// Only the partitions that move are revoked (`cooperative-sticky`), in
    /// two rounds.
    Cooperative,
}

impl Rebalance {
    /// librdkafka's `partition.assignment.strategy` for it.
    pub fn assignor(self) -> &'static str {
        match self {
            Rebalance::Eager => "roundrobin",
            Rebalance::Cooperative => "cooperative-sticky",
        }
    }
}

impl std::str::FromStr for Rebalance {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "eager" => Ok(Rebalance::Eager),
            "cooperative" => Ok(Rebalance::Cooperative),
            other => Err(format!(
                "unknown rebalance protocol {other:?}: expected \"eager\" or \"cooperative\""
            )),
        }
    }
}

impl std::fmt::Display for Rebalance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rebalance::Eager => "eager",
            Rebalance::Cooperative => "cooperative",
        })
    }
}

/// Settings for a member of a chime consumer group: read_committed, the
/// given rebalance protocol, and the given session timeout (how soon a dead
/// member's partitions move) with heartbeats at a tenth of it. A member
/// hears of a rebalance at its next heartbeat: 300 ms rather than 600 ms
/// with the 3 s default, for a request a broker answers in microseconds.
pub fn group_member_config(
    bootstrap: &str,
    client_id: &str,
    group_id: &str,
    session_timeout: Duration,
    rebalance: Rebalance,
) -> ClientConfig {
    let mut c = consumer_config(bootstrap, client_id, group_id);
    c.set("partition.assignment.strategy", rebalance.assignor())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebalance_protocols_parse_and_name_their_assignor() {
        for (name, assignor) in [
            ("eager", "roundrobin"),
            ("cooperative", "cooperative-sticky"),
        ] {
            let r: Rebalance = name.parse().expect("known protocol");
            assert_eq!(r.to_string(), name);
            assert_eq!(r.assignor(), assignor);
        }
        let err = "sticky".parse::<Rebalance>().expect_err("unknown protocol");
        assert!(err.contains("\"sticky\""), "{err}");
        assert_eq!(Rebalance::default(), Rebalance::Eager);
    }
}
