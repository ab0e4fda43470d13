#!/usr/bin/env bash
# Build the Debian package: target/debian/kelson_<version>_<arch>.deb (kelsond, kelson-shim,
# kelson-shim-engine, kelson-init, the systemd unit, a default /etc/kelson/config.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
packaging/setup.sh
# cargo-deb goes where cargo install puts binaries ($CARGO_HOME/bin, beside cargo itself).
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install cargo-deb --locked --version '^3'
fi
cargo build --release --workspace --bins --locked
packaging/build-init.sh release
rm -f target/debian/kelson_*.deb
cargo deb --no-build --locked -p kelson
ls target/debian/kelson_*.deb
