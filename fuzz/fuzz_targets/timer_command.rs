//! The `chime.timers` record: `key \0 value` (`-` = absent).
//! The properties are in `chime_ingest::fuzzing::timer_command`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chime_ingest::fuzzing::timer_command(data));
