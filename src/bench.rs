//! `chime bench …`: the load tool is a binary of its own, `chime-bench`, so
//! this one links none of it. `chime bench` replaces itself with the
//! `chime-bench` next to it, passing its arguments on, its Kafka settings in
//! the environment, and itself as the chime that `--spawn` starts.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use clap::Args;

/// The build that puts `chime-bench` next to `chime`.
const BUILD: &str = "cargo build --release --bin chime --bin chime-bench";

#[derive(Args, Clone)]
pub struct BenchPassThrough {
    /// Arguments of chime-bench (`chime bench --help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    args: Vec<OsString>,
}

/// `chime-bench` in this executable's directory.
fn chime_bench() -> anyhow::Result<(PathBuf, PathBuf)> {
    let chime = std::env::current_exe().context("finding the chime executable")?;
    let bench = chime.with_file_name("chime-bench");
    anyhow::ensure!(
        bench.is_file(),
        "chime bench runs chime-bench, which is not next to this chime (looked for {}); \
         build both with `{BUILD}` (without --release for a debug build)",
        bench.display()
    );
    Ok((chime, bench))
}

/// Runs chime-bench in place of this process. Returns only on failure.
pub fn exec(args: &BenchPassThrough, bootstrap: &str, topic_prefix: &str) -> anyhow::Error {
    let (chime, bench) = match chime_bench() {
        Ok(paths) => paths,
        Err(e) => return e,
    };
    let error = Command::new(&bench)
        .args(&args.args)
        .env("CHIME_KAFKA_BOOTSTRAP", bootstrap)
        .env("CHIME_TOPIC_PREFIX", topic_prefix)
        .env("CHIME_BIN", &chime)
        .exec();
    anyhow::Error::new(error).context(format!("running {}", bench.display()))
}
