//! A fires record: `key \0 value \0 chime-fired-at-ms \0 chime-revokes-fire-at-ms`.
//! The properties are in `chime_ingest::fuzzing::fires`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chime_ingest::fuzzing::fires(data));
