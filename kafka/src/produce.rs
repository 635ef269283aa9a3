//! The headers of chime records on rdkafka messages.

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

use chime_wire::headers::{HeaderList, RecordHeaders};

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
