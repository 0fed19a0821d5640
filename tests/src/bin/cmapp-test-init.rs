//! `cmapp-test-init CMD [ARGS...]`: a minimal init for the tests' private PID
//! namespaces (see `cmapp_tests::libvirt`).
//!
//! It runs CMD, reaps every process that is reparented to it (libvirtd's
//! daemonized QEMU processes among them: libvirt waits for a killed QEMU to
//! disappear, and an unreaped zombie makes `virsh destroy` and libvirtd's
//! QEMU probe stall for many seconds), and exits with CMD's status. As PID 1
//! of a namespace, its exit makes the kernel kill everything left inside.
//! Outside a PID namespace it makes itself a child subreaper to the same end.

use std::process::{exit, Command};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((program, rest)) = args.split_first() else {
        eprintln!("usage: cmapp-test-init CMD [ARGS...]");
        exit(64);
    };
    if std::process::id() != 1 {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            eprintln!("cmapp-test-init: cannot become a child subreaper: {e}");
        }
    }
    let child = match Command::new(program).args(rest).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cmapp-test-init: cannot run {program}: {e}");
            exit(127);
        }
    };
    let main_pid = Pid::from_raw(child.id() as i32);
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == main_pid => exit(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == main_pid => exit(128 + sig as i32),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                eprintln!("cmapp-test-init: waitpid: {e}");
                exit(70);
            }
        }
    }
}
