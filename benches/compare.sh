#!/usr/bin/env bash
# kelson beside containerd on this machine, in one run: installs containerd and runc (Debian's
# packages) with everything else kelson needs, builds kelson in release mode, and runs
# `kelson-bench compare` in a network namespace of its own (no packet leaves the machine).
# Writes docs/bench/results.json, docs/bench/*.svg and the table in docs/benchmarks.md.
#   benches/compare.sh [--runs N] [--scenarios lifecycle,pods20,pods50,exec,log,pull,scale100,stream]
#                      [--skip-conformance] [--merge]   (--merge: keep the other scenarios' figures)
set -euo pipefail
cd "$(dirname "$0")/.."
bash packaging/setup.sh containerd runc
cargo build --release --locked --workspace --bins
bash packaging/build-init.sh release
exec unshare --net -- sh -c 'ip link set lo up && exec target/release/kelson-bench compare "$@"' \
  kelson-bench "$@"
