#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::fuzzing::frame_decoder(data));
