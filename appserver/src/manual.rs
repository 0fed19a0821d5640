//! The man page's sections beyond the command line: exit status,
//! configuration keys, files, signals. Codes and keys come from the code.

use common::config::{ServerConfig, SERVER_KEY_DOCS};
use common::docs::Section;

use crate::exit;

pub fn sections() -> Vec<Section> {
    let mut keys = Section::new("CONFIGURATION").para(format!(
        "{} (or --conf): key=value lines, # comments; an empty value means the default; keys match \
         without regard to case. An unknown key, a bad value, a key set twice or a missing file is an \
         error naming the file and line; --check-config reports every problem.",
        ServerConfig::DEFAULT_PATH
    ));
    for (key, default, meaning) in SERVER_KEY_DOCS {
        keys = keys.item(*key, format!("{meaning} (default: {default})"));
    }
    vec![
        Section::new("EXIT STATUS")
            .item("0", "stopped on request (SIGTERM, SIGINT), or --check-config found no problem")
            .item(
                exit::INTERNAL.to_string(),
                "--check-config found a problem (each one is printed), or an internal failure \
                 (a thread or signal handler that cannot be set up)",
            )
            .item(exit::CANNOT_LISTEN.to_string(), "cannot listen on a configured address")
            .item(exit::CANNOT_CREATE.to_string(), "cannot write the --pid-file")
            .item(
                exit::CONFIG.to_string(),
                "cannot start: a configuration, key material or state-directory problem",
            ),
        keys,
        Section::new("COMMAND POLICY").para(
            "Without allow.RULE.* lines any trusted manager may run any program as root. With them, a \
             launch, attach, stop or acknowledgement is allowed only when a rule allows the process's \
             program (allow.RULE.program: a path, a directory/ or probe:net-mon / probe:disk-mon), its \
             arguments (allow.RULE.args: patterns, a last ... for any more; allow.RULE.maxArgs) and the \
             client (allow.RULE.clients: certificate names or sha256:FINGERPRINT). The first such rule \
             decides whom the process runs as (allow.RULE.user, .group, .cwd) and its limits \
             (allow.RULE.limit.nofile, nproc, as, core, fsize, memlock, stack, cpu). A refusal is an \
             error naming the file, the rules and the reason; cmappmgr exits 79. See the README's \
             Command policy.",
        ),
        Section::new("KEYS")
            .para(
                "cmappserver will not start without its key and the hosts' certificates. Make this \
                 guest's key and self-signed certificate with: cmappserver keygen (writes \
                 /opt/hp/cmappserver/server.private and server.public); copy server.public to the hosts. \
                 Copy each host's client.public (made by cmappmgr keygen) into \
                 /opt/hp/cmappserver/client.public. In CA mode: cmappserver keygen issue --ca-dir DIR, and \
                 the CA's ca.public as trustStore. Then: cmappserver --check-config; systemctl enable --now \
                 cmappserver (or /etc/init.d/cmappserver start).",
            ),
        Section::new("SIGNALS")
            .item(
                "SIGHUP",
                "reload: re-read the configuration and key material (keyStore, trustStore, the command \
                 policy, allowedClients, auditLog); new connections use them, established ones carry on; \
                 a bad file is refused and the old material stays",
            )
            .item("SIGTERM, SIGINT", "maintenance stop: connected managers are told, applications keep running (unless stopProcessesOnShutdown=yes)"),
        Section::new("FILES")
            .item(ServerConfig::DEFAULT_PATH, "the configuration file")
            .item("/opt/hp/cmappserver/server.private", "this guest's private key and certificate")
            .item("/opt/hp/cmappserver/client.public", "the hosts' certificates, or the CA that signed them")
            .item(
                "/opt/hp/cmappserver/cmapp_net_mon.pl, cmapp_disk_mon",
                "the built-in probes, under the original's names (links to cmappserver)",
            )
            .item("/var/lib/cmappserver", "the state directory: process records, shim sockets")
            .item("/lib/systemd/system/cmappserver.service, /etc/init.d/cmappserver", "the service"),
        Section::new("SEE ALSO").para("cmappmgr(1), systemd.service(5)"),
    ]
}
