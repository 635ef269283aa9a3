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
//! * A partition that leaves — a rebalance, or a graceful stop — is handed
//!   over ([`poller`]): its held fires come due (at most the engine's lead),
//!   its calls finish, and they are committed before the next owner starts,
//!   so neither makes a callback twice.
//! * What a call carries and how its outcome is judged: [`delivery`],
//!   [`retry`], [`signing`]; which addresses it may reach: [`address`].

pub mod address;
pub mod commit;
pub mod delivery;
pub mod hosts;
pub mod poller;
pub mod progress;
pub mod retry;
pub mod signing;

use std::collections::{HashMap, HashSet};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use chime_wire::Topics;

use crate::address::AddressPolicy;
use crate::commit::{CommitBatch, Committer, PartitionOutputs};
use crate::delivery::{Delivery, FireRecord, OutputRecord, Settled};
use crate::poller::{HandoverContext, Polled, Poller};
use crate::progress::PartitionProgress;
use crate::retry::RetryDefaults;

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
    /// How long a partition being handed over (a rebalance, or a stop) may
    /// take to finish its held fires and calls in flight; the rest is
    /// re-delivered by its next owner.
    pub shutdown_grace: Duration,
    /// Stable name of this dispatcher: part of its client and transactional
    /// ids, so a restarted dispatcher fences its predecessor's transaction.
    pub instance_id: String,
    /// Join the group as a static member (`group.instance.id` = instance id).
    pub static_membership: bool,
    /// How the group moves partitions when dispatchers come and go.
    pub rebalance: chime_kafka::Rebalance,
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
            instance_id: uuid::Uuid::new_v4().simple().to_string(),
            static_membership: false,
            rebalance: chime_kafka::Rebalance::default(),
            session_timeout: Duration::from_secs(3),
            transaction_timeout: Duration::from_secs(3),
        }
    }
}

impl DispatcherConfig {
    pub fn client_id(&self) -> String {
        format!("chime-dispatcher-{}", self.instance_id)
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

/// One assignment of a partition: its commit progress, and the token that
/// ends its waits when it is given up.
struct Track {
    progress: PartitionProgress<Vec<OutputRecord>>,
    abandon: CancellationToken,
}

/// Partitions being handed over: answered once they are idle and committed.
struct Handover {
    /// Each partition, with the epoch of its track when the handover began
    /// (`None`: nothing taken yet). A handover acts only on those tracks: the
    /// poller stops waiting after its patience, and a partition assigned
    /// again after that has a new track the old handover must not touch.
    partitions: Vec<(i32, Option<u64>)>,
    done: std_mpsc::SyncSender<()>,
    /// Past this, their remaining waits are abandoned.
    deadline: Instant,
    /// The waits were abandoned (once): the handover now only waits for
    /// the calls already made.
    abandoned: bool,
}

type CommitTask = JoinHandle<(Committer, CommitBatch, anyhow::Result<()>)>;

/// The dispatcher's bookkeeping between the consumer and the delivery tasks.
struct Dispatcher {
    config: DispatcherConfig,
    consumer: Arc<BaseConsumer<HandoverContext>>,
    delivery: Arc<Delivery>,
    done_tx: mpsc::UnboundedSender<Finished>,
    tracks: HashMap<i32, Track>,
    paused: HashSet<i32>,
    next_epoch: u64,
    /// Delivery tasks not yet finished.
    running: usize,
    /// Fires waiting for their due time, by timer id: (partition, offset,
    /// the token a revoke record cancels).
    held: HashMap<String, (i32, i64, CancellationToken)>,
    handovers: Vec<Handover>,
    committer: Option<Committer>,
    commit_task: Option<CommitTask>,
    /// Handovers whose partitions were idle when the running commit began:
    /// they are answered when it ends.
    committing_handovers: Vec<Handover>,
}

/// Runs a dispatcher until `shutdown`: then it stops taking records, hands
/// every partition over (held fires called when due, calls in flight
/// finished, all committed) within [`DispatcherConfig::shutdown_grace`], and
/// leaves the group.
pub async fn serve(config: DispatcherConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let delivery = Arc::new(Delivery::new(&config)?);
    let committer = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Committer::new(&config)).await??
    };
    let (poller, mut polled) = Poller::start(&config)?;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
    let mut d = Dispatcher {
        consumer: poller.consumer.clone(),
        delivery,
        done_tx,
        tracks: HashMap::new(),
        paused: HashSet::new(),
        next_epoch: 0,
        running: 0,
        held: HashMap::new(),
        handovers: Vec::new(),
        committer: Some(committer),
        commit_task: None,
        committing_handovers: Vec::new(),
        config,
    };
    let mut commit_tick = tokio::time::interval(d.config.commit_interval);
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    tracing::info!(group = %d.config.group_id, "dispatcher started");

    loop {
        let next_deadline = d
            .handovers
            .iter()
            .filter(|h| !h.abandoned)
            .map(|h| h.deadline)
            .min();
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !stopping => {
                // The poller leaves the group: every partition is handed over.
                stopping = true;
                poller.stop();
            }
            Some(done) = done_rx.recv() => d.finished(done),
            joined = async { d.commit_task.as_mut().expect("guarded").await }, if d.commit_task.is_some() => {
                d.commit_task = None;
                d.commit_done(joined)?;
            }
            _ = commit_tick.tick(), if d.commit_task.is_none() => d.start_commit(),
            event = polled.recv() => match event {
                Some(Polled::Record(fire)) => d.start(*fire),
                Some(Polled::Assigned(partitions)) => d.assigned(&partitions),
                Some(Polled::Revoking { partitions, done }) => d.begin_handover(partitions, done),
                Some(Polled::Stopped) | None => break,
                Some(Polled::Failed(why)) => anyhow::bail!("dispatcher {why}"),
            },
            _ = tokio::time::sleep_until(next_deadline.unwrap_or_else(Instant::now)), if next_deadline.is_some() => {
                d.abandon_overdue();
            }
        }
        d.advance_handovers();
    }
    // Left the group: every handover was answered (or timed out).
    if let Some(task) = d.commit_task.take() {
        d.commit_done(task.await)?;
    }
    drop(poller);
    tracing::info!("dispatcher stopped");
    Ok(())
}

/// The track a handover covers: the partition's, if it is still of the
/// epoch the handover began with.
fn track_of<'a>(
    tracks: &'a HashMap<i32, Track>,
    (p, epoch): &(i32, Option<u64>),
) -> Option<&'a Track> {
    tracks.get(p).filter(|t| Some(t.progress.epoch) == *epoch)
}

impl Dispatcher {
    /// A record was taken: deliver it (or act on a revoke).
    fn start(&mut self, fire: FireRecord) {
        let (partition, offset) = (fire.partition, fire.offset);
        let epoch = self.track(partition, offset);
        if let Some(id) = &fire.revokes {
            // Same key, so it follows the fire it revokes; a fire already
            // being called is not stopped.
            if let Some((_, _, token)) = self.held.get(id) {
                token.cancel();
            }
            self.finished(Finished {
                partition,
                epoch,
                offset,
                settled: Settled::Done(Vec::new()),
                id: None,
            });
            return;
        }
        let revoked = CancellationToken::new();
        let id = fire.timer.as_ref().ok().map(|spec| spec.id.clone());
        if let Some(id) = &id {
            self.held
                .insert(id.clone(), (partition, offset, revoked.clone()));
        }
        let abandon = self.tracks[&partition].abandon.clone();
        let delivery = self.delivery.clone();
        let done_tx = self.done_tx.clone();
        tokio::spawn(async move {
            let settled = delivery.deliver(fire, &abandon, &revoked).await;
            let _ = done_tx.send(Finished {
                partition,
                epoch,
                offset,
                settled,
                id,
            });
        });
    }

    /// Records `offset` as taken; returns its partition's epoch.
    fn track(&mut self, partition: i32, offset: i64) -> u64 {
        self.running += 1;
        let next_epoch = &mut self.next_epoch;
        let track = self.tracks.entry(partition).or_insert_with(|| {
            *next_epoch += 1;
            Track {
                progress: PartitionProgress::new(*next_epoch),
                abandon: CancellationToken::new(),
            }
        });
        track.progress.start(offset);
        let (epoch, full) = (
            track.progress.epoch,
            track.progress.in_flight() >= self.config.max_in_flight_per_partition,
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
        let Some(track) = self.tracks.get_mut(&done.partition) else {
            return;
        };
        if track.progress.epoch != done.epoch {
            return;
        }
        let finished = match done.settled {
            Settled::Done(outputs) => track
                .progress
                .finish(done.offset, (!outputs.is_empty()).then_some(outputs)),
            // Not delivered: the commit point stays before it.
            Settled::Abandoned => track.progress.abandon(done.offset),
        };
        let has_room = track.progress.in_flight() < self.config.max_in_flight_per_partition;
        if finished && has_room && self.paused.remove(&done.partition) {
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

    /// `partitions` are being revoked: wait for their calls, then commit.
    fn begin_handover(&mut self, partitions: Vec<i32>, done: std_mpsc::SyncSender<()>) {
        let partitions: Vec<(i32, Option<u64>)> = partitions
            .into_iter()
            .map(|p| (p, self.tracks.get(&p).map(|t| t.progress.epoch)))
            .collect();
        let waiting: usize = partitions
            .iter()
            .filter_map(|p| track_of(&self.tracks, p))
            .map(|t| t.progress.in_flight())
            .sum();
        tracing::info!(partitions = ?partitions.iter().map(|p| p.0).collect::<Vec<_>>(), waiting,
            "handover begins: waiting for the calls taken (held or in flight)");
        self.handovers.push(Handover {
            partitions,
            done,
            deadline: Instant::now() + self.config.shutdown_grace,
            abandoned: false,
        });
    }

    /// Handovers past their deadline give up their partitions' waits (the
    /// calls already made still finish).
    fn abandon_overdue(&mut self) {
        let now = Instant::now();
        for h in self
            .handovers
            .iter_mut()
            .filter(|h| h.deadline <= now && !h.abandoned)
        {
            // Once: until its calls finish, the deadline must not wake the
            // loop again (it would spin, logging this for every turn).
            h.abandoned = true;
            for p in &h.partitions {
                if let Some(track) = track_of(&self.tracks, p) {
                    tracing::warn!(partition = p.0, in_flight = track.progress.in_flight(),
                        "handover grace over; what is still waiting is re-delivered by the next owner");
                    track.abandon.cancel();
                }
            }
        }
    }

    /// Starts a commit for handovers whose partitions are idle, if none runs.
    fn advance_handovers(&mut self) {
        if self.commit_task.is_some() || self.handovers.is_empty() {
            return;
        }
        let idle = |d: &Dispatcher, h: &Handover| {
            h.partitions
                .iter()
                .all(|p| track_of(&d.tracks, p).is_none_or(|t| t.progress.in_flight() == 0))
        };
        let (ready, waiting): (Vec<Handover>, Vec<Handover>) = std::mem::take(&mut self.handovers)
            .into_iter()
            .partition(|h| idle(self, h));
        self.handovers = waiting;
        if ready.is_empty() {
            return;
        }
        self.committing_handovers = ready;
        self.start_commit();
        if self.commit_task.is_none() {
            self.finish_handovers(); // nothing to commit
        }
    }

    /// Hands the partitions of committed handovers on: their state goes,
    /// and librdkafka may let them go.
    fn finish_handovers(&mut self) {
        for h in std::mem::take(&mut self.committing_handovers) {
            for p in &h.partitions {
                if track_of(&self.tracks, p).is_some() {
                    self.tracks.remove(&p.0);
                    self.paused.remove(&p.0);
                }
            }
            let _ = h.done.send(());
        }
    }

    /// `partitions` were assigned. A track still here from an earlier
    /// assignment belongs to a handover the poller stopped waiting for (past
    /// its patience): it goes, so the new assignment starts clean — its
    /// records, read again from the committed offset, get a new epoch and
    /// waits nothing has abandoned, and the old calls' ends are ignored.
    /// Reusing the old track lost callbacks: its waits were already
    /// abandoned, and when its handover ended it removed the new
    /// assignment's progress, so a later commit skipped what was abandoned.
    fn assigned(&mut self, partitions: &[i32]) {
        for &p in partitions {
            if let Some(old) = self.tracks.remove(&p) {
                tracing::warn!(
                    partition = p,
                    in_flight = old.progress.in_flight(),
                    "partition assigned again before its handover ended; its calls in flight are re-delivered"
                );
                old.abandon.cancel();
            }
            if self.paused.remove(&p) {
                self.pause_or_resume(p, false);
            }
        }
    }

    /// Starts the next transaction: every partition whose commit point
    /// moved, with the outputs of the records it passes. Nothing if none moved.
    fn start_commit(&mut self) {
        let Some(mut committer) = self.committer.take() else {
            return;
        };
        let Some(batch) = self.next_batch() else {
            self.committer = Some(committer);
            return;
        };
        self.commit_task = Some(tokio::task::spawn_blocking(move || {
            let result = committer.commit(&batch);
            (committer, batch, result)
        }));
    }

    fn next_batch(&mut self) -> Option<CommitBatch> {
        let group = Arc::new(chime_kafka::group::commit_metadata(&self.consumer)?);
        let mut batch = CommitBatch {
            offsets: Vec::new(),
            outputs: Vec::new(),
            group,
        };
        for (&p, track) in self.tracks.iter_mut() {
            if let Some(point) = track.progress.commit_point() {
                batch.offsets.push((p, point));
                batch.outputs.push(PartitionOutputs {
                    partition: p,
                    epoch: track.progress.epoch,
                    records: track.progress.take_outputs_before(point),
                });
            }
        }
        (!batch.is_empty()).then_some(batch)
    }

    /// A transaction ended: record the new commit points, or put its outputs
    /// back for the next one; then answer the handovers it carried.
    fn commit_done(
        &mut self,
        joined: Result<(Committer, CommitBatch, anyhow::Result<()>), tokio::task::JoinError>,
    ) -> anyhow::Result<()> {
        let (committer, batch, result) = joined?;
        self.committer = Some(committer);
        match result {
            Ok(()) => {
                // `offsets` and `outputs` are pushed together, a pair per partition.
                for ((p, point), outputs) in batch.offsets.iter().zip(&batch.outputs) {
                    match self.tracks.get_mut(p) {
                        Some(track) if track.progress.epoch == outputs.epoch => {
                            track.progress.committed(*point)
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "commit failed; retrying with the next batch");
                for outputs in batch.outputs {
                    match self.tracks.get_mut(&outputs.partition) {
                        Some(track) if track.progress.epoch == outputs.epoch => {
                            track.progress.restore_outputs(outputs.records)
                        }
                        // Given away meanwhile: the next owner settles them anew.
                        _ => {}
                    }
                }
            }
        }
        self.finish_handovers();
        Ok(())
    }
}
