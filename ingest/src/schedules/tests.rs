use super::*;

fn create(json: serde_json::Value) -> Result<NewSchedule, ApiError> {
    let req: CreateSchedule = serde_json::from_value(json).unwrap();
    new_schedule(req, &IngestConfig::new("x:1", "t"), 1_790_000_000_000)
}

fn field(json: serde_json::Value) -> String {
    match create(json) {
        Ok(_) => "accepted".into(),
        Err(e) => e.body.field.unwrap_or_default(),
    }
}

const CB: &str = "https://x.example/hook";

#[test]
fn weekdays_at_nine_in_paris_shows_its_next_due_times() {
    let s = create(
        serde_json::json!({"cron": "0 9 * * MON-FRI", "time_zone": "Europe/Paris",
        "callback": {"url": CB}}),
    )
    .unwrap();
    assert_eq!(s.next_due.len(), NEXT_DUE_SHOWN);
    let first = format_ms(s.next_due[0]);
    assert!(
        first.ends_with("T07:00:00.000Z") || first.ends_with("T08:00:00.000Z"),
        "{first}"
    );
}

#[test]
fn an_interval_starts_one_interval_from_now() {
    let s = create(serde_json::json!({"every_ms": 30_000, "callback": {"url": CB}})).unwrap();
    assert_eq!(s.next_due[0], 1_790_000_030_000);
    assert_eq!(
        s.spec.start_at_ms, None,
        "the engine anchors it at the command's time"
    );
}

/// The schedule routes' types are in the OpenAPI document: every
/// `$ref` it makes resolves.
#[test]
fn the_document_defines_every_schema_it_refers_to() {
    use utoipa::OpenApi;
    let doc = serde_json::to_value(crate::docs::ApiDoc::openapi()).unwrap();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut refs = Vec::new();
    fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v.as_str()) {
                        ("$ref", Some(r)) => out.push(r.to_string()),
                        _ => collect(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    collect(&doc, &mut refs);
    for r in &refs {
        let name = r.trim_start_matches("#/components/schemas/");
        assert!(schemas.contains_key(name), "{r} is not defined");
    }
    for name in [
        "ScheduleView",
        "CreateSchedule",
        "CatchUp",
        "DeliveryView",
        "TimerPage",
    ] {
        assert!(schemas.contains_key(name), "{name} missing");
    }
    assert!(doc["paths"]["/v1/schedules/{id}/pause"]["post"].is_object());
}

#[test]
fn bad_input_names_the_field() {
    let cb = serde_json::json!({"url": CB});
    assert_eq!(
        field(serde_json::json!({"cron": "61 * * * *", "callback": cb})),
        "cron"
    );
    assert_eq!(
        field(
            serde_json::json!({"cron": "0 9 * * *", "time_zone": "Europe/Pariss", "callback": cb})
        ),
        "time_zone"
    );
    assert_eq!(
        field(serde_json::json!({"every_ms": 500, "callback": cb})),
        "every_ms"
    );
    assert_eq!(
        field(
            serde_json::json!({"every_ms": 1000, "start_at": "2027-01-02T00:00:00Z",
            "end_at": "2027-01-01T00:00:00Z", "callback": cb})
        ),
        "end_at"
    );
    assert_eq!(
        field(
            serde_json::json!({"every_ms": 1000, "end_at": "2020-01-01T00:00:00Z", "callback": cb})
        ),
        "end_at"
    );
    assert_eq!(
        field(serde_json::json!({"every_ms": 1000, "start_at": "soon", "callback": cb})),
        "start_at"
    );
    assert_eq!(field(serde_json::json!({"callback": cb})), "cron");
    assert_eq!(
        field(serde_json::json!({"cron": "0 0 30 2 *", "callback": cb})),
        "cron"
    );
    assert_eq!(
        field(serde_json::json!({"every_ms": 1000, "max_count": 0, "callback": cb})),
        "max_count"
    );
    assert_eq!(
        field(serde_json::json!({"every_ms": 1000, "callback": {"url": "ftp://x/"}})),
        "callback.url"
    );
    assert_eq!(
        field(
            serde_json::json!({"cron": "0 0 1 1 *", "start_at": "2027-01-02T00:00:00Z",
            "end_at": "2027-06-01T00:00:00Z", "callback": cb})
        ),
        "end_at",
        "no occurrence between start and end"
    );
}

#[test]
fn nested_settings_must_be_objects_not_arrays() {
    // serde's derived structs would also read `[null, null]` as the fields
    // in order; the API documents objects.
    for (key, value) in [
        ("retry", serde_json::json!([null, null])),
        ("catch_up", serde_json::json!(["all", 1000])),
        ("callback", serde_json::json!(["http://127.0.0.1:9/x"])),
    ] {
        let mut body =
            serde_json::json!({"every_ms": 1000, "callback": {"url": "http://127.0.0.1:9/x"}});
        body[key] = value;
        let text = body.to_string();
        let e = crate::body::parse_body::<CreateSchedule>(text.as_bytes())
            .expect_err("an array where an object belongs is refused");
        assert_eq!(e.body.field.as_deref(), Some(key), "{text}: {e:?}");
    }
}

#[test]
fn whole_number_floats_are_integers() {
    // JSON Schema's `integer` includes 3000.0; so does the API.
    let text = r#"{"every_ms": 3000.0, "max_count": 2.0, "catch_up": {"window_ms": 5e3},
                   "callback": {"url": "http://127.0.0.1:9/x"}}"#;
    let req = crate::body::parse_body::<CreateSchedule>(text.as_bytes()).expect("accepted");
    assert_eq!(req.every_ms, Some(3000));
    assert_eq!(req.max_count, Some(2));
    assert_eq!(req.catch_up.map(|c| c.window_ms), Some(5000));
    let half = r#"{"every_ms": 3000.5, "callback": {"url": "http://127.0.0.1:9/x"}}"#;
    let e = crate::body::parse_body::<CreateSchedule>(half.as_bytes()).expect_err("not whole");
    assert_eq!(e.body.field.as_deref(), Some("every_ms"));
}
