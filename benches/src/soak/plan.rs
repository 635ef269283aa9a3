//! What a soak run will do, decided up front from its seed: every timer
//! (when it is created, how, when it is due, whether and how it is
//! cancelled) and every fault (when, to whom, for how long). Pure: the same
//! seed and settings give the same plan, whatever the machine does.

use std::fmt;

/// SplitMix64: a small PRNG whose output is fixed by its definition, so a
/// seed means the same schedule in every build (a library generator may
/// change its algorithm between versions).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        debug_assert!(low <= high);
        low + self.next_u64() % (high - low + 1)
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next_u64() % items.len() as u64) as usize]
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// How a create or a cancel reaches chime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The REST API of ingest 0 or 1.
    Rest(usize),
    /// A record produced straight to `<prefix>.timers`.
    Kafka,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Rest(i) => write!(f, "ingest-{}", i + 1),
            Path::Kafka => write!(f, "kafka"),
        }
    }
}

/// One timer of the run; times are milliseconds from the start of traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTimer {
    pub create_at: u64,
    pub create_via: Path,
    pub due_at: u64,
    /// When and how it is cancelled, if it is.
    pub cancel: Option<(u64, Path)>,
}

/// Settings the plan is derived from (besides the seed).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Traffic and faults last this long, ms.
    pub window_ms: u64,
    /// Timers created per second.
    pub rate: u64,
    /// Percent of timers cancelled.
    pub cancel_percent: u64,
    /// The engines' and dispatchers' session timeout, ms: some pauses are
    /// longer.
    pub session_timeout_ms: u64,
    /// Whether the broker is restarted once.
    pub broker_restart: bool,
}

/// Timers are due this long after they are created, ms (uniform).
pub const DUE_AFTER_MS: (u64, u64) = (1_000, 15_000);
/// Cancelled timers are due this long after creation: well after their
/// cancel, so a cancel that is acknowledged must win.
pub const CANCELLED_DUE_AFTER_MS: (u64, u64) = (30_000, 45_000);
/// Cancels are sent this long after the create.
pub const CANCEL_AFTER_MS: (u64, u64) = (2_000, 5_000);

/// The run's timers, in creation order. Creates alternate between the two
/// ingests and direct produce (ingest-1, kafka, ingest-2, kafka, …); a timer
/// is cancelled only if its cancel and its due time both fall inside the
/// window, so a lost cancel shows as a callback before the run ends.
pub fn timers(seed: u64, shape: &Shape) -> Vec<PlannedTimer> {
    let mut rng = Rng::new(seed ^ 0x7431_6d65_7273); // "timers"
    let n = shape.window_ms * shape.rate / 1000;
    let paths = [Path::Rest(0), Path::Rest(1), Path::Kafka];
    (0..n)
        .map(|i| {
            let create_at = i * 1000 / shape.rate;
            let create_via = match i % 4 {
                0 => Path::Rest(0),
                2 => Path::Rest(1),
                _ => Path::Kafka,
            };
            let cancel_at = create_at + rng.between(CANCEL_AFTER_MS.0, CANCEL_AFTER_MS.1);
            let cancelled_due =
                create_at + rng.between(CANCELLED_DUE_AFTER_MS.0, CANCELLED_DUE_AFTER_MS.1);
            let cancel = (rng.percent(shape.cancel_percent) && cancelled_due < shape.window_ms)
                .then(|| (cancel_at, *rng.pick(&paths)));
            let due_at = match cancel {
                Some(_) => cancelled_due,
                None => create_at + rng.between(DUE_AFTER_MS.0, DUE_AFTER_MS.1),
            };
            PlannedTimer {
                create_at,
                create_via,
                due_at,
                cancel,
            }
        })
        .collect()
}

/// The chime roles, two processes each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Ingest,
    Engine,
    Dispatcher,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Ingest, Role::Engine, Role::Dispatcher];

    pub fn name(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Engine => "engine",
            Role::Dispatcher => "dispatcher",
        }
    }
}

/// What is done to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// kill -9, restarted (same arguments and instance id) after `for_ms`.
    Kill { role: Role, instance: usize },
    /// SIGSTOP, SIGCONT after `for_ms`.
    Pause { role: Role, instance: usize },
    /// The broker stopped and, after `for_ms`, started again.
    BrokerRestart,
}

/// One fault; times are ms from the start of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub at: u64,
    pub kind: FaultKind,
    /// How long the process stays dead or stopped (or the broker down).
    pub for_ms: u64,
}

impl Fault {
    /// When the planned fault is over (the process restarted or resumed).
    pub fn until(&self) -> u64 {
        self.at + self.for_ms
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |ms: u64| ms as f64 / 1000.0;
        match self.kind {
            FaultKind::Kill { role, instance } => write!(
                f,
                "kill -9 {}-{}, restart after {:.1} s",
                role.name(),
                instance + 1,
                secs(self.for_ms)
            ),
            FaultKind::Pause { role, instance } => write!(
                f,
                "SIGSTOP {}-{} for {:.1} s",
                role.name(),
                instance + 1,
                secs(self.for_ms)
            ),
            FaultKind::BrokerRestart => {
                write!(f, "broker restart, down {:.1} s", secs(self.for_ms))
            }
        }
    }
}

/// Quiet at the start of the window, before the first fault, ms.
const FIRST_FAULT_AT_MS: u64 = 3_000;
/// Quiet after each fault ends before the next begins, ms (uniform).
const GAP_MS: (u64, u64) = (2_000, 6_000);
/// How long a killed process stays dead, ms (uniform).
const DEAD_MS: (u64, u64) = (500, 8_000);
/// How long the broker stays down, ms (uniform).
const BROKER_DOWN_MS: (u64, u64) = (1_000, 5_000);

/// One fault at a time, each followed by a quiet gap, all over by the end
/// of the window. Every role gets both a kill and a pause before any gets a
/// second (in a seeded order); half the pauses are longer than the session
/// timeout (a member presumed dead that wakes up), half shorter. With
/// `broker_restart`, the broker restarts once, as the fault nearest the
/// middle of the window.
pub fn faults(seed: u64, shape: &Shape) -> Vec<Fault> {
    let mut rng = Rng::new(seed ^ 0x6661_756c_7473); // "faults"
    let session = shape.session_timeout_ms;
    let mut faults = Vec::new();
    let mut deck: Vec<FaultKind> = Vec::new();
    let mut at = FIRST_FAULT_AT_MS;
    let mut broker_pending = shape.broker_restart;
    loop {
        let kind = if broker_pending && at >= shape.window_ms / 2 {
            broker_pending = false;
            FaultKind::BrokerRestart
        } else {
            if deck.is_empty() {
                for role in Role::ALL {
                    deck.push(FaultKind::Kill { role, instance: 0 });
                    deck.push(FaultKind::Pause { role, instance: 0 });
                }
                rng.shuffle(&mut deck);
            }
            let instance = rng.between(0, 1) as usize;
            match deck.pop() {
                Some(FaultKind::Kill { role, .. }) => FaultKind::Kill { role, instance },
                Some(FaultKind::Pause { role, .. }) => FaultKind::Pause { role, instance },
                _ => unreachable!("the deck holds kills and pauses"),
            }
        };
        let for_ms = match kind {
            FaultKind::Kill { .. } => rng.between(DEAD_MS.0, DEAD_MS.1),
            FaultKind::Pause { .. } if rng.percent(50) => {
                rng.between(session + 1_000, session + 6_000)
            }
            FaultKind::Pause { .. } => rng.between(500, session.saturating_sub(1_000).max(500)),
            FaultKind::BrokerRestart => rng.between(BROKER_DOWN_MS.0, BROKER_DOWN_MS.1),
        };
        let fault = Fault { at, kind, for_ms };
        if fault.until() > shape.window_ms {
            break;
        }
        faults.push(fault);
        at = fault.until() + rng.between(GAP_MS.0, GAP_MS.1);
    }
    faults
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(window_s: u64) -> Shape {
        Shape {
            window_ms: window_s * 1000,
            rate: 100,
            cancel_percent: 3,
            session_timeout_ms: 6_000,
            broker_restart: true,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_plan_and_another_seed_another() {
        let s = shape(120);
        assert_eq!(timers(7, &s), timers(7, &s));
        assert_eq!(faults(7, &s), faults(7, &s));
        assert_ne!(timers(7, &s), timers(8, &s));
        assert_ne!(faults(7, &s), faults(8, &s));
        // A fixed reference, so the generator itself cannot drift.
        let mut rng = Rng::new(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn timers_come_at_the_rate_through_every_path_and_some_are_cancelled_in_the_window() {
        let s = shape(120);
        let t = timers(1, &s);
        assert_eq!(t.len(), 12_000);
        assert!(t.windows(2).all(|w| w[0].create_at <= w[1].create_at));
        for path in [Path::Rest(0), Path::Rest(1), Path::Kafka] {
            assert!(t.iter().any(|t| t.create_via == path), "{path}");
            assert!(
                t.iter().any(|t| t.cancel.is_some_and(|(_, p)| p == path)),
                "{path}"
            );
        }
        let cancelled: Vec<_> = t.iter().filter(|t| t.cancel.is_some()).collect();
        assert!(
            (100..=600).contains(&cancelled.len()),
            "{}",
            cancelled.len()
        );
        for c in cancelled {
            let (at, _) = c.cancel.unwrap();
            assert!(at < c.due_at && c.due_at < s.window_ms);
            assert!(c.due_at - at >= CANCELLED_DUE_AFTER_MS.0 - CANCEL_AFTER_MS.1);
        }
    }

    #[test]
    fn faults_do_not_overlap_cover_every_role_both_ways_and_restart_the_broker_once() {
        for seed in 0..50 {
            let s = shape(120);
            let f = faults(seed, &s);
            assert!(f.windows(2).all(|w| w[0].until() < w[1].at), "seed {seed}");
            assert!(f.last().is_some_and(|l| l.until() <= s.window_ms));
            let brokers = f
                .iter()
                .filter(|f| f.kind == FaultKind::BrokerRestart)
                .count();
            assert_eq!(brokers, 1, "seed {seed}: {f:?}");
            for role in Role::ALL {
                let kills = f
                    .iter()
                    .any(|f| matches!(f.kind, FaultKind::Kill { role: r, .. } if r == role));
                let pauses = f
                    .iter()
                    .any(|f| matches!(f.kind, FaultKind::Pause { role: r, .. } if r == role));
                assert!(kills && pauses, "seed {seed}: {role:?} in {f:?}");
            }
        }
        let long = (0..20)
            .flat_map(|seed| faults(seed, &shape(600)))
            .filter(|f| matches!(f.kind, FaultKind::Pause { .. }))
            .filter(|f| f.for_ms > 6_000)
            .count();
        assert!(long > 0, "some pauses outlast the session timeout");
        let without = Shape {
            broker_restart: false,
            ..shape(120)
        };
        assert!(faults(3, &without)
            .iter()
            .all(|f| f.kind != FaultKind::BrokerRestart));
    }
}
