#!/usr/bin/env bash
# Builds the Debian package target/debian/mde-sync_<version>-1_<arch>.deb: the binary, the man
# page and shell completions generated from its command line (`mde-sync package-assets`), then
# cargo-deb (installed with `cargo install cargo-deb --locked` when missing). Prints the
# package's path last.
#
# MDE_SYNC_DEB_PROFILE=dev packages the debug binary `cargo test` already built: CI does that to
# test the packaging and the service without a second, release build. Releases use the default.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE="${MDE_SYNC_DEB_PROFILE:-release}"

if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "== cargo install cargo-deb --version 3.8.0 --locked" >&2
    cargo install cargo-deb --version 3.8.0 --locked >&2
fi
case "$PROFILE" in
    release) BIN=target/release/mde-sync ;;
    dev) BIN=target/debug/mde-sync ;;
    *)
        echo "MDE_SYNC_DEB_PROFILE=$PROFILE: use release or dev" >&2
        exit 2
        ;;
esac
if [ "$PROFILE" = dev ]; then
    # The binary exactly as `cargo test` builds it (with the dev-dependencies' features): a plain
    # `cargo build` would rebuild the dependencies without them.
    echo "== cargo test --no-run --locked" >&2
    cargo test --no-run --locked >&2
else
    echo "== cargo build --release --locked" >&2
    cargo build --release --locked >&2
fi
rm -rf target/package-assets
"$BIN" package-assets target/package-assets
echo "== cargo deb --no-build --profile $PROFILE" >&2
rm -f target/debian/mde-sync_*.deb
cargo deb --no-build --profile "$PROFILE" >&2
ls -t target/debian/mde-sync_*.deb | head -n 1
