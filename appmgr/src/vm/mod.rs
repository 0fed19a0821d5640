//! Host-side VM lifecycle hooks (`cmappmgr vm ...`).

/// Runs `cmappmgr vm` with the arguments after `vm`; returns the exit code.
pub fn main(_args: Vec<String>) -> i32 {
    eprintln!("cmappmgr vm: not implemented yet");
    70
}
