//! Property tests over arbitrary bytes for every decoder that reads bytes
//! from outside chime (the same checks the fuzz targets in `fuzz/` run for
//! millions of inputs; see docs/security.md): the `chime.timers` command, the
//! changelog and fires records and their headers, and the REST bodies and
//! headers. Each input is decoded or refused with an error naming a field,
//! never a panic; what decodes round-trips.

use chime_ingest::fuzzing;
use proptest::prelude::*;

/// Seeds shaped like real inputs, so mutation reaches past the JSON parser.
const SEEDS: &[&str] = &[
    r#"{"op":"schedule","id":"t1","fire_at_ms":1767225600000,"callback":{"url":"http://127.0.0.1:9/hook","method":"PUT","headers":{"x-a":"1"},"body":"hi"},"retry":{"max_attempts":3}}"#,
    r#"{"op":"cancel","id":"t1"}"#,
    r#"{"id":"t1","delay_ms":1000,"callback":{"url":"http://127.0.0.1:9/a","headers":{"Host":"x"}}}"#,
    r#"{"fire_at":"2026-01-01T00:00:01.500Z","callback":{"url":"https://x.example/?q=1","method":null,"body":null},"retry":null}"#,
    r#"{"timers":[{"delay_ms":0,"callback":{"url":"http://127.0.0.1:9/b"}},"x",{"delay_ms":-1}]}"#,
    r#"{"hours":1,"minutes":2,"seconds":3,"url":"http://127.0.0.1:9/q?a=1"}"#,
];

/// A seed with a few bytes replaced, inserted or cut.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(SEEDS),
        prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..6),
    )
        .prop_map(|(seed, edits)| {
            let mut bytes = seed.as_bytes().to_vec();
            for (at, byte, kind) in edits {
                let i = at % (bytes.len() + 1);
                match kind {
                    0 if i < bytes.len() => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ => bytes.truncate(i),
                }
            }
            bytes
        })
}

/// Framed input for a record decoder: `key \0 value \0 header \0 header`.
fn record(value: Vec<u8>, key: Vec<u8>, h1: Vec<u8>, h2: Vec<u8>) -> Vec<u8> {
    let mut out = key;
    for part in [value, h1, h2] {
        out.push(0);
        out.extend(part);
    }
    out
}

fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"-".to_vec()),
        Just(b"fired".to_vec()),
        Just(b"cancelled".to_vec()),
        "[0-9]{1,20}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..12),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn timer_commands_decode_or_name_a_field(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        fuzzing::timer_command(&bytes);
    }

    #[test]
    fn mutated_timer_commands(value in mutated(), key in prop_oneof![Just(b"t1".to_vec()), Just(b"-".to_vec()), prop::collection::vec(any::<u8>(), 0..4)]) {
        fuzzing::timer_command(&record(value, key, vec![], vec![])[..]);
    }

    #[test]
    fn changelog_records_decode_or_name_a_field(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        fuzzing::changelog(&bytes);
    }

    #[test]
    fn mutated_changelog_records(value in mutated(), h1 in header_bytes(), h2 in header_bytes()) {
        // changelog framing: value \0 fire-at \0 outcome
        let mut input = value;
        for h in [h1, h2] {
            input.push(0);
            input.extend(h);
        }
        fuzzing::changelog(&input);
    }

    #[test]
    fn fires_records_decode_or_name_a_field(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        fuzzing::fires(&bytes);
    }

    #[test]
    fn mutated_fires_records(value in mutated(), h1 in header_bytes(), h2 in header_bytes()) {
        fuzzing::fires(&record(value, b"t1".to_vec(), h1, h2));
    }

    #[test]
    fn rest_inputs_parse_or_name_a_field(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        fuzzing::rest(&bytes);
    }

    #[test]
    fn mutated_rest_bodies(kind in prop::sample::select(&b"cblx"[..]), body in mutated()) {
        let mut input = vec![kind];
        input.extend(body);
        fuzzing::rest(&input);
    }

    #[test]
    fn rest_headers(ct in header_bytes(), auth in prop_oneof![Just(b"Bearer k".to_vec()), Just(b"bearer  k ".to_vec()), prop::collection::vec(any::<u8>(), 0..12)], host in prop::collection::vec(any::<u8>(), 0..24)) {
        fuzzing::rest(&record(auth, b"h".iter().chain(ct.iter()).copied().collect(), host, vec![]));
    }
}

#[test]
fn the_seeds_themselves_pass() {
    for seed in SEEDS {
        fuzzing::timer_command(&record(
            seed.as_bytes().to_vec(),
            b"t1".to_vec(),
            vec![],
            vec![],
        ));
        fuzzing::changelog(seed.as_bytes());
        fuzzing::fires(&record(
            seed.as_bytes().to_vec(),
            b"t1".to_vec(),
            b"5".to_vec(),
            b"-".to_vec(),
        ));
        fuzzing::rest(seed.as_bytes());
    }
}
