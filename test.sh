#!/usr/bin/env bash
# The test command (README; .ci/run runs exactly this). On a fresh Debian
# machine with a Rust toolchain it gets what the tests need, then runs them:
#   as root:       installs the Debian packages and cargo tools, runs every test;
#   as any other:  installs the cargo tools (into ~/.cargo), names the tests
#                  that need root, and runs all the others.
# Extra arguments go to cargo nextest (e.g. ./test.sh -E 'binary(core)').
# `./test.sh --deps` installs and exits.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive

# Debian packages the tests use (real components, not mocks). Add yours here.
APT_PACKAGES=(
  openssl          # s_client: raw TLS peers for bad-frame and no-certificate tests
  iproute2         # network namespaces for partition and LAN-probe tests
  procps           # sysctl inside namespaces (ICMP datagram sockets)
  util-linux mount # losetup, umount: loop devices for the disk probe
  fuse3 python3-fusepy   # a block device that hangs on demand (tests/fixtures/hangfs.py)
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86  # VM lifecycle hooks
  busybox-static   # test guests' initramfs
  nagios-nrpe-server nagios-nrpe-plugin   # the peer the benchmark measures against
  openssh-server openssh-client   # the benchmark's other peer: ssh host cmd through its own sshd
  openjdk-17-jre-headless   # keytool: the original guide's key stores (tests/tests/keytool.rs)
  sslscan          # a TLS scanner as a peer: TLS 1.3 only, strong ciphers, client certificate required
  pacemaker corosync pacemaker-cli-utils crmsh resource-agents libxml2-utils  # a real cluster for ocf:cmapp:guestapp; ocf-tester, xmllint
  man-db bash zsh fish   # the man pages and completions
  lintian dpkg-dev rpm binutils   # packages: lintian, dpkg-shlibdeps, rpmbuild, objdump
  systemd          # systemd-analyze verify/security (systemd need not be running)
  python3-venv     # a virtual environment for the ziglang package (cargo-zigbuild's linker)
)

# Cargo tools the tests use: one line each. Add yours here.
# (Only what is missing is installed; --locked for reproducible tools.)
cargo_tool() { command -v "$1" >/dev/null || cargo install --locked "${2:-$1}"; }
install_cargo_tools() {
  cargo_tool cargo-nextest
  cargo_tool cargo-deb
  cargo_tool cargo-zigbuild
  cargo_tool cargo-mutants   # .ci/mutants: mutation testing of the changed code
  cargo_tool vhost-device-vsock   # the guests' virtio-vsock device (guest_vm.rs); about 2 min to build
  cargo_tool cargo-machete   # .ci/run: no declared dependency goes unused
  cargo_tool cargo-deny      # .ci/run: licenses, duplicate versions, sources (deny.toml); a few minutes to build
}

# Tests that need root (network namespaces, loop devices, libvirtd, QEMU,
# dpkg into /): a nextest filterset, one entry a line. Add yours here.
ROOT_TESTS=(
  'binary(packages_root)'
  'binary(pacemaker)'
  'binary(local)'
  'binary(policy) & test(/^run_as_/)'
  'binary(guest_vm)'
  'binary(vm) & test(=lifecycle_against_a_real_libvirtd)'
  'binary(probes) & test(/^lan_/) & !test(=lan_missing_interface_fails) & !test(=lan_bad_options_exit_64_with_usage)'
  'binary(probes) & test(/^disk_(io_error|hang|probe_stops)/)'
  'binary(probes_e2e) & test(/^(lan|disk)_probe_through_cmappmgr/)'
  'binary(resilience) & test(=a_short_partition_is_invisible_and_a_long_one_ends_the_manager_at_the_timeout)'
  'binary(output) & test(=a_full_disk_drops_and_counts_lines_and_blocks_nothing)'
  'binary(campaign)'
)

install_deps() {
  if [ "$(id -u)" = 0 ]; then
    installed=$(dpkg-query -W -f '${Status}\n' "${APT_PACKAGES[@]}" 2>/dev/null | grep -c '^install ok installed$' || true)
    if [ "$installed" -lt "${#APT_PACKAGES[@]}" ]; then
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
    fi
    # libvirt's QEMU driver will not start without its system user, even when
    # QEMU runs as root (the tests' private libvirtd does).
    getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
    getent passwd libvirt-qemu >/dev/null || useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
  else
    missing=$(dpkg-query -W -f '${Status} ${Package}\n' "${APT_PACKAGES[@]}" 2>&1 | grep -v '^install ok installed' | sed 's/.* //' | tr '\n' ' ' || true)
    [ -z "$missing" ] || echo "test.sh: not root, so not installing Debian packages the tests use: $missing" >&2
  fi
  install_cargo_tools
  # zig for cargo-zigbuild (packaging/build.sh): the ziglang wheel, in a
  # virtual environment under target/ unless python3 already has it.
  if ! python3 -m ziglang version >/dev/null 2>&1; then
    venv=target/tools/ziglang
    if ! "$venv/bin/python3" -m ziglang version >/dev/null 2>&1; then
      python3 -m venv "$venv"
      "$venv/bin/pip" install --quiet ziglang
    fi
  fi
}

install_deps
[ "${1:-}" = --deps ] && exit 0

root_filter=$(printf ' | (%s)' "${ROOT_TESTS[@]}")
root_filter=${root_filter# | }
if [ "$(id -u)" = 0 ]; then
  exec cargo nextest run --workspace "$@"
fi
echo "test.sh: not root; these tests need root and are not run (run ./test.sh as root for them):" >&2
cargo nextest list --workspace -E "$root_filter" 2>/dev/null | sed 's/^/  /' >&2
if [ $# -gt 0 ]; then
  exec cargo nextest run --workspace "$@"
fi
exec cargo nextest run --workspace -E "not ($root_filter)"
