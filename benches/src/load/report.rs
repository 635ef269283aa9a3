//! Accounting of one run: which planned timers arrived, how late, how often,
//! and the figures printed as a table or JSON.

use std::fmt::Write as _;

use serde::Serialize;

pub use crate::harness::lateness::{new_histogram, Arrival, Percentiles};

/// What happened to the planned timers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    /// Timers whose callback arrived at least once.
    pub delivered: u64,
    /// Timers whose callback never arrived.
    pub missing: u64,
    /// Callbacks beyond the first for the same timer.
    pub duplicates: u64,
    /// Callbacks for ids this run did not create.
    pub unknown: u64,
    /// Callbacks that arrived before their timer's due time (must be 0).
    pub early: u64,
    /// Callbacks whose `chime-attempt` was above 1 (retries).
    pub retried: u64,
    /// Lateness of each timer's first callback: arrival − due time.
    pub lateness_ms: Percentiles,
    /// From the first due time to the last first arrival, seconds.
    pub span_s: f64,
    /// `delivered / span_s`: the rate chime kept up while delivering.
    pub delivered_rate_per_s: f64,
}

/// Settles every arrival against the plan (`due_ms[i]` is timer i's due
/// time). A timer's lateness counts its first arrival; every arrival, first
/// or not, is checked for being early.
pub fn account(due_ms: &[u64], arrivals: &[Arrival]) -> Delivery {
    let mut first_at_us: Vec<Option<u64>> = vec![None; due_ms.len()];
    let (mut duplicates, mut unknown, mut early, mut retried) = (0, 0, 0, 0);
    for a in arrivals {
        if a.attempt > 1 {
            retried += 1;
        }
        let Some(i) = a.index.map(|i| i as usize).filter(|&i| i < due_ms.len()) else {
            unknown += 1;
            continue;
        };
        if a.at_us < due_ms[i] * 1000 {
            early += 1;
        }
        match &mut first_at_us[i] {
            Some(first) => {
                duplicates += 1;
                *first = (*first).min(a.at_us);
            }
            slot @ None => *slot = Some(a.at_us),
        }
    }
    let mut lateness = new_histogram();
    let mut delivered = 0u64;
    let mut last_us = 0u64;
    for (first, &due) in first_at_us.iter().zip(due_ms) {
        if let Some(at) = *first {
            delivered += 1;
            last_us = last_us.max(at);
            lateness.saturating_record(at.saturating_sub(due * 1000));
        }
    }
    let first_due_us = due_ms.iter().min().map_or(0, |d| d * 1000);
    let span_s = if delivered == 0 {
        0.0
    } else {
        // At least a millisecond, so a burst delivered "at once" has a finite rate.
        last_us.saturating_sub(first_due_us).max(1000) as f64 / 1e6
    };
    Delivery {
        delivered,
        missing: due_ms.len() as u64 - delivered,
        duplicates,
        unknown,
        early,
        retried,
        lateness_ms: Percentiles::of(&lateness),
        span_s,
        delivered_rate_per_s: if span_s > 0.0 {
            delivered as f64 / span_s
        } else {
            0.0
        },
    }
}

/// How fast the timers were created, before the first was due.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Creation {
    pub via: String,
    pub timers: u64,
    pub seconds: f64,
    pub rate_per_s: f64,
    /// Slack between the last create's acknowledgement and the first due
    /// time; negative means creating overlapped firing, so the delivery
    /// figures also measure creation.
    pub done_before_first_due_ms: i64,
}

/// CPU one process used, split into the creation and delivery phases.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cpu {
    pub label: String,
    pub pid: u32,
    pub creation_cpu_s: f64,
    pub delivery_cpu_s: f64,
    /// `delivery_cpu_s` over the delivery phase's wall time: cores busy.
    pub delivery_cores: f64,
}

/// A ceiling measured on the same broker or receiver in the same run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ceiling {
    pub what: String,
    pub count: u64,
    pub seconds: f64,
    pub rate_per_s: f64,
    /// chime's delivered rate as a fraction of this ceiling.
    pub chime_share: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// `rate` (timers spread over a duration) or `burst` (all due at once).
    pub mode: String,
    pub timers: u64,
    pub offered_rate_per_s: Option<f64>,
    pub duration_s: f64,
    pub target: String,
    pub creation: Creation,
    pub delivery: Delivery,
    /// The run stopped at its deadline with timers still missing.
    pub timed_out: bool,
    pub cpu: Vec<Cpu>,
    pub baselines: Vec<Ceiling>,
}

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let d = &self.delivery;
        let c = &self.creation;
        let l = &d.lateness_ms;
        let offered = match self.offered_rate_per_s {
            Some(r) => format!("{r:.0}/s over {:.1} s", self.duration_s),
            None => "burst, all due at once".to_string(),
        };
        let _ = writeln!(
            t,
            "chime bench — {} timers, {offered}, against {}",
            self.timers, self.target
        );
        let _ = writeln!(t);
        let _ = writeln!(t, "creation (via {})", c.via);
        let _ = writeln!(t, "  {:<26}{:.2} s", "created in", c.seconds);
        let _ = writeln!(t, "  {:<26}{:.0} timers/s", "creation rate", c.rate_per_s);
        let _ = writeln!(
            t,
            "  {:<26}{} ms",
            "slack before first due", c.done_before_first_due_ms
        );
        let _ = writeln!(t, "delivery");
        for (name, v) in [
            ("delivered", d.delivered),
            ("missing", d.missing),
            ("duplicates", d.duplicates),
            ("early (must be 0)", d.early),
            ("unknown ids", d.unknown),
            ("retried calls", d.retried),
        ] {
            let _ = writeln!(t, "  {name:<26}{v}");
        }
        let _ = writeln!(
            t,
            "  {:<26}{:.0} timers/s over {:.2} s",
            "delivered rate", d.delivered_rate_per_s, d.span_s
        );
        let _ = writeln!(
            t,
            "  {:<26}p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (mean {:.1})",
            "lateness ms", l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        );
        if self.timed_out {
            let _ = writeln!(
                t,
                "  stopped at the deadline with {} timers missing",
                d.missing
            );
        }
        if !self.cpu.is_empty() {
            let _ = writeln!(
                t,
                "cpu (seconds: creation / delivery; cores busy while delivering)"
            );
            for p in &self.cpu {
                let _ = writeln!(
                    t,
                    "  {:<40}{:.2} / {:.2} s  {:.2} cores",
                    format!("{} [{}]", p.label, p.pid),
                    p.creation_cpu_s,
                    p.delivery_cpu_s,
                    p.delivery_cores
                );
            }
        }
        if !self.baselines.is_empty() {
            let _ = writeln!(t, "baselines (same run; chime's delivered rate as a share)");
            for b in &self.baselines {
                let _ = writeln!(
                    t,
                    "  {:<40}{:.0}/s ({} in {:.2} s)  chime = {:.1} %",
                    b.what,
                    b.rate_per_s,
                    b.count,
                    b.seconds,
                    b.chime_share * 100.0
                );
            }
        }
        t
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
    fn counts_delivered_missing_duplicates_unknown_and_early() {
        let due = [1000, 1000, 2000, 3000];
        let arrivals = [
            at(0, 1005),
            at(1, 999),  // early
            at(0, 1010), // duplicate of 0
            Arrival {
                index: None,
                at_us: 1_500_000,
                attempt: 1,
            },
            Arrival {
                index: Some(9), // beyond the plan
                at_us: 1_500_000,
                attempt: 2,
            },
            at(2, 2001),
        ];
        let d = account(&due, &arrivals);
        assert_eq!(d.delivered, 3);
        assert_eq!(d.missing, 1, "timer 3 never arrived");
        assert_eq!(d.duplicates, 1);
        assert_eq!(d.unknown, 2);
        assert_eq!(d.early, 1);
        assert_eq!(d.retried, 1);
        assert_eq!(d.delivered + d.missing, due.len() as u64);
    }

    #[test]
    fn an_early_duplicate_is_early_even_after_an_on_time_first() {
        let d = account(&[1000], &[at(0, 1001), at(0, 999)]);
        assert_eq!((d.delivered, d.duplicates, d.early), (1, 1, 1));
        // Lateness is measured from the earliest arrival (0 here, early clamps to 0).
        assert_eq!(d.lateness_ms.max, 0.0);
    }

    #[test]
    fn percentiles_of_a_known_spread() {
        // Timer i arrives i+1 ms late: lateness 1..=1000 ms.
        let due: Vec<u64> = vec![10_000; 1000];
        let arrivals: Vec<Arrival> = (0..1000).map(|i| at(i, 10_001 + i as u64)).collect();
        let d = account(&due, &arrivals);
        let l = d.lateness_ms;
        // hdrhistogram keeps 3 significant digits: within 0.1 %.
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(close(l.p50, 500.0), "p50 {}", l.p50);
        assert!(close(l.p90, 900.0), "p90 {}", l.p90);
        assert!(close(l.p99, 990.0), "p99 {}", l.p99);
        assert!(close(l.p999, 999.0), "p99.9 {}", l.p999);
        assert!(close(l.max, 1000.0), "max {}", l.max);
        assert!(close(l.mean, 500.5), "mean {}", l.mean);
        // Last first arrival at 11 000 ms, first due at 10 000 ms.
        assert!((d.span_s - 1.0).abs() < 1e-9);
        assert!((d.delivered_rate_per_s - 1000.0).abs() < 1e-6);
    }

    #[test]
    fn nothing_delivered_reports_zeros_not_nonsense() {
        let d = account(&[5, 6], &[]);
        assert_eq!((d.delivered, d.missing), (0, 2));
        assert_eq!(d.lateness_ms, Percentiles::default());
        assert_eq!(d.delivered_rate_per_s, 0.0);
    }

    #[test]
    fn burst_delivered_at_its_due_instant_has_a_finite_rate() {
        let d = account(&[7000, 7000], &[at(0, 7000), at(1, 7000)]);
        assert_eq!(d.span_s, 0.001);
        assert_eq!(d.delivered_rate_per_s, 2000.0);
    }
}
