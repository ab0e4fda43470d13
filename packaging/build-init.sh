#!/usr/bin/env bash
# Build kelson-init as a static binary (it runs inside container images, which may lack a libc)
# and place it next to the other binaries: target/<profile>/kelson-init.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-debug}"
flag=""
[ "$profile" = release ] && flag="--release"
RUSTFLAGS="-C target-feature=+crt-static" cargo build $flag --locked --manifest-path shim/init/Cargo.toml --target-dir target/init
mkdir -p "target/$profile"
install -m 0755 "target/init/$profile/kelson-init" "target/$profile/kelson-init"
