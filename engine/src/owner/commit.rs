//! The commit phase: apply the inbox and fire what is due, in memory under
//! the status lock; then, outside it, one transaction carrying every
//! partition's outputs and input offset. A failure leaves the outputs with
//! their partitions for the next transaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use chime_kafka::TxnError;
use chime_wire::time::now_ms;

use super::{
    Committed, Owner, FENCED_LIMIT, FENCED_WINDOW, KAFKA_TIMEOUT, RETRY_BACKOFF, RETRY_BACKOFF_MAX,
    STALL_BACKOFF, STALL_BACKOFF_MAX,
};
use crate::output::Output;

impl Owner {
    /// Phase 2: apply the inbox and fire what is due, in memory; then one
    /// transaction with every partition's outputs and offsets.
    pub(super) fn commit(&mut self) -> anyhow::Result<Committed> {
        let now = now_ms();
        let lead = self.config.lead.as_millis() as u64;
        let source = &self.config.topics.timers;
        let mut batch: Vec<(i32, Vec<Output>, Option<i64>)> = Vec::new();
        let mut fired = 0usize;
        {
            let mut owned = self.status.lock();
            for rec in std::mem::take(&mut self.inbox) {
                match owned.live.get_mut(&rec.partition) {
                    Some(state) => state.apply(&rec, now, source),
                    None if self.rebuilding.contains_key(&rec.partition) => self.held.push(rec),
                    None => {} // revoked while waiting in the inbox
                }
            }
            for (p, end) in &self.end_of_input {
                if let Some(state) = owned.live.get_mut(p) {
                    state.input_end = Some(*end);
                }
            }
            let stalled_now = Instant::now();
            for (&p, state) in owned.live.iter_mut() {
                state.finished.expire(now);
                if self
                    .stalled
                    .get(&p)
                    .is_some_and(|(until, _)| *until > stalled_now)
                {
                    continue; // sits out; its due timers wait with it
                }
                fired += state.fire_due(now, lead, &mut self.expired);
                let moved = state.next_offset.is_some()
                    && state.next_offset != self.committed.get(&p).copied();
                if !state.outputs.is_empty() || moved {
                    batch.push((p, std::mem::take(&mut state.outputs), state.next_offset));
                }
            }
        }
        if batch.is_empty() {
            return Ok(Committed::Nothing);
        }
        // Status readers may see the new state from here; the transaction
        // below makes it durable, or its outputs wait for the next one.
        let started = Instant::now();
        let result = self.send_batch(&batch);
        self.last_commit = Instant::now();
        match result {
            Ok(()) => {
                metrics::histogram!("chime_engine_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                for (p, _, next) in &batch {
                    if let Some(next) = next {
                        self.committed.insert(*p, *next);
                    }
                    if let Some((_, backoff)) = self.stalled.get_mut(p) {
                        *backoff = STALL_BACKOFF; // delivered again
                    }
                }
                self.stalled
                    .retain(|_, (until, _)| *until > self.last_commit);
                self.retry_backoff = Duration::ZERO;
                tracing::debug!(
                    partitions = batch.len(),
                    fired,
                    commit_ms = started.elapsed().as_millis() as u64,
                    "transaction committed"
                );
                Ok(Committed::Done)
            }
            Err(e) => {
                let mut owned = self.status.lock();
                for (p, outputs, _) in batch {
                    // Nothing ran between taking and now: put back exactly.
                    if let Some(state) = owned.live.get_mut(&p) {
                        state.outputs = outputs;
                    }
                }
                drop(owned);
                match e {
                    TxnError::Fenced(e) => {
                        // Fenced: by the group (this engine was expelled, e.g.
                        // paused past its session timeout: it rejoins and goes
                        // on with a new producer), or by another process with
                        // this instance id (they would fence each other in
                        // turn: after a few times in a row, stop).
                        let now = Instant::now();
                        self.fenced
                            .retain(|at| now.duration_since(*at) < FENCED_WINDOW);
                        self.fenced.push(now);
                        if self.fenced.len() >= FENCED_LIMIT {
                            return Err(anyhow::anyhow!(
                                "fenced {} times within {FENCED_WINDOW:?} ({e}): another engine \
                                 runs with instance id {:?}; instance ids must be unique",
                                self.fenced.len(),
                                self.config.instance_id
                            ));
                        }
                        tracing::warn!(error = %e, "fenced; a new producer takes over");
                        self.retry_backoff = RETRY_BACKOFF_MAX;
                        Ok(Committed::Failed)
                    }
                    TxnError::Stalled { tags, waited } => {
                        for p in tags {
                            let backoff = self
                                .stalled
                                .get(&p)
                                .map_or(STALL_BACKOFF, |(_, b)| (*b * 2).min(STALL_BACKOFF_MAX));
                            tracing::warn!(partition = p, ?waited, sit_out = ?backoff,
                                "records not delivered (no leader?); the partition sits out");
                            self.stalled
                                .insert(p, (self.last_commit + backoff, backoff));
                        }
                        Ok(Committed::Failed)
                    }
                    e @ (TxnError::Aborted(_) | TxnError::Hung { .. }) => {
                        self.retry_backoff =
                            (self.retry_backoff * 2).clamp(RETRY_BACKOFF, RETRY_BACKOFF_MAX);
                        tracing::warn!(error = %e, retry_in = ?self.retry_backoff,
                            "transaction aborted; its outputs go with the next");
                        Ok(Committed::Failed)
                    }
                }
            }
        }
    }

    /// Sends `batch` and commits it, all or nothing. Everything that can fail
    /// outside the transaction is settled before its first record is sent,
    /// so a failure never leaves records in an open transaction (the next
    /// one would carry them a second time).
    pub(super) fn send_batch(
        &mut self,
        batch: &[(i32, Vec<Output>, Option<i64>)],
    ) -> Result<(), TxnError> {
        // No membership (its session just expired): nothing may be
        // committed; the revocation comes with the next poll.
        let group = chime_kafka::group::commit_metadata(&self.consumer).ok_or(
            TxnError::Aborted(KafkaError::Global(RDKafkaErrorCode::State)),
        )?;
        let topic = &self.config.topics.timers;
        let mut offsets = TopicPartitionList::new();
        for (p, _, next) in batch {
            let next = match next {
                Some(next) => *next,
                // Fires without any input applied and no committed offset:
                // commit the start of the partition, which is where it stands.
                None => {
                    self.consumer
                        .fetch_watermarks(topic, *p, KAFKA_TIMEOUT)
                        .map_err(TxnError::Aborted)?
                        .0
                }
            };
            offsets
                .add_partition_offset(topic, *p, Offset::Offset(next))
                .map_err(TxnError::Aborted)?;
        }
        for (p, outputs, _) in batch {
            for output in outputs {
                output.send(&mut self.txn, &self.config.topics, *p)?;
            }
        }
        self.txn.commit(&offsets, &Arc::new(group))
    }
}
