#!/usr/bin/env bash
# Builds the packages into target/packages/:
#   cmappmgr_VERSION-REV_amd64.deb     cmappmgr-VERSION-REV.x86_64.rpm      (host)
#   cmappserver_VERSION-REV_amd64.deb  cmappserver-VERSION-REV.x86_64.rpm   (guest)
# Both binaries are linked against glibc 2.17 (cargo-zigbuild with the
# ziglang package), so the guest package installs on RHEL 7 / SLES 12 era
# guests as well as current ones.
#
# Usage: packaging/build.sh [--revision N] [--out DIR]
# Needs: cargo-deb, cargo-zigbuild, python3 -m ziglang, rpmbuild, dpkg-shlibdeps
# (.ci/run and the README's test command install them).
set -euo pipefail
cd "$(dirname "$0")/.."

REVISION=1
OUT=
while [ $# -gt 0 ]; do
    case "$1" in
        --revision) REVISION=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "usage: $0 [--revision N] [--out DIR]" >&2; exit 64 ;;
    esac
done

GLIBC=2.17
TRIPLE=x86_64-unknown-linux-gnu
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
OUT=${OUT:-$TARGET_DIR/packages}
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
BIN=$TARGET_DIR/$TRIPLE/release

for tool in cargo-deb cargo-zigbuild rpmbuild; do
    command -v "$tool" >/dev/null || { echo "$0: $tool is missing (see README, Packaging)" >&2; exit 69; }
done
# zig: the ziglang Python package, installed by ./test.sh into a virtual
# environment when the system's python3 does not have it.
if ! python3 -m ziglang version >/dev/null 2>&1; then
    venv=$TARGET_DIR/tools/ziglang
    [ -x "$venv/bin/python3" ] || { echo "$0: zig is missing: pip install ziglang (or run ./test.sh)" >&2; exit 69; }
    export CARGO_ZIGBUILD_PYTHON_PATH=$venv/bin/python3
fi


mkdir -p "$OUT"
# One build at a time into the same place (tests build concurrently).
exec 9>"$OUT/.lock"
flock 9

cargo zigbuild --release --locked --target "$TRIPLE.$GLIBC" -p appmgr -p appserver
# Packages are made in a scratch directory and renamed into $OUT, so that a
# reader of an older copy (a test running lintian) never sees a partial file.
top=$(mktemp -d)
trap 'rm -rf "$top"' EXIT
mkdir "$top/debs"
for pkg in appmgr appserver; do
    cargo deb --no-build --no-strip -p "$pkg" --target "$TRIPLE" --deb-revision "$REVISION" -o "$top/debs"
done
mv "$top"/debs/*.deb "$OUT"/
rpmbuild -bb --quiet \
    --define "_topdir $top" \
    --define "_rpmdir $top/rpms" \
    --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
    --define "cmapp_version $VERSION" \
    --define "cmapp_release $REVISION" \
    --define "cmapp_src $PWD" \
    --define "cmapp_bin $BIN" \
    --target x86_64 \
    packaging/rpm/cmapp.spec
mv "$top"/rpms/*.rpm "$OUT"/
ls -1 "$OUT"/cmappmgr[_-]"$VERSION"-"$REVISION"* "$OUT"/cmappserver[_-]"$VERSION"-"$REVISION"*
