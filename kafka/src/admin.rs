//! chime's topics: what a deployment wants, what the cluster has, creating
//! what is missing, and refusing to run on a layout that would lose or
//! misroute timers.
//!
//! What chime relies on, and so checks at every role's start:
//!
//! * every topic has the same partition count: the changelog has one
//!   partition per input partition (its owner writes it), and the fires
//!   topic is keyed by timer id, so with the same count a timer's fires land
//!   on the partition of the same number and an engine's transaction touches
//!   only its own partitions;
//! * the changelog is compacted (the rebuild reads it from the start);
//! * every topic is replicated as configured (`CHIME_REPLICATION_FACTOR`,
//!   default min(3, brokers)), with `min.insync.replicas` = RF − 1 (≥ 1) on
//!   the topics chime creates.
//!
//! Growing the partition count of a live deployment is refused: a timer's
//! partition is murmur2(id) mod the count, so growing moves ids to other
//! partitions, where a cancel would miss its timer and the new owner does not
//! know it. docs/operations.md gives the supported way to grow.

use std::fmt;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::metadata::Metadata;

use chime_wire::Topics;

use crate::client_config;

/// How long to wait for the cluster to answer an admin request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Tombstones must outlive the slowest rebuild that could still see the
/// pending record they delete.
const CHANGELOG_DELETE_RETENTION_MS: &str = "86400000";

/// What a deployment wants of its topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub partitions: i32,
    /// `None`: min(3, brokers in the cluster).
    pub replication_factor: Option<i32>,
}

/// One topic as the cluster has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicState {
    pub name: String,
    pub partitions: i32,
    /// The smallest replica count of any partition.
    pub replication_factor: i32,
    pub cleanup_policy: Option<String>,
    pub min_insync_replicas: Option<String>,
}

/// The cluster's view of a deployment's topics.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub brokers: usize,
    /// In the order timers, changelog, fires, dead-letters; `None` if missing.
    pub topics: Vec<(String, Option<TopicState>)>,
}

impl Layout {
    /// The replication factor wanted on a cluster of `brokers`.
    pub fn replication_for(&self, brokers: usize) -> i32 {
        self.replication_factor
            .unwrap_or_else(|| (brokers as i32).clamp(1, 3))
    }

    /// `min.insync.replicas` for topics chime creates: RF − 1, at least 1.
    pub fn min_insync_for(&self, brokers: usize) -> i32 {
        (self.replication_for(brokers) - 1).max(1)
    }
}

/// Reads the brokers and the state of `topics` from the cluster.
pub async fn inspect(bootstrap: &str, topics: &Topics) -> anyhow::Result<ClusterView> {
    let admin = admin_client(bootstrap)?;
    let names = names(topics);
    let metadata = fetch_metadata(bootstrap).await?;
    let opts = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let mut states = Vec::new();
    for name in names {
        let Some(topic) = metadata
            .topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
        else {
            states.push((name, None));
            continue;
        };
        let configs = admin
            .describe_configs(&[ResourceSpecifier::Topic(&name)], &opts)
            .await?;
        let config = configs.into_iter().next().and_then(|r| r.ok());
        let value = |key: &str| {
            config
                .as_ref()
                .and_then(|c| c.get(key))
                .and_then(|e| e.value.clone())
        };
        let state = TopicState {
            partitions: topic.partitions().len() as i32,
            replication_factor: topic
                .partitions()
                .iter()
                .map(|p| p.replicas().len() as i32)
                .min()
                .unwrap_or(0),
            cleanup_policy: value("cleanup.policy"),
            min_insync_replicas: value("min.insync.replicas"),
            name: name.clone(),
        };
        states.push((name, Some(state)));
    }
    Ok(ClusterView {
        brokers: metadata.brokers().len(),
        topics: states,
    })
}

/// [`ensure_topics`] with `partitions` each and the default replication
/// (min(3, brokers)): what tests and tools use.
pub async fn create_topics(
    bootstrap: &str,
    topics: &Topics,
    partitions: i32,
) -> anyhow::Result<()> {
    let layout = Layout {
        partitions,
        replication_factor: None,
    };
    ensure_topics(bootstrap, topics, layout).await
}

/// Creates whichever of chime's four topics is missing, laid out as
/// `layout` asks, after checking that the cluster can hold them; then
/// checks that all four agree with the layout.
pub async fn ensure_topics(bootstrap: &str, topics: &Topics, layout: Layout) -> anyhow::Result<()> {
    let view = inspect(bootstrap, topics).await?;
    let rf = layout.replication_for(view.brokers);
    check_replication_asked(Some(rf), view.brokers)?;
    let min_insync = layout.min_insync_for(view.brokers).to_string();
    let missing: Vec<&String> = view
        .topics
        .iter()
        .filter(|(_, state)| state.is_none())
        .map(|(name, _)| name)
        .collect();
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|name| {
            let topic = NewTopic::new(name, layout.partitions, TopicReplication::Fixed(rf))
                .set("min.insync.replicas", &min_insync);
            if **name == topics.changelog {
                topic
                    .set("cleanup.policy", "compact")
                    .set("delete.retention.ms", CHANGELOG_DELETE_RETENTION_MS)
            } else {
                topic
            }
        })
        .collect();
    if !new.is_empty() {
        let admin = admin_client(bootstrap)?;
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for result in admin.create_topics(&new, &opts).await? {
            match result {
                Ok(name) => tracing::info!(
                    topic = %name,
                    partitions = layout.partitions,
                    replication_factor = rf,
                    "created topic"
                ),
                // Created by someone else meanwhile: checked below like any.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
            }
        }
    }
    // A topic just created shows in the metadata a moment later.
    let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
    loop {
        let view = inspect(bootstrap, topics).await?;
        let problems = view.problems(topics, Some(layout));
        let settling = !new.is_empty()
            && view.topics.iter().any(|(_, s)| s.is_none())
            && std::time::Instant::now() < deadline;
        if !settling {
            anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks that `topics` exist and are laid out as chime needs; at every
/// role's start. `layout.partitions` is not compared (a role does not pick
/// the count), only that all four topics agree.
pub async fn check_topics(
    bootstrap: &str,
    topics: &Topics,
    replication_factor: Option<i32>,
) -> anyhow::Result<()> {
    let view = inspect(bootstrap, topics).await?;
    check_replication_asked(replication_factor, view.brokers)?;
    let layout = view
        .topics
        .first()
        .and_then(|(_, s)| s.as_ref())
        .map(|s| Layout {
            partitions: s.partitions,
            replication_factor,
        });
    let problems = view.problems(topics, layout);
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

impl ClusterView {
    /// Everything wrong with the topics, one line per kind of problem naming
    /// the topics, the problem and the fix. Empty when chime can run on them.
    pub fn problems(&self, topics: &Topics, layout: Option<Layout>) -> Vec<String> {
        let wanted = layout.map(|l| l.replication_for(self.brokers)).unwrap_or(1);
        if wanted as usize > self.brokers {
            // No topic can be right: say so once, not once per topic.
            return vec![too_few_brokers(wanted, self.brokers)];
        }
        let mut problems = Vec::new();
        let missing: Vec<&str> = self
            .topics
            .iter()
            .filter(|(_, s)| s.is_none())
            .map(|(n, _)| n.as_str())
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{} not exist: create chime's topics with `chime topics` (or `chime all`, \
                 which creates them)",
                topic_list(&missing, "does", "do")
            ));
        }
        let timers = self.state(&topics.timers);
        let mut under_replicated: Vec<&str> = Vec::new();
        let mut least_replicated = wanted;
        for (name, state) in &self.topics {
            let Some(state) = state else { continue };
            if let Some(layout) = layout {
                if state.partitions != layout.partitions && name == &topics.timers {
                    problems.push(growth_problem(name, state.partitions, layout.partitions));
                }
            }
            if let Some(t) = timers {
                if name != &topics.timers && state.partitions != t.partitions {
                    problems.push(format!(
                        "topic {name} has {} partitions but {} has {}: every chime topic needs \
                         the same count (the changelog holds one partition per input partition); \
                         recreate {name} with {} partitions",
                        state.partitions, t.name, t.partitions, t.partitions
                    ));
                }
            }
            if name == &topics.changelog
                && !state
                    .cleanup_policy
                    .as_deref()
                    .is_some_and(|p| p.split(',').any(|p| p.trim() == "compact"))
            {
                problems.push(format!(
                    "topic {name} is not compacted (cleanup.policy={}): the changelog must be \
                     compacted or a rebuild would read every timer ever created; set \
                     cleanup.policy=compact on it",
                    state.cleanup_policy.as_deref().unwrap_or("unknown")
                ));
            }
            if state.replication_factor < wanted {
                under_replicated.push(name);
                least_replicated = least_replicated.min(state.replication_factor);
            }
        }
        if !under_replicated.is_empty() {
            problems.push(format!(
                "{} replication factor {least_replicated}, below the {wanted} wanted \
                 (CHIME_REPLICATION_FACTOR, default min(3, brokers) = {}): one lost disk \
                 would lose its timers; raise it with kafka-reassign-partitions (see \
                 docs/operations.md), or set CHIME_REPLICATION_FACTOR={least_replicated} to \
                 accept it",
                topic_list(&under_replicated, "has", "have"),
                (self.brokers as i32).clamp(1, 3),
            ));
        }
        problems
    }

    fn state(&self, name: &str) -> Option<&TopicState> {
        self.topics
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, s)| s.as_ref())
    }

    /// What exists against what is wanted, for `chime topics`.
    pub fn table(&self, layout: Layout) -> ViewTable<'_> {
        ViewTable { view: self, layout }
    }
}

/// A replication factor asked for that no topic on this cluster can have.
fn check_replication_asked(asked: Option<i32>, brokers: usize) -> anyhow::Result<()> {
    match asked {
        Some(rf) if rf < 1 => anyhow::bail!(
            "replication factor {rf} asked (CHIME_REPLICATION_FACTOR): it must be at least 1; \
             unset CHIME_REPLICATION_FACTOR for the default, min(3, brokers)"
        ),
        Some(rf) if rf as usize > brokers => anyhow::bail!("{}", too_few_brokers(rf, brokers)),
        _ => Ok(()),
    }
}

/// "topic a has" / "topics a, b have".
fn topic_list(names: &[&str], one: &str, many: &str) -> String {
    match names {
        [name] => format!("topic {name} {one}"),
        _ => format!("topics {} {many}", names.join(", ")),
    }
}

fn too_few_brokers(wanted: i32, brokers: usize) -> String {
    format!(
        "replication factor {wanted} asked (CHIME_REPLICATION_FACTOR) but the cluster has \
         {brokers} broker(s): lower CHIME_REPLICATION_FACTOR to at most {brokers}, or add brokers"
    )
}

fn growth_problem(name: &str, has: i32, wanted: i32) -> String {
    if wanted > has {
        format!(
            "topic {name} has {has} partitions and CHIME_PARTITIONS asks for {wanted}: chime does \
             not grow a live deployment, because a timer's partition is murmur2(id) mod the count \
             and growing would move timers away from their pending state (a cancel would miss its \
             timer); run with CHIME_PARTITIONS={has}, or grow by starting a new deployment on a \
             new CHIME_TOPIC_PREFIX (docs/operations.md, \"Growing\")"
        )
    } else {
        format!(
            "topic {name} has {has} partitions and CHIME_PARTITIONS asks for {wanted}: Kafka \
             cannot shrink a topic; run with CHIME_PARTITIONS={has}"
        )
    }
}

/// A printable comparison of what exists with what is wanted.
pub struct ViewTable<'a> {
    view: &'a ClusterView,
    layout: Layout,
}

impl fmt::Display for ViewTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rf = self.layout.replication_for(self.view.brokers);
        writeln!(
            f,
            "cluster: {} broker(s); wanted: {} partitions, replication factor {rf}, min.insync.replicas {}",
            self.view.brokers,
            self.layout.partitions,
            self.layout.min_insync_for(self.view.brokers)
        )?;
        writeln!(
            f,
            "{:<40} {:>10} {:>8} {:>10} {:>14}",
            "topic", "partitions", "replicas", "min.insync", "cleanup.policy"
        )?;
        for (name, state) in &self.view.topics {
            match state {
                Some(s) => writeln!(
                    f,
                    "{:<40} {:>10} {:>8} {:>10} {:>14}",
                    name,
                    s.partitions,
                    s.replication_factor,
                    s.min_insync_replicas.as_deref().unwrap_or("?"),
                    s.cleanup_policy.as_deref().unwrap_or("?")
                )?,
                None => writeln!(f, "{name:<40} {:>10}", "missing")?,
            }
        }
        Ok(())
    }
}

fn names(topics: &Topics) -> Vec<String> {
    vec![
        topics.timers.clone(),
        topics.changelog.clone(),
        topics.fires.clone(),
        topics.dead_letters.clone(),
    ]
}

fn admin_client(bootstrap: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(client_config(bootstrap, "chime-admin").create()?)
}

/// No Kafka broker answered: the error every role and `chime topics` stop
/// with when the bootstrap servers are wrong or down.
#[derive(Debug, thiserror::Error)]
#[error(
    "no Kafka broker answered at {bootstrap} within {waited:?} ({cause}); check \
     CHIME_KAFKA_BOOTSTRAP (scripts/kafka start runs a local broker)"
)]
pub struct Unreachable {
    pub bootstrap: String,
    pub waited: Duration,
    pub cause: String,
}

/// The cluster's metadata, or a one-line error ([`Unreachable`]) when no
/// broker answers.
async fn fetch_metadata(bootstrap: &str) -> anyhow::Result<Metadata> {
    let config = client_config(bootstrap, "chime-admin");
    // librdkafka's metadata call blocks; keep it off the async threads.
    let metadata = tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config.create()?;
        client.fetch_metadata(None, ADMIN_TIMEOUT)
    })
    .await?;
    metadata.map_err(|e| {
        Unreachable {
            bootstrap: bootstrap.to_string(),
            waited: ADMIN_TIMEOUT,
            cause: e.to_string(),
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str, partitions: i32, rf: i32, cleanup: &str) -> TopicState {
        TopicState {
            name: name.into(),
            partitions,
            replication_factor: rf,
            cleanup_policy: Some(cleanup.into()),
            min_insync_replicas: Some("1".into()),
        }
    }

    fn view(brokers: usize, states: [Option<TopicState>; 4]) -> ClusterView {
        let topics = Topics::new("t");
        ClusterView {
            brokers,
            topics: names(&topics).into_iter().zip(states).collect(),
        }
    }

    fn good(rf: i32) -> [Option<TopicState>; 4] {
        [
            Some(state("t.timers", 12, rf, "delete")),
            Some(state("t.changelog", 12, rf, "compact")),
            Some(state("t.fires", 12, rf, "delete")),
            Some(state("t.dead-letters", 12, rf, "delete")),
        ]
    }

    fn layout(rf: Option<i32>) -> Option<Layout> {
        Some(Layout {
            partitions: 12,
            replication_factor: rf,
        })
    }

    #[test]
    fn replication_defaults_to_three_or_the_brokers() {
        let l = Layout {
            partitions: 1,
            replication_factor: None,
        };
        assert_eq!((l.replication_for(1), l.min_insync_for(1)), (1, 1));
        assert_eq!((l.replication_for(2), l.min_insync_for(2)), (2, 1));
        assert_eq!((l.replication_for(5), l.min_insync_for(5)), (3, 2));
    }

    #[test]
    fn a_good_layout_has_no_problems() {
        let topics = Topics::new("t");
        assert!(view(3, good(3)).problems(&topics, layout(None)).is_empty());
        assert!(view(1, good(1)).problems(&topics, layout(None)).is_empty());
    }

    #[test]
    fn each_wrong_shape_is_named_with_its_fix() {
        let topics = Topics::new("t");
        let mut states = good(3);
        states[1] = Some(state("t.changelog", 6, 3, "delete"));
        let problems = view(3, states).problems(&topics, layout(None));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("t.changelog has 6 partitions but t.timers has 12"));
        assert!(problems[1].contains("t.changelog is not compacted"));

        let problems = view(3, good(1)).problems(&topics, layout(None));
        assert_eq!(
            problems.len(),
            1,
            "one line for the four topics: {problems:?}"
        );
        assert!(problems[0].contains(
            "topics t.timers, t.changelog, t.fires, t.dead-letters have replication factor 1, \
             below the 3 wanted"
        ));
        assert!(problems[0].contains("CHIME_REPLICATION_FACTOR=1 to accept it"));

        let problems = view(3, good(3)).problems(&topics, layout(Some(5)));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("replication factor 5 asked"));
        assert!(problems[0].contains("lower CHIME_REPLICATION_FACTOR to at most 3"));
        assert!(view(3, good(1))
            .problems(&topics, layout(Some(1)))
            .is_empty());

        let grow = Some(Layout {
            partitions: 24,
            replication_factor: None,
        });
        let problems = view(3, good(3)).problems(&topics, grow);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("does not grow a live deployment"));

        let mut states = good(3);
        states[2] = None;
        let problems = view(3, states).problems(&topics, layout(None));
        assert!(
            problems[0].contains("topic t.fires does not exist"),
            "{problems:?}"
        );
        let problems = view(3, [None, None, None, None]).problems(&topics, layout(None));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0]
            .contains("topics t.timers, t.changelog, t.fires, t.dead-letters do not exist"));
    }
}
