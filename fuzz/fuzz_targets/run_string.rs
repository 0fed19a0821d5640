#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::fuzzing::run_string(data));
