//! Every offset the dispatcher commits goes through one Kafka transaction
//! together with the records owed for the fire records it passes (retry timers
//! into `chime.timers`, dead letters), sent with the consumer's group metadata
//! so a dispatcher that lost the partition in a rebalance cannot commit
//! (KIP-447). A crash before the commit loses neither: the fire records are
//! re-delivered and settled again.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::{Offset, TopicPartitionList};

use chime_kafka::txn::TxnTimeouts;
use chime_kafka::{OutRecord, Transactional};
use chime_wire::HeaderList;

use crate::delivery::OutputRecord;
use crate::DispatcherConfig;

/// Deadline for transactional calls.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// One transaction's worth: offsets (next to consume) per partition of the
/// fires topic, and the records owed for the fire records before them.
pub struct CommitBatch {
    pub offsets: Vec<(i32, i64)>,
    pub outputs: Vec<PartitionOutputs>,
    pub group: Arc<ConsumerGroupMetadata>,
}

/// The outputs one partition's commit carries, by fire-record offset.
pub struct PartitionOutputs {
    pub partition: i32,
    /// The partition's assignment epoch when they were taken.
    pub epoch: u64,
    pub records: Vec<(i64, Vec<OutputRecord>)>,
}

impl CommitBatch {
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
}

/// The dispatcher's transactional producer. Its calls block, so the
/// dispatcher runs them on a blocking thread, one transaction at a time.
pub struct Committer {
    txn: Transactional,
    fires_topic: String,
}

impl Committer {
    pub fn new(config: &DispatcherConfig) -> anyhow::Result<Self> {
        let mut settings = chime_kafka::producer_config(&config.bootstrap, &config.client_id());
        settings
            // Stable per instance: a restarted dispatcher aborts its
            // predecessor's open transaction at once instead of letting it
            // hold back readers until it times out. Fencing of a dispatcher
            // that lost its partitions comes from the group metadata.
            .set(
                "transactional.id",
                format!("{}-{}", config.group_id, config.instance_id),
            )
            // A dispatcher killed mid-transaction holds back readers of its
            // topics (and its offsets) until the broker aborts it.
            .set(
                "transaction.timeout.ms",
                config.transaction_timeout.as_millis().to_string(),
            );
        // The producer is created (and fences its predecessor) at the first
        // commit; a cluster still starting is then just a failed commit,
        // retried with the next batch.
        let txn = Transactional::new(
            settings,
            TxnTimeouts {
                delivery: KAFKA_TIMEOUT,
                call: KAFKA_TIMEOUT,
            },
        );
        Ok(Committer {
            txn,
            fires_topic: config.topics.fires.clone(),
        })
    }

    /// Commits `batch` in one transaction; on failure nothing of it is visible.
    /// The offsets are settled before the first record is sent: a failure
    /// must not leave records in an open transaction for the next to repeat.
    pub fn commit(&mut self, batch: &CommitBatch) -> anyhow::Result<()> {
        let mut offsets = TopicPartitionList::new();
        for &(p, next) in &batch.offsets {
            offsets.add_partition_offset(&self.fires_topic, p, Offset::Offset(next))?;
        }
        for outputs in &batch.outputs {
            for out in outputs.records.iter().flat_map(|(_, r)| r) {
                let record = OutRecord {
                    topic: &out.topic,
                    partition: None,
                    key: out.key.as_deref(),
                    value: Some(&out.payload),
                    headers: HeaderList::new(),
                };
                self.txn.send(outputs.partition, record)?;
            }
        }
        self.txn.commit(&offsets, &batch.group)?;
        Ok(())
    }
}
