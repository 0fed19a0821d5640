#!/usr/bin/env bash
# Regenerates the man pages and shell completions in packaging/ from the
# clap definitions. Run it after changing a command line option or
# subcommand, and commit the result; tests/tests/packaging_docs.rs fails
# while the committed files differ from what the code produces.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bin cmappmgr --bin cmappserver
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
"$target_dir/debug/cmappmgr" generate packaging
"$target_dir/debug/cmappserver" generate packaging
