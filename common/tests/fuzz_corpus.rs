//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same entry points the cargo-fuzz targets call, on the stable toolchain:
//! every input that ever found a bug stays a test. (The shim protocol's
//! corpus is replayed in `appserver/src/supervisor/proto.rs`.)

use std::path::Path;

fn replay(target: &str, entry: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = e.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if let Err(panic) = std::panic::catch_unwind(|| entry(&data)) {
            std::panic::resume_unwind(Box::new(format!("{target}: {} panics: {panic:?}", path.display())));
        }
        n += 1;
    }
    assert!(n > 0, "{} is empty", dir.display());
}

#[test]
fn frame_decoder() {
    replay("frame_decoder", common::fuzzing::frame_decoder);
}

#[test]
fn messages() {
    replay("messages", common::fuzzing::messages);
}

#[test]
fn hello() {
    replay("hello", common::fuzzing::hello);
}

#[test]
fn run_string() {
    replay("run_string", common::fuzzing::run_string);
}

#[test]
fn config() {
    replay("config", common::fuzzing::config);
}

#[test]
fn key_store() {
    replay("key_store", common::fuzzing::key_store);
}
