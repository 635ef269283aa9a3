use super::*;
use chime_wire::schedule::{CatchUp, DEFAULT_CATCH_UP_WINDOW_MS};

fn every(ms: u64, catch_up: CatchUp) -> Schedule {
    let spec: ScheduleSpec = serde_json::from_value(serde_json::json!({
        "id": "s", "every_ms": ms, "start_at_ms": 0,
        "callback": {"url": "http://127.0.0.1:9/"}
    }))
    .unwrap();
    let spec = ScheduleSpec { catch_up, ..spec };
    Schedule::from_state(ScheduleState {
        spec,
        created_at_ms: 0,
        next_at_ms: Some(0),
        fired: 0,
        skipped: 0,
        paused_at_ms: None,
        recent: Vec::new(),
        skips: Vec::new(),
        audit_from_ms: 0,
        ended: None,
    })
    .unwrap()
}

fn policy(policy: CatchUpPolicy) -> CatchUp {
    CatchUp {
        policy,
        window_ms: DEFAULT_CATCH_UP_WINDOW_MS,
    }
}

#[test]
fn on_time_an_occurrence_fires_within_the_lead() {
    let s = every(1_000, CatchUp::default());
    let p = s.plan(5_000, 4_850, 5_050);
    assert_eq!(p.fire, [5_000]);
    assert_eq!(p.next, Some(6_000));
    assert_eq!(p.skipped, None);
    // A lead longer than the interval emits several.
    let p = s.plan(5_000, 4_000, 7_000);
    assert_eq!(p.fire, [5_000, 6_000, 7_000]);
    assert_eq!(p.next, Some(8_000));
}

#[test]
fn a_short_outage_fires_every_missed_occurrence_whatever_the_policy() {
    for pol in [
        CatchUpPolicy::Latest,
        CatchUpPolicy::All,
        CatchUpPolicy::Skip,
    ] {
        let s = every(1_000, policy(pol));
        // 10 s behind, within the 60 s window.
        let p = s.plan(5_000, 15_000, 15_200);
        assert_eq!(
            p.fire,
            (5..=15).map(|i| i * 1_000).collect::<Vec<_>>(),
            "{pol:?}"
        );
        assert_eq!(p.skipped, None);
        assert_eq!(p.next, Some(16_000));
    }
}

#[test]
fn past_the_window_the_policy_decides() {
    let now = 5_000 + 120_000;
    let s = every(1_000, policy(CatchUpPolicy::Latest));
    let p = s.plan(5_000, now, now + 200);
    assert_eq!(p.fire, [now]);
    assert_eq!(
        p.skipped,
        Some(SkipRange {
            from_ms: 5_000,
            to_ms: now - 1_000,
            count: 120
        })
    );
    let s = every(1_000, policy(CatchUpPolicy::Skip));
    let p = s.plan(5_000, now, now + 200);
    assert!(p.fire.is_empty());
    assert_eq!(p.skipped.unwrap().count, 121);
    assert_eq!(p.next, Some(now + 1_000));
    let s = every(1_000, policy(CatchUpPolicy::All));
    let p = s.plan(5_000, now, now + 200);
    assert_eq!(p.fire.len(), 121);
    assert_eq!(p.skipped, None);
}

#[test]
fn at_most_max_catch_up_overdue_occurrences_fire_the_most_recent() {
    let s = every(1_000, policy(CatchUpPolicy::All));
    let now = 10_000_000;
    let p = s.plan(0, now, now);
    assert_eq!(p.fire.len(), MAX_CATCH_UP);
    assert_eq!(p.fire.last(), Some(&now));
    assert_eq!(p.fire[0], now - (MAX_CATCH_UP as u64 - 1) * 1_000);
    let skip = p.skipped.unwrap();
    assert_eq!((skip.from_ms, skip.to_ms), (0, p.fire[0] - 1_000));
    assert_eq!(skip.count + p.fire.len() as u64, now / 1_000 + 1);
    assert_eq!(p.next, Some(now + 1_000));
}

#[test]
fn a_cron_schedule_far_behind_keeps_the_latest() {
    let spec: ScheduleSpec = serde_json::from_value(serde_json::json!({
        "id": "c", "cron": "* * * * * *",
        "callback": {"url": "http://127.0.0.1:9/"}
    }))
    .unwrap();
    let s = Schedule::from_state(ScheduleState {
        spec,
        created_at_ms: 0,
        next_at_ms: Some(1_000),
        fired: 0,
        skipped: 0,
        paused_at_ms: None,
        recent: Vec::new(),
        skips: Vec::new(),
        audit_from_ms: 0,
        ended: None,
    })
    .unwrap();
    // Two days behind: bounded work, the latest fires.
    let now = 2 * 86_400_000;
    let p = s.plan(1_000, now + 10, now + 200);
    assert_eq!(p.fire, [now]);
    let skip = p.skipped.unwrap();
    assert_eq!((skip.from_ms, skip.to_ms), (1_000, now - 1_000));
    assert_eq!(
        skip.count,
        COUNT_LIMIT + MAX_CATCH_UP as u64 - 1,
        "the head counted up to the limit, and the rest but the latest"
    );
}

mod in_a_partition {
    use super::*;
    use crate::output::Output;
    use crate::partition::{InputRecord, PartitionState, TimerWheel};
    use crate::status::FinishedTimers;

    const RETENTION: u64 = 3_600_000;

    fn state() -> PartitionState {
        let mut s = PartitionState::new(
            0,
            TimerWheel::new(0),
            FinishedTimers::new(RETENTION, 1000),
            Some(0),
        );
        s.caught_up = true;
        s
    }

    fn record(s: &PartitionState, id: &str, json: serde_json::Value, at: u64) -> InputRecord {
        InputRecord {
            partition: 0,
            offset: s.next_offset.unwrap_or(0),
            key: Some(Bytes::copy_from_slice(id.as_bytes())),
            value: Some(Bytes::from(json.to_string())),
            timestamp_ms: Some(at),
        }
    }

    fn apply(s: &mut PartitionState, id: &str, json: serde_json::Value, now: u64) {
        let rec = record(s, id, json, now);
        s.apply(&rec, now, "t");
    }

    fn every_second(s: &mut PartitionState, id: &str, now: u64, extra: serde_json::Value) {
        let mut json = serde_json::json!({"op": "recurring", "id": id, "every_ms": 1000,
            "callback": {"url": "http://127.0.0.1:9/"}});
        for (k, v) in extra.as_object().unwrap() {
            json[k] = v.clone();
        }
        apply(s, id, json, now);
    }

    /// Fire records emitted since the outputs were last taken: (id, due).
    fn fired(s: &mut PartitionState) -> Vec<(String, u64)> {
        std::mem::take(&mut s.outputs)
            .into_iter()
            .filter_map(|o| match o {
                Output::Occurrence { id, fire_at_ms, .. } => {
                    Some((String::from_utf8_lossy(&id).into_owned(), fire_at_ms))
                }
                _ => None,
            })
            .collect()
    }

    fn state_of(s: &PartitionState, id: &str) -> ScheduleState {
        s.schedules.get(id.as_bytes()).unwrap().state.clone()
    }

    fn run(s: &mut PartitionState, from: u64, to: u64, step: u64) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut t = from;
        while t <= to {
            s.fire_due(t, 200, &mut Vec::new());
            out.extend(fired(s));
            t += step;
        }
        out
    }

    #[test]
    fn every_occurrence_once_each_with_its_state_in_the_same_outputs() {
        let mut s = state();
        every_second(&mut s, "hb", 10_000, serde_json::json!({}));
        assert_eq!(
            s.outputs.iter().map(Output::kind).collect::<Vec<_>>(),
            ["schedule"]
        );
        s.outputs.clear();
        // Ticks of 10 ms from 10 s to 15 s: occurrences 11 s … 15 s (+ 15.2 s lead).
        let got = run(&mut s, 10_000, 15_000, 10);
        let dues: Vec<u64> = got.iter().map(|(_, d)| *d).collect();
        assert_eq!(dues, [11_000, 12_000, 13_000, 14_000, 15_000]);
        assert_eq!(got[0].0, "hb@11000");
        let st = state_of(&s, "hb");
        assert_eq!(st.fired, 5);
        assert_eq!(st.next_at_ms, Some(16_000));
        // The fire and the new state go out together.
        s.fire_due(15_800, 200, &mut Vec::new());
        let kinds: Vec<_> = s.outputs.iter().map(Output::kind).collect();
        assert_eq!(kinds, ["occurrence", "schedule"]);
        // A timer with the schedule's id is not "pending" to the wheel's listing.
        assert!(s.list_pending(&Default::default()).0.is_empty());
        assert_eq!(
            s.list_schedules(&chime_wire::ListQuery {
                limit: 5,
                ..Default::default()
            })
            .0
            .len(),
            1
        );
    }

    #[test]
    fn the_command_time_is_the_start_and_catch_up_covers_a_late_apply() {
        let mut s = state();
        // Written at 10 s, applied at 13.5 s (no engine meanwhile).
        let rec = record(
            &s,
            "hb",
            serde_json::json!({"op": "recurring", "id": "hb",
            "every_ms": 1000, "callback": {"url": "http://127.0.0.1:9/"}}),
            10_000,
        );
        s.apply(&rec, 13_500, "t");
        let got = run(&mut s, 13_500, 13_500, 10);
        let dues: Vec<u64> = got.iter().map(|(_, d)| *d).collect();
        assert_eq!(
            dues,
            [11_000, 12_000, 13_000],
            "late, within the window: all"
        );
    }

    #[test]
    fn pause_stops_and_resume_restarts_skipping_what_was_due_meanwhile() {
        let mut s = state();
        every_second(&mut s, "hb", 0, serde_json::json!({}));
        run(&mut s, 0, 2_000, 100);
        // 2.85 s: occurrence 3 s was emitted ahead (lead 200 ms); pausing revokes it.
        s.fire_due(2_850, 200, &mut Vec::new());
        assert_eq!(fired(&mut s), [("hb@3000".to_string(), 3_000)]);
        apply(
            &mut s,
            "hb",
            serde_json::json!({"op": "pause", "id": "hb"}),
            2_900,
        );
        let kinds: Vec<_> = s.outputs.iter().map(Output::kind).collect();
        assert_eq!(kinds, ["revoke", "schedule"]);
        let st = state_of(&s, "hb");
        assert_eq!((st.fired, st.next_at_ms), (2, Some(3_000)));
        assert!(
            run(&mut s, 2_900, 8_000, 100).is_empty(),
            "nothing while paused"
        );
        apply(
            &mut s,
            "hb",
            serde_json::json!({"op": "resume", "id": "hb"}),
            8_500,
        );
        let st = state_of(&s, "hb");
        assert_eq!(st.next_at_ms, Some(9_000));
        assert_eq!(
            st.skips,
            [SkipRange {
                from_ms: 3_000,
                to_ms: 8_000,
                count: 6
            }]
        );
        let dues: Vec<u64> = run(&mut s, 8_500, 10_000, 100)
            .iter()
            .map(|(_, d)| *d)
            .collect();
        assert_eq!(dues, [9_000, 10_000]);
        // Pause and resume of what is not a paused schedule: no-ops.
        apply(
            &mut s,
            "hb",
            serde_json::json!({"op": "resume", "id": "hb"}),
            10_000,
        );
        apply(
            &mut s,
            "nope",
            serde_json::json!({"op": "pause", "id": "nope"}),
            10_000,
        );
        assert!(s.outputs.is_empty());
    }

    #[test]
    fn cancel_ends_it_and_it_is_forgotten_after_the_retention() {
        let mut s = state();
        every_second(&mut s, "hb", 0, serde_json::json!({}));
        run(&mut s, 0, 1_000, 100);
        apply(
            &mut s,
            "hb",
            serde_json::json!({"op": "cancel", "id": "hb"}),
            1_500,
        );
        let st = state_of(&s, "hb");
        assert!(st.ended.is_some_and(|e| e.cancelled));
        assert!(run(&mut s, 1_500, 5_000, 100).is_empty());
        s.outputs.clear();
        s.fire_due(1_500 + RETENTION, 0, &mut Vec::new());
        let kinds: Vec<_> = s.outputs.iter().map(Output::kind).collect();
        assert_eq!(kinds, ["schedule-gone"]);
        assert!(s.schedules.is_empty() && s.wheel.is_empty());
    }

    #[test]
    fn max_count_and_end_complete_it() {
        let mut s = state();
        every_second(&mut s, "three", 0, serde_json::json!({"max_count": 3}));
        every_second(&mut s, "until", 0, serde_json::json!({"end_at_ms": 2_500}));
        let got = run(&mut s, 0, 10_000, 100);
        assert_eq!(
            got.iter()
                .filter(|(id, _)| id.starts_with("three@"))
                .count(),
            3
        );
        assert_eq!(
            got.iter()
                .filter(|(id, _)| id.starts_with("until@"))
                .count(),
            2
        );
        for id in ["three", "until"] {
            let st = state_of(&s, id);
            assert!(st.ended.is_some_and(|e| !e.cancelled), "{id}");
            assert_eq!(st.next_at_ms, None);
        }
    }

    #[test]
    fn a_schedule_and_a_timer_replace_each_other() {
        let mut s = state();
        apply(
            &mut s,
            "x",
            serde_json::json!({"op": "schedule", "id": "x", "fire_at_ms": 5_000,
            "callback": {"url": "http://127.0.0.1:9/"}}),
            0,
        );
        every_second(&mut s, "x", 0, serde_json::json!({}));
        assert!(s.schedules.contains_key(b"x".as_slice()));
        assert_eq!(s.wheel.get(&b"x"[..]).map(|(d, _)| d), Some(1_000));
        apply(
            &mut s,
            "x",
            serde_json::json!({"op": "schedule", "id": "x", "fire_at_ms": 5_000,
            "callback": {"url": "http://127.0.0.1:9/"}}),
            0,
        );
        assert!(s.schedules.is_empty());
        assert_eq!(
            s.list_pending(&chime_wire::ListQuery {
                limit: 9,
                ..Default::default()
            })
            .0
            .len(),
            1
        );
    }

    #[test]
    fn outcomes_reach_timers_and_occurrences() {
        let mut s = state();
        apply(
            &mut s,
            "t",
            serde_json::json!({"op": "schedule", "id": "t", "fire_at_ms": 1_000,
            "callback": {"url": "http://127.0.0.1:9/"}}),
            0,
        );
        every_second(&mut s, "hb", 0, serde_json::json!({}));
        run(&mut s, 0, 1_000, 100);
        let delivered = serde_json::json!({"result": "delivered", "attempts": 1, "status": 204, "at_ms": 1_010});
        // Stale (another due time): ignored.
        apply(
            &mut s,
            "t",
            serde_json::json!({"op": "outcome", "id": "t", "fire_at_ms": 7, "delivery": delivered}),
            1_020,
        );
        assert!(s.outputs.is_empty());
        apply(
            &mut s,
            "t",
            serde_json::json!({"op": "outcome", "id": "t", "fire_at_ms": 1_000, "delivery": delivered}),
            1_020,
        );
        assert_eq!(
            s.outputs.iter().map(Output::kind).collect::<Vec<_>>(),
            ["delivered"]
        );
        assert_eq!(s.finished.delivery(b"t").unwrap().status, Some(204));
        s.outputs.clear();
        let dead = serde_json::json!({"result": "dead_lettered", "attempts": 2, "status": 500, "error": "boom", "at_ms": 1_500});
        apply(
            &mut s,
            "hb",
            serde_json::json!({"op": "outcome", "id": "hb", "timer_id": "hb@1000",
            "fire_at_ms": 1_400, "first_fire_at_ms": 1_000, "delivery": dead}),
            1_600,
        );
        assert_eq!(
            s.outputs.iter().map(Output::kind).collect::<Vec<_>>(),
            ["schedule"]
        );
        let st = state_of(&s, "hb");
        let last = st.recent.iter().find(|o| o.due_ms == 1_000).unwrap();
        assert_eq!(
            last.delivery.as_ref().unwrap().error.as_deref(),
            Some("boom")
        );
    }

    #[test]
    fn a_schedule_rebuilt_from_its_state_goes_on_where_it_was() {
        let mut s = state();
        every_second(&mut s, "hb", 0, serde_json::json!({}));
        run(&mut s, 0, 3_000, 100);
        let written = state_of(&s, "hb");
        // A new owner at 3.05 s, from the changelog.
        let mut t = state();
        let restored =
            Schedule::from_state(ScheduleState::decode(&written.encode()).unwrap()).unwrap();
        let at = restored.wheel_deadline(RETENTION).unwrap();
        t.schedules.insert(Bytes::from_static(b"hb"), restored);
        t.wheel.schedule(TimerRecord::new(b"hb", b""), at, ());
        let dues: Vec<u64> = run(&mut t, 3_050, 5_000, 100)
            .iter()
            .map(|(_, d)| *d)
            .collect();
        assert_eq!(dues, [4_000, 5_000]);
    }
}

#[test]
fn the_end_bounds_the_occurrences() {
    let mut s = every(1_000, CatchUp::default());
    s.state.spec.end_at_ms = Some(3_500);
    let p = s.plan(1_000, 900, 10_000);
    assert_eq!(p.fire, [1_000, 2_000, 3_000]);
    assert_eq!(p.next, None);
}
