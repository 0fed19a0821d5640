#!/usr/bin/env bash
# Regenerates the man pages and shell completions in packaging/ from the
# clap definitions, with cmapp-docgen (the docgen crate: the generators are
# not linked into the binaries). Run it after changing a command line option
# or subcommand, and commit the result; tests/tests/packaging_docs.rs fails
# while the committed files differ from what the code produces.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet -p docgen --bin cmapp-docgen -- packaging
