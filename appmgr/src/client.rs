//! Typed calls to a cmappserver (skeleton; being written).

use std::path::Path;
use std::time::Duration;

/// Connects to `node` (host or address, optionally `:port`), authenticates,
/// pings, and returns the server's welcome. Retries until `timeout`.
pub async fn check_node(
    node: &str,
    conf_path: &Path,
    timeout: Duration,
) -> Result<common::message::Welcome, String> {
    let _ = (node, conf_path, timeout);
    Err("not implemented yet".into())
}
