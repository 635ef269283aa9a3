//! `chime bench` end to end, as a user runs it: the `chime` binary runs the
//! `chime-bench` next to it, which spawns `chime all` on its own topics,
//! drives 2,000 timers over 2 s through the real broker and its own
//! receiver, and reports. This checks the tool's accounting is whole and
//! nothing came early — correctness, not speed.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Builds `chime-bench` (another package's binary, which cargo does not
/// build for this package's tests) next to the `chime` under test, as the
/// README's build command does.
fn build_chime_bench() {
    let chime = Path::new(env!("CARGO_BIN_EXE_chime"));
    let profile_dir = chime.parent().expect("chime is in a directory");
    let target_dir = profile_dir.parent().expect("under a target directory");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args([
            "build",
            "--quiet",
            "-p",
            "chime-benches",
            "--bin",
            "chime-bench",
        ])
        .arg("--target-dir")
        .arg(target_dir);
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("cargo runs");
    assert!(status.success(), "building chime-bench failed: {status}");
    assert!(
        profile_dir.join("chime-bench").is_file(),
        "chime-bench is not next to {}",
        chime.display()
    );
}

#[test]
fn without_chime_bench_next_to_it_chime_bench_names_the_build_command() {
    let dir = std::env::temp_dir().join(format!("chime-alone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let alone = dir.join("chime");
    std::fs::copy(env!("CARGO_BIN_EXE_chime"), &alone).unwrap();
    let out = Command::new(&alone)
        .args(["bench", "--spawn"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("chime runs");
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("chime-bench")
            && stderr.contains("cargo build --release --bin chime --bin chime-bench"),
        "{stderr}"
    );
}

#[test]
fn bench_accounts_for_every_timer_and_none_is_early() {
    build_chime_bench();
    let plot = std::env::temp_dir().join(format!("chime-bench-test-{}.svg", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_chime"))
        .args(["bench", "--spawn", "--partitions", "3"])
        .args([
            "--rate",
            "1000",
            "--duration",
            "2",
            "--grace",
            "30",
            "--json",
        ])
        .arg("--plot")
        .arg(&plot)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chime bench starts");
    // The tool bounds itself (warm-up ≤ 60 s, grace 30 s); this is a backstop.
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for chime bench") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chime bench did not stop by itself within 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "chime bench failed ({status}):\n{stderr}");

    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("--json printed no JSON ({e}):\n{stdout}\n{stderr}"));
    let delivery = &report["delivery"];
    let count = |field: &str| {
        delivery[field]
            .as_u64()
            .unwrap_or_else(|| panic!("delivery.{field} missing: {report}"))
    };
    assert_eq!(report["timers"], 2000, "{report}");
    assert_eq!(report["creation"]["timers"], 2000, "{report}");
    assert_eq!(count("delivered"), 2000, "every timer arrives: {report}");
    assert_eq!(count("missing"), 0, "{report}");
    assert_eq!(count("unknown"), 0, "{report}");
    assert_eq!(
        count("early"),
        0,
        "no callback before its due time: {report}"
    );
    assert_eq!(report["timed_out"], false, "{report}");
    let cpu = report["cpu"].as_array().expect("cpu figures");
    assert!(
        cpu.iter()
            .any(|p| p["label"].as_str().is_some_and(|l| l.contains("spawned"))),
        "the spawned chime's CPU is reported: {report}"
    );

    let svg = std::fs::read_to_string(&plot).expect("--plot wrote its file");
    assert!(
        svg.starts_with("<svg") && svg.contains("lateness"),
        "not the plot: {svg:.200}"
    );
    std::fs::remove_file(&plot).unwrap();
}
