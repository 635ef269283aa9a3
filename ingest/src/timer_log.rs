//! Appending commands to `chime.timers`, answering only once Kafka acknowledged.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use chime_wire::TimerCommand;

use crate::error::ApiError;
use crate::IngestConfig;

pub struct TimerLog {
    producer: FutureProducer,
    topic: String,
    ack_timeout: Duration,
}

impl TimerLog {
    pub fn new(config: &IngestConfig) -> anyhow::Result<Self> {
        let producer = chime_kafka::producer_config(&config.bootstrap, "chime-ingest")
            // librdkafka gives up on a record no later than we give up waiting.
            .set(
                "message.timeout.ms",
                config.ack_timeout.as_millis().to_string(),
            )
            .create()?;
        Ok(TimerLog {
            producer,
            topic: config.topics.timers.clone(),
            ack_timeout: config.ack_timeout,
        })
    }

    /// Appends `command` keyed by its timer id; Ok once Kafka acknowledged it.
    pub async fn append(&self, command: &TimerCommand) -> Result<(), ApiError> {
        self.append_at(command, None).await
    }

    /// [`Self::append`], with the record's timestamp set to `at_ms` (when a
    /// schedule was asked for: its first occurrence is counted from it).
    pub async fn append_at(
        &self,
        command: &TimerCommand,
        at_ms: Option<u64>,
    ) -> Result<(), ApiError> {
        let value = command.encode();
        let mut record = FutureRecord::to(&self.topic)
            .key(command.id())
            .payload(&value);
        if let Some(at) = at_ms.and_then(|t| i64::try_from(t).ok()) {
            record = record.timestamp(at);
        }
        // A full local queue fails at once (back-pressure) rather than waiting.
        let send = self.producer.send(record, Timeout::After(Duration::ZERO));
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.ack_timeout, send).await;
        let outcome = if matches!(result, Ok(Ok(_))) {
            "ok"
        } else {
            "error"
        };
        metrics::histogram!("chime_kafka_produce_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))) => Err(
                ApiError::unavailable("the Kafka producer queue is full; retry shortly", 1),
            ),
            Ok(Err((e, _))) => {
                tracing::warn!(error = %e, "append to chime.timers failed");
                Err(ApiError::unavailable(
                    format!("Kafka did not acknowledge the timer: {e}"),
                    1,
                ))
            }
            Err(_) => Err(ApiError::unavailable(
                format!(
                    "Kafka did not acknowledge the timer within {} ms",
                    self.ack_timeout.as_millis()
                ),
                1,
            )),
        }
    }
}
