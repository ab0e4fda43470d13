#!/usr/bin/env bash
# Lint and render the Helm chart with Helm's own Go SDK (PyPI's helm-python-sdk: libhelm_c, no
# helm binary in Debian or npm), validate every rendered object against the Kubernetes schemas
# (kubernetes-validate, offline), parse the rendered config with kelsond itself, and run the
# rendered installer script against a fake host. Usage: charts/test.sh [path/to/kelsond]
set -euo pipefail
cd "$(dirname "$0")/.."
kelsond="${1:-target/debug/kelsond}"
venv=target/chart-venv
if [ ! -x "$venv/bin/python3" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check helm-python-sdk==0.2.2 kubernetes-validate==1.37.0
KELSOND="$(realpath "$kelsond")" "$venv/bin/python3" charts/tests/test_chart.py
