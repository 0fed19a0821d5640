//! QMP: QEMU's JSON control protocol over its unix socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A QMP connection: JSON lines over QEMU's unix socket.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Asynchronous events received so far.
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects, reads the greeting and enters command mode (`qmp_capabilities`).
    pub fn connect(path: &Path) -> Qmp {
        let stream = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect to QMP {}: {e}", path.display()));
        Self::handshake(stream)
    }

    /// Like [`connect`](Self::connect), `None` while nothing listens on `path` yet.
    pub fn try_connect(path: &Path) -> Option<Qmp> {
        UnixStream::connect(path).ok().map(Self::handshake)
    }

    fn handshake(stream: UnixStream) -> Qmp {
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut q = Qmp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            events: Vec::new(),
        };
        let greeting = q.read();
        assert!(greeting.get("QMP").is_some(), "not a QMP greeting: {greeting}");
        q.execute("qmp_capabilities", json!({})).expect("qmp_capabilities");
        q
    }

    fn read(&mut self) -> Value {
        self.try_read().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The next line, or why there is none: the connection closed (QEMU
    /// gone) or failed.
    fn try_read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| format!("read from QMP: {e}"))?;
        if n == 0 {
            return Err("QMP connection closed".into());
        }
        Ok(serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad QMP line {line:?}: {e}")))
    }

    /// Runs a command; returns its `return` value, or the error's
    /// description (also when QEMU has closed the connection: gone).
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let mut msg = json!({ "execute": command });
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = arguments;
        }
        writeln!(self.writer, "{msg}").map_err(|e| format!("write to QMP: {e}"))?;
        loop {
            let v = self.try_read()?;
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            return Err(v["error"]["desc"].as_str().unwrap_or("unknown error").to_string());
        }
    }

    /// Waits (bounded by `limit`) for an event named `name` whose data
    /// satisfies `pred`, including one already received.
    pub fn wait_event(&mut self, name: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let matches = |v: &Value| v["event"] == name && pred(&v["data"]);
        if let Some(at) = self.events.iter().position(matches) {
            return Some(self.events.remove(at));
        }
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.reader.get_ref().set_read_timeout(Some(left)).unwrap();
            let mut line = String::new();
            let read = self.reader.read_line(&mut line);
            self.reader
                .get_ref()
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            match read {
                Ok(0) => return None,
                Ok(_) => {
                    let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                    if matches(&v) {
                        return Some(v);
                    }
                    self.events.push(v);
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return None
                }
                Err(e) => panic!("read from QMP: {e}"),
            }
        }
    }
}
