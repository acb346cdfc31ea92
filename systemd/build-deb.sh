#!/usr/bin/env bash
# Builds the Debian package target/debian/mde-sync_<version>-1_<arch>.deb: the release binary, the
# man page and shell completions generated from its command line (`mde-sync package-assets`),
# then cargo-deb (installed with `cargo install cargo-deb --locked` when missing). Prints the
# package's path last.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "== cargo install cargo-deb --locked" >&2
    cargo install cargo-deb --locked >&2
fi
echo "== cargo build --release --locked" >&2
cargo build --release --locked >&2
rm -rf target/package-assets
target/release/mde-sync package-assets target/package-assets
echo "== cargo deb --no-build" >&2
cargo deb --no-build >&2
ls -t target/debian/mde-sync_*.deb | head -n 1
