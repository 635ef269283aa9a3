//! chime's load tool, `chime bench` ([`load`]); the criterion benches live in
//! `benches/`.

pub mod load;
