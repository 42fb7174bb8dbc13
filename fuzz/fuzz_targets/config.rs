//! `keygate::fuzzing::check_config`: the invariants are documented there.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate::fuzzing::check_config(data));
