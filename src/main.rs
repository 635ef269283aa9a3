//! `chime` — one binary, one subcommand per role.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use chime_dispatcher::DispatcherConfig;
use chime_engine::EngineConfig;
use chime_ingest::IngestConfig;
use chime_wire::Topics;

/// mimalloc: size classes close together (a 282-byte timer record takes 288
/// bytes, not glibc's 304), no per-allocation header, and freed pages go
/// back to the system, so memory per pending timer stays near the record's
/// size, also after a rebuild.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;

/// The engine's transaction interval unless `CHIME_TICK_MS` says otherwise.
const DEFAULT_TICK_MS: u64 = 10;

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
    /// Replication factor of the topics chime creates, and the least every
    /// role accepts at start (default: min(3, brokers in the cluster)).
    #[arg(long, env = "CHIME_REPLICATION_FACTOR", global = true)]
    replication_factor: Option<i32>,
    /// Stable name of this process's engine and dispatcher (default: random).
    /// Reuse it on restart: the restarted process fences its predecessor's
    /// transactions at once. Must be unique among running processes.
    #[arg(long, env = "CHIME_INSTANCE_ID", global = true)]
    instance_id: Option<String>,
    /// Static group membership (KIP-345), named by the instance id: a
    /// process whose session expired (a broker outage, a pause) takes its
    /// partitions back as soon as the group is reachable, with no wait for
    /// its old self to time out; but librdkafka can fence such a member by
    /// its own rejoin when the group coordinator moves, and the process then
    /// stops (see docs/operations.md).
    #[arg(
        long,
        env = "CHIME_STATIC_MEMBERSHIP",
        global = true,
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    static_membership: bool,
    /// How engines' and dispatchers' groups move partitions when members
    /// come and go: `eager` (one round, every partition rebuilt; no
    /// partition waits for librdkafka's one-second join interval) or
    /// `cooperative` (only moved partitions, in two rounds; the newcomer may
    /// wait up to a second for the second). See docs/design.md.
    #[arg(long, env = "CHIME_REBALANCE", global = true, default_value = "eager")]
    rebalance: chime_kafka::Rebalance,
}

impl KafkaArgs {
    fn topics(&self) -> Topics {
        Topics::new(&self.topic_prefix)
    }

    /// Refuses to start a role on topics laid out wrong (one line each).
    async fn check_topics(&self) -> anyhow::Result<()> {
        chime_kafka::admin::check_topics(&self.bootstrap, &self.topics(), self.replication_factor)
            .await
    }

    /// Creates what is missing, then checks the whole layout.
    async fn ensure_topics(&self, partitions: i32) -> anyhow::Result<()> {
        let layout = chime_kafka::admin::Layout {
            partitions,
            replication_factor: self.replication_factor,
        };
        chime_kafka::admin::ensure_topics(&self.bootstrap, &self.topics(), layout).await
    }
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
    /// Audit the topics: timers not fired, fired twice, early or after cancel.
    Check(CheckArgs),
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
    /// Load-test a chime (or one it spawns): timers per second, lateness, CPU.
    /// Runs `chime-bench` (built apart) with these arguments; `chime bench
    /// --help` lists them.
    #[command(disable_help_flag = true)]
    Bench(bench::BenchPassThrough),
}

#[derive(Args, Clone)]
struct CheckArgs {
    /// Timers due less than this long ago are not yet expected to have fired.
    #[arg(long, default_value_t = 5000)]
    grace_ms: u64,
    /// The engines' lead (CHIME_LEAD_MS): fires this far ahead are not early.
    #[arg(long, env = "CHIME_LEAD_MS", default_value_t = chime_engine::DEFAULT_LEAD.as_millis() as u64)]
    lead_ms: u64,
    /// The engines' transaction interval (CHIME_TICK_MS): with the lead, how
    /// long after a cancel a fire of its timer may still be emitted.
    #[arg(long, env = "CHIME_TICK_MS", default_value_t = DEFAULT_TICK_MS)]
    tick_ms: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
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
    /// API keys, comma separated; when set, /v1 and original-API requests need
    /// `Authorization: Bearer <key>`.
    #[arg(
        long,
        env = "CHIME_API_KEYS",
        default_value = "",
        hide_env_values = true
    )]
    api_keys: String,
    /// Most timers in one `POST /v1/timers/batch`.
    #[arg(long, env = "CHIME_MAX_BATCH", default_value_t = 1000)]
    max_batch: usize,
    /// Most headers in one request (413 above it).
    #[arg(long, env = "CHIME_MAX_HEADERS", default_value_t = 64)]
    max_headers: usize,
    /// Browser origins allowed to call the API cross-origin (CORS), comma
    /// separated (`https://app.example`, or `*` for any); none by default.
    #[arg(long, env = "CHIME_CORS_ORIGINS", default_value = "")]
    cors_origins: String,
}

#[derive(Args, Clone)]
struct EngineArgs {
    /// Address of the engine's internal status endpoint (port 0: any free port).
    #[arg(
        long,
        env = "CHIME_ENGINE_STATUS_LISTEN",
        default_value = "127.0.0.1:0"
    )]
    status_listen: SocketAddr,
    /// Address ingest should use to reach the status endpoint (default: the
    /// bound address; set it when listening on 0.0.0.0).
    #[arg(long, env = "CHIME_ENGINE_STATUS_ADVERTISE")]
    status_advertise: Option<String>,
    /// Transaction interval: the longest input waits before it is committed.
    #[arg(long, env = "CHIME_TICK_MS", default_value_t = DEFAULT_TICK_MS)]
    tick_ms: u64,
    /// Emit fires this far ahead of their time (the dispatcher holds them
    /// until due; a cancel inside the lead is sent after them as a revoke).
    #[arg(long, env = "CHIME_LEAD_MS", default_value_t = chime_engine::DEFAULT_LEAD.as_millis() as u64)]
    lead_ms: u64,
    /// Consumer-group session timeout: how soon a dead engine's partitions
    /// move. Below 6 s the brokers need group.min.session.timeout.ms lowered
    /// (docs/operations.md).
    #[arg(long, env = "CHIME_SESSION_TIMEOUT_MS", default_value_t = chime_engine::DEFAULT_SESSION_TIMEOUT.as_millis() as u64)]
    session_timeout_ms: u64,
    /// How long a dead engine's unfinished transaction blocks readers before
    /// the broker aborts it.
    #[arg(long, env = "CHIME_TRANSACTION_TIMEOUT_MS", default_value_t = chime_engine::DEFAULT_TRANSACTION_TIMEOUT.as_millis() as u64)]
    transaction_timeout_ms: u64,
}

#[derive(Args, Clone)]
struct DispatcherArgs {
    /// HTTP calls in flight at once.
    #[arg(long, env = "CHIME_MAX_IN_FLIGHT", default_value_t = 1024)]
    max_in_flight: usize,
    /// Deadline of one HTTP call.
    #[arg(long, env = "CHIME_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    request_timeout_ms: u64,
    /// HTTP calls in flight at once to one destination (scheme, host, port).
    #[arg(long, env = "CHIME_MAX_IN_FLIGHT_PER_HOST", default_value_t = 64)]
    max_in_flight_per_host: usize,
    /// Unfinished fire records per partition before it is paused.
    #[arg(
        long,
        env = "CHIME_MAX_IN_FLIGHT_PER_PARTITION",
        default_value_t = 1000
    )]
    max_in_flight_per_partition: usize,
    /// Retry backoffs shorter than this wait in place; longer ones become timers.
    #[arg(long, env = "CHIME_RETRY_IN_PLACE_BELOW_MS", default_value_t = 1000)]
    retry_in_place_below_ms: u64,
    /// Non-public callback networks allowed anyway: CIDRs, comma-separated.
    #[arg(long, env = "CHIME_CALLBACK_ALLOW", default_value = "", value_parser = parse_callback_allow)]
    callback_allow: chime_dispatcher::address::AddressPolicy,
    /// Callback networks refused even though public: CIDRs, comma-separated
    /// (`0.0.0.0/0,::/0` confines callbacks to CHIME_CALLBACK_ALLOW).
    #[arg(long, env = "CHIME_CALLBACK_DENY", default_value = "", value_parser = parse_callback_deny)]
    callback_deny: chime_dispatcher::address::AddressPolicy,
    /// Secret for the chime-signature header (HMAC-SHA256); unsigned without it.
    #[arg(long, env = "CHIME_SIGNING_SECRET", hide_env_values = true)]
    signing_secret: Option<String>,
    /// How long in-flight calls may finish after SIGTERM.
    #[arg(long, env = "CHIME_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    shutdown_grace_ms: u64,
    /// Consumer-group session timeout: how soon a dead dispatcher's partitions move.
    #[arg(
        long,
        env = "CHIME_DISPATCHER_SESSION_TIMEOUT_MS",
        default_value_t = chime_engine::DEFAULT_SESSION_TIMEOUT.as_millis() as u64
    )]
    dispatcher_session_timeout_ms: u64,
}

fn parse_callback_allow(list: &str) -> Result<chime_dispatcher::address::AddressPolicy, String> {
    chime_dispatcher::address::AddressPolicy::parse_allow(list)
        .map(|allow| chime_dispatcher::address::AddressPolicy {
            allow,
            ..Default::default()
        })
        .map_err(|e| e.to_string())
}

fn parse_callback_deny(list: &str) -> Result<chime_dispatcher::address::AddressPolicy, String> {
    chime_dispatcher::address::AddressPolicy::parse_deny(list)
        .map(|deny| chime_dispatcher::address::AddressPolicy {
            deny,
            ..Default::default()
        })
        .map_err(|e| e.to_string())
}

impl IngestArgs {
    fn config(&self, k: &KafkaArgs) -> IngestConfig {
        let mut c = IngestConfig::new(&k.bootstrap, &k.topic_prefix);
        c.ack_timeout = Duration::from_millis(self.ack_timeout_ms);
        c.api_keys = self
            .api_keys
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect();
        c.max_batch = self.max_batch;
        c.max_headers = self.max_headers;
        c.cors_origins = chime_ingest::browser::parse_origins(&self.cors_origins);
        c
    }
}

impl EngineArgs {
    fn config(&self, k: &KafkaArgs) -> EngineConfig {
        let mut c = EngineConfig::new(&k.bootstrap, &k.topic_prefix);
        if let Some(id) = &k.instance_id {
            c.instance_id = id.clone();
        }
        c.static_membership = k.static_membership;
        c.rebalance = k.rebalance;
        c.tick = Duration::from_millis(self.tick_ms);
        c.lead = Duration::from_millis(self.lead_ms);
        c.session_timeout = Duration::from_millis(self.session_timeout_ms);
        c.transaction_timeout = Duration::from_millis(self.transaction_timeout_ms);
        c
    }
}

impl DispatcherArgs {
    fn config(&self, k: &KafkaArgs) -> DispatcherConfig {
        let mut c = DispatcherConfig::new(&k.bootstrap, &k.topic_prefix);
        if let Some(id) = &k.instance_id {
            c.instance_id = id.clone();
        }
        c.static_membership = k.static_membership;
        c.rebalance = k.rebalance;
        c.max_in_flight = self.max_in_flight;
        c.request_timeout = Duration::from_millis(self.request_timeout_ms);
        c.max_in_flight_per_host = self.max_in_flight_per_host;
        c.max_in_flight_per_partition = self.max_in_flight_per_partition;
        c.wait_in_place_below = Duration::from_millis(self.retry_in_place_below_ms);
        c.addresses = self.callback_allow.clone();
        c.addresses.deny = self.callback_deny.deny.clone();
        c.signing_secret = self
            .signing_secret
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|s| chime_dispatcher::signing::SigningSecret(s.as_bytes().to_vec()));
        c.shutdown_grace = Duration::from_millis(self.shutdown_grace_ms);
        c.session_timeout = Duration::from_millis(self.dispatcher_session_timeout_ms);
        c
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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = if let Role::Bench(args) = &cli.role {
        // Replaces this process; returns only if chime-bench cannot start.
        Err(bench::exec(
            args,
            &cli.kafka.bootstrap,
            &cli.kafka.topic_prefix,
        ))
    } else {
        chime_telemetry::init_logging();
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(run(cli)))
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, causes included: what went wrong and what to do,
            // never a backtrace (RUST_BACKTRACE set or not).
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    chime_telemetry::recorder(); // the process's one metrics recorder
    let k = &cli.kafka;
    let shutdown = shutdown_on_signal();
    match &cli.role {
        Role::Bench(_) => unreachable!("chime bench runs chime-bench before the runtime starts"),
        Role::Check(a) => {
            let mut config = chime_check::CheckConfig::new(
                &k.bootstrap,
                &k.topic_prefix,
                Duration::from_millis(a.lead_ms),
                Duration::from_millis(a.tick_ms),
            );
            config.grace = Duration::from_millis(a.grace_ms);
            let report = tokio::task::spawn_blocking(move || chime_check::check(&config)).await??;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
            if !report.is_clean() {
                std::process::exit(1);
            }
            Ok(())
        }
        Role::Topics(t) => {
            let created = k.ensure_topics(t.partitions).await;
            if let Err(e) = &created {
                if e.is::<chime_kafka::admin::Unreachable>() {
                    return created; // nothing to show, and no second wait
                }
            }
            let view = chime_kafka::admin::inspect(&k.bootstrap, &k.topics()).await?;
            let layout = chime_kafka::admin::Layout {
                partitions: t.partitions,
                replication_factor: k.replication_factor,
            };
            print!("{}", view.table(layout));
            created
        }
        Role::Ingest(a) => {
            k.check_topics().await?;
            chime_ingest::serve(bind(a.listen).await?, a.config(k), shutdown).await
        }
        Role::Engine(a) => {
            k.check_topics().await?;
            run_engine(a, k, Default::default(), shutdown).await
        }
        Role::Dispatcher(a) => {
            k.check_topics().await?;
            chime_dispatcher::serve(a.config(k), shutdown).await
        }
        Role::All {
            topics,
            ingest,
            engine,
            dispatcher,
        } => {
            k.ensure_topics(topics.partitions).await?;
            let listener = bind(ingest.listen).await?;
            // Ingest answers status questions for this engine's partitions in-process.
            let engine_status = chime_engine::EngineStatus::default();
            // If any role stops (or fails), stop them all.
            let roles = tokio::try_join!(
                stop_all_on_exit(
                    chime_ingest::serve_with_engine(
                        listener,
                        ingest.config(k),
                        Some(Arc::new(engine_status.clone())),
                        shutdown.clone()
                    ),
                    &shutdown
                ),
                stop_all_on_exit(
                    run_engine(engine, k, engine_status.clone(), shutdown.clone()),
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

/// Runs an engine with its internal status endpoint, whose address it
/// advertises through the consumer group for ingest to find.
async fn run_engine(
    args: &EngineArgs,
    k: &KafkaArgs,
    status: chime_engine::EngineStatus,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = bind(args.status_listen).await?;
    let bound = listener.local_addr()?;
    let advertised = match &args.status_advertise {
        Some(address) => address.clone(),
        None => {
            if bound.ip().is_unspecified() {
                tracing::warn!(%bound, "engine status endpoint on an unspecified address; set CHIME_ENGINE_STATUS_ADVERTISE so ingest can reach it");
            }
            bound.to_string()
        }
    };
    let mut config = args.config(k);
    config.status_address = Some(advertised);
    let probe = chime_kafka::KafkaProbe::new(&k.bootstrap, &config.topics.timers)?;
    // The endpoint outlives the engine's shutdown (it answers until the
    // engine has left the group), so it has its own stop token.
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(chime_engine::status_server::serve(
        listener,
        status.clone(),
        probe,
        Some(chime_telemetry::recorder()),
        server_stop.clone(),
    ));
    let result = chime_engine::serve(config, status, shutdown).await;
    server_stop.cancel();
    if let Ok(Err(e)) = server.await {
        tracing::warn!(error = %e, "engine status endpoint failed");
    }
    result
}

async fn stop_all_on_exit(
    role: impl std::future::Future<Output = anyhow::Result<()>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let result = role.await;
    shutdown.cancel();
    result
}
