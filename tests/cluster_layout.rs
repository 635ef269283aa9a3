//! Bad input against a real cluster gets a clear error and loses nothing:
//! `chime topics` and every role, started on the local three-node cluster
//! with a replication factor it cannot hold, on a broker list where nothing
//! answers, or on topics created by hand with the wrong shape, exit non-zero
//! within seconds with one line (`Error: …`) that names the topic, the
//! problem and the fix, and never start half-way (no REST listener, no
//! engine in the group, no topic created).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chime_kafka::admin::{inspect, Layout};
use chime_wire::Topics;
use common::cluster::Cluster;

/// The longest a refusing process may take before the test calls it hung:
/// generous against a loaded machine (an unreachable cluster takes the
/// admin client's 15 s).
const EXIT_WITHIN: Duration = Duration::from_secs(90);

/// How a `chime` run ended.
#[derive(Debug)]
struct Exit {
    success: bool,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Exit {
    /// The error `chime` stopped with: the `Error: …` line and any after it.
    fn error(&self) -> String {
        let lines: Vec<&str> = self.stderr.lines().collect();
        match lines.iter().rposition(|l| l.starts_with("Error: ")) {
            Some(at) => lines[at..].join("\n").trim_end().to_string(),
            None => String::new(),
        }
    }

    /// Asserts a refusal: a non-zero exit with a one-line error containing
    /// every one of `essentials`, and nothing started.
    fn assert_refused(&self, what: &str, essentials: &[&str]) {
        assert!(!self.success, "{what}: exited 0\n{self:#?}");
        let error = self.error();
        assert!(!error.is_empty(), "{what}: no `Error:` line\n{self:#?}");
        assert_eq!(
            error.lines().count(),
            1,
            "{what}: a one-line error, got:\n{error}\nstderr:\n{}",
            self.stderr
        );
        for e in essentials {
            assert!(
                error.contains(e),
                "{what}: the error should say {e:?}:\n{error}"
            );
        }
        for started in ["ingest listening", "engine started", "dispatcher started"] {
            assert!(
                !self.stderr.contains(started),
                "{what}: refused, yet it logged {started:?}:\n{}",
                self.stderr
            );
        }
        eprintln!("{what}: refused after {:?}: {error}", self.took);
    }
}

/// Runs `chime ARGS` with `CHIME_KAFKA_BOOTSTRAP=bootstrap` and `env` until
/// it exits (killed and failed after [`EXIT_WITHIN`]).
fn run_chime(bootstrap: &str, args: &[&str], env: &[(&str, &str)]) -> Exit {
    let started = Instant::now();
    let mut child = Command::new(common::processes::chime_binary())
        .args(args)
        .env("CHIME_KAFKA_BOOTSTRAP", bootstrap)
        .env_remove("CHIME_REPLICATION_FACTOR")
        .env_remove("CHIME_LOG_FORMAT")
        .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chime");
    // Read both pipes on threads so a chatty child never blocks on them.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chime") {
            break status;
        }
        if started.elapsed() > EXIT_WITHIN {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chime {args:?} did not exit within {EXIT_WITHIN:?}; stderr:\n{}",
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Exit {
        success: status.success(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        took: started.elapsed(),
    }
}

/// One `chime` invocation: its arguments and extra environment.
type Run<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);

/// Runs several `chime` invocations at once (each waits on its own).
async fn run_all(bootstrap: &str, runs: &[Run<'_>]) -> Vec<Exit> {
    let handles: Vec<_> = runs
        .iter()
        .map(|(args, env)| {
            let bootstrap = bootstrap.to_string();
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            let env: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let env: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                run_chime(&bootstrap, &args, &env)
            })
        })
        .collect();
    let mut exits = Vec::new();
    for h in handles {
        exits.push(h.await.expect("chime run"));
    }
    exits
}

/// The invocations of every role on `prefix`, REST on a port of its own.
fn roles(prefix: &str) -> Vec<(&'static str, Vec<String>)> {
    let p = |rest: &[&str]| -> Vec<String> {
        ["--topic-prefix", prefix]
            .iter()
            .chain(rest)
            .map(|s| s.to_string())
            .collect()
    };
    vec![
        ("chime topics", p(&["topics", "--partitions", "3"])),
        ("chime engine", p(&["engine"])),
        ("chime ingest", p(&["ingest", "--listen", "127.0.0.1:0"])),
        ("chime dispatcher", p(&["dispatcher"])),
        (
            "chime all",
            p(&["all", "--listen", "127.0.0.1:0", "--partitions", "3"]),
        ),
    ]
}

async fn run_roles(
    bootstrap: &str,
    prefix: &str,
    env: &[(&str, &str)],
) -> Vec<(&'static str, Exit)> {
    let roles = roles(prefix);
    let args: Vec<Vec<&str>> = roles
        .iter()
        .map(|(_, a)| a.iter().map(String::as_str).collect())
        .collect();
    let runs: Vec<Run<'_>> = args.iter().map(|a| (a.as_slice(), env)).collect();
    let exits = run_all(bootstrap, &runs).await;
    roles.iter().map(|(name, _)| *name).zip(exits).collect()
}

async fn assert_no_topics(bootstrap: &str, topics: &Topics) {
    let view = inspect(bootstrap, topics).await.expect("inspect");
    assert!(
        view.topics.iter().all(|(_, s)| s.is_none()),
        "nothing was created: {view:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_factor_larger_than_the_cluster_is_refused() {
    let cluster = Cluster::start().await;
    let bootstrap = cluster.bootstrap().to_string();
    let prefix = common::unique_prefix("rf5");
    let topics = Topics::new(&prefix);
    let env = [("CHIME_REPLICATION_FACTOR", "5")];
    // No topics yet: `chime topics` and `chime all` create nothing; the
    // roles refuse on the replication factor before missing topics.
    for (role, exit) in run_roles(&bootstrap, &prefix, &env).await {
        exit.assert_refused(
            &format!("{role} with CHIME_REPLICATION_FACTOR=5 on 3 brokers"),
            &[
                "replication factor 5",
                "3 broker(s)",
                "lower CHIME_REPLICATION_FACTOR to at most 3",
            ],
        );
    }
    assert_no_topics(&bootstrap, &topics).await;

    // On topics chime made (replication 3): still refused, the same way.
    let layout = Layout {
        partitions: 3,
        replication_factor: None,
    };
    chime_kafka::admin::ensure_topics(&bootstrap, &topics, layout)
        .await
        .expect("create the topics");
    let exit = run_chime(&bootstrap, &["--topic-prefix", &prefix, "engine"], &env);
    exit.assert_refused(
        "chime engine with CHIME_REPLICATION_FACTOR=5 on replication-3 topics",
        &[
            "replication factor 5",
            "lower CHIME_REPLICATION_FACTOR to at most 3",
        ],
    );
    cluster
        .delete_topics(&[
            &topics.timers,
            &topics.changelog,
            &topics.fires,
            &topics.dead_letters,
        ])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_list_where_nothing_answers_is_refused() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let nowhere = format!("127.0.0.1:{port}");
    let prefix = common::unique_prefix("nowhere");
    for (role, exit) in run_roles(&nowhere, &prefix, &[]).await {
        exit.assert_refused(
            &format!("{role} with CHIME_KAFKA_BOOTSTRAP={nowhere}"),
            &[
                &format!("no Kafka broker answered at {nowhere}"),
                "check CHIME_KAFKA_BOOTSTRAP",
            ],
        );
        assert!(
            exit.stdout.trim().is_empty(),
            "{role}: nothing printed but the error: {}",
            exit.stdout
        );
    }
}

/// chime's four topics made by hand with replication 3, `partitions[i]`
/// partitions each, and the changelog's `cleanup.policy`.
async fn hand_made(
    cluster: &Cluster,
    topics: &Topics,
    partitions: [i32; 4],
    replication: i32,
    changelog_policy: &str,
) {
    let names = [
        &topics.timers,
        &topics.changelog,
        &topics.fires,
        &topics.dead_letters,
    ];
    for (name, count) in names.iter().zip(partitions) {
        let nodes: Vec<Vec<common::cluster::Node>> = (0..count)
            .map(|p| {
                (0..replication)
                    .map(|r| common::cluster::NODES[((p + r) % 3) as usize])
                    .collect()
            })
            .collect();
        let policy = if *name == &topics.changelog {
            changelog_policy
        } else {
            "delete"
        };
        cluster
            .create_topic_assigned(name, &nodes, &[("cleanup.policy", policy)])
            .await;
    }
}

async fn assert_roles_refuse(cluster: &Cluster, prefix: &str, what: &str, essentials: &[&str]) {
    for (role, exit) in run_roles(cluster.bootstrap(), prefix, &[]).await {
        exit.assert_refused(&format!("{role} on {what}"), essentials);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_made_by_hand_with_the_wrong_shape_are_refused() {
    let cluster = Cluster::start().await;

    let prefix = common::unique_prefix("shape-count");
    let topics = Topics::new(&prefix);
    hand_made(&cluster, &topics, [3, 2, 3, 3], 3, "compact").await;
    assert_roles_refuse(
        &cluster,
        &prefix,
        "a changelog with 2 partitions beside timers with 3",
        &[
            &format!(
                "topic {} has 2 partitions but {} has 3",
                topics.changelog, topics.timers
            ),
            &format!("recreate {} with 3 partitions", topics.changelog),
        ],
    )
    .await;

    let prefix = common::unique_prefix("shape-compact");
    let topics = Topics::new(&prefix);
    hand_made(&cluster, &topics, [3, 3, 3, 3], 3, "delete").await;
    assert_roles_refuse(
        &cluster,
        &prefix,
        "a changelog that is not compacted",
        &[
            &format!(
                "topic {} is not compacted (cleanup.policy=delete)",
                topics.changelog
            ),
            "set cleanup.policy=compact on it",
        ],
    )
    .await;

    let prefix = common::unique_prefix("shape-rf1");
    let topics = Topics::new(&prefix);
    hand_made(&cluster, &topics, [3, 3, 3, 3], 1, "compact").await;
    assert_roles_refuse(
        &cluster,
        &prefix,
        "topics with one replica on a three-node cluster",
        &[
            &format!(
                "topics {}, {}, {}, {} have replication factor 1, below the 3 wanted",
                topics.timers, topics.changelog, topics.fires, topics.dead_letters
            ),
            "raise it with kafka-reassign-partitions",
            "or set CHIME_REPLICATION_FACTOR=1 to accept it",
        ],
    )
    .await;
    // Said so, accepted: the layout check passes with the factor given.
    chime_kafka::admin::check_topics(cluster.bootstrap(), &topics, Some(1))
        .await
        .expect("replication 1 accepted when asked for");
}
