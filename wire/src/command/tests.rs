use super::*;

fn spec() -> TimerSpec {
    TimerSpec {
        id: "t1".into(),
        fire_at_ms: 1_700_000_000_000,
        callback: Callback {
            url: "http://127.0.0.1:9/hook".into(),
            method: "POST".into(),
            headers: BTreeMap::new(),
            body: "hi".into(),
        },
        attempt: 1,
        retry: RetryPolicy::default(),
        first_fire_at_ms: None,
        schedule_id: None,
        delivery: None,
    }
}

#[test]
fn schedule_round_trips_in_documented_form() {
    let cmd = TimerCommand::Schedule(spec());
    let json = String::from_utf8(cmd.encode()).unwrap();
    assert_eq!(
        json,
        r#"{"op":"schedule","id":"t1","fire_at_ms":1700000000000,"callback":{"url":"http://127.0.0.1:9/hook","method":"POST","body":"hi"}}"#
    );
    assert_eq!(
        TimerCommand::decode(Some(b"t1"), Some(json.as_bytes())).unwrap(),
        cmd
    );
}

#[test]
fn minimal_schedule_gets_defaults() {
    let v = br#"{"op":"schedule","id":"a","fire_at_ms":5,"callback":{"url":"https://x.example/"}}"#;
    let TimerCommand::Schedule(s) = TimerCommand::decode(Some(b"a"), Some(v)).unwrap() else {
        panic!("not a schedule")
    };
    assert_eq!(s.callback.method, "POST");
    assert_eq!(s.attempt, 1);
    assert!(s.callback.body.is_empty());
}

#[test]
fn null_optional_fields_mean_absent() {
    let v = br#"{"op":"schedule","id":"a","fire_at_ms":5,"retry":null,
        "callback":{"url":"https://x.example/","method":null,"headers":null,"body":null}}"#;
    let TimerCommand::Schedule(s) = TimerCommand::decode(Some(b"a"), Some(v)).unwrap() else {
        panic!("not a schedule")
    };
    assert_eq!(s.callback.method, "POST");
    assert!(s.callback.headers.is_empty() && s.callback.body.is_empty());
    assert!(s.retry.is_default());
}

#[test]
fn structs_are_objects_and_whole_floats_are_integers() {
    let decode = |v: &str| TimerCommand::decode(Some(b"a"), Some(v.as_bytes()));
    let base =
        r#"{"op":"schedule","id":"a","fire_at_ms":5,"callback":{"url":"https://x.example/"}"#;
    for bad in [
        r#"{"op":"schedule","id":"a","fire_at_ms":5,"callback":["https://x.example/"]}"#,
        &format!("{base},\"retry\":[3]}}"),
        &format!("{base},\"retry\":{{\"max_attempts\":1.5}}}}"),
        &format!("{base},\"retry\":{{\"max_attempts\":-1}}}}"),
        r#"["schedule","a",5,{"url":"https://x.example/"}]"#,
    ] {
        assert!(decode(bad).is_err(), "{bad}");
    }
    let TimerCommand::Schedule(s) = decode(&format!(
        "{base},\"retry\":{{\"max_attempts\":3.0,\"deadline_ms\":1e3}}}}"
    ))
    .unwrap() else {
        panic!("not a schedule")
    };
    assert_eq!(
        (s.retry.max_attempts, s.retry.deadline_ms),
        (Some(3), Some(1000))
    );
    // A large whole float (below 2^53, so exact) stays whole: serde_json's
    // default float parsing is off by one ulp for some such inputs
    // (3963901147506570.0 read as …69.5, found by schemathesis), hence the
    // `float_roundtrip` feature.
    let TimerCommand::Schedule(s) = decode(&format!(
        "{base},\"retry\":{{\"max_backoff_ms\":3963901147506570.0}}}}"
    ))
    .unwrap() else {
        panic!("not a schedule")
    };
    assert_eq!(s.retry.max_backoff_ms, Some(3_963_901_147_506_570));
}

#[test]
fn cancel_decodes() {
    let v = br#"{"op":"cancel","id":"a"}"#;
    assert_eq!(
        TimerCommand::decode(Some(b"a"), Some(v)).unwrap(),
        TimerCommand::Cancel { id: "a".into() }
    );
}

#[test]
fn bad_records_name_what_is_wrong() {
    let err = |k: Option<&[u8]>, v: Option<&[u8]>| TimerCommand::decode(k, v).unwrap_err();
    assert_eq!(err(Some(b"a"), None).field, "value");
    assert_eq!(err(Some(b"a"), Some(b"garbage")).field, "value");
    assert_eq!(
        err(Some(b"a"), Some(br#"{"op":"explode","id":"a"}"#)).field,
        "value"
    );
    let good = br#"{"op":"cancel","id":"a"}"#;
    assert_eq!(err(None, Some(good)).field, "key");
    assert_eq!(err(Some(b"b"), Some(good)).field, "key");
    let ftp = br#"{"op":"schedule","id":"a","fire_at_ms":5,"callback":{"url":"ftp://x/"}}"#;
    assert_eq!(err(Some(b"a"), Some(ftp)).field, "callback.url");
    let empty = br#"{"op":"cancel","id":""}"#;
    assert_eq!(err(Some(b""), Some(empty)).field, "id");
}

#[test]
fn header_validation() {
    let mut s = spec();
    s.callback.headers.insert("bad name".into(), "v".into());
    assert_eq!(s.validate().unwrap_err().field, "callback.headers.bad name");
    let mut s = spec();
    s.callback.method = "GE T".into();
    assert_eq!(s.validate().unwrap_err().field, "callback.method");
}

#[test]
fn headers_that_steer_the_request_are_refused_in_any_case() {
    for name in [
        "Host",
        "host",
        "HOST",
        "Connection",
        "Proxy-Authorization",
        "Upgrade",
        "TE",
        "Transfer-Encoding",
        "Content-Length",
        "Expect",
        "Keep-Alive",
        "Proxy-Connection",
        "X-Forwarded-Host",
        "Forwarded",
    ] {
        let mut s = spec();
        s.callback.headers.insert(name.into(), "v".into());
        let e = s.validate().unwrap_err();
        assert_eq!(e.field, format!("callback.headers.{name}"), "{name}");
    }
    let mut s = spec();
    s.callback
        .headers
        .insert("Authorization".into(), "Bearer x".into());
    s.callback
        .headers
        .insert("Content-Type".into(), "application/json".into());
    s.validate().expect("ordinary headers pass");
}

#[test]
fn connect_and_trace_are_refused() {
    for method in ["CONNECT", "connect", "Trace"] {
        let mut s = spec();
        s.callback.method = method.into();
        assert_eq!(
            s.validate().unwrap_err().field,
            "callback.method",
            "{method}"
        );
    }
    for method in ["GET", "PUT", "PATCH", "DELETE", "REPORT"] {
        let mut s = spec();
        s.callback.method = method.into();
        s.validate().expect(method);
    }
}

#[test]
fn urls_must_be_written_plainly() {
    for url in [
        " http://x.example/",
        "http://x.example/a b",
        "http://x.example/\r\nHost: y",
        "http:x.example/",
        "http:\\\\x.example/",
        "ftp://x.example/",
        "//x.example/",
        "http://",
    ] {
        let mut s = spec();
        s.callback.url = url.into();
        assert_eq!(s.validate().unwrap_err().field, "callback.url", "{url:?}");
    }
    for url in ["HTTP://x.example/", "https://x.example:8443/a?b=c"] {
        let mut s = spec();
        s.callback.url = url.into();
        s.validate().expect(url);
    }
}
