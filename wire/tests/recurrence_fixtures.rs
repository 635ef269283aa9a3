//! Differential test of the next-occurrence computation: chime's (croner +
//! chrono-tz) against fixtures computed once by an independent implementation
//! (Python: croniter for the calendar, zoneinfo for the time zones, chime's
//! daylight-saving rules written out again) — `testdata/recurrence/generate.py`.
//! Thousands of expressions × zones × start instants around daylight-saving
//! transitions in both hemispheres, leap days and month ends.

use chime_wire::recurrence::{CronRecurrence, Recurrence};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixtures {
    tzdata: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    cron: String,
    time_zone: String,
    after_s: u64,
    next_s: Vec<u64>,
}

fn fixtures() -> Fixtures {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/recurrence/cron.json");
    let text = std::fs::read_to_string(path).expect("the fixtures are committed");
    serde_json::from_str(&text).expect("fixtures parse")
}

fn describe(case: &Case) -> String {
    format!(
        "{:?} in {} after {}",
        case.cron, case.time_zone, case.after_s
    )
}

#[test]
fn next_occurrences_match_the_independent_implementation() {
    let fixtures = fixtures();
    assert!(fixtures.cases.len() > 3000, "the fixtures cover enough");
    // The same IANA release on both sides (chrono-tz 0.10.4 compiles in 2025b).
    assert_eq!(fixtures.tzdata, "2025b");
    let mut mismatches = Vec::new();
    let mut compared = 0usize;
    for case in &fixtures.cases {
        let recurrence = Recurrence::Cron(Box::new(
            CronRecurrence::parse(&case.cron, &case.time_zone)
                .unwrap_or_else(|e| panic!("{}: {e}", describe(case))),
        ));
        let mut at = case.after_s * 1000;
        let mut got = Vec::with_capacity(case.next_s.len());
        for _ in 0..case.next_s.len() {
            match recurrence.after(at) {
                Some(next) => {
                    got.push(next / 1000);
                    at = next;
                }
                None => break,
            }
        }
        compared += got.len();
        if got != case.next_s {
            let first = got
                .iter()
                .zip(&case.next_s)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(case.next_s.len()));
            mismatches.push(format!(
                "{}: occurrence {first}: chime {:?}, expected {:?}",
                describe(case),
                got.get(first),
                case.next_s.get(first)
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ (of {compared} occurrences); first ones:\n{}",
        mismatches.len(),
        fixtures.cases.len(),
        mismatches
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The engine looks backwards too (the latest of many missed occurrences):
/// walking back from the last expected occurrence gives the same instants.
#[test]
fn walking_backwards_gives_the_same_occurrences() {
    let fixtures = fixtures();
    let mut mismatches = Vec::new();
    for case in &fixtures.cases {
        let recurrence = Recurrence::Cron(Box::new(
            CronRecurrence::parse(&case.cron, &case.time_zone).unwrap(),
        ));
        let Some(&last) = case.next_s.last() else {
            continue;
        };
        let mut expected: Vec<u64> = case.next_s.clone();
        expected.reverse();
        let mut got = vec![last];
        let mut at = last * 1000;
        while got.len() < expected.len() {
            match recurrence.before(at) {
                Some(previous) => {
                    got.push(previous / 1000);
                    at = previous;
                }
                None => break,
            }
        }
        if got != expected {
            mismatches.push(format!(
                "{}: back {got:?}, expected {expected:?}",
                describe(case)
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} cases differ walking backwards; first ones:\n{}",
        mismatches.len(),
        mismatches
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
