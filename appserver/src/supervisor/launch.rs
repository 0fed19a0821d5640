//! Launching: the limit check, one launch at a time per service, the new
//! record directory, and the shim that starts the process.

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::message::{now_ms, ErrorKind, ErrorReply, Forward, InstanceId, Launch, Started};
use common::service::ServiceSpec;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use super::output::OutputMeta;
use super::state::{self, Meta};
use super::table::{Proc, ProcInner};
use super::{err, link, Subscriber, Supervisor};
use crate::policy::Decision;
use crate::runas::RunAs;

impl Supervisor {
    /// Launches a service, or attaches `sub` to it if it is already known.
    ///
    /// `gate` (the command policy) judges the argv of the process attached
    /// to, or of the one to start, and says whom to run the latter as.
    pub async fn launch(
        self: &Arc<Self>,
        req: Launch,
        sub: Subscriber,
        gate: &(dyn Fn(&[String]) -> Decision + Sync),
    ) -> Result<Started, ErrorReply> {
        let spec = ServiceSpec::parse(req.run, req.name).map_err(|e| err(ErrorKind::BadRequest, e.to_string()))?;
        let key = spec.key();
        let slot = LaunchSlot::take(self, &key);
        let _guard = slot.lock.lock().await;
        let run_as = {
            let mut table = self.table();
            if let Some(want) = &req.attach_only {
                // A manager coming back to its instance: current, or collected
                // by another manager and kept for this one.
                let current = table.by_key.get(&key).filter(|p| p.id == *want);
                let kept = table.lingering.get(want).filter(|p| p.key == key);
                return match current.or(kept) {
                    Some(p) => permitted(gate(&p.service.argv)).map(|_| p.attach(sub, true, req.forward)),
                    None => Err(gone(&spec)),
                };
            }
            // The process filed under a name may run another program than
            // this request's: the one that runs is judged.
            if let Some(p) = table.by_key.get(&key) {
                return permitted(gate(&p.service.argv)).map(|_| p.attach(sub, true, req.forward));
            }
            let run_as = permitted(gate(&spec.argv))?;
            if table.shutting_down {
                return Err(err(
                    ErrorKind::ShuttingDown,
                    "cmappserver is shutting down and starts no new processes",
                ));
            }
            let running = table.by_key.values().filter(|p| p.is_running()).count();
            if running + table.spawning >= self.limits.max_processes {
                return Err(err(
                    ErrorKind::Limit,
                    format!("limit of {} monitored processes reached", self.limits.max_processes),
                ));
            }
            table.spawning += 1;
            run_as
        };
        let counted = Spawning(self);
        // The subscriber is attached before the shim's first line can arrive.
        let (proc, started) = self.spawn(&spec, key, sub, req.forward, run_as).await?;
        let exited = !proc.is_running();
        self.table().by_key.insert(proc.key.clone(), proc.clone());
        drop(counted);
        if exited {
            self.table().exited.push_back(proc.clone());
            self.enforce_history();
        }
        tracing::info!(service = %proc.display, pid = proc.pid, id = %proc.id, "started");
        Ok(started)
    }

    fn new_id(&self) -> InstanceId {
        format!(
            "{:x}-{:x}-{:x}",
            now_ms(),
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Starts a shim for `spec`, waits until its process runs, and attaches `sub`.
    async fn spawn(
        self: &Arc<Self>,
        spec: &ServiceSpec,
        key: String,
        sub: Subscriber,
        forward: Option<Forward>,
        run_as: Option<RunAs>,
    ) -> Result<(Arc<Proc>, Started), ErrorReply> {
        let internal = |what: &str, e: &dyn std::fmt::Display| err(ErrorKind::Internal, format!("{what}: {e}"));
        let (id, record) = self
            .create_record()
            .map_err(|e| internal("cannot create process record", &e))?;
        let dir = record.path().to_path_buf();
        let meta = Meta {
            id: id.clone(),
            key: key.clone(),
            service: spec.clone(),
            created_at_ms: now_ms(),
            environment: self.settings.environment.clone(),
            oom_score_adj: Some(self.settings.oom_score_adj).filter(|&a| a != 0),
            output: Some(OutputMeta::for_service(&self.limits.output, &key)),
            run_as,
        };
        let cleanup = |e: ErrorReply| {
            let _ = std::fs::remove_dir_all(&dir);
            e
        };
        // `unstarted` first: every record with a `meta.json` this server
        // writes says whether its application may have been started.
        record
            .write(state::UNSTARTED, b"")
            .and_then(|()| record.write_json(state::META, &meta))
            .map_err(|e| cleanup(internal("cannot write process record", &e)))?;
        if super::shim::test_fault("exit-before-shim") {
            // A crash between the record and its shim (tests only).
            std::process::exit(99);
        }
        // This very binary, even if a package upgrade has replaced or
        // removed its file since: a shim always speaks our protocol.
        let mut shim = tokio::process::Command::new(common::exe::SELF)
            .arg0(&self.exe)
            .arg("shim")
            .arg(&dir)
            .env_remove(crate::notify::ENV[0])
            .env_remove(crate::notify::ENV[1])
            .env_remove(crate::notify::ENV[2])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| cleanup(internal("cannot start process supervisor", &e)))?;
        let mut line = String::new();
        let mut out = tokio::io::BufReader::new(shim.stdout.take().expect("piped stdout"));
        let read = tokio::time::timeout(Duration::from_secs(30), out.read_line(&mut line)).await;
        drop(out);
        let connected = if matches!(read, Ok(Ok(n)) if n > 0) {
            // The shim starts the process once we have accepted its hello.
            link::connect(&record, link::Expect::New)
                .await
                .map_err(|e| internal("process supervisor failed", &e))
        } else {
            let why = record
                .read(state::SHIM_LOG)
                .ok()
                .flatten()
                .unwrap_or_else(|| b"no log".to_vec());
            Err(internal(
                "process supervisor failed to start",
                &String::from_utf8_lossy(&why).trim(),
            ))
        };
        if connected.is_err() {
            // Our own unreaped child: its pid cannot have been reused. Had
            // its hello been refused, it started nothing; it must not linger.
            let _ = shim.start_kill();
        }
        // Reap the shim whenever it ends; it is never waited on otherwise.
        tokio::spawn(async move {
            let _ = shim.wait().await;
        });
        let stream = connected.map_err(cleanup)?;
        let proc = Arc::new(Proc {
            id,
            key,
            display: spec.display(),
            service: meta.service,
            dir: dir.clone(),
            pid: stream.pid,
            started_at_ms: stream.started_at_ms,
            output: meta.output.clone(),
            inner: Mutex::new(ProcInner::default()),
        });
        // Attached before the link reads the first output line.
        let started = proc.attach(sub, false, forward);
        self.start_link(&proc, stream);
        Ok((proc, started))
    }

    pub(super) fn start_link(self: &Arc<Self>, proc: &Arc<Proc>, stream: link::ShimStream) {
        let (tx, rx) = mpsc::channel(8);
        proc.lock().link = Some(tx);
        tokio::spawn(link::run(self.clone(), proc.clone(), stream, rx));
    }

    /// Creates a record directory under a fresh id (exclusively: an id
    /// that exists in any form is skipped, never reused).
    fn create_record(&self) -> std::io::Result<(InstanceId, state::Dir)> {
        for _ in 0..64 {
            let id = self.new_id();
            if let Some(dir) = self.state.create_record(&id)? {
                return Ok((id, dir));
            }
        }
        Err(std::io::Error::other("every fresh record id is taken"))
    }
}

/// One launch counted in `Table::spawning` until dropped (also on error or cancellation).
struct Spawning<'a>(&'a Supervisor);

impl Drop for Spawning<'_> {
    fn drop(&mut self) {
        self.0.table().spawning -= 1;
    }
}

/// A service's launch lock, removed from the map by the last one to let go.
struct LaunchSlot<'a> {
    sup: &'a Supervisor,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> LaunchSlot<'a> {
    fn take(sup: &'a Supervisor, key: &str) -> LaunchSlot<'a> {
        let mut map = sup.launching.lock().unwrap_or_else(|p| p.into_inner());
        let lock = map.entry(key.to_string()).or_default().clone();
        LaunchSlot {
            sup,
            key: key.to_string(),
            lock,
        }
    }
}

impl Drop for LaunchSlot<'_> {
    fn drop(&mut self) {
        let mut map = self.sup.launching.lock().unwrap_or_else(|p| p.into_inner());
        // Two holders: the map and this slot. More: another launch of the same service waits.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.key);
        }
    }
}

/// The command policy's decision as a result: whom to run as, or the refusal.
fn permitted(d: Decision) -> Result<Option<RunAs>, ErrorReply> {
    match d {
        Decision::Open => Ok(None),
        Decision::Allowed { run_as, .. } => Ok(run_as),
        Decision::Refused(why) => Err(err(ErrorKind::Forbidden, why)),
    }
}

fn gone(spec: &ServiceSpec) -> ErrorReply {
    err(
        ErrorKind::NotFound,
        format!(
            "the process for service {} is gone: cmappserver has no record of it (the guest rebooted, or its record was dropped)",
            spec.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::super::table::tests::{filed, meta, subscriber, supervisor};
    use super::*;
    use std::path::Path;

    fn launch(name: &str) -> Launch {
        Launch {
            run: vec![format!("/bin/{name}")],
            name: Some(name.into()),
            attach_only: None,
            forward: None,
        }
    }

    fn open(_: &[String]) -> Decision {
        Decision::Open
    }

    #[tokio::test]
    async fn a_known_service_is_attached_to_when_the_policy_allows_what_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        let (a, _ra) = subscriber(1, "mgr-a", 8);
        let s = sup.launch(launch("app"), a, &open).await.unwrap();
        assert_eq!((s.id.as_str(), s.attached), ("id-app", true));
        // The policy judges the argv of the process that runs.
        let judged = Mutex::new(Vec::new());
        let refuse = |argv: &[String]| {
            judged.lock().unwrap().push(argv.to_vec());
            Decision::Refused("not you".into())
        };
        let (b, _rb) = subscriber(2, "mgr-b", 8);
        let mut other_run = launch("app");
        other_run.run = vec!["/bin/other".into()];
        let e = sup.launch(other_run, b, &refuse).await.unwrap_err();
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Forbidden, "not you"));
        assert_eq!(*judged.lock().unwrap(), [vec!["/bin/app".to_string()]]);
        assert_eq!(p.info().managers, 1, "a refused manager is not attached");
        let allowed = |_: &[String]| Decision::Allowed {
            rule: "r".into(),
            run_as: None,
        };
        let (b, _rb) = subscriber(2, "mgr-b", 8);
        assert!(sup.launch(launch("app"), b, &allowed).await.unwrap().attached);
        assert_eq!(p.info().managers, 2);
        assert!(sup.launching.lock().unwrap().is_empty(), "no launch lock left behind");
    }

    #[tokio::test]
    async fn a_reattach_finds_its_own_instance_current_or_kept_or_is_told_it_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        let again = |id: &str| {
            let mut l = launch("app");
            l.attach_only = Some(id.into());
            l
        };
        let (a, _ra) = subscriber(1, "mgr-a", 8);
        assert!(sup.launch(again("id-app"), a.clone(), &open).await.unwrap().attached);
        let e = sup.launch(again("id-other"), a.clone(), &open).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(
            e.message,
            "the process for service app is gone: cmappserver has no record of it (the guest rebooted, or its record was dropped)"
        );
        // Collected by another manager and kept by id for this one.
        let (b, _rb) = subscriber(2, "mgr-b", 8);
        p.attach(b, false, None);
        sup.record_exit(&p, super::super::table::tests::exit(&p, 0)).await;
        sup.ack("id-app", "mgr-b").unwrap();
        assert_eq!(sup.monitored(), 0);
        let s = sup.launch(again("id-app"), a.clone(), &open).await.unwrap();
        assert!(s.attached && s.exited);
        // Kept under another service's key: not this one.
        let mut other = again("id-app");
        other.name = Some("other".into());
        other.run = vec!["/bin/other".into()];
        assert_eq!(
            sup.launch(other, a.clone(), &open).await.unwrap_err().kind,
            ErrorKind::NotFound
        );
        // And refused by the policy like any attach.
        let refuse = |_: &[String]| Decision::Refused("no".into());
        assert_eq!(
            sup.launch(again("id-app"), a, &refuse).await.unwrap_err().kind,
            ErrorKind::Forbidden
        );
    }

    #[tokio::test]
    async fn a_new_launch_is_refused_by_the_policy_the_shutdown_or_the_limit_before_anything_starts() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let (a, _ra) = subscriber(1, "mgr-a", 8);
        let refuse = |_: &[String]| Decision::Refused("no rule".into());
        let e = sup.launch(launch("new"), a.clone(), &refuse).await.unwrap_err();
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Forbidden, "no rule"));
        let e = sup
            .launch(
                Launch {
                    run: vec![],
                    ..launch("x")
                },
                a.clone(),
                &open,
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        // 8 processes at most (the test supervisor's limit): 7 running and
        // one being started fill it; exited ones do not count.
        for i in 0..7 {
            filed(&sup, tmp.path(), &format!("p{i}"), None);
        }
        let done = filed(&sup, tmp.path(), "done", None);
        sup.record_exit(&done, super::super::table::tests::exit(&done, 0)).await;
        sup.table().spawning = 1;
        let e = sup.launch(launch("new"), a.clone(), &open).await.unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::Limit, "limit of 8 monitored processes reached")
        );
        assert_eq!(sup.table().spawning, 1, "a refused launch counts nothing");
        sup.table().spawning = 0;
        // One place left: the launch gets past the limit (and fails here,
        // where the record cannot be made), and gives the place back.
        std::fs::remove_dir_all(tmp.path().join("state/procs")).unwrap();
        let e = sup.launch(launch("new"), a.clone(), &open).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Internal);
        assert!(e.message.starts_with("cannot create process record: "), "{}", e.message);
        assert_eq!(sup.table().spawning, 0);
        assert!(sup.launching.lock().unwrap().is_empty());
        sup.shutdown(false).await;
        let e = sup.launch(launch("new"), a, &open).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::ShuttingDown);
    }

    #[tokio::test]
    async fn the_policys_run_as_is_what_a_new_process_runs_as() {
        let run_as = RunAs {
            user: Some("nobody".into()),
            ..RunAs::default()
        };
        assert_eq!(permitted(Decision::Open).unwrap(), None);
        let allowed = Decision::Allowed {
            rule: "r".into(),
            run_as: Some(run_as.clone()),
        };
        assert_eq!(permitted(allowed).unwrap(), Some(run_as));
        let e = permitted(Decision::Refused("why".into())).unwrap_err();
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Forbidden, "why"));
    }

    #[tokio::test]
    async fn instance_ids_are_unique_and_name_the_server() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let a = sup.new_id();
        let b = sup.new_id();
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(parts.len(), 3, "{a}");
        assert_eq!(u32::from_str_radix(parts[1], 16).unwrap(), std::process::id());
        assert!(
            u64::from_str_radix(parts[0], 16).unwrap() > 1_600_000_000_000,
            "ms since the epoch"
        );
        let (id, dir) = sup.create_record().unwrap();
        assert_eq!(dir.path(), Path::new(&tmp.path().join("state/procs").join(&id)));
    }
}
