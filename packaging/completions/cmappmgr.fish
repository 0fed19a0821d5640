# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_cmappmgr_global_optspecs
    string join \n node= cmappserver_timeout= name= detach stop_on_halt forward_output no_forward_output conf= v/verbose no_syslog service= h/help V/version
end

function __fish_cmappmgr_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_cmappmgr_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_cmappmgr_using_subcommand
    set -l cmd (__fish_cmappmgr_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c cmappmgr -n "__fish_cmappmgr_needs_command" -l node -d 'The guest: host name or address, optionally with :port; or [NAME@]vsock:CID[:PORT] (AF_VSOCK), or [NAME@]vsock-unix:/PATH[:PORT] (a user-space vsock device\'s Unix socket)' -r
complete -c cmappmgr -n "__fish_cmappmgr_needs_command" -l cmappserver_timeout -d 'Seconds to keep trying to reach cmappserver (at start, and after the connection is lost) before giving up with exit code 1' -r
complete -c cmappmgr -n "__fish_cmappmgr_needs_command" -l name -d 'Identify the process by this name instead of by its run string' -r
complete -c cmappmgr -n "__fish_cmappmgr_needs_command" -l conf -d 'Configuration file' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_needs_command" -l service -d 'The application to run in the guest and its arguments: everything after -service' -r
complete -c cmappmgr -n "__fish_cmappmgr_needs_command" -l detach -d 'On SIGTERM, leave the application running (the default; overrides `stopOnHalt=yes` in the configuration file)'
complete -c cmappmgr -n "__fish_cmappmgr_needs_command" -l stop_on_halt -d 'On SIGTERM, stop the application (TERM, KILL after the server\'s grace period) and wait up to `stopTimeout` for it to be gone'
complete -c cmappmgr -n "__fish_cmappmgr_needs_command" -l forward_output -d 'Forward every line of the application\'s output to our stdout and stderr (the package log), within `forwardLinesPerSecond` and `forwardBytesPerSecond`. Without it the output stays in the guest (`cmappmgr logs`) and only its last lines come with the exit'
complete -c cmappmgr -n "__fish_cmappmgr_needs_command" -l no_forward_output -d 'Do not forward every line, whatever `forwardOutput` in the configuration file says (the built-in probes are always forwarded)'
complete -c cmappmgr -n "__fish_cmappmgr_needs_command" -s v -l verbose -d 'Log debugging detail'
complete -c cmappmgr -n "__fish_cmappmgr_needs_command" -l no_syslog -d 'Do not log to syslog (stderr only)'
complete -c cmappmgr -n "__fish_cmappmgr_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c cmappmgr -n "__fish_cmappmgr_needs_command" -s V -l version -d 'Print version'
complete -c cmappmgr -n "__fish_cmappmgr_needs_command" -f -a "check" -d 'Connect, authenticate and ping a guest\'s cmappserver; print its version and how many processes it monitors'
complete -c cmappmgr -n "__fish_cmappmgr_needs_command" -f -a "status" -d 'List the processes a guest\'s cmappserver monitors'
complete -c cmappmgr -n "__fish_cmappmgr_needs_command" -f -a "logs" -d 'Print a service\'s output log from the guest (the last lines, then new ones with --follow), over the same authenticated connection'
complete -c cmappmgr -n "__fish_cmappmgr_needs_command" -f -a "keygen" -d 'Generate this host\'s key and certificate (pinned or CA-signed)'
complete -c cmappmgr -n "__fish_cmappmgr_needs_command" -f -a "vm" -d 'Start, stop, monitor and validate a libvirt guest run as a cluster package'
complete -c cmappmgr -n "__fish_cmappmgr_needs_command" -f -a "demo" -d 'Loopback demo: throwaway keys, a real cmappserver, an application\'s exit code'
complete -c cmappmgr -n "__fish_cmappmgr_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand check" -l node -d 'The guest, as -node takes it (host[:port], vsock:CID[:PORT], vsock-unix:/PATH[:PORT])' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand check" -l timeout -d 'Seconds to keep trying' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand check" -l conf -d 'Configuration file' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand check" -s v -l verbose -d 'Log debugging detail'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand check" -l no_syslog -d 'Do not log to syslog (stderr only)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand check" -s h -l help -d 'Print help'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand status" -l node -d 'The guest, as -node takes it (host[:port], vsock:CID[:PORT], vsock-unix:/PATH[:PORT])' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand status" -l timeout -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand status" -l conf -d 'Configuration file' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand status" -l json -d 'Print JSON instead of a table'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand status" -s v -l verbose -d 'Log debugging detail'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand status" -l no_syslog -d 'Do not log to syslog (stderr only)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand status" -s h -l help -d 'Print help'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand logs" -l node -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand logs" -l timeout -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand logs" -s n -l tail -d 'Print the last N lines (at most 10000)' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand logs" -l name -d 'The service\'s name, when it was started with -name' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand logs" -l conf -d 'Configuration file' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand logs" -s f -l follow -d 'Then keep printing lines as the application writes them'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand logs" -s v -l verbose -d 'Log debugging detail'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand logs" -l no_syslog -d 'Do not log to syslog (stderr only)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand logs" -s h -l help -d 'Print help'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and not __fish_seen_subcommand_from ca issue renew help" -l dir -d 'Directory to write into [default: /etc for cmappmgr, /opt/hp/cmappserver for cmappserver]' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and not __fish_seen_subcommand_from ca issue renew help" -l name -d 'A name (host name or IP address) of this machine; repeat for more. The first is the certificate\'s common name [default: the host name]' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and not __fish_seen_subcommand_from ca issue renew help" -l force -d 'Overwrite existing files'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and not __fish_seen_subcommand_from ca issue renew help" -s h -l help -d 'Print help'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and not __fish_seen_subcommand_from ca issue renew help" -f -a "ca" -d 'Create a certificate authority: ca.public (its certificate, the trust store of CA mode) and ca.private (its key)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and not __fish_seen_subcommand_from ca issue renew help" -f -a "issue" -d 'Sign a certificate for this machine with a CA made by `keygen ca`'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and not __fish_seen_subcommand_from ca issue renew help" -f -a "renew" -d 'A new certificate for the existing key in DIR\'s .private file (made by keygen), replacing the .private and .public files: self-signed, or signed by the CA in --ca-dir. Peers that pin the old certificate must be given the new .public (README, Rotating keys)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and not __fish_seen_subcommand_from ca issue renew help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and __fish_seen_subcommand_from ca" -l dir -d 'Directory to write into [default: the current directory]' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and __fish_seen_subcommand_from ca" -l name -d 'The CA\'s name [default: "cmapp CA on <host name>"]' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and __fish_seen_subcommand_from ca" -l force -d 'Overwrite existing files'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and __fish_seen_subcommand_from ca" -s h -l help -d 'Print help'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and __fish_seen_subcommand_from issue" -l ca-dir -d 'The directory holding the CA\'s ca.public and ca.private' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and __fish_seen_subcommand_from issue" -l dir -d 'Directory to write into [default: as for keygen]' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and __fish_seen_subcommand_from issue" -l name -d 'A name (host name or IP address) of this machine; repeat for more. The first is the common name [default: the host name]' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and __fish_seen_subcommand_from issue" -l force -d 'Overwrite existing files'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and __fish_seen_subcommand_from issue" -s h -l help -d 'Print help'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and __fish_seen_subcommand_from renew" -l dir -d 'The directory of the .private file [default: as for keygen]' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and __fish_seen_subcommand_from renew" -l ca-dir -d 'Sign with the CA in this directory (ca.public, ca.private)' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and __fish_seen_subcommand_from renew" -l name -d 'The certificate\'s names [default: the old certificate\'s]' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and __fish_seen_subcommand_from renew" -s h -l help -d 'Print help'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and __fish_seen_subcommand_from help" -f -a "ca" -d 'Create a certificate authority: ca.public (its certificate, the trust store of CA mode) and ca.private (its key)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and __fish_seen_subcommand_from help" -f -a "issue" -d 'Sign a certificate for this machine with a CA made by `keygen ca`'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and __fish_seen_subcommand_from help" -f -a "renew" -d 'A new certificate for the existing key in DIR\'s .private file (made by keygen), replacing the .private and .public files: self-signed, or signed by the CA in --ca-dir. Peers that pin the old certificate must be given the new .public (README, Rotating keys)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand keygen; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and not __fish_seen_subcommand_from start stop monitor validate maintenance deploy help" -l connect -d 'libvirt connection URI' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and not __fish_seen_subcommand_from start stop monitor validate maintenance deploy help" -l virsh -d 'The virsh program' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and not __fish_seen_subcommand_from start stop monitor validate maintenance deploy help" -l virsh-timeout -d 'Longest time one virsh call may take, in seconds' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and not __fish_seen_subcommand_from start stop monitor validate maintenance deploy help" -s v -l verbose -d 'Log debugging detail'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and not __fish_seen_subcommand_from start stop monitor validate maintenance deploy help" -l no-syslog -d 'Do not log to syslog (stderr only)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and not __fish_seen_subcommand_from start stop monitor validate maintenance deploy help" -s h -l help -d 'Print help'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and not __fish_seen_subcommand_from start stop monitor validate maintenance deploy help" -f -a "start" -d 'Start the guest unless it runs; wait until it runs (and its cmappserver answers)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and not __fish_seen_subcommand_from start stop monitor validate maintenance deploy help" -f -a "stop" -d 'Shut the guest down gracefully, then force it off after --timeout'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and not __fish_seen_subcommand_from start stop monitor validate maintenance deploy help" -f -a "monitor" -d 'Watch the guest until it stops running (the package\'s guest-monitor service)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and not __fish_seen_subcommand_from start stop monitor validate maintenance deploy help" -f -a "validate" -d 'Check that the guest is defined here and its definition is usable'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and not __fish_seen_subcommand_from start stop monitor validate maintenance deploy help" -f -a "maintenance" -d 'Turn the package\'s maintenance mode on or off, or show it'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and not __fish_seen_subcommand_from start stop monitor validate maintenance deploy help" -f -a "deploy" -d 'Write the guest\'s Serviceguard package configuration (the original\'s cmdeployvpkg)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and not __fish_seen_subcommand_from start stop monitor validate maintenance deploy help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from start" -l timeout -d 'Longest wait for the domain to be running, in seconds' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from start" -l check-node -d 'The guest\'s cmappserver (host name or address, optionally :port)' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from start" -l check-timeout -d 'Longest wait for the guest\'s cmappserver to answer, in seconds (default: 240 for start, 10 for monitor)' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from start" -l conf -d 'cmappmgr\'s configuration (keys and trust stores for the check)' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from start" -l tkit-dir -d 'The package directory holding the maintenance file (TKIT_DIR; default /etc/cmcluster/GUEST)' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from start" -l maintenance-flag -d 'Whether the package may run in maintenance mode (MAINTENANCE_FLAG; default yes)' -r -f -a "yes\t''
no\t''"
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from start" -l package-conf -d 'A Serviceguard package configuration file to read TKIT_DIR, MAINTENANCE_FLAG and MONITOR_INTERVAL from' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from start" -l connect -d 'libvirt connection URI' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from start" -l virsh -d 'The virsh program' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from start" -l virsh-timeout -d 'Longest time one virsh call may take, in seconds' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from start" -s v -l verbose -d 'Log debugging detail'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from start" -l no-syslog -d 'Do not log to syslog (stderr only)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from start" -s h -l help -d 'Print help'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from stop" -l timeout -d 'Longest wait for the graceful shutdown before forcing the guest off, in seconds (0: force at once)' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from stop" -l connect -d 'libvirt connection URI' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from stop" -l virsh -d 'The virsh program' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from stop" -l virsh-timeout -d 'Longest time one virsh call may take, in seconds' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from stop" -l force -d 'Force the guest off at once (`virsh destroy`), without a graceful shutdown'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from stop" -s v -l verbose -d 'Log debugging detail'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from stop" -l no-syslog -d 'Do not log to syslog (stderr only)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from stop" -s h -l help -d 'Print help'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from monitor" -l interval -d 'Seconds between checks (MONITOR_INTERVAL; default 30, or the package\'s)' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from monitor" -l max-query-failures -d 'Fail after this many state queries in a row fail (libvirtd unreachable)' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from monitor" -l check-node -d 'The guest\'s cmappserver (host name or address, optionally :port)' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from monitor" -l check-timeout -d 'Longest wait for the guest\'s cmappserver to answer, in seconds (default: 240 for start, 10 for monitor)' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from monitor" -l conf -d 'cmappmgr\'s configuration (keys and trust stores for the check)' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from monitor" -l tkit-dir -d 'The package directory holding the maintenance file (TKIT_DIR; default /etc/cmcluster/GUEST)' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from monitor" -l maintenance-flag -d 'Whether the package may run in maintenance mode (MAINTENANCE_FLAG; default yes)' -r -f -a "yes\t''
no\t''"
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from monitor" -l package-conf -d 'A Serviceguard package configuration file to read TKIT_DIR, MAINTENANCE_FLAG and MONITOR_INTERVAL from' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from monitor" -l connect -d 'libvirt connection URI' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from monitor" -l virsh -d 'The virsh program' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from monitor" -l virsh-timeout -d 'Longest time one virsh call may take, in seconds' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from monitor" -l no-events -d 'Do not subscribe to libvirt lifecycle events; poll only'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from monitor" -s v -l verbose -d 'Log debugging detail'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from monitor" -l no-syslog -d 'Do not log to syslog (stderr only)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from monitor" -s h -l help -d 'Print help'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from validate" -l connect -d 'libvirt connection URI' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from validate" -l virsh -d 'The virsh program' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from validate" -l virsh-timeout -d 'Longest time one virsh call may take, in seconds' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from validate" -l no-check-files -d 'Do not check that the disk images and boot files exist'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from validate" -s v -l verbose -d 'Log debugging detail'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from validate" -l no-syslog -d 'Do not log to syslog (stderr only)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from validate" -s h -l help -d 'Print help'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from maintenance" -l tkit-dir -d 'The package directory holding the maintenance file (TKIT_DIR; default /etc/cmcluster/GUEST)' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from maintenance" -l maintenance-flag -d 'Whether the package may run in maintenance mode (MAINTENANCE_FLAG; default yes)' -r -f -a "yes\t''
no\t''"
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from maintenance" -l package-conf -d 'A Serviceguard package configuration file to read TKIT_DIR, MAINTENANCE_FLAG and MONITOR_INTERVAL from' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from maintenance" -l connect -d 'libvirt connection URI' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from maintenance" -l virsh -d 'The virsh program' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from maintenance" -l virsh-timeout -d 'Longest time one virsh call may take, in seconds' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from maintenance" -s v -l verbose -d 'Log debugging detail'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from maintenance" -l no-syslog -d 'Do not log to syslog (stderr only)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from maintenance" -s h -l help -d 'Print help'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from deploy" -s x -d 'An application monitor service, as cmdeployvpkg takes it (repeatable): NAME, the run string in the guest, -cmappserver_timeout, service_restart (none, unlimited or a count), service_halt_timeout' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from deploy" -s n -l node-name -d 'A cluster node that may run the package, in order (repeatable; default `*`, every node)' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from deploy" -l guest-node -d 'The guest\'s cmappserver address for the services\' -node (default: the guest\'s name)' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from deploy" -l tkit-dir -d 'TKIT_DIR (default $SGCONF/GUEST)' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from deploy" -l maintenance-flag -d 'MAINTENANCE_FLAG' -r -f -a "yes\t''
no\t''"
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from deploy" -l monitor-interval -d 'MONITOR_INTERVAL, seconds' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from deploy" -l cmappmgr -d 'The cmappmgr the services run' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from deploy" -s o -l output -d 'Where to write the configuration (default $SGCONF/GUEST/GUEST.conf; an existing file is moved to .backup/ beside it first)' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from deploy" -l connect -d 'libvirt connection URI' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from deploy" -l virsh -d 'The virsh program' -r -F
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from deploy" -l virsh-timeout -d 'Longest time one virsh call may take, in seconds' -r
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from deploy" -s v -l verbose -d 'Log debugging detail'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from deploy" -l no-syslog -d 'Do not log to syslog (stderr only)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from deploy" -s h -l help -d 'Print help'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "start" -d 'Start the guest unless it runs; wait until it runs (and its cmappserver answers)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "stop" -d 'Shut the guest down gracefully, then force it off after --timeout'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "monitor" -d 'Watch the guest until it stops running (the package\'s guest-monitor service)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "validate" -d 'Check that the guest is defined here and its definition is usable'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "maintenance" -d 'Turn the package\'s maintenance mode on or off, or show it'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "deploy" -d 'Write the guest\'s Serviceguard package configuration (the original\'s cmdeployvpkg)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand demo" -s h -l help -d 'Print help'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand help; and not __fish_seen_subcommand_from check status logs keygen vm demo help" -f -a "check" -d 'Connect, authenticate and ping a guest\'s cmappserver; print its version and how many processes it monitors'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand help; and not __fish_seen_subcommand_from check status logs keygen vm demo help" -f -a "status" -d 'List the processes a guest\'s cmappserver monitors'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand help; and not __fish_seen_subcommand_from check status logs keygen vm demo help" -f -a "logs" -d 'Print a service\'s output log from the guest (the last lines, then new ones with --follow), over the same authenticated connection'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand help; and not __fish_seen_subcommand_from check status logs keygen vm demo help" -f -a "keygen" -d 'Generate this host\'s key and certificate (pinned or CA-signed)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand help; and not __fish_seen_subcommand_from check status logs keygen vm demo help" -f -a "vm" -d 'Start, stop, monitor and validate a libvirt guest run as a cluster package'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand help; and not __fish_seen_subcommand_from check status logs keygen vm demo help" -f -a "demo" -d 'Loopback demo: throwaway keys, a real cmappserver, an application\'s exit code'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand help; and not __fish_seen_subcommand_from check status logs keygen vm demo help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand help; and __fish_seen_subcommand_from keygen" -f -a "ca" -d 'Create a certificate authority: ca.public (its certificate, the trust store of CA mode) and ca.private (its key)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand help; and __fish_seen_subcommand_from keygen" -f -a "issue" -d 'Sign a certificate for this machine with a CA made by `keygen ca`'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand help; and __fish_seen_subcommand_from keygen" -f -a "renew" -d 'A new certificate for the existing key in DIR\'s .private file (made by keygen), replacing the .private and .public files: self-signed, or signed by the CA in --ca-dir. Peers that pin the old certificate must be given the new .public (README, Rotating keys)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "start" -d 'Start the guest unless it runs; wait until it runs (and its cmappserver answers)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "stop" -d 'Shut the guest down gracefully, then force it off after --timeout'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "monitor" -d 'Watch the guest until it stops running (the package\'s guest-monitor service)'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "validate" -d 'Check that the guest is defined here and its definition is usable'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "maintenance" -d 'Turn the package\'s maintenance mode on or off, or show it'
complete -c cmappmgr -n "__fish_cmappmgr_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "deploy" -d 'Write the guest\'s Serviceguard package configuration (the original\'s cmdeployvpkg)'
