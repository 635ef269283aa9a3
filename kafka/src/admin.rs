//! Creating chime's topics.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use chime_wire::Topics;

use crate::client_config;

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
