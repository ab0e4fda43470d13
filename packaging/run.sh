#!/usr/bin/env bash
# Set up, build and run kelsond with its embedded defaults (socket /run/kelson/kelson.sock).
set -euo pipefail
cd "$(dirname "$0")/.."
packaging/setup.sh
# kelsond, kelson-shim and kelson-shim-engine side by side, plus the static kelson-init.
cargo build --release --workspace --bins --locked
packaging/build-init.sh release
exec ./target/release/kelsond "$@"
