//! The chime dispatcher: consumes `chime.fires` and makes each timer's HTTP
//! call, never before its due time, at least once.
//!
//! * Many calls run at once: at most [`DispatcherConfig::max_in_flight`] in
//!   all and [`DispatcherConfig::max_in_flight_per_host`] per destination
//!   ([`hosts`]); a partition with
//!   [`DispatcherConfig::max_in_flight_per_partition`] records unfinished is
//!   paused until some finish.
//! * Offsets are committed only up to the lowest unfinished record of each
//!   partition ([`progress`]), every [`DispatcherConfig::commit_interval`], in a
//!   Kafka transaction that also writes what the finished records owe — retry
//!   timers and dead letters ([`commit`]). A crash re-delivers what was in
//!   flight or not yet committed, and loses nothing.
//! * What a call carries and how its outcome is judged: [`delivery`],
//!   [`retry`], [`signing`]; which addresses it may reach: [`address`].

pub mod address;
pub mod commit;
pub mod delivery;
pub mod hosts;
pub mod progress;
pub mod retry;
pub mod signing;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use chime_wire::Topics;

use crate::address::AddressPolicy;
use crate::commit::{CommitBatch, Committer, PartitionOutputs};
use crate::delivery::{Delivery, FireRecord, OutputRecord, Settled};
use crate::progress::PartitionProgress;
use crate::retry::RetryDefaults;
use chime_kafka::{GroupContext, GroupEvent};

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub bootstrap: String,
    pub topics: Topics,
    pub group_id: String,
    /// HTTP calls in flight at once, over all destinations.
    pub max_in_flight: usize,
    /// HTTP calls in flight at once to one destination (scheme, host, port).
    pub max_in_flight_per_host: usize,
    /// Fire records taken but not finished per partition (waiting for their
    /// due time, a slot, or an answer) before the partition is paused.
    pub max_in_flight_per_partition: usize,
    /// Deadline for one HTTP call.
    pub request_timeout: Duration,
    /// Backoffs shorter than this are waited in place; longer ones become a
    /// retry timer in `chime.timers`.
    pub wait_in_place_below: Duration,
    /// Retry policy where a timer's own says nothing.
    pub retry: RetryDefaults,
    /// Secret for the `chime-signature` header; no signature without it.
    pub signing_secret: Option<signing::SigningSecret>,
    /// Which callback addresses may be called.
    pub addresses: AddressPolicy,
    /// How often finished records are committed.
    pub commit_interval: Duration,
    /// How long in-flight calls may finish after shutdown is asked for.
    pub shutdown_grace: Duration,
    /// Consumer-group session timeout: how soon a dead dispatcher's partitions move.
    pub session_timeout: Duration,
    /// How long a dead dispatcher's open transaction can hold back readers.
    pub transaction_timeout: Duration,
}

impl DispatcherConfig {
    pub fn new(bootstrap: &str, topic_prefix: &str) -> Self {
        DispatcherConfig {
            bootstrap: bootstrap.to_string(),
            topics: Topics::new(topic_prefix),
            group_id: format!("{topic_prefix}-dispatcher"),
            max_in_flight: 1024,
            max_in_flight_per_host: 64,
            max_in_flight_per_partition: 1000,
            request_timeout: Duration::from_secs(10),
            wait_in_place_below: Duration::from_secs(1),
            retry: RetryDefaults::default(),
            signing_secret: None,
            addresses: AddressPolicy::default(),
            commit_interval: Duration::from_millis(100),
            shutdown_grace: Duration::from_secs(10),
            session_timeout: Duration::from_secs(10),
            transaction_timeout: Duration::from_secs(10),
        }
    }
}

/// A delivery task's end.
struct Finished {
    partition: i32,
    epoch: u64,
    offset: i64,
    settled: Settled,
    /// The timer id the task held, if any (see [`Dispatcher::held`]).
    id: Option<String>,
}

type Progress = PartitionProgress<OutputRecord>;
type CommitTask = JoinHandle<(Committer, CommitBatch, anyhow::Result<()>)>;

/// The dispatcher's bookkeeping between the consumer and the delivery tasks.
struct Dispatcher {
    config: DispatcherConfig,
    consumer: StreamConsumer<GroupContext>,
    progress: HashMap<i32, Progress>,
    paused: HashSet<i32>,
    next_epoch: u64,
    /// Delivery tasks not yet finished.
    running: usize,
    /// Fires waiting for their due time, by timer id: (partition, offset,
    /// the token a revoke record cancels).
    held: HashMap<String, (i32, i64, CancellationToken)>,
}

/// Runs a dispatcher until `shutdown`: then it stops taking records, lets
/// in-flight calls finish for up to [`DispatcherConfig::shutdown_grace`],
/// commits, and leaves the group.
pub async fn serve(config: DispatcherConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let consumer: StreamConsumer<GroupContext> = chime_kafka::group_member_config(
        &config.bootstrap,
        "chime-dispatcher",
        &config.group_id,
        config.session_timeout,
    )
    // Offsets are committed only in the dispatcher's transactions.
    .set("enable.auto.commit", "false")
    .set("enable.auto.offset.store", "false")
    .create_with_context(GroupContext::new(&config.topics.fires, "dispatcher"))?;
    consumer.subscribe(&[&config.topics.fires])?;
    let delivery = Arc::new(Delivery::new(&config)?);
    let committer = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Committer::new(&config)).await??
    };
    let mut d = Dispatcher {
        config,
        consumer,
        progress: HashMap::new(),
        paused: HashSet::new(),
        next_epoch: 0,
        running: 0,
        held: HashMap::new(),
    };
    // Waits (due time, backoff, slots) end at shutdown; calls made do not.
    let abandon = CancellationToken::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
    let mut committer = Some(committer);
    let mut commit_task: Option<CommitTask> = None;
    let mut commit_tick = tokio::time::interval(d.config.commit_interval);
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(group = %d.config.group_id, "dispatcher started");

    loop {
        d.forget_revoked();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(done) = done_rx.recv() => d.finished(done),
            joined = async { commit_task.as_mut().expect("guarded").await }, if commit_task.is_some() => {
                commit_task = None;
                committer = Some(d.commit_done(joined)?);
            }
            _ = commit_tick.tick(), if committer.is_some() => {
                if let Some(batch) = d.next_batch() {
                    let mut c = committer.take().expect("guarded");
                    commit_task = Some(tokio::task::spawn_blocking(move || {
                        let result = c.commit(&batch);
                        (c, batch, result)
                    }));
                }
            }
            msg = d.consumer.recv() => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        continue;
                    }
                };
                let fire = FireRecord::from_message(&msg);
                drop(msg);
                let (partition, offset) = (fire.partition, fire.offset);
                let epoch = d.start(partition, offset);
                if let Some(id) = &fire.revokes {
                    // Same key, so it follows the fire it revokes; a fire
                    // already being called is not stopped.
                    if let Some((_, _, token)) = d.held.get(id) {
                        token.cancel();
                    }
                    d.finished(Finished { partition, epoch, offset, settled: Settled::Done(None), id: None });
                    continue;
                }
                let revoked = CancellationToken::new();
                let id = fire.timer.as_ref().ok().map(|spec| spec.id.clone());
                if let Some(id) = &id {
                    d.held.insert(id.clone(), (partition, offset, revoked.clone()));
                }
                let delivery = delivery.clone();
                let done_tx = done_tx.clone();
                let abandon = abandon.clone();
                tokio::spawn(async move {
                    let settled = delivery.deliver(fire, &abandon, &revoked).await;
                    let _ = done_tx.send(Finished { partition, epoch, offset, settled, id });
                });
            }
        }
    }

    // Shutdown: take no more records; let calls made finish up to the grace.
    abandon.cancel();
    let grace_end = tokio::time::Instant::now() + d.config.shutdown_grace;
    while d.running > 0 {
        tokio::select! {
            Some(done) = done_rx.recv() => d.finished(done),
            _ = tokio::time::sleep_until(grace_end) => {
                tracing::warn!(in_flight = d.running, "shutdown grace over; the rest is re-delivered");
                break;
            }
        }
    }
    if let Some(task) = commit_task.take() {
        committer = Some(d.commit_done(task.await)?);
    }
    d.forget_revoked();
    if let (Some(mut c), Some(batch)) = (committer, d.next_batch()) {
        let (_, batch, result) = tokio::task::spawn_blocking(move || {
            let result = c.commit(&batch);
            (c, batch, result)
        })
        .await?;
        match result {
            Ok(()) => tracing::info!(partitions = batch.offsets.len(), "final commit"),
            Err(e) => {
                tracing::warn!(error = %e, "final commit failed; uncommitted fires are re-delivered")
            }
        }
    }
    d.consumer.unsubscribe();
    tracing::info!("dispatcher stopped");
    Ok(())
}

impl Dispatcher {
    /// Drops the state of partitions given away: their uncommitted records
    /// are re-delivered by the next owner.
    fn forget_revoked(&mut self) {
        for event in self.consumer.context().take_events() {
            if let GroupEvent::Revoked(parts) = event {
                for p in parts {
                    self.progress.remove(&p);
                    self.paused.remove(&p);
                }
            }
        }
    }

    /// A record was taken; returns its partition's epoch.
    fn start(&mut self, partition: i32, offset: i64) -> u64 {
        self.running += 1;
        let next_epoch = &mut self.next_epoch;
        let track = self.progress.entry(partition).or_insert_with(|| {
            *next_epoch += 1;
            PartitionProgress::new(*next_epoch)
        });
        track.start(offset);
        let (epoch, full) = (
            track.epoch,
            track.in_flight() >= self.config.max_in_flight_per_partition,
        );
        if full && self.paused.insert(partition) {
            self.pause_or_resume(partition, true);
        }
        epoch
    }

    fn finished(&mut self, done: Finished) {
        self.running -= 1;
        if let Some(id) = &done.id {
            if self
                .held
                .get(id)
                .is_some_and(|(p, o, _)| (*p, *o) == (done.partition, done.offset))
            {
                self.held.remove(id);
            }
        }
        let Settled::Done(output) = done.settled else {
            return;
        };
        let Some(track) = self.progress.get_mut(&done.partition) else {
            return;
        };
        if track.epoch != done.epoch || !track.finish(done.offset, output) {
            return;
        }
        let has_room = track.in_flight() < self.config.max_in_flight_per_partition;
        if has_room && self.paused.remove(&done.partition) {
            self.pause_or_resume(done.partition, false);
        }
    }

    fn pause_or_resume(&self, partition: i32, pause: bool) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.config.topics.fires, partition);
        let result = if pause {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        if let Err(e) = result {
            tracing::warn!(partition, pause, error = %e, "pause/resume failed");
        }
    }

    /// The next transaction: every partition whose commit point moved, with
    /// the outputs of the records it passes. None if nothing moved.
    fn next_batch(&mut self) -> Option<CommitBatch> {
        let group = self.consumer.group_metadata()?;
        let mut batch = CommitBatch {
            offsets: Vec::new(),
            outputs: Vec::new(),
            group,
        };
        for (&p, track) in self.progress.iter_mut() {
            if let Some(point) = track.commit_point() {
                batch.offsets.push((p, point));
                batch.outputs.push(PartitionOutputs {
                    partition: p,
                    epoch: track.epoch,
                    records: track.take_outputs_before(point),
                });
            }
        }
        (!batch.is_empty()).then_some(batch)
    }

    /// A transaction ended: record the new commit points, or put its outputs
    /// back for the next one.
    fn commit_done(
        &mut self,
        joined: Result<(Committer, CommitBatch, anyhow::Result<()>), tokio::task::JoinError>,
    ) -> anyhow::Result<Committer> {
        let (committer, batch, result) = joined?;
        match result {
            Ok(()) => {
                for (p, point) in batch.offsets {
                    if let Some(track) = self.progress.get_mut(&p) {
                        track.committed(point);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "commit failed; retrying with the next batch");
                for outputs in batch.outputs {
                    match self.progress.get_mut(&outputs.partition) {
                        Some(track) if track.epoch == outputs.epoch => {
                            track.restore_outputs(outputs.records)
                        }
                        // Given away meanwhile: the next owner settles them anew.
                        _ => {}
                    }
                }
            }
        }
        Ok(committer)
    }
}
