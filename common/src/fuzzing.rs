//! Entry points for fuzzing every parser of untrusted input. The cargo-fuzz
//! targets in `fuzz/` call these, and so does an ordinary test that replays
//! the committed corpus (`common/tests/fuzz_corpus.rs`), so that CI keeps
//! every input that ever found a bug. Each function must return normally for
//! any input: a panic is a bug.
//!
//! | target           | what it parses                                          |
//! |------------------|---------------------------------------------------------|
//! | `frame_decoder`  | the length-delimited frame codec, fed in pieces          |
//! | `messages`       | every message type's JSON (requests, events, hello, welcome), with a round trip |
//! | `hello`          | the hello and the version-mismatch reply built from it   |
//! | `run_string`     | run-string splitting, the service identity and its limits |
//! | `config`         | `cmappserver.conf` and `cmappmgr.conf`                   |
//! | `key_store`      | the key store and trust store loaders                    |
//!
//! (The shim protocol's target lives with its types, in
//! `appserver/src/supervisor/proto.rs`.)

use std::path::Path;

use bytes::BytesMut;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::Decoder;

use crate::codec::{codec, MAX_FRAME_LEN};
use crate::message::{Event, Hello, HelloReply, Request, Welcome};

/// Feeds `data` to the frame decoder in pieces (the first byte chooses the
/// piece size), as a peer's writes might arrive.
pub fn frame_decoder(data: &[u8]) {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut codec = codec();
    let mut buf = BytesMut::new();
    for piece in rest.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => assert!(frame.len() <= MAX_FRAME_LEN),
                Ok(None) => break,
                Err(_) => return, // the connection would be closed
            }
        }
    }
}

/// Parses `data` as `T`; whatever parses must serialise and parse back to
/// the same value.
fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(data: &[u8]) -> Option<T> {
    let value: T = serde_json::from_slice(data).ok()?;
    let text = serde_json::to_vec(&value).expect("a parsed message serialises");
    let again: T = serde_json::from_slice(&text).expect("a serialised message parses");
    assert_eq!(value, again);
    Some(value)
}

/// Every message type's JSON, and what the receiving side does first with
/// each: bounds checks, exit-status checks, escaping for the log.
pub fn messages(data: &[u8]) {
    if let Some(req) = round_trip::<Request>(data) {
        let _ = req.check();
        if let Request::Launch(l) = req {
            if let Ok(spec) = crate::service::ServiceSpec::parse(l.run, l.name) {
                let _ = crate::text::escape(&spec.display());
            }
        }
    }
    if let Some(ev) = round_trip::<Event>(data) {
        let _ = ev.kind();
        match &ev {
            Event::Exited(x) => {
                let _ = x.status.check();
                let _ = x.status.exit_code();
                let _ = x.status.to_string();
            }
            Event::Processes(p) => {
                for page in crate::message::ProcessList::pages(p.processes.clone()) {
                    let _ = serde_json::to_vec(&page).expect("a page serialises");
                }
            }
            Event::Error(e) => {
                let _ = crate::text::clip(&e.message, 200);
            }
            _ => {}
        }
    }
    round_trip::<Welcome>(data);
    round_trip::<HelloReply>(data);
    hello(data);
}

/// The hello, and the reply a server builds from a hello of another version.
pub fn hello(data: &[u8]) {
    if let Some(h) = round_trip::<Hello>(data) {
        let _ = format!("{} speaks protocol {}", crate::text::clip(&h.software, 100), h.protocol);
    }
}

/// A run string: the bytes split at NUL into arguments (a first byte of 1
/// makes the rest a name instead), then parsed as the server parses a launch.
pub fn run_string(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (name, run) = match text.strip_prefix('\u{1}') {
        Some(rest) => match rest.split_once('\u{2}') {
            Some((n, r)) => (Some(n.to_string()), r),
            None => (Some(rest.to_string()), ""),
        },
        None => (None, &*text),
    };
    let run: Vec<String> = if run.is_empty() {
        Vec::new()
    } else {
        run.split('\0').map(str::to_string).collect()
    };
    let _ = crate::service::split_run(&run);
    if let Ok(spec) = crate::service::ServiceSpec::parse(run, name) {
        assert!(!spec.argv.is_empty() && !spec.argv[0].is_empty());
        assert!(spec.argv.len() <= crate::service::MAX_ARGS);
        let _ = spec.key();
        let _ = spec.probe;
        let display = spec.display();
        assert!(!crate::text::escape(&display).contains('\n'));
    }
}

/// Both configuration files' parsers.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz.conf");
    let _ = crate::config::ServerConfig::parse(path, &text);
    let _ = crate::config::ManagerConfig::parse(path, &text);
}

/// The key store and trust store loaders.
pub fn key_store(data: &[u8]) {
    crate::tls::fuzz_key_stores(data);
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_entry_point_takes_empty_and_odd_input() {
        for data in [&b""[..], b"\0", b"{}", b"\x00\x00\x00\x02{}", b"[", b"\xff\xfe"] {
            super::frame_decoder(data);
            super::messages(data);
            super::hello(data);
            super::run_string(data);
            super::config(data);
            super::key_store(data);
        }
    }
}
