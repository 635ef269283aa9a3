//! Every offset the dispatcher commits goes through one Kafka transaction
//! together with the records owed for the fire records it passes (retry timers
//! into `chime.timers`, dead letters), sent with the consumer's group metadata
//! so a dispatcher that lost the partition in a rebalance cannot commit
//! (KIP-447). A crash before the commit loses neither: the fire records are
//! re-delivered and settled again.

use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::delivery::OutputRecord;
use crate::DispatcherConfig;

/// Deadline for transactional calls.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// One transaction's worth: offsets (next to consume) per partition of the
/// fires topic, and the records owed for the fire records before them.
pub struct CommitBatch {
    pub offsets: Vec<(i32, i64)>,
    pub outputs: Vec<PartitionOutputs>,
    pub group: ConsumerGroupMetadata,
}

/// The outputs one partition's commit carries, by fire-record offset.
pub struct PartitionOutputs {
    pub partition: i32,
    /// The partition's assignment epoch when they were taken.
    pub epoch: u64,
    pub records: Vec<(i64, OutputRecord)>,
}

impl CommitBatch {
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
}

/// The dispatcher's transactional producer. Its calls block, so the
/// dispatcher runs them on a blocking thread, one transaction at a time.
pub struct Committer {
    producer: BaseProducer,
    config: DispatcherConfig,
}

impl Committer {
    pub fn new(config: &DispatcherConfig) -> anyhow::Result<Self> {
        Ok(Committer {
            producer: transactional_producer(config)?,
            config: config.clone(),
        })
    }

    /// Commits `batch` in one transaction; on failure the transaction is
    /// aborted (or the producer replaced) and nothing of it is visible.
    pub fn commit(&mut self, batch: &CommitBatch) -> anyhow::Result<()> {
        let result = self.try_commit(batch);
        if let Err(e) = &result {
            let fatal = matches!(e.downcast_ref::<KafkaError>(),
                Some(KafkaError::Transaction(t)) if t.is_fatal());
            if fatal || self.producer.abort_transaction(KAFKA_TIMEOUT).is_err() {
                match transactional_producer(&self.config) {
                    Ok(p) => self.producer = p,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot replace the transactional producer")
                    }
                }
            }
        }
        result
    }

    fn try_commit(&mut self, batch: &CommitBatch) -> anyhow::Result<()> {
        self.producer.begin_transaction()?;
        for outputs in &batch.outputs {
            for (_, out) in &outputs.records {
                let mut record = BaseRecord::<[u8], [u8]>::to(&out.topic).payload(&out.payload[..]);
                if let Some(k) = &out.key {
                    record = record.key(&k[..]);
                }
                chime_wire::kafka::send_waiting(&self.producer, record)?;
            }
        }
        let mut offsets = TopicPartitionList::new();
        for &(p, next) in &batch.offsets {
            offsets.add_partition_offset(&self.config.topics.fires, p, Offset::Offset(next))?;
        }
        self.producer
            .send_offsets_to_transaction(&offsets, &batch.group, KAFKA_TIMEOUT)?;
        chime_wire::kafka::drain(&self.producer, KAFKA_TIMEOUT)?;
        self.producer.commit_transaction(KAFKA_TIMEOUT)?;
        Ok(())
    }
}

fn transactional_producer(config: &DispatcherConfig) -> anyhow::Result<BaseProducer> {
    let producer: BaseProducer =
        chime_wire::kafka::producer_config(&config.bootstrap, "chime-dispatcher")
            // Unique per process: fencing of a stale dispatcher comes from the
            // group metadata sent with the offsets, not from this id.
            .set(
                "transactional.id",
                format!("{}-{}", config.group_id, uuid::Uuid::new_v4().simple()),
            )
            // A dispatcher killed mid-transaction holds back readers of its
            // topics (and its offsets) until the broker aborts it.
            .set(
                "transaction.timeout.ms",
                config.transaction_timeout.as_millis().to_string(),
            )
            .create()?;
    producer.init_transactions(KAFKA_TIMEOUT)?;
    Ok(producer)
}
