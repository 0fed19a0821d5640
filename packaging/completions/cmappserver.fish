# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_cmappserver_global_optspecs
    string join \n c/conf= listen= check-config v/verbose pid-file= h/help V/version
end

function __fish_cmappserver_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_cmappserver_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_cmappserver_using_subcommand
    set -l cmd (__fish_cmappserver_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c cmappserver -n "__fish_cmappserver_needs_command" -s c -l conf -d 'Configuration file' -r -F
complete -c cmappserver -n "__fish_cmappserver_needs_command" -l listen -d 'Address to listen on, TCP (`0.0.0.0:5315`) or virtio-vsock (`vsock:5315`); repeatable; overrides the configuration\'s `listen`' -r
complete -c cmappserver -n "__fish_cmappserver_needs_command" -l pid-file -d 'Once ready (every listener bound, the state directory adopted), write the daemon\'s pid to this file; it is removed when the daemon stops. For init scripts; under systemd, readiness comes through NOTIFY_SOCKET' -r -F
complete -c cmappserver -n "__fish_cmappserver_needs_command" -l check-config -d 'Check the configuration and key material, report every problem, and exit'
complete -c cmappserver -n "__fish_cmappserver_needs_command" -s v -l verbose -d 'Log debugging detail'
complete -c cmappserver -n "__fish_cmappserver_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c cmappserver -n "__fish_cmappserver_needs_command" -s V -l version -d 'Print version'
complete -c cmappserver -n "__fish_cmappserver_needs_command" -f -a "keygen" -d 'Generate this guest\'s key and certificate (pinned or CA-signed)'
complete -c cmappserver -n "__fish_cmappserver_needs_command" -f -a "net-mon" -d 'Run the LAN probe (also installed as cmapp_net_mon)'
complete -c cmappserver -n "__fish_cmappserver_needs_command" -f -a "disk-mon" -d 'Run the disk probe (also installed as cmapp_disk_mon)'
complete -c cmappserver -n "__fish_cmappserver_needs_command" -f -a "shim" -d 'Internal: supervise one process (started by cmappserver itself)'
complete -c cmappserver -n "__fish_cmappserver_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and not __fish_seen_subcommand_from ca issue renew help" -l dir -d 'Directory to write into [default: /etc for cmappmgr, /opt/hp/cmappserver for cmappserver]' -r -F
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and not __fish_seen_subcommand_from ca issue renew help" -l name -d 'A name (host name or IP address) of this machine; repeat for more. The first is the certificate\'s common name [default: the host name]' -r
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and not __fish_seen_subcommand_from ca issue renew help" -s c -l conf -d 'Configuration file' -r -F
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and not __fish_seen_subcommand_from ca issue renew help" -l force -d 'Overwrite existing files'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and not __fish_seen_subcommand_from ca issue renew help" -s h -l help -d 'Print help'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and not __fish_seen_subcommand_from ca issue renew help" -f -a "ca" -d 'Create a certificate authority: ca.public (its certificate, the trust store of CA mode) and ca.private (its key)'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and not __fish_seen_subcommand_from ca issue renew help" -f -a "issue" -d 'Sign a certificate for this machine with a CA made by `keygen ca`'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and not __fish_seen_subcommand_from ca issue renew help" -f -a "renew" -d 'A new certificate for the existing key in DIR\'s .private file (made by keygen), replacing the .private and .public files: self-signed, or signed by the CA in --ca-dir. Peers that pin the old certificate must be given the new .public (README, Rotating keys)'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and not __fish_seen_subcommand_from ca issue renew help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and __fish_seen_subcommand_from ca" -l dir -d 'Directory to write into [default: the current directory]' -r -F
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and __fish_seen_subcommand_from ca" -l name -d 'The CA\'s name [default: "cmapp CA on <host name>"]' -r
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and __fish_seen_subcommand_from ca" -s c -l conf -d 'Configuration file' -r -F
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and __fish_seen_subcommand_from ca" -l force -d 'Overwrite existing files'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and __fish_seen_subcommand_from ca" -s h -l help -d 'Print help'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and __fish_seen_subcommand_from issue" -l ca-dir -d 'The directory holding the CA\'s ca.public and ca.private' -r -F
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and __fish_seen_subcommand_from issue" -l dir -d 'Directory to write into [default: as for keygen]' -r -F
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and __fish_seen_subcommand_from issue" -l name -d 'A name (host name or IP address) of this machine; repeat for more. The first is the common name [default: the host name]' -r
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and __fish_seen_subcommand_from issue" -s c -l conf -d 'Configuration file' -r -F
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and __fish_seen_subcommand_from issue" -l force -d 'Overwrite existing files'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and __fish_seen_subcommand_from issue" -s h -l help -d 'Print help'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and __fish_seen_subcommand_from renew" -l dir -d 'The directory of the .private file [default: as for keygen]' -r -F
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and __fish_seen_subcommand_from renew" -l ca-dir -d 'Sign with the CA in this directory (ca.public, ca.private)' -r -F
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and __fish_seen_subcommand_from renew" -l name -d 'The certificate\'s names [default: the old certificate\'s]' -r
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and __fish_seen_subcommand_from renew" -s c -l conf -d 'Configuration file' -r -F
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and __fish_seen_subcommand_from renew" -s h -l help -d 'Print help'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and __fish_seen_subcommand_from help" -f -a "ca" -d 'Create a certificate authority: ca.public (its certificate, the trust store of CA mode) and ca.private (its key)'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and __fish_seen_subcommand_from help" -f -a "issue" -d 'Sign a certificate for this machine with a CA made by `keygen ca`'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and __fish_seen_subcommand_from help" -f -a "renew" -d 'A new certificate for the existing key in DIR\'s .private file (made by keygen), replacing the .private and .public files: self-signed, or signed by the CA in --ca-dir. Peers that pin the old certificate must be given the new .public (README, Rotating keys)'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand keygen; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand net-mon" -s c -l conf -d 'Configuration file' -r -F
complete -c cmappserver -n "__fish_cmappserver_using_subcommand disk-mon" -s c -l conf -d 'Configuration file' -r -F
complete -c cmappserver -n "__fish_cmappserver_using_subcommand shim" -s c -l conf -d 'Configuration file' -r -F
complete -c cmappserver -n "__fish_cmappserver_using_subcommand shim" -s h -l help -d 'Print help'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand help; and not __fish_seen_subcommand_from keygen net-mon disk-mon shim help" -f -a "keygen" -d 'Generate this guest\'s key and certificate (pinned or CA-signed)'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand help; and not __fish_seen_subcommand_from keygen net-mon disk-mon shim help" -f -a "net-mon" -d 'Run the LAN probe (also installed as cmapp_net_mon)'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand help; and not __fish_seen_subcommand_from keygen net-mon disk-mon shim help" -f -a "disk-mon" -d 'Run the disk probe (also installed as cmapp_disk_mon)'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand help; and not __fish_seen_subcommand_from keygen net-mon disk-mon shim help" -f -a "shim" -d 'Internal: supervise one process (started by cmappserver itself)'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand help; and not __fish_seen_subcommand_from keygen net-mon disk-mon shim help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand help; and __fish_seen_subcommand_from keygen" -f -a "ca" -d 'Create a certificate authority: ca.public (its certificate, the trust store of CA mode) and ca.private (its key)'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand help; and __fish_seen_subcommand_from keygen" -f -a "issue" -d 'Sign a certificate for this machine with a CA made by `keygen ca`'
complete -c cmappserver -n "__fish_cmappserver_using_subcommand help; and __fish_seen_subcommand_from keygen" -f -a "renew" -d 'A new certificate for the existing key in DIR\'s .private file (made by keygen), replacing the .private and .public files: self-signed, or signed by the CA in --ca-dir. Peers that pin the old certificate must be given the new .public (README, Rotating keys)'
