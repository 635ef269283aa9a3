#!/usr/bin/env python3
"""Generates cron.json: the next occurrences of many cron expressions in many
time zones, computed independently of chime's Rust code (croner + chrono-tz),
for the differential test in wire/tests/recurrence_fixtures.rs.

The independent implementation:

* croniter enumerates the *wall-clock* times an expression matches (naive
  datetimes: calendar arithmetic only, no time zone);
* zoneinfo (the IANA database of the `tzdata` package, pinned to the release
  chrono-tz compiles in) turns each wall-clock time into instants, applying
  chime's documented rules (docs/design.md, "Schedules: time") itself:
  - a time in a daylight-saving gap: a fixed-time expression (one second,
    minute and hour) fires at the first instant after the gap, on the same
    day if that day still matches; any other expression skips it;
  - a time in an overlap: a fixed-time expression fires at the first of the
    two instants; any other at both.

Run once (the output is committed), from this directory:

    python3 -m venv /tmp/venv
    /tmp/venv/bin/pip install croniter==7.0.0 tzdata==2025.2
    PYTHONTZPATH= /tmp/venv/bin/python generate.py > cron.json

PYTHONTZPATH= makes zoneinfo read the tzdata package rather than the system's
database, so the fixtures do not depend on the machine.
"""

import json
import re
import sys
from datetime import datetime, timedelta, timezone

import croniter as croniter_module
import tzdata
from croniter import croniter
from zoneinfo import ZoneInfo

OCCURRENCES = 16

# chime syntax: 5 fields, or 6 with seconds first.
EXPRESSIONS = [
    "* * * * *",
    "*/15 * * * *",
    "0 * * * *",
    "30 * * * *",
    "0 */2 * * *",
    "0 */3 * * *",
    "30 2 * * *",
    "0 2 * * *",
    "0 3 * * *",
    "15 1 * * *",
    "45 1 * * *",
    "0 0 * * *",
    "30 0 * * *",
    "0 9 * * MON-FRI",
    "0 9 * * 1-5",
    "0 12 * * SUN",
    "0 0 * * 7",
    "0 0 1 * *",
    "0 0 31 * *",
    "0 0 30 * *",
    "0 0 L * *",
    "0 0 29 2 *",
    "0 0 L 2 *",
    "0 8 1,15 * *",
    "0 6 * 1-3,10-12 *",
    "*/20 1-3 * * *",
    "0 10 * * 1#1",
    "0 0 1-7 * MON",
    "0 0 */10 * MON",
    "0 0 1 1 *",
    "0 9-17 * * MON-FRI",
    "5/15 * * * *",
    "* * * * * *",
    "*/10 * * * * *",
    "0 30 2 * * *",
    "15 */5 * * * *",
    "30 15 1 * * *",
    "0 0,30 1,2 * * *",
]

# Both hemispheres, half-hour and 45-minute offsets, a 30-minute DST shift
# (Lord Howe), midnight transitions (Santiago, Cairo), zones that abolished
# DST (Sao Paulo, Tehran) and zones that never had it.
ZONES = [
    "UTC",
    "Europe/Paris",
    "Europe/London",
    "America/New_York",
    "America/Los_Angeles",
    "America/St_Johns",
    "America/Sao_Paulo",
    "America/Santiago",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Pacific/Auckland",
    "Pacific/Chatham",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Asia/Tehran",
    "Africa/Cairo",
]

# Start instants for every zone: a leap day, the end of a long month, a
# plain day.
COMMON_STARTS = [
    datetime(2028, 2, 27, 0, 0, 0, tzinfo=timezone.utc),
    datetime(2027, 1, 30, 0, 0, 0, tzinfo=timezone.utc),
    datetime(2026, 6, 15, 12, 34, 56, tzinfo=timezone.utc),
]


def transitions(zone, year):
    """The instants (unix seconds) at which `zone`'s UTC offset changes in `year`."""
    start = int(datetime(year, 1, 1, tzinfo=timezone.utc).timestamp())
    end = int(datetime(year + 1, 1, 1, tzinfo=timezone.utc).timestamp())
    found = []

    def offset(t):
        return datetime.fromtimestamp(t, zone).utcoffset()

    t = start
    while t < end:
        nxt = t + 3600
        if offset(t) != offset(nxt):
            lo, hi = t, nxt  # offset(lo) != offset(hi); find the first second of the new offset
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if offset(mid) == offset(lo):
                    lo = mid
                else:
                    hi = mid
            found.append(hi)
        t = nxt
    return found


def is_plain_number(field):
    return re.fullmatch(r"\d+", field) is not None


def split(expression):
    """(croniter expression, fixed_time) for a chime expression."""
    fields = expression.split()
    if len(fields) == 6:
        seconds, rest = fields[0], fields[1:]
        # croniter takes the seconds field last.
        converted = " ".join(rest + [seconds])
    else:
        seconds, rest = "0", fields
        converted = expression
    fixed = all(is_plain_number(f) for f in (seconds, rest[0], rest[1]))
    return converted, fixed


def exists(wall, zone, fold):
    aware = wall.replace(tzinfo=zone, fold=fold)
    back = datetime.fromtimestamp(aware.timestamp(), zone).replace(tzinfo=None)
    return back == wall, int(aware.timestamp())


def instants(wall, zone, expression, fixed):
    """The instants (unix seconds) at which matching wall-clock time `wall` fires."""
    ok0, t0 = exists(wall, zone, 0)
    ok1, t1 = exists(wall, zone, 1)
    if ok0 and ok1 and t0 != t1:  # happens twice
        return [min(t0, t1)] if fixed else sorted([t0, t1])
    if ok0 or ok1:
        return [t0 if ok0 else t1]
    # In a gap.
    if not fixed:
        return []
    after = wall
    while True:
        after += timedelta(seconds=1)
        ok, t = exists(after, zone, 0)
        if ok:
            break
    # The day after the gap must still be one the expression runs on.
    probe = datetime.combine(after.date(), wall.time())
    if not croniter.match(expression, probe):
        return []
    return [t]


def occurrences(expression, zone_name, start):
    converted, fixed = split(expression)
    zone = ZoneInfo(zone_name)
    start_s = int(start.timestamp())
    wall_start = datetime.fromtimestamp(start_s, zone).replace(tzinfo=None)
    # Begin three hours of wall-clock time early: the second pass of an
    # overlap has wall-clock times before the start's.
    it = croniter(converted, wall_start - timedelta(hours=3), ret_type=datetime)
    found = set()
    while True:
        wall = it.get_next(datetime)
        for t in instants(wall, zone, converted, fixed):
            if t > start_s:
                found.add(t)
        if len(found) >= OCCURRENCES:
            nth = sorted(found)[OCCURRENCES - 1]
            nth_wall = datetime.fromtimestamp(nth, zone).replace(tzinfo=None)
            # Past any wall-clock time that could still give an earlier instant.
            if wall > nth_wall + timedelta(hours=3):
                return sorted(found)[:OCCURRENCES]


def field_class(expression):
    """How fine an expression is: "s" (several seconds a minute), "m"
    (several minutes an hour), else "h" (hourly, daily or sparser)."""
    converted, _ = split(expression)
    fields = converted.split()
    seconds = fields[5] if len(fields) == 6 else "0"
    if not is_plain_number(seconds):
        return "s"
    if not is_plain_number(fields[0]):
        return "m"
    return "h"


# How long before each daylight-saving transition the search starts, by
# class, so that the occurrences straddle the transition.
BEFORE_TRANSITION = {"s": [8], "m": [8 * 60, 2 * 3600 + 1800], "h": [2 * 3600 + 1800, 26 * 3600]}


def starts_for(zone_name, expression):
    zone = ZoneInfo(zone_name)
    cls = field_class(expression)
    starts = [] if cls == "s" else list(COMMON_STARTS)
    for t in transitions(zone, 2026):
        for before in BEFORE_TRANSITION[cls]:
            starts.append(datetime.fromtimestamp(t - before, timezone.utc))
    return starts


def main():
    cases = []
    for zone_name in ZONES:
        for expression in EXPRESSIONS:
            for start in starts_for(zone_name, expression):
                cases.append(
                    {
                        "cron": expression,
                        "time_zone": zone_name,
                        "after_s": int(start.timestamp()),
                        "next_s": occurrences(expression, zone_name, start),
                    }
                )
    json.dump(
        {
            "generator": "wire/testdata/recurrence/generate.py",
            "croniter": croniter_module.__version__
            if hasattr(croniter_module, "__version__")
            else "7.0.0",
            "tzdata": tzdata.IANA_VERSION,
            "rules": "gap: fixed-time fires at the first instant after the gap, others skip; "
            "overlap: fixed-time fires at the first instant, others at both",
            "cases": cases,
        },
        sys.stdout,
        separators=(",", ":"),
    )
    sys.stdout.write("\n")
    print(f"{len(cases)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
