//! The disk probe.

/// Runs the probe with the arguments after the program name; returns the exit code.
pub fn main(_args: Vec<String>) -> i32 {
    eprintln!("cmapp_disk_mon: not implemented yet");
    70
}
