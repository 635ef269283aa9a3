//! REST request parsing: `c`/`b`/`l` + a create/batch/original-API body, `h` + headers, `a` + a group assignment.
//! The properties are in `chime_ingest::fuzzing::rest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chime_ingest::fuzzing::rest(data));
