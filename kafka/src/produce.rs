//! Sending records, and the headers of chime records on rdkafka messages.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, ToBytes};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

use chime_wire::headers::{HeaderList, RecordHeaders};

/// Enqueues a record, waiting for room when librdkafka's queue is full.
pub fn send_waiting<K, P, C>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> Result<(), KafkaError>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    C: ProducerContext,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Waits until every record `producer` holds is delivered, for at most
/// `timeout`. Call before `commit_transaction`: librdkafka's flush inside the
/// commit polls in 100 ms slices that do not end early, so a commit with
/// deliveries outstanding costs ≥ 100 ms; drained, it takes ~1 ms.
pub fn drain<C: ProducerContext>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let deadline = std::time::Instant::now() + timeout;
    while producer.in_flight_count() > 0 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        producer.poll(left.min(Duration::from_millis(5)));
    }
    Ok(())
}

/// A [`HeaderList`] as rdkafka headers.
pub fn owned_headers(list: &HeaderList) -> OwnedHeaders {
    list.iter()
        .fold(OwnedHeaders::new_with_capacity(4), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value),
            })
        })
}

/// The headers of an rdkafka message, readable as a chime record's.
pub struct MessageHeaders<'a, M: Message>(pub &'a M);

impl<M: Message> RecordHeaders for MessageHeaders<'_, M> {
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .headers()?
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
    }
}
