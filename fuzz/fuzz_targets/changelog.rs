//! A changelog record: `value \0 chime-fire-at-ms \0 chime-outcome`.
//! The properties are in `chime_ingest::fuzzing::changelog`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chime_ingest::fuzzing::changelog(data));
