//! `chime-bench`: the load test (`chime-bench [FLAGS]`, the flags of
//! `chime bench`, which runs this binary).

use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use chime_benches::{load, Common};

/// chime-bench: load-test a chime (`chime bench` passes its arguments here).
///
/// Everything targets loopback and the local broker.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Kafka bootstrap servers.
    #[arg(
        long = "kafka",
        env = "CHIME_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    bootstrap: String,
    /// Topic prefix of the running chime under test (without --spawn).
    #[arg(
        long,
        env = "CHIME_TOPIC_PREFIX",
        default_value = "chime",
        global = true
    )]
    topic_prefix: String,
    /// The chime executable to start (default: `chime` next to this one).
    #[arg(long, env = "CHIME_BIN", global = true)]
    chime_bin: Option<PathBuf>,
    #[command(flatten)]
    load: load::BenchArgs,
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
        t.cancel();
    });
    token
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    chime_telemetry::init_logging();
    let cli = Cli::parse();
    let common = Common {
        bootstrap: cli.bootstrap,
        topic_prefix: cli.topic_prefix,
        chime_bin: cli.chime_bin,
    };
    let shutdown = shutdown_on_signal();
    let run = load::main(&cli.load, &common);
    // Children are killed as their handles drop.
    tokio::select! {
        result = run => result,
        _ = shutdown.cancelled() => anyhow::bail!("interrupted"),
    }
}
