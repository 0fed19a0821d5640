#![no_main]

// The shim protocol's types live in the cmappserver binary; the module is
// included as it is, with its own fuzz entry point.
#[allow(dead_code)]
#[path = "../../appserver/src/supervisor/proto.rs"]
mod proto;

libfuzzer_sys::fuzz_target!(|data: &[u8]| proto::fuzz_entry(data));
