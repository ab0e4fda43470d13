#!/usr/bin/env bash
# Make the venv tests/grpc_clients.rs runs its Python gRPC client from: PyPI's grpcio (gRPC's
# C-core, the stack every non-Go client shares) and grpcio-tools (protoc, to generate the CRI
# stubs at test time from the proto k8s-cri ships). Idempotent. Usage: tests/grpc/setup.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/grpc-venv
if [ ! -x "$venv/bin/python3" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check grpcio==1.85.1 grpcio-tools==1.85.1
