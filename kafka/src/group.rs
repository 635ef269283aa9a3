//! Consumer-group membership. librdkafka reports assignments and revocations
//! inside `poll`; [`GroupContext`] queues them so the owner loop applies them
//! between polls, when no transaction is open. [`Rejoin`] brings a member
//! whose session expired back into its group as soon as the group can take it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientContext, TopicPartitionList};

use crate::leave::{leave_forgotten_member, LeaveOutcome};

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
    pub rejoin: Rejoin,
}

impl GroupContext {
    /// For a member of `group` (at the brokers `bootstrap`) subscribed to
    /// `topic`; `role` names it in logs (`engine`, `dispatcher`).
    pub fn new(bootstrap: &str, group: &str, topic: &str, role: &'static str) -> Self {
        GroupContext {
            topic: topic.to_string(),
            role,
            events: Mutex::new(Vec::new()),
            rejoin: Rejoin::new(bootstrap, group, topic, role),
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
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts = self.partitions(tpl);
                tracing::info!(role = self.role, partitions = ?parts, "partitions revoked");
                self.push(GroupEvent::Revoked(parts));
                self.rejoin.after_revoke(consumer);
            }
            Rebalance::Error(e) => tracing::warn!(role = self.role, error = %e, "rebalance error"),
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.rejoin.after_assign(consumer);
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
    member_id(consumer).is_some()
}

/// The consumer's group metadata for a transactional offset commit, or None
/// while it holds no membership (not joined yet, or its session expired).
///
/// KIP-447 fences a member that lost its partitions by the member id and
/// generation its commit carries. But librdkafka clears both as soon as it
/// learns its session expired, on its own thread, before `poll` reports the
/// lost partitions; and the broker accepts a transactional offset commit with
/// no member id and generation −1 whatever the group's state (the form of
/// producers that predate KIP-447). A commit sent in that gap would land
/// although another member already owns the partitions: a fire committed
/// twice. So a commit goes out only under a membership read the same before
/// and after the metadata is taken (a generation never comes back).
pub fn commit_metadata<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
) -> Option<ConsumerGroupMetadata> {
    let before = membership(consumer)?;
    let metadata = consumer.group_metadata()?;
    (membership(consumer)? == before).then_some(metadata)
}

/// The member id and generation the consumer holds, if it holds any.
fn membership<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Option<(String, i32)> {
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is the live handle `consumer` owns. The metadata is a
    // copy owned here and destroyed before returning; the member id it
    // returns points into it and is copied out first.
    unsafe {
        let md = rdkafka::bindings::rd_kafka_consumer_group_metadata(rk);
        if md.is_null() {
            return None;
        }
        let generation = rdkafka::bindings::rd_kafka_consumer_group_metadata_generation_id(md);
        let id = rdkafka::bindings::rd_kafka_consumer_group_metadata_member_id(md);
        let id = if id.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(id).to_string_lossy().into_owned()
        };
        rdkafka::bindings::rd_kafka_consumer_group_metadata_destroy(md);
        (generation >= 0 && !id.is_empty()).then_some((id, generation))
    }
}

/// The consumer's group member id, if it holds one.
pub fn member_id<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Option<String> {
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is the live handle `consumer` owns. rd_kafka_memberid
    // returns null or a NUL-terminated copy the caller frees with
    // rd_kafka_mem_free, read here only before it is freed.
    unsafe {
        let id = rdkafka::bindings::rd_kafka_memberid(rk);
        if id.is_null() {
            return None;
        }
        let text = std::ffi::CStr::from_ptr(id).to_string_lossy().into_owned();
        rdkafka::bindings::rd_kafka_mem_free(rk, id.cast());
        Some(text).filter(|t| !t.is_empty())
    }
}

/// Why a consumer can do nothing more, if it hit a fatal error. With static
/// membership that is the group fencing this member for good: another
/// process joined with the same instance id (`group.instance.id`) — or,
/// after a session timeout while the group coordinator moved, librdkafka's
/// own rejoin fenced a request still carrying the old member id
/// (docs/kafka-notes.md). Either way the process must stop.
pub fn fatal_error<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    instance_id: &str,
) -> Option<String> {
    let (code, reason) = consumer.client().fatal_error()?;
    Some(if code == RDKafkaErrorCode::FencedInstanceId {
        format!(
            "fenced out of its consumer group ({reason}): another process joined with instance \
             id {instance_id:?} (instance ids must be unique), or this static member's own \
             rejoin after a session timeout fenced it (docs/kafka-notes.md); restart it"
        )
    } else {
        format!("fatal consumer error {code}: {reason}")
    })
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

/// Rejoining after an expired session (the brokers were unreachable, or the
/// process paused, for longer than the session timeout).
///
/// librdkafka rejoins by itself as soon as it reaches the group's
/// coordinator. After a broker restart that is too soon: the broker answers
/// before it has loaded its groups (about a second on the machine measured),
/// the join is refused with NOT_COORDINATOR, and librdkafka holds the next
/// one for two seconds (its one-second join interval plus a second of
/// backoff after an error). So a member whose session expired gives up its
/// subscription in the revocation (which stops librdkafka's own rejoin) and
/// subscribes again once the coordinator answers an offsets request; a
/// subscription joins at once. With the brokers up, that costs one round
/// trip.
///
/// The coordinator may still hold the member id the expired session had (a
/// restarted broker reloads its groups with their members) and would wait
/// a session timeout for it to rejoin; librdkafka has forgotten it. So once
/// the new member has an id, the old one is removed from the group
/// ([`crate::leave`]), and the rebalance completes as soon as every live
/// member has joined.
pub struct Rejoin {
    bootstrap: String,
    group: String,
    topic: String,
    role: &'static str,
    state: Mutex<RejoinState>,
}

#[derive(Default)]
struct RejoinState {
    /// The member id the last assignment was made to.
    member_id: Option<String>,
    /// When to ask the coordinator next; `None` while subscribed.
    next_probe: Option<Instant>,
    /// The member id of the expired session, until the group is told.
    forgotten: Option<String>,
}

/// How often, and how long, an unsubscribed member asks whether its group
/// coordinator answers.
const PROBE_EVERY: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// The partition the probe asks about: none that exists, so never one with a
/// transaction's offsets still pending (a read_committed consumer's offsets
/// request waits those out).
const PROBE_PARTITION: i32 = i32::MAX;
/// How long the removal of a forgotten member id may take.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

impl Rejoin {
    /// For a member of `group` (at the brokers `bootstrap`) subscribed to
    /// `topic`; `role` names it in logs.
    pub fn new(bootstrap: &str, group: &str, topic: &str, role: &'static str) -> Self {
        Rejoin {
            bootstrap: bootstrap.to_string(),
            group: group.to_string(),
            topic: topic.to_string(),
            role,
            state: Mutex::new(RejoinState::default()),
        }
    }

    /// From the rebalance callback of an assignment: remembers the member id
    /// it was made to.
    pub fn after_assign<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        self.lock().member_id = member_id(consumer);
    }

    /// From the rebalance callback of a revocation: if the assignment was
    /// lost to an expired session (librdkafka cleared the member id),
    /// unsubscribes until [`Rejoin::serve`] finds the coordinator answering.
    /// Inside the callback librdkafka defers the unsubscribe until the
    /// revocation is done, and applies it instead of its own rejoin.
    pub fn after_revoke<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        if !consumer.assignment_lost() || has_member_id(consumer) {
            return;
        }
        tracing::info!(
            role = self.role,
            "group session expired; rejoining once the group coordinator answers"
        );
        consumer.unsubscribe();
        let mut state = self.lock();
        state.forgotten = state.member_id.take();
        state.next_probe = Some(Instant::now());
    }

    /// How long the owner may wait in `poll`, at most `wait`: while the
    /// member waits to rejoin, no longer than the probe interval.
    pub fn poll_wait(&self, wait: Duration) -> Duration {
        if self.lock().next_probe.is_some() {
            wait.min(PROBE_EVERY)
        } else {
            wait
        }
    }

    /// Between polls: while unsubscribed after an expired session, asks the
    /// coordinator (at most every `PROBE_EVERY`, waiting up to
    /// `PROBE_TIMEOUT`) and subscribes again once it answers; once the new
    /// member has an id, removes the forgotten one from the group.
    pub fn serve<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        let mut state = self.lock();
        match state.next_probe {
            Some(at) if Instant::now() >= at => {
                state.next_probe = if self.probe_and_subscribe(consumer) {
                    None
                } else {
                    Some(Instant::now() + PROBE_EVERY)
                };
            }
            Some(_) => {}
            None if state.forgotten.is_some() && has_member_id(consumer) => {
                if let Some(old) = state.forgotten.take() {
                    self.remove_from_group(old);
                }
            }
            None => {}
        }
    }

    /// Whether the coordinator answered and the member subscribed again.
    fn probe_and_subscribe<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) -> bool {
        let mut probe = TopicPartitionList::new();
        probe.add_partition(&self.topic, PROBE_PARTITION);
        if consumer.committed_offsets(probe, PROBE_TIMEOUT).is_err() {
            return false;
        }
        match consumer.subscribe(&[&self.topic]) {
            Ok(()) => {
                tracing::info!(role = self.role, "group coordinator answers; rejoining");
                true
            }
            Err(e) => {
                tracing::warn!(role = self.role, error = %e, "subscribing again failed; retrying");
                false
            }
        }
    }

    /// Removes `member_id` from the group on a thread of its own (the owner
    /// keeps serving the consumer meanwhile).
    fn remove_from_group(&self, member_id: String) {
        let (bootstrap, group, role) = (self.bootstrap.clone(), self.group.clone(), self.role);
        let leave = move || {
            let client_id = format!("chime-{role}-leave");
            match leave_forgotten_member(&bootstrap, &group, &member_id, &client_id, LEAVE_TIMEOUT)
            {
                Ok(LeaveOutcome::Removed) => tracing::info!(
                    role,
                    member_id,
                    "removed the expired session's member id from the group"
                ),
                Ok(LeaveOutcome::AlreadyGone) => tracing::info!(
                    role,
                    member_id,
                    "the expired session's member id had already left the group"
                ),
                Err(e) => tracing::warn!(
                    role,
                    member_id,
                    error = %format!("{e:#}"),
                    "could not remove the expired session's member id from the group; \
                     the coordinator drops it after the session timeout"
                ),
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("chime-leave".into())
            .spawn(leave)
        {
            tracing::warn!(role = self.role, error = %e, "could not start the group leave");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RejoinState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
