//! The books of a faults run: lateness of the timers due before, during and
//! after the fault window; for the broker, how soon callbacks resumed;
//! callbacks made twice; the checker's verdict; and whether the target was
//! met. Printed as a table, or as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use chime_check::CheckReport;

use super::plan::{Fault, Target};
use crate::harness::lateness::{new_histogram, Arrival, Percentiles};

/// Timers due in one span of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub label: String,
    /// The span, ms from the fault (negative: before it).
    pub from_ms: i64,
    pub to_ms: i64,
    pub timers: u64,
    pub called_back: u64,
    /// First callback − due time, of those called back.
    pub lateness_ms: Percentiles,
}

/// What the checker found in the topics.
#[derive(Debug, Clone, Serialize)]
pub struct Checker {
    pub lost: usize,
    pub fired_twice: usize,
    pub early: usize,
    pub fired_after_cancel: usize,
    pub overdue: usize,
    pub clean: bool,
}

impl Checker {
    pub fn of(r: &CheckReport) -> Checker {
        Checker {
            lost: r.missing.len(),
            fired_twice: r.duplicates.len(),
            early: r.early.len(),
            fired_after_cancel: r.fired_after_cancel.len(),
            overdue: r.overdue.len(),
            clean: r.is_clean(),
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub fault: Fault,
    pub description: String,
    pub membership: String,
    pub rate_per_s: u64,
    pub partitions: i32,
    pub session_timeout_ms: u64,
    pub commit: String,
    pub load_average_before: String,
    pub load_average_after: String,
    pub command: String,
    /// Steps, ms from the fault.
    pub timeline: Vec<(i64, String)>,
    /// The window, ms from the fault, and what its end means.
    pub window_ms: (i64, i64),
    pub window_means: String,
    pub rows: Vec<Row>,
    /// Timers due in the window: the worst lateness (ms) on each partition,
    /// and in each second of due time (from the fault).
    pub window_max_by_partition: Vec<(i32, f64)>,
    pub window_max_by_second: Vec<(i64, f64)>,
    /// `broker-kill`: the broker answering again → the first callback after.
    pub resumed_after_broker_ms: Option<u64>,
    /// Timers called back more than once, and the extra callbacks.
    pub called_twice_timers: u64,
    pub extra_callbacks: u64,
    pub not_called_back: u64,
    pub early_callbacks: u64,
    /// Timers acknowledged by Kafka only after their due time.
    pub acknowledged_after_due: usize,
    pub checker: Checker,
    pub target: Target,
    pub target_met: Option<bool>,
    pub notes: Vec<String>,
}

/// What the books are drawn from.
pub struct Books<'a> {
    /// Due time of every timer produced, unix ms.
    pub due_ms: &'a [u64],
    /// Each timer's partition.
    pub partition: &'a [i32],
    pub arrivals: &'a [Arrival],
    pub fault_at_ms: u64,
    /// The fault window, unix ms.
    pub window: (u64, u64),
    pub broker_answered_ms: Option<u64>,
}

/// The measured part of a report.
pub struct Measured {
    pub rows: Vec<Row>,
    pub window_max_by_partition: Vec<(i32, f64)>,
    pub window_max_by_second: Vec<(i64, f64)>,
    pub resumed_after_broker_ms: Option<u64>,
    pub called_twice_timers: u64,
    pub extra_callbacks: u64,
    pub not_called_back: u64,
    pub early_callbacks: u64,
    /// Max lateness of the window's timers (ms).
    pub window_max_ms: f64,
}

pub fn measure(b: &Books<'_>) -> Measured {
    let n = b.due_ms.len();
    let mut first_us: Vec<Option<u64>> = vec![None; n];
    let mut calls = vec![0u32; n];
    let mut early = 0u64;
    let mut resumed: Option<u64> = None;
    for a in b.arrivals {
        let Some(i) = a.index.map(|i| i as usize).filter(|&i| i < n) else {
            continue;
        };
        calls[i] += 1;
        if a.at_us < b.due_ms[i] * 1000 {
            early += 1;
        }
        first_us[i] = Some(first_us[i].map_or(a.at_us, |f| f.min(a.at_us)));
        if let Some(answered) = b.broker_answered_ms {
            let at_ms = a.at_us / 1000;
            if at_ms >= answered {
                resumed = Some(resumed.map_or(at_ms, |r| r.min(at_ms)));
            }
        }
    }
    let (from, to) = b.window;
    let spans = [
        ("before the fault", None, Some(from)),
        ("during the fault window", Some(from), Some(to + 1)),
        ("after it", Some(to + 1), None),
    ];
    let rel = |t: u64| t as i64 - b.fault_at_ms as i64;
    let mut rows = Vec::new();
    let mut window_max_ms = 0.0;
    for (label, lo, hi) in spans {
        let mut h = new_histogram();
        let (mut timers, mut called_back) = (0u64, 0u64);
        let (mut first_due, mut last_due) = (u64::MAX, 0u64);
        for (i, &due) in b.due_ms.iter().enumerate() {
            if lo.is_some_and(|lo| due < lo) || hi.is_some_and(|hi| due >= hi) {
                continue;
            }
            timers += 1;
            first_due = first_due.min(due);
            last_due = last_due.max(due);
            if let Some(at_us) = first_us[i] {
                called_back += 1;
                h.saturating_record(at_us.saturating_sub(due * 1000));
            }
        }
        let lateness_ms = Percentiles::of(&h);
        if lo == Some(from) {
            window_max_ms = lateness_ms.max;
        }
        rows.push(Row {
            label: label.to_string(),
            from_ms: rel(lo.unwrap_or(first_due.min(from))),
            to_ms: rel(hi.map_or(last_due.max(to), |hi| hi - 1)),
            timers,
            called_back,
            lateness_ms,
        });
    }
    // Where in the window the lateness was: by partition, by second.
    let mut by_partition: std::collections::BTreeMap<i32, f64> = Default::default();
    let mut by_second: std::collections::BTreeMap<i64, f64> = Default::default();
    for (i, &due) in b.due_ms.iter().enumerate() {
        if !(from..=to).contains(&due) {
            continue;
        }
        let late = first_us[i].map_or(f64::NAN, |at| at.saturating_sub(due * 1000) as f64 / 1000.0);
        // NaN (never called back) sticks.
        let worst = |slot: &mut f64| {
            if !slot.is_nan() && (late.is_nan() || late > *slot) {
                *slot = late;
            }
        };
        worst(by_partition.entry(b.partition[i]).or_insert(0.0));
        worst(by_second.entry(rel(due).div_euclid(1000)).or_insert(0.0));
    }
    Measured {
        rows,
        window_max_by_partition: by_partition.into_iter().collect(),
        window_max_by_second: by_second.into_iter().collect(),
        resumed_after_broker_ms: b
            .broker_answered_ms
            .and_then(|answered| resumed.map(|r| r - answered)),
        called_twice_timers: calls.iter().filter(|&&c| c > 1).count() as u64,
        extra_callbacks: calls.iter().map(|&c| u64::from(c.saturating_sub(1))).sum(),
        not_called_back: calls.iter().filter(|&&c| c == 0).count() as u64,
        early_callbacks: early,
        window_max_ms,
    }
}

/// Worst lateness per second merged into at most `most` spans, labelled
/// by their first second (`+3s`, or `+3..5s`). NaN (not called back) wins.
fn by_span(per_second: &[(i64, f64)], most: usize) -> Vec<(String, f64)> {
    let width = per_second.len().div_ceil(most.max(1)).max(1);
    per_second
        .chunks(width)
        .map(|c| {
            let (first, last) = (c[0].0, c[c.len() - 1].0);
            let label = if first == last {
                format!("{first:+}s")
            } else {
                format!("{first:+}..{last}s")
            };
            let worst = c.iter().map(|&(_, ms)| ms).fold(0.0, |w: f64, ms| {
                if w.is_nan() || ms.is_nan() {
                    f64::NAN
                } else {
                    w.max(ms)
                }
            });
            (label, worst)
        })
        .collect()
}

fn secs(ms: i64) -> String {
    format!("{:+.1} s", ms as f64 / 1000.0)
}

impl Report {
    /// Correctness problems (not target misses): these fail the run.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.checker.clean {
            v.push("the checker found problems in the topics".to_string());
        }
        if self.not_called_back > 0 {
            v.push(format!("{} timers never called back", self.not_called_back));
        }
        if self.early_callbacks > 0 {
            v.push(format!(
                "{} callbacks before their due time",
                self.early_callbacks
            ));
        }
        v
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "chime-bench faults — {}: {}\n{}, session timeout {} ms, {} timers/s due, \
             {} partitions, commit {}; load average {} before, {} after",
            self.fault.name(),
            self.description,
            self.membership,
            self.session_timeout_ms,
            self.rate_per_s,
            self.partitions,
            self.commit,
            self.load_average_before,
            self.load_average_after
        );
        let _ = writeln!(t, "timeline (from the fault):");
        for (at, what) in &self.timeline {
            let _ = writeln!(t, "  {:>8}  {what}", secs(*at));
        }
        let _ = writeln!(
            t,
            "fault window: {} .. {} (from the fault to {}, plus the session timeout)\n",
            secs(self.window_ms.0),
            secs(self.window_ms.1),
            self.window_means
        );
        let _ = writeln!(
            t,
            "| timers due | span | timers | called back | lateness p50 | p90 | p99 | max (ms) |"
        );
        let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|---:|");
        for r in &self.rows {
            let p = &r.lateness_ms;
            let _ = writeln!(
                t,
                "| {} | {} .. {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                r.label,
                secs(r.from_ms),
                secs(r.to_ms),
                r.timers,
                r.called_back,
                p.p50,
                p.p90,
                p.p99,
                p.max
            );
        }
        let list = |v: &[(String, f64)]| {
            v.iter()
                .map(|(k, ms)| format!("{k} {ms:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let parts: Vec<(String, f64)> = self
            .window_max_by_partition
            .iter()
            .map(|(p, ms)| (format!("p{p}"), *ms))
            .collect();
        let seconds = by_span(&self.window_max_by_second, 30);
        let _ = writeln!(
            t,
            "\nworst lateness in the window (ms; NaN: not called back), by partition: {}",
            list(&parts)
        );
        let _ = writeln!(t, "  by due time (from the fault): {}", list(&seconds));
        let _ = writeln!(t);
        if let Some(r) = self.resumed_after_broker_ms {
            let _ = writeln!(t, "broker answered again → first callback: {r} ms");
        } else if self.fault.kind == super::plan::FaultKind::BrokerKill {
            let _ = writeln!(t, "broker answered again → first callback: none came");
        }
        let _ = writeln!(
            t,
            "callbacks made twice: {} timers ({} extra callbacks); not called back: {}; early: {}",
            self.called_twice_timers,
            self.extra_callbacks,
            self.not_called_back,
            self.early_callbacks
        );
        if self.acknowledged_after_due > 0 {
            let _ = writeln!(
                t,
                "note: {} timers were acknowledged by Kafka only after their due time",
                self.acknowledged_after_due
            );
        }
        let c = &self.checker;
        let _ = writeln!(
            t,
            "checker: lost {} / fired twice into chime.fires {} / early {} / after cancel {} / \
             overdue {} — {}",
            c.lost,
            c.fired_twice,
            c.early,
            c.fired_after_cancel,
            c.overdue,
            if c.clean { "clean" } else { "PROBLEMS" }
        );
        let verdict = match self.target_met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "–",
        };
        let _ = writeln!(t, "target (issue #16): {} — {verdict}", self.target.text);
        for note in &self.notes {
            let _ = writeln!(t, "note: {note}");
        }
        let _ = writeln!(t, "\ndocs row:\n{}", self.docs_row());
        t
    }

    /// One row for docs/performance.md's failover table.
    pub fn docs_row(&self) -> String {
        let w = self.rows.iter().find(|r| r.label.starts_with("during"));
        let p = w.map(|r| r.lateness_ms).unwrap_or_default();
        format!(
            "| {} | {} | {} | {:.0} / {:.0} / {:.0} / {:.0} | {} | {} | {} / {} / {} | {} | {} |",
            self.fault.name(),
            self.description,
            self.membership,
            p.p50,
            p.p90,
            p.p99,
            p.max,
            self.resumed_after_broker_ms
                .map_or("–".to_string(), |r| format!("{r} ms")),
            self.called_twice_timers,
            self.checker.lost,
            self.checker.fired_twice,
            self.checker.early,
            match self.target_met {
                Some(true) => "met",
                Some(false) => "missed",
                None => "–",
            },
            self.load_average_before
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(index: u32, at_ms: u64) -> Arrival {
        Arrival {
            index: Some(index),
            at_us: at_ms * 1000,
            attempt: 1,
        }
    }

    #[test]
    fn timers_are_split_by_due_time_around_the_window() {
        // Fault at 10 000; window 10 000 ..= 16 000; broker back at 13 000.
        let due = [9_000, 10_000, 12_000, 16_000, 16_001, 20_000];
        let arrivals = [
            at(0, 9_005),
            at(1, 14_000),
            at(2, 13_500),
            at(2, 13_600), // twice
            at(3, 16_010),
            at(4, 15_999), // early
            at(7, 1),      // not a timer of the plan
        ];
        let m = measure(&Books {
            due_ms: &due,
            partition: &[0, 0, 1, 1, 0, 0],
            arrivals: &arrivals,
            fault_at_ms: 10_000,
            window: (10_000, 16_000),
            broker_answered_ms: Some(13_000),
        });
        let counts: Vec<(u64, u64)> = m.rows.iter().map(|r| (r.timers, r.called_back)).collect();
        assert_eq!(counts, [(1, 1), (3, 3), (2, 1)]);
        // HDR histograms keep 3 significant digits.
        let close = |a: f64, b: f64| (a - b).abs() <= b / 500.0;
        assert!(close(m.rows[0].lateness_ms.max, 5.0));
        assert!(close(m.rows[1].lateness_ms.max, 4_000.0));
        assert!(close(m.window_max_ms, 4_000.0));
        assert_eq!((m.rows[1].from_ms, m.rows[1].to_ms), (0, 6_000));
        assert_eq!(m.resumed_after_broker_ms, Some(500));
        assert_eq!((m.called_twice_timers, m.extra_callbacks), (1, 1));
        assert_eq!((m.not_called_back, m.early_callbacks), (1, 1));
        assert_eq!(m.window_max_by_partition, [(0, 4_000.0), (1, 1_500.0)]);
        assert_eq!(
            m.window_max_by_second,
            [(0, 4_000.0), (2, 1_500.0), (6, 10.0)]
        );
        let spans = by_span(&m.window_max_by_second, 2);
        assert_eq!(
            spans,
            [("+0..2s".to_string(), 4_000.0), ("+6s".to_string(), 10.0)]
        );
        assert!(by_span(&[(0, 1.0), (1, f64::NAN)], 1)[0].1.is_nan());
    }
}
