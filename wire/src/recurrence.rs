//! When a schedule's occurrences are: a cron expression evaluated in an IANA
//! time zone, or a fixed interval from an anchor. Pure (no clock, no I/O), so
//! ingest (validation, "the next few due times"), the engine (the next
//! occurrence) and the checker compute the same instants.
//!
//! Cron expressions are parsed and evaluated by the `croner` crate, time zones
//! come from `chrono-tz` (the IANA database compiled in). Occurrences of a
//! cron expression are whole seconds. The rules where wall-clock time is not
//! a line (docs/design.md, "Schedules: time"):
//!
//! * **A daylight-saving gap** (a local time that does not exist): a *fixed
//!   time* expression (a single second, minute and hour, such as `30 2 * * *`)
//!   fires once, at the first instant after the gap (03:00 when 02:00 jumps to
//!   03:00); an expression with a wildcard, range, list or step in its second,
//!   minute or hour field (`*/15 * * * *`) skips the times inside the gap.
//! * **An overlap** (a local time that happens twice): a fixed-time expression
//!   fires once, at the first of the two instants; any other fires at every
//!   matching instant of both passes.
//! * **Days that some months lack** (`0 0 31 * *`, `0 0 29 2 *`): months or
//!   years without that day are skipped, as in every cron; `L` means the last
//!   day of the month.
//!
//! An interval schedule's occurrences are `anchor + k × every` for k ≥ 0, in
//! unix milliseconds: time zones do not apply.

use std::str::FromStr;

use chrono::DateTime;
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use crate::command::FieldError;

/// The shortest interval between two occurrences of an interval schedule; a
/// cron expression's finest grain is one second too.
pub const MIN_INTERVAL_MS: u64 = 1_000;
/// Occurrences are computed up to this instant (year 4000); beyond it a
/// schedule has no more occurrences.
pub const LAST_INSTANT_MS: u64 = 64_060_588_800_000;

/// The occurrences of a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recurrence {
    /// A cron expression (5 fields, or 6 with seconds first) in a time zone.
    Cron(Box<CronRecurrence>),
    /// Every `every_ms` milliseconds from `anchor_ms` (the first occurrence).
    Every { every_ms: u64, anchor_ms: u64 },
}

/// A parsed cron expression and its time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronRecurrence {
    cron: Cron,
    zone: Tz,
}

impl CronRecurrence {
    /// Parses `expression` (fields named `cron`) in `time_zone` (field
    /// `time_zone`, an IANA name such as `Europe/Paris`; `UTC` works too).
    /// Refuses an expression that never matches (`0 0 30 2 *`).
    pub fn parse(expression: &str, time_zone: &str) -> Result<Self, FieldError> {
        let zone = parse_zone(time_zone)?;
        let expression = expression.trim();
        if expression.len() > 256 {
            return Err(FieldError::new("cron", "is longer than 256 characters"));
        }
        let cron = parser().parse(expression).map_err(|e| {
            FieldError::new(
                "cron",
                format!("{expression:?} is not a cron expression: {e}"),
            )
        })?;
        let parsed = CronRecurrence { cron, zone };
        // A pattern that never matches (the 30th of February) is an error,
        // not a schedule that silently never fires.
        if parsed.at_or_after(0).is_none() {
            return Err(FieldError::new(
                "cron",
                format!("{expression:?} never matches a date"),
            ));
        }
        Ok(parsed)
    }

    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// Whether the expression is a fixed time of day (one second, minute and
    /// hour): it then fires once in a daylight-saving gap or overlap.
    pub fn is_fixed_time(&self) -> bool {
        self.cron.determine_job_type() == croner::JobType::FixedTime
    }

    fn at_or_after(&self, t_ms: u64) -> Option<u64> {
        let secs = t_ms.div_ceil(1000);
        let start = self.instant(secs)?;
        let next = self.cron.find_next_occurrence(&start, true).ok()?;
        to_ms(next.timestamp())
    }

    fn at_or_before(&self, t_ms: u64) -> Option<u64> {
        let start = self.instant(t_ms / 1000)?;
        let previous = self.cron.find_previous_occurrence(&start, true).ok()?;
        to_ms(previous.timestamp())
    }

    fn instant(&self, secs: u64) -> Option<DateTime<Tz>> {
        if secs.saturating_mul(1000) > LAST_INSTANT_MS {
            return None;
        }
        Some(DateTime::from_timestamp(i64::try_from(secs).ok()?, 0)?.with_timezone(&self.zone))
    }
}

/// The parser every chime process uses: 5 fields, or 6 with seconds first; no
/// year field; `0/10` is read as `*/10` from 0 (as most crons do); names of
/// days and months, `L`, `W`, `#`, `?` and the `@daily`-style nicknames.
fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .sloppy_ranges(true)
        .build()
}

/// An IANA time zone name, exactly as the database spells it.
pub fn parse_zone(name: &str) -> Result<Tz, FieldError> {
    Tz::from_str(name).map_err(|_| {
        let hint = chrono_tz::TZ_VARIANTS
            .iter()
            .find(|tz| tz.name().eq_ignore_ascii_case(name))
            .map(|tz| format!(" (did you mean {:?}?)", tz.name()))
            .unwrap_or_default();
        FieldError::new(
            "time_zone",
            format!("{name:?} is not an IANA time zone name such as \"Europe/Paris\"{hint}"),
        )
    })
}

fn to_ms(secs: i64) -> Option<u64> {
    let ms = u64::try_from(secs).ok()?.checked_mul(1000)?;
    (ms <= LAST_INSTANT_MS).then_some(ms)
}

impl Recurrence {
    /// An interval schedule: every `every_ms` (field `every_ms`, at least
    /// [`MIN_INTERVAL_MS`]) from `anchor_ms`.
    pub fn every(every_ms: u64, anchor_ms: u64) -> Result<Self, FieldError> {
        if every_ms < MIN_INTERVAL_MS {
            return Err(FieldError::new(
                "every_ms",
                format!("{every_ms} is less than the minimum of {MIN_INTERVAL_MS} ms"),
            ));
        }
        Ok(Recurrence::Every {
            every_ms,
            anchor_ms,
        })
    }

    /// The first occurrence at or after `t_ms`, if there is one.
    pub fn at_or_after(&self, t_ms: u64) -> Option<u64> {
        match self {
            Recurrence::Cron(c) => c.at_or_after(t_ms),
            &Recurrence::Every {
                every_ms,
                anchor_ms,
            } => {
                let at = if t_ms <= anchor_ms {
                    anchor_ms
                } else {
                    let k = (t_ms - anchor_ms).div_ceil(every_ms);
                    anchor_ms.checked_add(k.checked_mul(every_ms)?)?
                };
                (at <= LAST_INSTANT_MS).then_some(at)
            }
        }
    }

    /// The first occurrence strictly after `t_ms`.
    pub fn after(&self, t_ms: u64) -> Option<u64> {
        self.at_or_after(t_ms.checked_add(1)?)
    }

    /// The last occurrence at or before `t_ms`, if there is one.
    pub fn at_or_before(&self, t_ms: u64) -> Option<u64> {
        match self {
            Recurrence::Cron(c) => c.at_or_before(t_ms),
            &Recurrence::Every {
                every_ms,
                anchor_ms,
            } => {
                let t_ms = t_ms.min(LAST_INSTANT_MS);
                if t_ms < anchor_ms {
                    return None;
                }
                Some(anchor_ms + (t_ms - anchor_ms) / every_ms * every_ms)
            }
        }
    }

    /// The last occurrence strictly before `t_ms`.
    pub fn before(&self, t_ms: u64) -> Option<u64> {
        self.at_or_before(t_ms.checked_sub(1)?)
    }

    /// Up to `n` occurrences at or after `t_ms`, in order.
    pub fn upcoming(&self, t_ms: u64, n: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(n);
        let mut next = self.at_or_after(t_ms);
        while let Some(at) = next {
            if out.len() >= n {
                break;
            }
            out.push(at);
            next = self.after(at);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> u64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis() as u64
    }

    fn cron(expression: &str, zone: &str) -> Recurrence {
        Recurrence::Cron(Box::new(CronRecurrence::parse(expression, zone).unwrap()))
    }

    fn fmt(at: u64, zone: &str) -> String {
        let tz = parse_zone(zone).unwrap();
        DateTime::from_timestamp_millis(at as i64)
            .unwrap()
            .with_timezone(&tz)
            .to_rfc3339()
    }

    fn next_n(r: &Recurrence, from: &str, n: usize, zone: &str) -> Vec<String> {
        r.upcoming(ms(from), n)
            .into_iter()
            .map(|at| fmt(at, zone))
            .collect()
    }

    #[test]
    fn weekdays_at_nine_in_paris() {
        let r = cron("0 9 * * MON-FRI", "Europe/Paris");
        assert_eq!(
            next_n(&r, "2026-03-27T10:00:00+01:00", 3, "Europe/Paris"),
            [
                "2026-03-30T09:00:00+02:00", // Monday, after the switch to summer time
                "2026-03-31T09:00:00+02:00",
                "2026-04-01T09:00:00+02:00",
            ]
        );
    }

    #[test]
    fn a_fixed_time_in_the_spring_gap_fires_at_the_end_of_the_gap() {
        let r = cron("30 2 * * *", "Europe/Paris");
        assert_eq!(
            next_n(&r, "2026-03-28T12:00:00+01:00", 3, "Europe/Paris"),
            [
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00",
                "2026-03-31T02:30:00+02:00",
            ]
        );
    }

    #[test]
    fn a_wildcard_skips_the_gap_and_repeats_in_the_overlap() {
        let r = cron("*/30 2 * * *", "Europe/Paris");
        assert_eq!(
            next_n(&r, "2026-03-29T00:00:00+01:00", 2, "Europe/Paris"),
            ["2026-03-30T02:00:00+02:00", "2026-03-30T02:30:00+02:00"],
            "02:00 and 02:30 do not exist on 29 March"
        );
        assert_eq!(
            next_n(&r, "2026-10-25T00:00:00+02:00", 5, "Europe/Paris"),
            [
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T02:30:00+01:00",
                "2026-10-26T02:00:00+01:00",
            ]
        );
    }

    #[test]
    fn a_fixed_time_in_the_overlap_fires_once() {
        let r = cron("30 2 * * *", "Europe/Paris");
        assert_eq!(
            next_n(&r, "2026-10-24T12:00:00+02:00", 2, "Europe/Paris"),
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
        );
        // Asked from inside the second pass, the next is the next day's.
        assert_eq!(
            next_n(&r, "2026-10-25T02:10:00+01:00", 1, "Europe/Paris"),
            ["2026-10-26T02:30:00+01:00"]
        );
    }

    #[test]
    fn short_months_and_leap_days() {
        let r = cron("0 0 31 * *", "UTC");
        assert_eq!(
            next_n(&r, "2026-04-01T00:00:00Z", 3, "UTC"),
            [
                "2026-05-31T00:00:00+00:00",
                "2026-07-31T00:00:00+00:00",
                "2026-08-31T00:00:00+00:00",
            ]
        );
        let r = cron("0 0 L 2 *", "UTC");
        assert_eq!(
            next_n(&r, "2027-03-01T00:00:00Z", 2, "UTC"),
            ["2028-02-29T00:00:00+00:00", "2029-02-28T00:00:00+00:00"]
        );
        let r = cron("0 0 29 2 *", "UTC");
        assert_eq!(
            next_n(&r, "2028-03-01T00:00:00Z", 1, "UTC"),
            ["2032-02-29T00:00:00+00:00"]
        );
    }

    #[test]
    fn seconds_field_and_bounds() {
        let r = cron("*/10 * * * * *", "UTC");
        assert_eq!(
            r.at_or_after(ms("2026-01-01T00:00:00.001Z")),
            Some(ms("2026-01-01T00:00:10Z"))
        );
        assert_eq!(
            r.after(ms("2026-01-01T00:00:10Z")),
            Some(ms("2026-01-01T00:00:20Z"))
        );
        assert_eq!(
            r.at_or_before(ms("2026-01-01T00:00:19.999Z")),
            Some(ms("2026-01-01T00:00:10Z"))
        );
        assert_eq!(
            r.before(ms("2026-01-01T00:00:10Z")),
            Some(ms("2026-01-01T00:00:00Z"))
        );
        assert_eq!(r.at_or_after(u64::MAX), None);
        assert_eq!(r.after(u64::MAX), None);
    }

    #[test]
    fn intervals_count_from_their_anchor() {
        let r = Recurrence::every(30_000, 1_000_000).unwrap();
        assert_eq!(r.at_or_after(0), Some(1_000_000));
        assert_eq!(r.at_or_after(1_000_000), Some(1_000_000));
        assert_eq!(r.after(1_000_000), Some(1_030_000));
        assert_eq!(r.at_or_after(1_000_001), Some(1_030_000));
        assert_eq!(r.at_or_before(1_059_999), Some(1_030_000));
        assert_eq!(r.at_or_before(999_999), None);
        assert_eq!(r.before(1_000_000), None);
        assert_eq!(r.upcoming(1_000_001, 2), [1_030_000, 1_060_000]);
        assert_eq!(r.at_or_after(u64::MAX - 5), None);
        let e = Recurrence::every(999, 0).unwrap_err();
        assert_eq!(e.field, "every_ms");
    }

    #[test]
    fn bad_expressions_and_zones_name_their_field() {
        for bad in [
            "",
            "* * * *",
            "61 * * * *",
            "0 9 * * MON-FRY",
            "0 0 0 0 0 0 0",
            "0 0 30 2 *",
        ] {
            let e = CronRecurrence::parse(bad, "UTC").unwrap_err();
            assert_eq!(e.field, "cron", "{bad:?}: {e}");
        }
        let e = CronRecurrence::parse("0 9 * * *", "Mars/Olympus").unwrap_err();
        assert_eq!(e.field, "time_zone");
        let e = CronRecurrence::parse("0 9 * * *", "europe/paris").unwrap_err();
        assert!(e.message.contains("Europe/Paris"), "{e}");
    }

    #[test]
    fn fixed_time_is_told_from_wildcards() {
        assert!(CronRecurrence::parse("30 2 * * *", "UTC")
            .unwrap()
            .is_fixed_time());
        assert!(!CronRecurrence::parse("*/5 2 * * *", "UTC")
            .unwrap()
            .is_fixed_time());
        assert!(!CronRecurrence::parse("0 1,2 * * *", "UTC")
            .unwrap()
            .is_fixed_time());
    }
}
