//! Consumer-group membership: librdkafka reports assignments and revocations
//! inside `poll`; this context queues them so the owner loop applies them between
//! polls, when no transaction is open.

use std::sync::Mutex;

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, TopicPartitionList};

/// A change in which `chime.timers` partitions this instance owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

pub struct GroupContext {
    topic: String,
    events: Mutex<Vec<GroupEvent>>,
}

impl GroupContext {
    pub fn new(topic: &str) -> Self {
        GroupContext {
            topic: topic.to_string(),
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

impl ClientContext for GroupContext {
    // End of partition is expected (it marks a partition caught up); it is
    // also reported as a global error, which must not be logged as one.
    fn error(&self, error: KafkaError, reason: &str) {
        if !crate::changelog::is_partition_eof(&error) {
            tracing::error!(%error, reason, "engine consumer error");
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
                tracing::info!(partitions = ?parts, "partitions revoked");
                self.push(GroupEvent::Revoked(parts));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts = self.partitions(tpl);
            tracing::info!(partitions = ?parts, "partitions assigned");
            self.push(GroupEvent::Assigned(parts));
        }
    }
}
