//! The soak's books: every planned timer against what its client was told
//! and what its callback did, the lateness of timers due during each
//! fault, the checker's audit, and the violations that fail the run.

use std::fmt::Write as _;

use chime_check::CheckReport;

use super::fleet::{Applied, Exit};
use super::plan::{Path, PlannedTimer};
use super::traffic::{Outcomes, ACKNOWLEDGED, NOT_SENT, SKIPPED, UNKNOWN};
use crate::harness::lateness::{new_histogram, Arrival, Percentiles};

/// Ids shown per list.
const SAMPLE: usize = 5;

/// What the run did and found.
pub struct Verdict {
    pub text: String,
    pub violations: Vec<String>,
}

/// Everything the books are drawn from.
pub struct Books<'a> {
    pub header: String,
    pub timers: &'a [PlannedTimer],
    /// Absolute due time of timer i, unix ms.
    pub due_ms: &'a [u64],
    pub ids: &'a dyn Fn(usize) -> String,
    pub outcomes: &'a Outcomes,
    pub arrivals: &'a [Arrival],
    pub faults: &'a [Applied],
    pub broker_note: &'a str,
    /// lead + tick: a cancel acknowledged at least this long before its
    /// timer's due time must win.
    pub cancel_allowance_ms: u64,
    pub check: &'a CheckReport,
    pub exits: &'a [Exit],
    /// The plan's time zero, unix ms.
    pub start_ms: u64,
    pub unclean_stops: &'a [String],
    pub logs: &'a str,
}

/// Counts of one kind of request by outcome.
#[derive(Default)]
struct Tally {
    planned: u64,
    acknowledged: u64,
    unknown: u64,
    not_sent: u64,
    skipped: u64,
}

impl Tally {
    fn add(&mut self, outcome: u8) {
        self.planned += 1;
        match outcome {
            ACKNOWLEDGED => self.acknowledged += 1,
            UNKNOWN => self.unknown += 1,
            NOT_SENT => self.not_sent += 1,
            SKIPPED => self.skipped += 1,
            _ => {}
        }
    }
}

fn sample(ids: &[String]) -> String {
    let mut s = ids
        .iter()
        .take(SAMPLE)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SAMPLE {
        s.push_str(", …");
    }
    s
}

fn percentiles(p: &Percentiles) -> String {
    format!(
        "p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}",
        p.p50, p.p90, p.p99, p.p999, p.max
    )
}

pub fn judge(b: &Books<'_>) -> Verdict {
    let n = b.timers.len();
    let o = b.outcomes;
    // Callbacks per timer: the first arrival, how many, any early.
    let mut first_us: Vec<Option<u64>> = vec![None; n];
    let mut count = vec![0u32; n];
    let mut early = Vec::new();
    let mut unknown_ids = 0u64;
    for a in b.arrivals {
        let Some(i) = a.index.map(|i| i as usize).filter(|&i| i < n) else {
            unknown_ids += 1;
            continue;
        };
        count[i] += 1;
        if a.at_us < b.due_ms[i] * 1000 {
            early.push((b.ids)(i));
        }
        first_us[i] = Some(first_us[i].map_or(a.at_us, |f| f.min(a.at_us)));
    }

    let (mut creates, mut cancels) = (Tally::default(), Tally::default());
    let mut acked_by_path = [0u64; 3];
    let (mut expected, mut delivered) = (0u64, 0u64);
    let mut missing = Vec::new();
    let mut after_cancel = Vec::new();
    let (mut unknown_total, mut unknown_delivered) = (0u64, 0u64);
    let (mut cancelled_delivered, mut duplicates, mut duplicated_timers) = (0u64, 0u64, 0u64);
    let (mut all, mut in_faults, mut outside) = (new_histogram(), new_histogram(), new_histogram());
    let mut per_fault: Vec<_> = b.faults.iter().map(|_| (0u64, new_histogram())).collect();
    for (i, t) in b.timers.iter().enumerate() {
        let create = o.create_of(i);
        creates.add(create);
        if create == ACKNOWLEDGED {
            acked_by_path[match t.create_via {
                Path::Rest(0) => 0,
                Path::Rest(_) => 1,
                Path::Kafka => 2,
            }] += 1;
        }
        let cancel = t.cancel.map(|_| o.cancel_of(i));
        if let Some(c) = cancel {
            cancels.add(c);
        }
        let calls = count[i];
        if calls > 1 {
            duplicated_timers += 1;
            duplicates += u64::from(calls - 1);
        }
        let due = b.due_ms[i];
        // Lateness of every acknowledged timer called back, by when it was
        // due (a create given up on may have landed long after its time).
        if let (ACKNOWLEDGED, Some(first)) = (create, first_us[i]) {
            let late_us = first.saturating_sub(due * 1000);
            all.saturating_record(late_us);
            let mut during = false;
            for (f, (due_in, h)) in b.faults.iter().zip(per_fault.iter_mut()) {
                if (f.started_ms..=f.ended_ms).contains(&due) {
                    during = true;
                    *due_in += 1;
                    h.saturating_record(late_us);
                }
            }
            if during {
                in_faults.saturating_record(late_us);
            } else {
                outside.saturating_record(late_us);
            }
        }
        match (create, cancel) {
            (ACKNOWLEDGED, None | Some(NOT_SENT) | Some(SKIPPED)) => {
                expected += 1;
                if calls > 0 {
                    delivered += 1;
                } else {
                    missing.push((b.ids)(i));
                }
            }
            (ACKNOWLEDGED, Some(ACKNOWLEDGED)) if calls > 0 => {
                cancelled_delivered += 1;
                let acked = o.cancel_acked_ms[i].load(std::sync::atomic::Ordering::Acquire);
                if acked + b.cancel_allowance_ms < due {
                    after_cancel.push((b.ids)(i));
                }
            }
            // The cancel's outcome is unknown: it may or may not win.
            (ACKNOWLEDGED, Some(_)) if calls > 0 => cancelled_delivered += 1,
            (UNKNOWN, _) => {
                unknown_total += 1;
                if calls > 0 {
                    unknown_delivered += 1;
                }
            }
            _ => {}
        }
    }

    let mut t = String::new();
    let _ = writeln!(t, "{}", b.header);
    let _ = writeln!(
        t,
        "faults ({}), each with the acknowledged timers due while it lasted and their lateness, ms:",
        b.faults.len()
    );
    for (f, (due_in, h)) in b.faults.iter().zip(&per_fault) {
        let _ = write!(
            t,
            "  +{:>6.1} s  {:<48} {:>6} due",
            f.fault.at as f64 / 1000.0,
            f.fault.to_string(),
            due_in
        );
        if *due_in > 0 {
            let p = Percentiles::of(h);
            let _ = write!(t, ", p50 {:.0} p99 {:.0} max {:.0}", p.p50, p.p99, p.max);
        }
        // Restarting takes time of its own (a broker start takes seconds).
        let lasted = f.ended_ms.saturating_sub(f.started_ms);
        if lasted > f.fault.for_ms + 1_000 {
            let _ = write!(t, " (lasted {:.1} s)", lasted as f64 / 1000.0);
        }
        let _ = writeln!(t);
        if let Some(note) = &f.note {
            let _ = writeln!(t, "             note: {note}");
        }
    }
    let _ = writeln!(t, "  {}", b.broker_note);
    let r = &o.reasons;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let _ = writeln!(
        t,
        "creates       {} planned: {} acknowledged (ingest-1 {}, ingest-2 {}, kafka {}), {} unknown outcome, {} not sent",
        creates.planned, creates.acknowledged, acked_by_path[0], acked_by_path[1], acked_by_path[2], creates.unknown, creates.not_sent
    );
    let _ = writeln!(
        t,
        "cancels       {} planned: {} acknowledged, {} unknown outcome, {} not sent, {} skipped (create not acknowledged by then)",
        cancels.planned, cancels.acknowledged, cancels.unknown, cancels.not_sent, cancels.skipped
    );
    let _ = writeln!(
        t,
        "              unknown: {} error answers, {} timeouts, {} broken connections, {} Kafka errors; not sent: {} ingest down, {} ingest busy, {} refused, {} queue full",
        load(&r.error_status), load(&r.timeout), load(&r.broken), load(&r.kafka_error),
        load(&r.ingest_down), load(&r.ingest_busy), load(&r.refused), load(&r.queue_full)
    );
    let _ = writeln!(
        t,
        "callbacks     {delivered} of {expected} acknowledged, not cancelled timers called back; missing {}",
        missing.len()
    );
    let _ = writeln!(
        t,
        "              unknown-outcome creates called back: {unknown_delivered} of {unknown_total}; cancelled timers called back: {cancelled_delivered} (after an acknowledged cancel, beyond lead + tick: {})",
        after_cancel.len()
    );
    let _ = writeln!(
        t,
        "              duplicate callbacks {duplicates} (on {duplicated_timers} timers; allowed: at least once); early {}; for ids never planned {unknown_ids}",
        early.len()
    );
    let _ = writeln!(
        t,
        "lateness ms   (acknowledged timers: first callback − due time)"
    );
    let _ = writeln!(
        t,
        "              all                {}",
        percentiles(&Percentiles::of(&all))
    );
    let _ = writeln!(
        t,
        "              due during faults  {} ({} timers)",
        percentiles(&Percentiles::of(&in_faults)),
        in_faults.len()
    );
    let _ = writeln!(
        t,
        "              due outside them   {} ({} timers)",
        percentiles(&Percentiles::of(&outside)),
        outside.len()
    );
    let _ = writeln!(t, "checker (chime check on the run's topics):");
    for line in b.check.to_string().lines() {
        let _ = writeln!(t, "  {line}");
    }
    for e in b.exits {
        let _ = writeln!(
            t,
            "exited on its own: {} ({}) at +{:.1} s; restarted; log {}",
            e.name,
            e.status,
            (e.at_ms as f64 - b.start_ms as f64) / 1000.0,
            e.log.display()
        );
    }
    if !b.unclean_stops.is_empty() {
        let _ = writeln!(
            t,
            "warning: did not stop cleanly on SIGTERM at the end: {}",
            b.unclean_stops.join("; ")
        );
    }
    let _ = writeln!(t, "process logs  {}", b.logs);

    let mut violations = Vec::new();
    if !b.check.is_clean() {
        violations.push("the checker found problems in the topics (above)".to_string());
    }
    let mut flag = |what: &str, ids: &[String]| {
        if !ids.is_empty() {
            violations.push(format!("{} {what}: {}", ids.len(), sample(ids)));
        }
    };
    flag(
        "acknowledged, not cancelled timers never called back",
        &missing,
    );
    flag("callbacks before their due time", &early);
    flag(
        "timers called back although their cancel was acknowledged more than lead + tick before they were due",
        &after_cancel,
    );
    let exited: Vec<String> = b.exits.iter().map(|e| e.name.clone()).collect();
    flag("processes exited without being killed", &exited);
    if creates.acknowledged == 0 {
        violations.push("no create was acknowledged: the run tested nothing".to_string());
    }
    if violations.is_empty() {
        let _ = writeln!(t, "verdict       clean");
    } else {
        let _ = writeln!(t, "verdict       VIOLATIONS");
        for v in &violations {
            let _ = writeln!(t, "  - {v}");
        }
    }
    Verdict {
        text: t,
        violations,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::soak::plan::{Fault, FaultKind, Role};

    fn timer(due_at: u64, cancel: bool) -> PlannedTimer {
        PlannedTimer {
            create_at: 0,
            create_via: Path::Kafka,
            due_at,
            cancel: cancel.then_some((1_000, Path::Kafka)),
        }
    }

    fn at(index: u32, at_ms: u64) -> Arrival {
        Arrival {
            index: Some(index),
            at_us: at_ms * 1000,
            attempt: 1,
        }
    }

    #[test]
    fn books_tell_violations_from_what_at_least_once_and_unknown_outcomes_allow() {
        // 0 fine (twice), 1 missing, 2 early, 3 unknown outcome never called,
        // 4 called back after its cancel was acknowledged, 5 cancel unknown
        // and called back, 6 unknown outcome called back.
        let timers: Vec<_> = (0..7).map(|i| timer(10_000, i == 4 || i == 5)).collect();
        let due_ms = vec![100_000; 7];
        let o = Outcomes::new(7);
        for (i, outcome) in [1, 1, 1, 2, 1, 1, 2].into_iter().enumerate() {
            o.create[i].store(outcome, Ordering::Release);
        }
        o.cancel[4].store(ACKNOWLEDGED, Ordering::Release);
        o.cancel_acked_ms[4].store(60_000, Ordering::Release);
        o.cancel[5].store(UNKNOWN, Ordering::Release);
        let arrivals = [
            at(0, 100_010),
            at(0, 100_020),
            at(2, 99_999),
            at(4, 100_005),
            at(5, 100_005),
            at(6, 100_005),
        ];
        let faults = [Applied {
            fault: Fault {
                at: 0,
                kind: FaultKind::Kill {
                    role: Role::Engine,
                    instance: 0,
                },
                for_ms: 1_000,
            },
            started_ms: 99_500,
            ended_ms: 100_500,
            note: None,
        }];
        let ids = |i: usize| format!("t-{i}");
        let check = CheckReport::default();
        let v = judge(&Books {
            header: "test".into(),
            timers: &timers,
            due_ms: &due_ms,
            ids: &ids,
            outcomes: &o,
            arrivals: &arrivals,
            faults: &faults,
            broker_note: "",
            cancel_allowance_ms: 210,
            check: &check,
            exits: &[],
            start_ms: 90_000,
            unclean_stops: &[],
            logs: "",
        });
        let all = v.violations.join("\n");
        assert_eq!(v.violations.len(), 3, "{all}");
        assert!(
            all.contains("1 acknowledged, not cancelled timers never called back: t-1"),
            "{all}"
        );
        assert!(
            all.contains("1 callbacks before their due time: t-2"),
            "{all}"
        );
        assert!(
            all.contains("1 timers called back although their cancel was acknowledged"),
            "{all}"
        );
        assert!(
            v.text.contains("duplicate callbacks 1 (on 1 timers"),
            "{}",
            v.text
        );
        assert!(
            v.text
                .contains("unknown-outcome creates called back: 1 of 2"),
            "{}",
            v.text
        );
        assert!(
            v.text
                .contains("2 of 3 acknowledged, not cancelled timers called back"),
            "{}",
            v.text
        );
        // Lateness only of acknowledged timers: 0, 2 (early: 0), 4 and 5.
        assert!(v.text.contains("4 due, p50 5 p99 10 max 10"), "{}", v.text);
        assert!(v.text.contains("VIOLATIONS"));
    }
}
