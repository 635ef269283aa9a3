//! Consumer-group membership. librdkafka reports assignments and revocations
//! inside `poll`; [`GroupContext`] queues them so the owner loop applies them
//! between polls, when no transaction is open.

use std::sync::Mutex;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientContext, TopicPartitionList};

/// A change in which partitions of the subscribed topic this member owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Consumer context of a chime group member subscribed to one topic.
pub struct GroupContext {
    topic: String,
    role: &'static str,
    events: Mutex<Vec<GroupEvent>>,
}

impl GroupContext {
    /// `role` names the member in logs (`engine`, `dispatcher`).
    pub fn new(topic: &str, role: &'static str) -> Self {
        GroupContext {
            topic: topic.to_string(),
            role,
            events: Mutex::new(Vec::new()),
        }
    }

    /// Events since the last call, oldest first.
    pub fn take_events(&self) -> Vec<GroupEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn push(&self, event: GroupEvent) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
    }

    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }
}

/// End of partition: expected where a reader asks for it (it marks a
/// partition caught up), and also reported by librdkafka as a global error.
pub fn is_partition_eof(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
    )
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !is_partition_eof(&error) {
            tracing::error!(%error, reason, role = self.role, "consumer error");
        }
    }
}

impl ConsumerContext for GroupContext {
    // Revocation is queued before librdkafka unassigns, assignment after it
    // assigns; both are applied by the owner loop right after `poll` returns.
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts = self.partitions(tpl);
                tracing::info!(role = self.role, partitions = ?parts, "partitions revoked");
                self.push(GroupEvent::Revoked(parts));
            }
            Rebalance::Error(e) => tracing::warn!(role = self.role, error = %e, "rebalance error"),
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts = self.partitions(tpl);
            tracing::info!(role = self.role, partitions = ?parts, "partitions assigned");
            self.push(GroupEvent::Assigned(parts));
        }
    }
}

/// A consumer context that only keeps end-of-partition reports out of the
/// error log (for readers outside any group: rebuilds, audits).
pub struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if !is_partition_eof(&error) {
            tracing::error!(%error, reason, "consumer error");
        }
    }
}

impl ConsumerContext for QuietEof {}

/// Whether the consumer holds a group member id: it joined and has not yet
/// sent its leave request (librdkafka clears the id as it sends it).
pub fn has_member_id<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> bool {
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is the live handle `consumer` owns. rd_kafka_memberid
    // returns null or a NUL-terminated copy the caller frees with
    // rd_kafka_mem_free, read here only before it is freed.
    unsafe {
        let id = rdkafka::bindings::rd_kafka_memberid(rk);
        if id.is_null() {
            return false;
        }
        let joined = *id != 0;
        rdkafka::bindings::rd_kafka_mem_free(rk, id.cast());
        joined
    }
}

/// After `unsubscribe`, serves the consumer until its leave request is on
/// its way (or `deadline`). librdkafka sends the leave only once the
/// unassign the unsubscribe began has been served; a consumer dropped
/// before that closes without leaving, and its partitions then wait the
/// whole session timeout for another member. Returns whether it was sent.
pub fn serve_until_left<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    deadline: std::time::Instant,
) -> bool {
    while std::time::Instant::now() < deadline {
        if !has_member_id(consumer) {
            return true;
        }
        let _ = consumer.poll(std::time::Duration::from_millis(20));
    }
    !has_member_id(consumer)
}
