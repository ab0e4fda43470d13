#!/usr/bin/env bash
# Set up and run every check CI runs: formatting, lints, unit, integration and conformance tests.
# Tests need root (real mounts, device nodes, xattrs) and start their own registries on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
packaging/setup.sh
cargo fmt --all -- --check
cargo fmt --manifest-path shim/init/Cargo.toml -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --manifest-path shim/init/Cargo.toml --locked --target-dir target/init -- -D warnings
# The shim is a binary of another package: build every binary before the tests use them.
cargo build --workspace --bins --locked
packaging/build-init.sh debug
# The Debian package (release build) and the Helm chart, which tests/packaging.rs and
# charts/test.sh check.
packaging/build-deb.sh
charts/test.sh target/debug/kelsond
# The Python gRPC (C-core) client tests/grpc_clients.rs drives, in its venv.
tests/grpc/setup.sh
KELSON_REQUIRE_DEB=1 KELSON_REQUIRE_PY=1 cargo test --workspace --locked
