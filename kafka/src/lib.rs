//! chime's side of the Kafka client: everything a chime role needs to talk
//! to Kafka the same way as every other role.
//!
//! * [`config`] — client settings every producer and consumer shares
//!   (durability, murmur2 partitioning, read_committed, group membership).
//! * [`produce`] — sending records with back-pressure, and reading and
//!   writing the headers of [`chime_wire`] records.
//! * [`txn`] — the transactional producer that engines and dispatchers
//!   commit their work through, with one error type saying what a failure
//!   means (aborted and retryable, or fenced by a newer owner).
//! * [`group`] — consumer-group membership changes, queued for the owner loop,
//!   and rejoining after an expired session.
//! * [`leave`] — removing a member id librdkafka forgot from its group.
//! * [`admin`] — creating chime's topics.
//! * [`probe`] — "is Kafka reachable?" for readiness endpoints.

pub mod admin;
pub mod config;
pub mod group;
pub mod leave;
pub mod probe;
pub mod produce;
pub mod txn;

pub use config::{client_config, consumer_config, group_member_config, producer_config, Rebalance};
pub use group::{GroupContext, GroupEvent};
pub use probe::KafkaProbe;
pub use produce::{owned_headers, MessageHeaders};
pub use txn::{OutRecord, Transactional, TxnError};
