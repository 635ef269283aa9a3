//! The transactional producer every chime role commits its work through.
//!
//! An engine (input applied, fires, changelog) and a dispatcher (offsets,
//! retry timers, dead letters) each commit a batch of records together with
//! the input offsets they consumed, sent with the consumer's group metadata
//! so that an owner that lost its partitions cannot commit (KIP-447).
//!
//! What a failure means is decided here, once, as a [`TxnError`]:
//!
//! * [`TxnError::Stalled`]: records of some tags (a tag is the caller's unit,
//!   e.g. an engine partition) were not delivered in time — typically their
//!   partition has no leader. The transaction was aborted; the caller may
//!   retry without those tags, so one unavailable partition holds up only
//!   itself.
//! * [`TxnError::Aborted`]: anything else abortable (a rebalance made the
//!   group metadata stale, a broker restarted, a request timed out). Nothing
//!   of the transaction is visible; retry.
//! * [`TxnError::Fenced`]: a newer producer with the same transactional id
//!   exists. This process is a zombie and must stop writing.
//!
//! A producer that hits a fatal error, or cannot abort, is dropped and a new
//! one is created (and initialised, which fences the old one) at the next
//! send, so an outage of the whole cluster heals by itself.
//!
//! librdkafka 2.12 can block forever in `send_offsets_to_transaction` when
//! the group coordinator's broker has left the cluster: it waits for a state
//! change of a broker thread it has already shut down (librdkafka issues
//! 5456 and 5511, open at the time of writing; seen in
//! `tests/cluster_failover.rs` when the killed broker coordinated the
//! dispatchers' group). So that call is made on a thread of its own
//! ([`OffsetsCaller`]); one that outlives its deadline is left behind with
//! its producer, a [`TxnError::Hung`], and the next send creates a new
//! producer, whose initialisation fences the abandoned one.
//!
//! Deliveries are awaited on a condition variable signalled from the
//! delivery callback (the producer polls on its own thread), not by polling
//! in a loop: librdkafka's flush inside the commit polls in 100 ms slices, so
//! a commit with deliveries outstanding would cost ≥ 100 ms; drained first,
//! it takes about a millisecond.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, TopicPartitionList};

use chime_wire::HeaderList;

use crate::produce::owned_headers;

/// Why a transaction did not commit. In every case it was aborted (or its
/// producer replaced), so none of its records is visible to read_committed readers.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error("records for {tags:?} were not delivered within {waited:?}; transaction aborted")]
    Stalled { tags: Vec<i32>, waited: Duration },
    #[error("transaction aborted: {0}")]
    Aborted(KafkaError),
    #[error("fenced by a newer producer with the same transactional id: {0}")]
    Fenced(KafkaError),
    #[error("{call} did not return within {waited:?}; its producer was abandoned")]
    Hung {
        call: &'static str,
        waited: Duration,
    },
}

/// One record to write in the open transaction.
pub struct OutRecord<'a> {
    pub topic: &'a str,
    /// Explicit partition; `None` lets the (murmur2) partitioner pick by key.
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    /// `None` writes a tombstone.
    pub value: Option<&'a [u8]>,
    pub headers: HeaderList,
}

/// Deadlines of a [`Transactional`] producer.
#[derive(Debug, Clone, Copy)]
pub struct TxnTimeouts {
    /// Longest wait with records outstanding and none delivered (no
    /// progress at all) before the tags still waiting are reported
    /// [`TxnError::Stalled`]. Slow progress under load is not a stall.
    pub delivery: Duration,
    /// Deadline of each transactional call (init, offsets, commit, abort).
    pub call: Duration,
}

/// A transactional producer, created lazily and replaced when it breaks.
pub struct Transactional {
    config: ClientConfig,
    timeouts: TxnTimeouts,
    producer: Option<Arc<ThreadedProducer<Deliveries>>>,
    offsets_caller: Option<OffsetsCaller>,
    open: bool,
}

impl Transactional {
    /// `config` must carry `transactional.id` (see [`crate::producer_config`]).
    pub fn new(config: ClientConfig, timeouts: TxnTimeouts) -> Self {
        Transactional {
            config,
            timeouts,
            producer: None,
            offsets_caller: None,
            open: false,
        }
    }

    /// Creates and initialises the producer now (it is otherwise created at
    /// the first send). Initialising fences any earlier producer with the
    /// same transactional id and aborts its open transaction.
    pub fn init(&mut self) -> Result<(), TxnError> {
        self.producer()?;
        Ok(())
    }

    /// A transaction is open (something was sent since the last commit or abort).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Sends `record` in the open transaction, opening one if none is.
    /// `tag` names the caller's unit the record belongs to, for
    /// [`TxnError::Stalled`].
    pub fn send(&mut self, tag: i32, record: OutRecord<'_>) -> Result<(), TxnError> {
        if !self.open {
            let begun = self.producer()?.begin_transaction();
            self.check(begun)?;
            self.open = true;
        }
        let producer = self.producer.as_ref().expect("opened above");
        let mut base =
            BaseRecord::<[u8], [u8], usize>::with_opaque_to(record.topic, tag_opaque(tag));
        if let Some(p) = record.partition {
            base = base.partition(p);
        }
        if let Some(k) = record.key {
            base = base.key(k);
        }
        if let Some(v) = record.value {
            base = base.payload(v);
        }
        if !record.headers.is_empty() {
            base = base.headers(owned_headers(&record.headers));
        }
        producer.context().sent(tag);
        let mut base = base;
        let result = loop {
            match producer.send(base) {
                Ok(()) => break Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    base = r;
                    producer.context().wait_for_room(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    producer.context().unsent(tag);
                    break Err(e);
                }
            }
        };
        self.check(result)
    }

    /// Commits the open transaction with `offsets` (next offsets to consume)
    /// sent under `group`'s metadata. A no-op when nothing is open and no
    /// offsets are given.
    pub fn commit(
        &mut self,
        offsets: &TopicPartitionList,
        group: &Arc<ConsumerGroupMetadata>,
    ) -> Result<(), TxnError> {
        if !self.open {
            if offsets.count() == 0 {
                return Ok(());
            }
            let begun = self.producer()?.begin_transaction();
            self.check(begun)?;
            self.open = true;
        }
        let waited = self.timeouts.delivery;
        let stalled = self
            .producer
            .as_ref()
            .expect("open transaction has a producer")
            .context()
            .wait_delivered(waited, self.timeouts.call);
        if !stalled.is_empty() {
            self.abort();
            return Err(TxnError::Stalled {
                tags: stalled,
                waited,
            });
        }
        let call = self.timeouts.call;
        let producer = Arc::clone(self.producer.as_ref().expect("checked above"));
        let mut result = Ok(());
        if offsets.count() > 0 {
            result = match self.send_offsets(&producer, offsets, group) {
                Some(result) => result,
                None => {
                    // Left behind with its producer; the next send makes a
                    // new one, which fences it.
                    self.open = false;
                    self.producer = None;
                    self.offsets_caller = None;
                    return Err(TxnError::Hung {
                        call: "send_offsets_to_transaction",
                        waited: call + HUNG_MARGIN,
                    });
                }
            };
        }
        if result.is_ok() {
            result = producer.commit_transaction(call);
        }
        match result {
            Ok(()) => {
                self.open = false;
                Ok(())
            }
            Err(e) => {
                let error = classify(e);
                self.abort();
                Err(error)
            }
        }
    }

    /// `send_offsets_to_transaction` on the offsets thread: its result, or
    /// `None` when it did not return within the call deadline and a margin.
    fn send_offsets(
        &mut self,
        producer: &Arc<ThreadedProducer<Deliveries>>,
        offsets: &TopicPartitionList,
        group: &Arc<ConsumerGroupMetadata>,
    ) -> Option<KafkaResult<()>> {
        let caller = match &mut self.offsets_caller {
            Some(caller) => caller,
            None => self.offsets_caller.insert(OffsetsCaller::start()?),
        };
        caller.call(OffsetsJob {
            producer: Arc::clone(producer),
            offsets: offsets.clone(),
            group: Arc::clone(group),
            timeout: self.timeouts.call,
        })
    }

    /// Aborts the open transaction, if any; a producer that cannot abort is
    /// dropped (its successor's initialisation aborts the transaction).
    pub fn abort(&mut self) {
        if !self.open {
            return;
        }
        self.open = false;
        let Some(producer) = &self.producer else {
            return;
        };
        if let Err(e) = producer.abort_transaction(self.timeouts.call) {
            tracing::warn!(error = %e, "abort failed; the producer is replaced");
            self.producer = None;
        }
    }

    fn producer(&mut self) -> Result<&ThreadedProducer<Deliveries>, TxnError> {
        if self.producer.is_none() {
            let producer: ThreadedProducer<Deliveries> = self
                .config
                .create_with_context(Deliveries::default())
                .map_err(TxnError::Aborted)?;
            producer
                .init_transactions(self.timeouts.call)
                .map_err(classify)?;
            self.producer = Some(Arc::new(producer));
        }
        Ok(self.producer.as_ref().expect("created above"))
    }

    /// Passes `result` through; on error aborts (or drops a broken producer)
    /// and says what the error means.
    fn check<T>(&mut self, result: Result<T, KafkaError>) -> Result<T, TxnError> {
        result.map_err(|e| {
            let error = classify(e);
            match &error {
                TxnError::Fenced(_) => {
                    self.open = false;
                    self.producer = None;
                }
                _ if self.fatal() => {
                    self.open = false;
                    self.producer = None;
                }
                _ => self.abort(),
            }
            error
        })
    }

    fn fatal(&self) -> bool {
        self.producer
            .as_ref()
            .is_some_and(|p| p.client().fatal_error().is_some())
    }
}

/// How much longer than its own deadline an offsets call may take before it
/// is taken for hung.
const HUNG_MARGIN: Duration = Duration::from_secs(2);

/// One `send_offsets_to_transaction` call.
struct OffsetsJob {
    producer: Arc<ThreadedProducer<Deliveries>>,
    offsets: TopicPartitionList,
    group: Arc<ConsumerGroupMetadata>,
    timeout: Duration,
}

/// The thread `send_offsets_to_transaction` calls are made on, so that one
/// that never returns holds up only this thread (see the module comment).
/// Dropping it ends the thread once its current call, if any, returns.
struct OffsetsCaller {
    jobs: mpsc::Sender<OffsetsJob>,
    results: mpsc::Receiver<KafkaResult<()>>,
}

impl OffsetsCaller {
    /// `None` if no thread could be started (the call is then reported hung).
    fn start() -> Option<OffsetsCaller> {
        let (jobs, job_rx) = mpsc::channel::<OffsetsJob>();
        let (result_tx, results) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("chime-txn-offsets".into())
            .spawn(move || {
                for job in job_rx {
                    let result = job.producer.send_offsets_to_transaction(
                        &job.offsets,
                        &job.group,
                        job.timeout,
                    );
                    if result_tx.send(result).is_err() {
                        return;
                    }
                }
            });
        match spawned {
            Ok(_) => Some(OffsetsCaller { jobs, results }),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the transaction offsets thread");
                None
            }
        }
    }

    fn call(&self, job: OffsetsJob) -> Option<KafkaResult<()>> {
        let deadline = job.timeout + HUNG_MARGIN;
        self.jobs.send(job).ok()?;
        self.results.recv_timeout(deadline).ok()
    }
}

/// Sorts a Kafka error into what it means for the transaction.
fn classify(e: KafkaError) -> TxnError {
    let fenced = |code: RDKafkaErrorCode| {
        matches!(
            code,
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::Fenced
        )
    };
    match &e {
        KafkaError::Transaction(t) if t.is_fatal() && fenced(t.code()) => TxnError::Fenced(e),
        KafkaError::Transaction(t) if fenced(t.code()) => TxnError::Fenced(e),
        _ => TxnError::Aborted(e),
    }
}

fn tag_opaque(tag: i32) -> usize {
    tag as u32 as usize
}

/// Counts each tag's records not yet delivered, and wakes whoever waits for them.
#[derive(Default)]
pub struct Deliveries {
    state: Mutex<DeliveryState>,
    changed: Condvar,
}

#[derive(Default)]
struct DeliveryState {
    outstanding: HashMap<i32, u64>,
    /// Deliveries reported so far (successful or not): progress.
    reported: u64,
}

impl Deliveries {
    fn sent(&self, tag: i32) {
        *self.lock().outstanding.entry(tag).or_insert(0) += 1;
    }

    fn unsent(&self, tag: i32) {
        self.delivered(tag);
    }

    fn delivered(&self, tag: i32) {
        let mut state = self.lock();
        state.reported += 1;
        if let Some(n) = state.outstanding.get_mut(&tag) {
            *n -= 1;
            if *n == 0 {
                state.outstanding.remove(&tag);
            }
        }
        // Waking the waiter for every record would cost a context switch
        // each; it wakes when all are in, and checks progress on its own.
        if state.outstanding.is_empty() {
            self.changed.notify_all();
        }
    }

    /// Waits until nothing is outstanding. Returns the tags still waiting
    /// once `idle` passed with no delivery reported at all, or `max` in all
    /// (empty when everything was delivered).
    fn wait_delivered(&self, idle: Duration, max: Duration) -> Vec<i32> {
        let started = Instant::now();
        let mut state = self.lock();
        let mut progress = (state.reported, Instant::now());
        // Progress is looked at this often while records are outstanding.
        let look = idle / 4;
        while !state.outstanding.is_empty() {
            let now = Instant::now();
            if state.reported != progress.0 {
                progress = (state.reported, now);
            }
            let end = (progress.1 + idle).min(started + max);
            if now >= end {
                let mut tags: Vec<i32> = state.outstanding.keys().copied().collect();
                tags.sort_unstable();
                // Aborting purges them; their (failed) reports still come.
                return tags;
            }
            state = self
                .changed
                .wait_timeout(state, (end - now).min(look))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Vec::new()
    }

    /// The send queue is full: wait a little for deliveries to make room.
    fn wait_for_room(&self, timeout: Duration) {
        let state = self.lock();
        let _ = self.changed.wait_timeout(state, timeout);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DeliveryState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: usize) {
        if let Err((e, _)) = result {
            // The transaction is now in an abortable state; its commit says so.
            tracing::debug!(error = %e, "delivery failed");
        }
        self.delivered(tag as u32 as i32);
    }
}
