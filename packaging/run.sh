#!/usr/bin/env bash
# Set up, build and run kelsond with its embedded defaults (socket /run/kelson/kelson.sock).
set -euo pipefail
cd "$(dirname "$0")/.."
packaging/setup.sh
cargo build --release --bin kelsond
exec ./target/release/kelsond "$@"
