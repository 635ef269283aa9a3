//! `chime-bench`: the load test (`chime-bench [FLAGS]`, the flags of
//! `chime bench`, which runs this binary) and the engine figures
//! (`chime-bench rebuild|failover|lateness`), the failover figures
//! (`chime-bench faults`) and the chaos soak (`chime-bench soak`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use chime_benches::{faults, figures, load, soak, Common};

/// chime-bench: load-test a chime, or measure its engine.
///
/// Without a mode it runs the load test (`chime bench` passes its arguments
/// here). Everything targets loopback and the local broker.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
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
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    load: load::BenchArgs,
}

#[derive(Subcommand)]
enum Mode {
    /// Engine figure: changelog rebuild rate at 10^6 pending timers.
    Rebuild(figures::rebuild::RebuildArgs),
    /// Engine figure: kill -9 of one of three engines, time to fire again.
    Failover(figures::failover::FailoverArgs),
    /// Engine figure: fire lateness at a sustained rate, per tick and lead.
    Lateness(figures::lateness::LatenessArgs),
    /// Failover figures: one fault (kill -9 and restart, kill -9 for good,
    /// SIGSTOP, a rolling SIGTERM restart, kill -9 of the broker) to one of
    /// two `chime all` processes under steady load; the lateness of the
    /// timers due meanwhile.
    Faults(faults::FaultsArgs),
    /// The chaos soak: kill -9, SIGSTOP and restarts of every role (and the
    /// broker) under steady load; fails on any lost, doubled, early or
    /// uncancelled timer.
    Soak(soak::SoakArgs),
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

fn main() {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run()));
    if let Err(e) = result {
        // The chain of causes, without a backtrace: the tool's errors say
        // what went wrong and what to do.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    chime_telemetry::init_logging();
    let cli = Cli::parse();
    let common = Common {
        bootstrap: cli.bootstrap,
        topic_prefix: cli.topic_prefix,
        chime_bin: cli.chime_bin,
    };
    let shutdown = shutdown_on_signal();
    let run = async {
        match &cli.mode {
            None => load::main(&cli.load, &common).await,
            Some(Mode::Soak(a)) => soak::run(a, &common).await,
            Some(Mode::Faults(a)) => {
                if !a.json {
                    figures::print_machine();
                }
                faults::run(a, &common).await
            }
            Some(Mode::Rebuild(a)) => {
                figures::print_machine();
                figures::rebuild::run(a, &common).await
            }
            Some(Mode::Failover(a)) => {
                figures::print_machine();
                figures::failover::run(a, &common).await
            }
            Some(Mode::Lateness(a)) => {
                figures::print_machine();
                figures::lateness::run(a, &common).await
            }
        }
    };
    // Children are killed as their handles drop.
    tokio::select! {
        result = run => result,
        _ = shutdown.cancelled() => anyhow::bail!("interrupted"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("chime-bench").chain(line.iter().copied()))
    }

    #[test]
    fn flags_alone_are_the_load_test_and_modes_take_their_own() {
        let load = parse(&["--spawn", "--rate", "5", "--kafka", "127.0.0.1:1"]).unwrap();
        assert!(load.mode.is_none() && load.load.spawn);
        assert_eq!(load.bootstrap, "127.0.0.1:1");
        let rebuild = parse(&["rebuild", "--timers", "7", "--kafka", "127.0.0.1:2"]).unwrap();
        assert!(matches!(rebuild.mode, Some(Mode::Rebuild(ref a)) if a.timers == 7));
        assert_eq!(rebuild.bootstrap, "127.0.0.1:2");
        let lateness = parse(&["lateness", "--tick-ms", "2,10"]).unwrap();
        assert!(matches!(lateness.mode, Some(Mode::Lateness(ref a)) if a.tick_ms == [2, 10]));
        let faults = parse(&["faults", "--fault", "kill9-restart", "--after-ms", "4000"]).unwrap();
        assert!(matches!(faults.mode, Some(Mode::Faults(ref a))
            if a.fault == faults::plan::FaultKind::Kill9Restart && a.after_ms == 4000));
        assert!(parse(&["faults", "--fault", "nonsense"]).is_err());
        assert!(
            parse(&["--spawn", "rebuild"]).is_err(),
            "load flags and a mode"
        );
        assert!(
            parse(&["failover", "--spawn"]).is_err(),
            "a load flag in a mode"
        );
    }
}
