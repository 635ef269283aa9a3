//! What a process costs: CPU time from `/proc/<pid>/stat`, memory from
//! `/proc/<pid>/status`.

use anyhow::Context;

/// User + system CPU seconds `pid` has used so far (all its threads).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_utime_stime(&stat).with_context(|| format!("parsing {path}"))?;
    // SAFETY: sysconf only reads a system constant.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(per_s > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok(ticks as f64 / per_s as f64)
}

/// A `VmRSS`-style field of `/proc/<pid>/status`, in KiB.
pub fn memory_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find(|l| l.split(':').next() == Some(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// The process's name, from `/proc/<pid>/comm`.
pub fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("pid {pid}"))
}

/// utime + stime (fields 14 and 15) in clock ticks. The command name (field
/// 2) is in parentheses and may itself hold spaces and parentheses, so the
/// fields are counted from the last `)`.
fn parse_utime_stime(stat: &str) -> anyhow::Result<u64> {
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("no ')' after the command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .context("too few fields")?
            .parse()
            .with_context(|| format!("field {n} is not a number"))
    };
    Ok(field(14)? + field(15)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_whose_name_has_spaces_and_parens() {
        let line = "4242 (tokio (rt) 1) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0";
        assert_eq!(parse_utime_stime(line).unwrap(), 175);
        assert!(parse_utime_stime("4242 (x) S 1 2").is_err());
    }

    #[test]
    fn own_memory_is_readable() {
        let rss = memory_kib(std::process::id(), "VmRSS").unwrap();
        assert!(rss > 0);
        assert!(memory_kib(std::process::id(), "NoSuchField").is_err());
    }

    #[test]
    fn own_cpu_time_is_readable_and_grows() {
        let pid = std::process::id();
        let before = cpu_seconds(pid).unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        // Spin until a clock tick is charged to us (bounded, on a busy machine).
        while cpu_seconds(pid).unwrap() <= before {
            assert!(start.elapsed() < std::time::Duration::from_secs(10));
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
    }
}
