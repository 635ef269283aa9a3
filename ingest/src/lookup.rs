//! Status by id, answered by the owner: a timer's partition is murmur2 of its
//! id; the engine owning that partition is found in the engines' consumer
//! group (each member advertises its status address in its `client.id`, and
//! the group description carries each member's assignment), then asked over
//! HTTP. What the group said is cached until it is found wrong: a partition
//! with no known owner, an owner that does not answer or no longer owns it.
//! An engine in this process (`chime all`) is asked first, in-process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use serde::de::DeserializeOwned;

use chime_wire::partition::partition_for_key;
use chime_wire::status::{advertised_address, list_path, schedule_path, timer_path};
use chime_wire::{ListAnswer, ListKind, ListQuery, ScheduleStatus, StatusSource, TimerStatus};

use crate::error::ApiError;
use crate::IngestConfig;

const KAFKA_TIMEOUT: Duration = Duration::from_secs(2);
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for an owner to apply the input written before a question.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);
const SETTLE_POLL: Duration = Duration::from_millis(3);

pub struct TimerLookup {
    local: Option<Arc<dyn StatusSource>>,
    client: Arc<BaseConsumer>,
    timers_topic: String,
    engine_group: String,
    partitions: Mutex<Option<i32>>,
    /// Partition → status address of its owner, as the group last said.
    owners: Mutex<Option<HashMap<i32, String>>>,
    http: reqwest::Client,
}

impl TimerLookup {
    pub fn new(
        config: &IngestConfig,
        local: Option<Arc<dyn StatusSource>>,
    ) -> anyhow::Result<Self> {
        let client: BaseConsumer =
            chime_kafka::client_config(&config.bootstrap, "chime-ingest-lookup")
                // The end of a partition is then its last stable offset: the
                // end of what engines can read.
                .set("isolation.level", "read_committed")
                .create()?;
        Ok(TimerLookup {
            local,
            client: Arc::new(client),
            timers_topic: config.topics.timers.clone(),
            engine_group: config.engine_group.clone(),
            partitions: Mutex::new(None),
            owners: Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(ASK_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
        })
    }

    /// The engine-side state of `id`: `Pending`, `Fired`, `Cancelled` or
    /// `Unknown`; 503 while its partition is loading or its owner cannot be
    /// found. `Unknown` only once the owner has applied every input record
    /// written before the question (read-your-writes: a timer whose create
    /// was acknowledged is never reported unknown), waiting up to
    /// [`SETTLE_TIMEOUT`] for it.
    pub async fn status(&self, id: &str) -> Result<TimerStatus, ApiError> {
        let partition = self.partition_of(id).await?;
        let ask = || self.status_in(partition, id);
        self.settled(partition, ask, |a| match a {
            TimerStatus::Unknown { applied_through } => Some(*applied_through),
            _ => None,
        })
        .await
    }

    /// The engine-side state of `id` as its owner knows it right now, even
    /// if input written just before is not applied yet.
    pub async fn status_now(&self, id: &str) -> Result<TimerStatus, ApiError> {
        let partition = self.partition_of(id).await?;
        self.status_in(partition, id).await
    }

    async fn status_in(&self, partition: i32, id: &str) -> Result<TimerStatus, ApiError> {
        self.ask_owner(partition, &timer_path(partition, id), |local| {
            local.timer(partition, id)
        })
        .await
    }

    /// The engine-side state of schedule `id` (503 as for [`Self::status`];
    /// `Unknown` only once the owner has caught up, as there).
    pub async fn schedule(&self, id: &str) -> Result<ScheduleStatus, ApiError> {
        let partition = self.partition_of(id).await?;
        let path = schedule_path(partition, id);
        let ask = || self.ask_owner(partition, &path, |local| local.schedule(partition, id));
        self.settled(partition, ask, |a| match a {
            ScheduleStatus::Unknown { applied_through } => Some(*applied_through),
            _ => None,
        })
        .await
    }

    /// `ask`'s answer, asked again while it is "unknown" as of an input
    /// offset (`unknown_as_of`) below the partition's end as of now, for up
    /// to [`SETTLE_TIMEOUT`]: read-your-writes.
    async fn settled<T, F>(
        &self,
        partition: i32,
        ask: impl Fn() -> F,
        unknown_as_of: impl Fn(&T) -> Option<Option<i64>>,
    ) -> Result<T, ApiError>
    where
        F: std::future::Future<Output = Result<T, ApiError>>,
    {
        let mut answer = ask().await?;
        let Some(applied) = unknown_as_of(&answer) else {
            return Ok(answer);
        };
        let Some(end) = self.input_end(partition).await else {
            return Ok(answer); // cannot tell: the engine's answer stands
        };
        let started = Instant::now();
        let mut applied = applied.unwrap_or(0);
        while applied < end && started.elapsed() < SETTLE_TIMEOUT {
            tokio::time::sleep(SETTLE_POLL).await;
            answer = ask().await?;
            match unknown_as_of(&answer) {
                Some(a) => applied = a.unwrap_or(0),
                None => return Ok(answer),
            }
        }
        Ok(answer)
    }

    /// The end of partition `partition` of the input (its last stable offset).
    async fn input_end(&self, partition: i32) -> Option<i64> {
        let client = self.client.clone();
        let topic = self.timers_topic.clone();
        tokio::task::spawn_blocking(move || {
            client.fetch_watermarks(&topic, partition, KAFKA_TIMEOUT)
        })
        .await
        .ok()?
        .ok()
        .map(|(_, high)| high)
    }

    /// A page of `partition`'s pending timers or schedules, from its owner.
    pub async fn list(
        &self,
        partition: i32,
        kind: ListKind,
        query: &ListQuery,
    ) -> Result<ListAnswer, ApiError> {
        self.ask_owner(partition, &list_path(partition, kind, query), |local| {
            local.list(partition, kind, query)
        })
        .await
    }

    /// How many partitions the timers topic has.
    pub async fn partition_count(&self) -> Result<i32, ApiError> {
        let known = *self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        match known {
            Some(n) => Ok(n),
            None => {
                let n = self.fetch_partition_count().await?;
                *self.partitions.lock().unwrap_or_else(|e| e.into_inner()) = Some(n);
                Ok(n)
            }
        }
    }

    /// Asks the owner of `partition`: the engine in this process if it owns
    /// it, else the owner the group names, over HTTP at `path`.
    async fn ask_owner<T: OwnerAnswer + DeserializeOwned>(
        &self,
        partition: i32,
        path: &str,
        local_answer: impl Fn(&dyn StatusSource) -> T,
    ) -> Result<T, ApiError> {
        if let Some(local) = &self.local {
            let answer = local_answer(local.as_ref());
            match answer.ownership() {
                Ownership::NotOwned => {}
                Ownership::Loading => return Err(loading(partition)),
                Ownership::Owned => return Ok(answer),
            }
        }
        let mut why = String::from("no engine owns it right now (the group may be rebalancing)");
        for refresh in [false, true] {
            let Some(owner) = self.owner_of(partition, refresh).await? else {
                continue;
            };
            match self.ask::<T>(&owner, path).await {
                Ok(answer) => match answer.ownership() {
                    Ownership::Loading => return Err(loading(partition)),
                    Ownership::NotOwned => why = format!("engine {owner} no longer owns it"),
                    Ownership::Owned => return Ok(answer),
                },
                Err(e) => why = format!("its owner {owner} did not answer: {e}"),
            }
        }
        // Whatever was cached is wrong; the next question reads the group again.
        *self.owners.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Err(ApiError::unavailable(
            format!("cannot ask about partition {partition}: {why}"),
            1,
        ))
    }

    async fn ask<T: DeserializeOwned>(&self, owner: &str, path: &str) -> Result<T, String> {
        let url = format!("http://{owner}{path}");
        let response = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        response.json().await.map_err(|e| e.to_string())
    }

    async fn partition_of(&self, id: &str) -> Result<i32, ApiError> {
        let count = self.partition_count().await?;
        Ok(partition_for_key(id.as_bytes(), count))
    }

    async fn fetch_partition_count(&self) -> Result<i32, ApiError> {
        let client = self.client.clone();
        let topic = self.timers_topic.clone();
        let count = tokio::task::spawn_blocking(move || {
            let metadata = client
                .fetch_metadata(Some(&topic), KAFKA_TIMEOUT)
                .map_err(|e| e.to_string())?;
            match metadata.topics().first() {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    Ok(t.partitions().len() as i32)
                }
                _ => Err(format!("topic {topic} has no partitions")),
            }
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        count.map_err(|e| {
            ApiError::unavailable(format!("cannot read the timers topic's metadata: {e}"), 1)
        })
    }

    async fn owner_of(&self, partition: i32, refresh: bool) -> Result<Option<String>, ApiError> {
        if !refresh {
            let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(owner) = owners.as_ref().and_then(|o| o.get(&partition)) {
                return Ok(Some(owner.clone()));
            }
        }
        let owners = self.read_group().await?;
        let owner = owners.get(&partition).cloned();
        *self.owners.lock().unwrap_or_else(|e| e.into_inner()) = Some(owners);
        Ok(owner)
    }

    /// Partition → status address, from the group description.
    async fn read_group(&self) -> Result<HashMap<i32, String>, ApiError> {
        let client = self.client.clone();
        let group = self.engine_group.clone();
        let topic = self.timers_topic.clone();
        let owners = tokio::task::spawn_blocking(move || {
            let groups = client
                .fetch_group_list(Some(&group), KAFKA_TIMEOUT)
                .map_err(|e| e.to_string())?;
            let mut owners = HashMap::new();
            for g in groups.groups().iter().filter(|g| g.name() == group) {
                for member in g.members() {
                    let Some(address) = advertised_address(member.client_id()) else {
                        continue;
                    };
                    let Some(bytes) = member.assignment() else {
                        continue;
                    };
                    match assigned_partitions(bytes, &topic) {
                        Ok(parts) => {
                            for p in parts {
                                owners.insert(p, address.to_string());
                            }
                        }
                        Err(e) => tracing::warn!(
                            member = member.id(),
                            error = %e,
                            "cannot read an engine's assignment"
                        ),
                    }
                }
            }
            Ok::<_, String>(owners)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        owners.map_err(|e| ApiError::unavailable(format!("cannot read the engines' group: {e}"), 1))
    }
}

fn loading(partition: i32) -> ApiError {
    ApiError::unavailable(
        format!("partition {partition} is being loaded by its engine; retry shortly"),
        1,
    )
}

/// Whether an engine's answer comes from the partition's owner.
enum Ownership {
    NotOwned,
    Loading,
    Owned,
}

/// The answers of the status protocol, which all say whether the engine
/// owns the partition.
trait OwnerAnswer {
    fn ownership(&self) -> Ownership;
}

impl OwnerAnswer for TimerStatus {
    fn ownership(&self) -> Ownership {
        match self {
            TimerStatus::NotOwned => Ownership::NotOwned,
            TimerStatus::Loading => Ownership::Loading,
            _ => Ownership::Owned,
        }
    }
}

impl OwnerAnswer for ScheduleStatus {
    fn ownership(&self) -> Ownership {
        match self {
            ScheduleStatus::NotOwned => Ownership::NotOwned,
            ScheduleStatus::Loading => Ownership::Loading,
            _ => Ownership::Owned,
        }
    }
}

impl OwnerAnswer for ListAnswer {
    fn ownership(&self) -> Ownership {
        match self {
            ListAnswer::NotOwned => Ownership::NotOwned,
            ListAnswer::Loading => Ownership::Loading,
            ListAnswer::Listed { .. } => Ownership::Owned,
        }
    }
}

/// The partitions of `topic` in a classic consumer-protocol assignment:
/// `i16 version, [string topic, [i32 partition]], bytes user_data` (the
/// layout is the same in every version, 0 to 3).
pub fn assigned_partitions(bytes: &[u8], topic: &str) -> Result<Vec<i32>, String> {
    let mut r = Reader { bytes, at: 0 };
    if bytes.is_empty() {
        return Ok(Vec::new()); // a member between rebalances has none
    }
    let _version = r.i16()?;
    let topics = r.i32()?;
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = r.i16()?;
        let name = r.take(len.max(0) as usize)?;
        let count = r.i32()?;
        for _ in 0..count.max(0) {
            let p = r.i32()?;
            if name == topic.as_bytes() {
                out.push(p);
            }
        }
    }
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("assignment truncated at byte {}", self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn i16(&mut self) -> Result<i16, String> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, String> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = vec![0, 1];
        b.extend((topics.len() as i32).to_be_bytes());
        for (name, parts) in topics {
            b.extend((name.len() as i16).to_be_bytes());
            b.extend(name.as_bytes());
            b.extend((parts.len() as i32).to_be_bytes());
            for p in *parts {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes()); // null user data
        b
    }

    /// An in-process engine that is loading one partition.
    struct LoadingEngine(i32);

    impl StatusSource for LoadingEngine {
        fn timer(&self, partition: i32, _: &str) -> TimerStatus {
            if partition == self.0 {
                TimerStatus::Loading
            } else {
                TimerStatus::NotOwned
            }
        }
        fn is_ready(&self) -> bool {
            false
        }
        fn publish_gauges(&self) {}
    }

    #[tokio::test]
    async fn a_loading_partition_answers_503_not_404() {
        let partition = partition_for_key(b"t-1", 3);
        let config = IngestConfig::new("127.0.0.1:9", "lookup-test");
        let lookup = TimerLookup::new(&config, Some(Arc::new(LoadingEngine(partition)))).unwrap();
        *lookup.partitions.lock().unwrap() = Some(3);
        let e = lookup.status("t-1").await.unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after, Some(1));
        assert!(e.body.error.contains("being loaded"), "{}", e.body.error);
    }

    #[test]
    fn reads_the_partitions_of_one_topic() {
        let bytes = assignment(&[("x.timers", &[0, 2]), ("other", &[1])]);
        assert_eq!(assigned_partitions(&bytes, "x.timers").unwrap(), vec![0, 2]);
        assert_eq!(assigned_partitions(&bytes, "other").unwrap(), vec![1]);
        assert!(assigned_partitions(&[], "x").unwrap().is_empty());
    }

    #[test]
    fn truncated_assignment_is_an_error_not_a_panic() {
        let bytes = assignment(&[("x.timers", &[0, 2])]);
        for cut in 1..bytes.len() - 6 {
            assert!(
                assigned_partitions(&bytes[..cut], "x.timers").is_err(),
                "cut {cut}"
            );
        }
    }
}
