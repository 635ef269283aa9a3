//! Transactional offset commits and group membership
//! (`chime_kafka::group::commit_metadata`): why a chime role commits only
//! while it holds a member id and generation.
//!
//! KIP-447 fences an owner that lost its partitions by the member id and
//! generation its commit carries. The broker takes a commit that names no
//! member (generation −1) from anyone, whoever owns the partitions; and
//! librdkafka hands out exactly such metadata from the moment it learns its
//! session expired until `poll` reports the loss. An engine committing in
//! that gap would commit fires that another engine may already own.

mod common;

use std::time::{Duration, Instant};

use chime_kafka::group::commit_metadata;
use chime_kafka::Rebalance;
use chime_wire::Topics;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// A member of `group` subscribed to `topic`, polled until it owns a partition.
fn joined_member(bootstrap: &str, group: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = chime_kafka::group_member_config(
        bootstrap,
        "fencing-test",
        group,
        Duration::from_secs(30),
        Rebalance::Eager,
    )
    .create()
    .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer.assignment().expect("assignment").count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the consumer never joined its group"
        );
        let _ = consumer.poll(Duration::from_millis(50));
    }
    consumer
}

/// A consumer configured for `group` that never joins it.
fn outsider(bootstrap: &str, group: &str) -> BaseConsumer {
    chime_kafka::consumer_config(bootstrap, "fencing-outsider", group)
        .create()
        .expect("consumer")
}

/// The broker, fresh topics, and a group name of their own.
async fn topics(name: &str) -> (String, Topics, String) {
    let bootstrap = common::bootstrap();
    let prefix = common::unique_prefix(name);
    let topics = Topics::new(&prefix);
    chime_kafka::admin::create_topics(&bootstrap, &topics, 1)
        .await
        .expect("create topics");
    (bootstrap, topics, format!("{prefix}.fencing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_takes_a_transactional_commit_that_names_no_member() {
    common::init_logging();
    let (bootstrap, topics, group) = topics("fencing-broker").await;
    let owner = joined_member(&bootstrap, &group, &topics.timers);

    // The metadata librdkafka gives while it holds no membership.
    let stranger = outsider(&bootstrap, &group);
    let metadata = stranger.group_metadata().expect("metadata");
    assert!(
        commit_metadata(&stranger).is_none(),
        "an outsider has no membership to commit under"
    );

    let producer: BaseProducer = chime_kafka::producer_config(&bootstrap, "fencing-producer")
        .set("transactional.id", format!("{group}-stranger"))
        .create()
        .expect("producer");
    let timeout = Duration::from_secs(10);
    producer.init_transactions(timeout).expect("init");
    producer.begin_transaction().expect("begin");
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&topics.timers, 0, Offset::Offset(7))
        .expect("offset");
    producer
        .send_offsets_to_transaction(&offsets, &metadata, timeout)
        .expect("the broker takes offsets that name no member");
    producer.commit_transaction(timeout).expect("commit");

    // Committed over the head of the member that owns the partition.
    let committed = owner
        .committed_offsets(offsets.clone(), timeout)
        .expect("committed offsets");
    let offset = committed
        .find_partition(&topics.timers, 0)
        .expect("partition 0")
        .offset();
    assert_eq!(offset, Offset::Offset(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_metadata_is_given_only_while_a_member() {
    common::init_logging();
    let (bootstrap, topics, group) = topics("fencing-member").await;

    let member = joined_member(&bootstrap, &group, &topics.timers);
    assert!(
        commit_metadata(&member).is_some(),
        "a member that owns partitions may commit"
    );

    // Leaving clears the member id at once (librdkafka sends the leave as
    // it unsubscribes): from then on nothing may be committed.
    member.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(10);
    while commit_metadata(&member).is_some() {
        assert!(
            Instant::now() < deadline,
            "commit metadata still given after leaving the group"
        );
        let _ = member.poll(Duration::from_millis(50));
    }
}
