#!/usr/bin/env bash
# Set up and run every check CI runs: formatting, lints, unit, integration and conformance tests.
# Tests need root (real mounts, device nodes, xattrs) and start their own registries on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
packaging/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
