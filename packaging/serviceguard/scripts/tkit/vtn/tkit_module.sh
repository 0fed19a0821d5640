#!/bin/sh
# Module script of the VM toolkit module tkit/vtn/vtn, for libvirt (KVM/QEMU)
# guests run as Serviceguard packages. Installed as
#   $SGCONF/scripts/tkit/vtn/tkit_module.sh
# Serviceguard's master control script runs it with one argument:
#   validate   (cmcheckconf, cmapplyconf)  the guest is defined here and usable
#   start      (package start)             start the guest and wait until it runs
#                                          (and, with GUEST_NODE, until its cmappserver answers)
#   stop       (package halt)              shut the guest down, forced after STOP_TIMEOUT
# and the package's guest-monitor service runs it as
#   guest_monitor                          watch the guest until it fails (exit 1),
#                                          honouring the maintenance file in TKIT_DIR
# Each is one `cmappmgr vm ...` command; this script only maps the package's
# attributes to its options. It exits with cmappmgr's code: 0 success,
# 1 failure (64: a bad attribute value).
#
# Environment (as Serviceguard provides it to module scripts and services):
#   SG_PACKAGE         the package name (the guest's name unless GUEST_NAME says otherwise)
#   SGCONF             Serviceguard's configuration directory (default /etc/cmcluster)
#   the module's attributes, under their own names (see the ADF, vtn.1):
#   GUEST_NAME TKIT_DIR MAINTENANCE_FLAG MONITOR_INTERVAL LIBVIRT_URI
#   START_TIMEOUT STOP_TIMEOUT GUEST_NODE CMAPPSERVER_TIMEOUT
# An attribute missing from the environment is read by cmappmgr from the
# package configuration, $SGCONF/$SG_PACKAGE/$SG_PACKAGE.conf, if it exists.
#   CMAPPMGR           the cmappmgr binary (default /usr/sbin/cmappmgr)

CMAPPMGR=${CMAPPMGR:-/usr/sbin/cmappmgr}
SGCONF=${SGCONF:-/etc/cmcluster}
export SGCONF

log() {
    echo "$(date '+%b %d %H:%M:%S') - Node \"$(uname -n)\": tkit_module.sh: $*"
}

guest=${GUEST_NAME:-$SG_PACKAGE}
if [ -z "$guest" ]; then
    log "ERROR: neither GUEST_NAME nor SG_PACKAGE is set: which guest?"
    exit 1
fi
if [ ! -x "$CMAPPMGR" ]; then
    log "ERROR: $CMAPPMGR is not installed or not executable"
    exit 1
fi

action=$1
if [ $# -ne 1 ]; then
    action=usage
fi

# cmappmgr vm [--connect URI] COMMAND GUEST, then the command's options.
set --
if [ -n "$LIBVIRT_URI" ]; then
    set -- --connect "$LIBVIRT_URI"
fi
tkit=no
case $action in
validate)
    set -- "$@" validate "$guest"
    ;;
start)
    set -- "$@" start "$guest" --timeout "${START_TIMEOUT:-60}"
    if [ -n "$GUEST_NODE" ]; then
        set -- "$@" --check-node "$GUEST_NODE" --check-timeout "${CMAPPSERVER_TIMEOUT:-240}"
    fi
    tkit=yes
    ;;
stop)
    set -- "$@" stop "$guest" --timeout "${STOP_TIMEOUT:-60}"
    ;;
guest_monitor)
    set -- "$@" monitor "$guest"
    if [ -n "$MONITOR_INTERVAL" ]; then
        set -- "$@" --interval "$MONITOR_INTERVAL"
    fi
    tkit=yes
    ;;
*)
    log "usage: tkit_module.sh start|stop|validate|guest_monitor"
    exit 1
    ;;
esac

# Where the maintenance file is, and whether it counts: the same attributes
# for start (a warning) and the monitor, and the same package configuration
# `cmappmgr vm maintenance GUEST` reads.
if [ "$tkit" = yes ]; then
    pkg_conf=$SGCONF/$SG_PACKAGE/$SG_PACKAGE.conf
    if [ -n "$SG_PACKAGE" ] && [ -f "$pkg_conf" ]; then
        set -- "$@" --package-conf "$pkg_conf"
    fi
    if [ -n "$TKIT_DIR" ]; then
        set -- "$@" --tkit-dir "$TKIT_DIR"
    fi
    if [ -n "$MAINTENANCE_FLAG" ]; then
        set -- "$@" --maintenance-flag "$MAINTENANCE_FLAG"
    fi
fi

log "$action guest $guest: $CMAPPMGR vm $*"
# exec: the guest-monitor service's SIGTERM at package halt reaches cmappmgr.
exec "$CMAPPMGR" vm "$@"
