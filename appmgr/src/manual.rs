//! The man page's sections beyond the command line: exit status,
//! configuration keys, files. The codes and keys come from the code
//! (`exit`, `common::config`), so the page cannot list one that does not exist.

use common::config::{ManagerConfig, MANAGER_KEY_DOCS};
use common::docs::Section;

use crate::exit;

pub fn sections() -> Vec<Section> {
    let mut keys = Section::new("CONFIGURATION").para(format!(
        "{} (or --conf): key=value lines, # comments; an empty value means the default; keys match \
         without regard to case. An unknown key, a bad value or a key set twice is an error naming \
         the file and line.",
        ManagerConfig::DEFAULT_PATH
    ));
    for (key, default, meaning) in MANAGER_KEY_DOCS {
        keys = keys.item(*key, format!("{meaning} (default: {default})"));
    }
    let lost = common::message::LOST_EXIT_CODE;
    vec![
        Section::new("EXIT STATUS")
            .para(
                "cmappmgr exits with the application's own exit code when it ends (after the line \
                 PROGRAM EXIT CODE n), or 128+N when signal N killed it; 126 and 127 when the program \
                 is not executable or not found in the guest. Its own codes always come with a message \
                 on stderr and in syslog, never with that line:",
            )
            .item(
                exit::HALTED.to_string(),
                "halted on request (SIGTERM): the application was left running, or stopped with -stop_on_halt",
            )
            .item(
                exit::UNREACHABLE.to_string(),
                "could not connect to the node within -cmappserver_timeout, or lost it for that long",
            )
            .item(exit::USAGE.to_string(), "bad command line")
            .item(
                exit::PROCESS_GONE.to_string(),
                "re-attach found the process gone (the guest rebooted or its record was dropped)",
            )
            .item(
                lost.to_string(),
                "the process's supervisor was killed and its exit status is unknown",
            )
            .item(
                exit::SERVER_FAILED.to_string(),
                "cmappserver failed to start or reach the process's supervisor (the guest's log says why)",
            )
            .item(
                exit::REFUSED.to_string(),
                "cmappserver refused to start the process (process limit reached)",
            )
            .item(
                exit::PROTOCOL.to_string(),
                "incompatible protocol version, or the server broke the protocol",
            )
            .item(
                exit::AUTH.to_string(),
                "TLS authentication failed: a certificate was rejected, ours or the server's",
            )
            .item(
                exit::CONFIG.to_string(),
                "the configuration file or key material is unusable",
            )
            .item(
                exit::FORBIDDEN.to_string(),
                "the guest's command policy refused the request (the message names the rules and why), or refused this client",
            )
            .item(
                "cmappmgr vm",
                format!(
                    "{} success (and a monitor stopped by a signal), {} failure, {} usage error",
                    exit::vm::SUCCESS,
                    exit::vm::FAILURE,
                    exit::USAGE
                ),
            ),
        keys,
        Section::new("FILES")
            .item(ManagerConfig::DEFAULT_PATH, "the configuration file")
            .item(
                "/etc/client.private",
                "this host's private key and certificate (made by cmappmgr keygen)",
            )
            .item(
                "/etc/server.public",
                "the guests' certificates, or the CA that signed them",
            )
            .item(
                "/usr/share/doc/cmappmgr/",
                "README, sample configuration and cluster service entries",
            ),
        Section::new("EXAMPLES")
            .para("As a cluster service command (the original's form):")
            .para("cmappmgr -node guest1 -cmappserver_timeout 240 -service /apps/myapp --flag x")
            .para("Make this host's key, then check a guest: cmappmgr keygen; cmappmgr check -node guest1"),
        Section::new("SEE ALSO").para("cmappserver(1), virsh(1)"),
    ]
}
