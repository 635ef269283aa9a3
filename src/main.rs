//! `chime` — one binary, one subcommand per role.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use chime_dispatcher::DispatcherConfig;
use chime_engine::EngineConfig;
use chime_ingest::IngestConfig;
use chime_wire::Topics;

/// chime: a durable timer service on Kafka.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(subcommand)]
    role: Role,
}

#[derive(Args, Clone)]
struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(
        long = "kafka",
        env = "CHIME_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    bootstrap: String,
    /// Prefix of every topic (<prefix>.timers, <prefix>.fires, ...) and group id.
    #[arg(
        long,
        env = "CHIME_TOPIC_PREFIX",
        default_value = "chime",
        global = true
    )]
    topic_prefix: String,
}

#[derive(Subcommand)]
enum Role {
    /// Create chime's topics (idempotent).
    Topics(TopicsArgs),
    /// Serve the REST API.
    Ingest(IngestArgs),
    /// Own timer partitions and fire due timers.
    Engine(EngineArgs),
    /// Deliver fired timers as HTTP calls.
    Dispatcher(DispatcherArgs),
    /// Every role in one process (creates the topics first).
    All {
        #[command(flatten)]
        topics: TopicsArgs,
        #[command(flatten)]
        ingest: IngestArgs,
        #[command(flatten)]
        engine: EngineArgs,
        #[command(flatten)]
        dispatcher: DispatcherArgs,
    },
}

#[derive(Args, Clone)]
struct TopicsArgs {
    /// Partitions per topic: the unit of parallelism.
    #[arg(long, env = "CHIME_PARTITIONS", default_value_t = 12)]
    partitions: i32,
}

#[derive(Args, Clone)]
struct IngestArgs {
    /// Address the REST API listens on.
    #[arg(long, env = "CHIME_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Longest wait for Kafka's acknowledgement of a create before answering 503.
    #[arg(long, env = "CHIME_ACK_TIMEOUT_MS", default_value_t = 5000)]
    ack_timeout_ms: u64,
}

#[derive(Args, Clone)]
struct EngineArgs {
    /// Stable name of this engine instance (default: random). Reuse it on restart.
    #[arg(long, env = "CHIME_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Transaction interval: the longest input waits before it is committed.
    #[arg(long, env = "CHIME_TICK_MS", default_value_t = 10)]
    tick_ms: u64,
    /// Emit fires this far ahead of their time (the dispatcher holds them).
    #[arg(long, env = "CHIME_LEAD_MS", default_value_t = 0)]
    lead_ms: u64,
    /// Consumer-group session timeout: how soon a dead engine's partitions move.
    #[arg(long, env = "CHIME_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    session_timeout_ms: u64,
}

#[derive(Args, Clone)]
struct DispatcherArgs {
    /// HTTP calls in flight at once.
    #[arg(long, env = "CHIME_MAX_IN_FLIGHT", default_value_t = 1024)]
    max_in_flight: usize,
    /// Deadline of one HTTP call.
    #[arg(long, env = "CHIME_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    request_timeout_ms: u64,
}

impl IngestArgs {
    fn config(&self, k: &KafkaArgs) -> IngestConfig {
        let mut c = IngestConfig::new(&k.bootstrap, &k.topic_prefix);
        c.ack_timeout = Duration::from_millis(self.ack_timeout_ms);
        c
    }
}

impl EngineArgs {
    fn config(&self, k: &KafkaArgs) -> EngineConfig {
        let mut c = EngineConfig::new(&k.bootstrap, &k.topic_prefix);
        if let Some(id) = &self.instance_id {
            c.instance_id = id.clone();
        }
        c.tick = Duration::from_millis(self.tick_ms);
        c.lead = Duration::from_millis(self.lead_ms);
        c.session_timeout = Duration::from_millis(self.session_timeout_ms);
        c
    }
}

impl DispatcherArgs {
    fn config(&self, k: &KafkaArgs) -> DispatcherConfig {
        let mut c = DispatcherConfig::new(&k.bootstrap, &k.topic_prefix);
        c.max_in_flight = self.max_in_flight;
        c.request_timeout = Duration::from_millis(self.request_timeout_ms);
        c
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,librdkafka=warn,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("CHIME_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Cancelled on SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        t.cancel();
    });
    token
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let cli = Cli::parse();
    let k = &cli.kafka;
    let shutdown = shutdown_on_signal();
    match &cli.role {
        Role::Topics(t) => {
            chime_wire::kafka::create_topics(
                &k.bootstrap,
                &Topics::new(&k.topic_prefix),
                t.partitions,
            )
            .await
        }
        Role::Ingest(a) => chime_ingest::serve(bind(a.listen).await?, a.config(k), shutdown).await,
        Role::Engine(a) => chime_engine::serve(a.config(k), shutdown).await,
        Role::Dispatcher(a) => chime_dispatcher::serve(a.config(k), shutdown).await,
        Role::All {
            topics,
            ingest,
            engine,
            dispatcher,
        } => {
            chime_wire::kafka::create_topics(
                &k.bootstrap,
                &Topics::new(&k.topic_prefix),
                topics.partitions,
            )
            .await?;
            let listener = bind(ingest.listen).await?;
            // If any role stops (or fails), stop them all.
            let roles = tokio::try_join!(
                stop_all_on_exit(
                    chime_ingest::serve(listener, ingest.config(k), shutdown.clone()),
                    &shutdown
                ),
                stop_all_on_exit(
                    chime_engine::serve(engine.config(k), shutdown.clone()),
                    &shutdown
                ),
                stop_all_on_exit(
                    chime_dispatcher::serve(dispatcher.config(k), shutdown.clone()),
                    &shutdown
                ),
            );
            roles.map(|_| ())
        }
    }
}

async fn stop_all_on_exit(
    role: impl std::future::Future<Output = anyhow::Result<()>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let result = role.await;
    shutdown.cancel();
    result
}
