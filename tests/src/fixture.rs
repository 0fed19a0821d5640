//! The usual loopback set-up: pinned keys, a real cmappserver on
//! `127.0.0.1:0`, and a manager configuration trusting it.

use std::path::PathBuf;

use crate::keys::{self, Keys};
use crate::mgr::Mgr;
use crate::server::Server;

/// Fields drop in order: the server (and the processes it started) before
/// the temporary directory that holds its state.
#[derive(Debug)]
pub struct Fixture {
    pub server: Server,
    pub dir: PathBuf,
    pub keys: Keys,
    /// A manager configuration file trusting the server.
    pub conf: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Fixture {
    /// A server whose configuration has `extra` appended (our own keys).
    pub fn new(extra: &str) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let keys = keys::pinned(&dir, "");
        let server = Server::start(&dir, &keys, extra);
        let conf = keys::manager_conf(&dir, "cmappmgr.conf", &keys.client_private, &keys.client_trust, "");
        Fixture {
            _tmp: tmp,
            dir,
            keys,
            server,
            conf,
        }
    }

    /// A manager for `run` with a 10 s `cmappserver_timeout`.
    pub fn mgr(&self, run: &[&str]) -> Mgr {
        self.mgr_with(&[], run)
    }

    /// A manager for `run` with extra options before `-service`.
    pub fn mgr_with(&self, extra: &[&str], run: &[&str]) -> Mgr {
        Mgr::spawn(&self.conf, &self.server.node(), 10.0, extra, run)
    }

    /// A second manager configuration with `extra` appended; returns its path.
    pub fn mgr_conf(&self, name: &str, extra: &str) -> PathBuf {
        keys::manager_conf(
            &self.dir,
            name,
            &self.keys.client_private,
            &self.keys.client_trust,
            extra,
        )
    }

    /// Number of process records in the server's state directory.
    pub fn records(&self) -> usize {
        std::fs::read_dir(self.server.state_dir.join("procs"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}
