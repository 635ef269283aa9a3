//! Removing a member id from its consumer group by hand
//! (`chime_kafka::leave`): what a member whose session expired does with the
//! id librdkafka forgot, so the coordinator need not wait out its session.

mod common;

use std::time::{Duration, Instant};

use chime_kafka::group::member_id;
use chime_kafka::leave::{leave_forgotten_member, LeaveOutcome};
use chime_kafka::Rebalance;
use chime_wire::Topics;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Member ids the group's coordinator lists for `group`.
fn listed_members(consumer: &BaseConsumer, group: &str) -> Vec<String> {
    let list = consumer
        .fetch_group_list(Some(group), Duration::from_secs(5))
        .expect("describe the group");
    list.groups()
        .iter()
        .flat_map(|g| g.members().iter().map(|m| m.id().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_id_left_by_hand_is_removed_from_its_group() {
    common::init_logging();
    let bootstrap = common::bootstrap();
    let prefix = common::unique_prefix("group-leave");
    let topics = Topics::new(&prefix);
    chime_kafka::admin::create_topics(&bootstrap, &topics, 1)
        .await
        .expect("create topics");
    let group = format!("{prefix}.leave-test");
    // A long session: only the leave can take this member out of the group
    // within the test's deadlines.
    let consumer: BaseConsumer = chime_kafka::group_member_config(
        &bootstrap,
        "leave-test",
        &group,
        Duration::from_secs(30),
        Rebalance::Eager,
    )
    .create()
    .expect("consumer");
    consumer.subscribe(&[&topics.timers]).expect("subscribe");

    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let _ = consumer.poll(Duration::from_millis(50));
        if let (Some(id), false) = (
            member_id(&consumer),
            consumer.assignment().unwrap().count() == 0,
        ) {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "the consumer never joined its group"
        );
    };
    assert!(listed_members(&consumer, &group).contains(&id));

    let outcome = leave_forgotten_member(
        &bootstrap,
        &group,
        &id,
        "leave-test",
        Duration::from_secs(5),
    )
    .expect("leave");
    assert_eq!(outcome, LeaveOutcome::Removed);
    // The coordinator removed the id at once; the consumer, not polled,
    // has not rejoined under it (it would get a new id).
    assert!(
        !listed_members(&consumer, &group).contains(&id),
        "the left member id is still listed"
    );

    let again = leave_forgotten_member(
        &bootstrap,
        &group,
        &id,
        "leave-test",
        Duration::from_secs(5),
    )
    .expect("second leave");
    assert_eq!(again, LeaveOutcome::AlreadyGone);
}

#[test]
fn a_leave_without_a_reachable_broker_says_which_it_asked() {
    // Port 1 on loopback: nothing listens there.
    let error = leave_forgotten_member(
        "127.0.0.1:1",
        "some-group",
        "some-member",
        "leave-test",
        Duration::from_secs(2),
    )
    .expect_err("no broker answers");
    let message = format!("{error:#}");
    assert!(
        message.contains("asking 127.0.0.1:1 for the coordinator"),
        "{message}"
    );
}
