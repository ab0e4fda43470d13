#!/usr/bin/env bash
# Installs everything kelson needs to build, run and test on Debian 12 (run as root).
# Idempotent: packages already present are skipped by apt. Arguments name extra packages.
set -euo pipefail

PACKAGES=(
  protobuf-compiler   # k8s-cri's build runs protoc
  libseccomp-dev      # seccomp filters (container creation)
  pkg-config gcc make # -sys crates
  openssl ca-certificates
  iproute2            # `ip`: pod network namespaces get lo up
  util-linux          # nsenter, mount tools (tests enter pod namespaces)
  docker-registry     # tests: a real registry on loopback
  busybox             # tests: test images are built from the host's (dynamic) busybox
  containernetworking-plugins  # CNI plugins (bridge, host-local, portmap, loopback) in /usr/lib/cni
  iptables            # used by the bridge/portmap plugins
  runc crun           # tests: OCI runtimes as RuntimeClass handlers
  systemd             # tests: systemd-analyze verifies the unit (systemd need not be running)
  python3-venv        # tests: the Helm chart is linted and rendered from PyPI's helm-python-sdk
)

# Extra packages for one purpose (benches/compare.sh: containerd runc).
PACKAGES+=("$@")

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root to install: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian starts the packaged registry as a service on :5000; tests start their own instances.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found. Install a Rust toolchain >= 1.85 (https://rustup.rs) and re-run." >&2
  exit 1
fi
rustc_minor=$(rustc --version | sed -E 's/rustc 1\.([0-9]+).*/\1/')
if [ "${rustc_minor:-0}" -lt 85 ]; then
  echo "setup: rustc $(rustc --version) is too old; kelson needs 1.85 or newer (edition 2024)." >&2
  exit 1
fi
echo "setup: all dependencies present"
