"""Tests of charts/kelson: lint, rendering, schema validation, the config kelsond will read, the
unit systemd will run, and the installer script run for real against a fake host."""

import os
import re
import subprocess
import sys
import tempfile

import helm_python as helm
import kubernetes_validate
import yaml  # PyYAML comes with kubernetes-validate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "charts", "kelson")
KELSOND = os.environ["KELSOND"]
KUBE_VERSIONS = ["1.29.0", "1.31.0", "1.33.0"]

failures = []


def check(name):
    def wrap(f):
        try:
            f()
            print(f"ok   {name}")
        except Exception as e:  # noqa: BLE001 - report every failing case, then fail
            failures.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}")
        return f

    return wrap


def render(values=None):
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values or {})
        out = chart.render(values, name="kelson", namespace="kube-system", is_install=True)
    objs = []
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        objs += [d for d in yaml.safe_load_all(text) if d]
    return objs


def of_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


@check("helm lint --strict finds nothing")
def _():
    report = helm.lint(CHART, strict=True, kube_version="v1.31.0")
    assert not report["errors"], report
    bad = [m for m in report["messages"] if m["severity"] >= 2]
    assert not bad, bad


@check("every rendered object is valid Kubernetes (strict schemas)")
def _():
    objs = render()
    assert {o["kind"] for o in objs} == {"ConfigMap", "DaemonSet", "RuntimeClass"}, objs
    for v in KUBE_VERSIONS:
        for o in objs:
            kubernetes_validate.validate(o, v, strict=True)


@check("the DaemonSet installs from a privileged pod in the host's PID namespace")
def _():
    ds = of_kind(render(), "DaemonSet")[0]
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    init = spec["initContainers"][0]
    assert init["securityContext"]["privileged"] is True
    assert {"name": "host", "mountPath": "/host"} in init["volumeMounts"]
    host = [v for v in spec["volumes"] if v["name"] == "host"][0]
    assert host["hostPath"]["path"] == "/"
    wait = spec["containers"][0]
    assert wait["securityContext"]["allowPrivilegeEscalation"] is False
    assert "/host/run/kelson/kelson.sock" in " ".join(wait["readinessProbe"]["exec"]["command"])
    assert any(t.get("operator") == "Exists" for t in spec["tolerations"])


@check("a changed config rolls the DaemonSet")
def _():
    a = of_kind(render(), "DaemonSet")[0]["spec"]["template"]["metadata"]["annotations"]
    b = of_kind(render({"logLevel": "debug"}), "DaemonSet")[0]["spec"]["template"]["metadata"]["annotations"]
    assert a["kelson.io/config-checksum"] != b["kelson.io/config-checksum"]


@check("kelsond accepts the rendered config and sees every handler")
def _():
    values = {
        "cgroupDriver": "cgroupfs",
        "runtimeClasses": [
            {"name": "runc", "handler": "runc", "type": "oci", "path": "/usr/sbin/runc"},
            {"name": "gvisor", "handler": "runsc", "type": "oci", "path": "/usr/local/bin/runsc", "args": ["--platform=systrap"]},
            {"name": "fast", "handler": "kelson", "type": "native"},
        ],
        "extraConfig": "[container]\ninit = true\n",
    }
    objs = render(values)
    cm = of_kind(objs, "ConfigMap")[0]
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(cm["data"]["config.toml"])
        f.flush()
        out = subprocess.run([KELSOND, "--config", f.name, "config"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    effective = out.stdout
    for handler in ["runc", "runsc", "kelson"]:
        assert f"[runtimes.{handler}]" in effective, effective
    assert 'args = ["--platform=systrap"]' in effective, effective
    assert re.search(r"^init = true", effective, re.M), effective
    rcs = of_kind(objs, "RuntimeClass")
    assert sorted((r["metadata"]["name"], r["handler"]) for r in rcs) == [
        ("fast", "kelson"), ("gvisor", "runsc"), ("runc", "runc")]
    assert of_kind(render({"createRuntimeClasses": False}), "RuntimeClass") == []


@check("bad values are refused before anything renders")
def _():
    for bad in [
        {"runtimeClasses": [{"name": "Bad_Name", "handler": "x", "type": "oci", "path": "/x"}]},
        {"runtimeClasses": [{"name": "x", "handler": "x", "type": "oci"}]},
        {"runtimeClasses": [{"name": "x", "handler": "x", "type": "wasm"}]},
        {"cgroupDriver": "nope"},
        {"host": {"binDir": "relative/bin"}},
        {"host": {"binDir": "/usr/bin; rm -rf /"}},
    ]:
        try:
            render(bad)
        except helm.HelmError:
            continue
        raise AssertionError(f"accepted {bad}")


@check("the chart's unit is the packaged unit but for its paths")
def _():
    cm = of_kind(render(), "ConfigMap")[0]
    def service(text):
        lines = [l for l in text.splitlines() if l and not l.startswith("#")]
        sec = lines.index("[Service]")
        end = next(i for i in range(sec + 1, len(lines)) if lines[i].startswith("["))
        return [l for l in lines[sec + 1:end] if not l.startswith("ExecStart=")]
    packaged = open(os.path.join(ROOT, "packaging", "systemd", "kelson.service")).read()
    assert service(cm["data"]["kelson.service"]) == service(packaged)
    assert "KillMode=process" in packaged and "Delegate=yes" in packaged
    assert "ExecStart=/usr/local/bin/kelsond --config /etc/kelson/config.toml" in cm["data"]["kelson.service"]


FAKE_NSENTER = """#!/bin/sh
# Stands in for `nsenter --target 1 … -- systemctl …` on a fake host: logs the call, keeps the
# unit's state in a file, and makes kelsond's socket appear when the unit (re)starts.
while [ "$1" != "--" ]; do shift; done
shift
echo "$*" >> "$FAKE_LOG"
case "$2" in
  is-active) [ -f "$FAKE_STATE" ] ;;
  start|restart)
    touch "$FAKE_STATE"
    rm -f "$FAKE_SOCKET"
    python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$FAKE_SOCKET" ;;
  *) true ;;
esac
"""


@check("the installer installs atomically, starts once, restarts only on a change")
def _():
    with tempfile.TemporaryDirectory() as t:
        host, src, cfg, fake = (os.path.join(t, d) for d in ("host", "src", "cfg", "bin"))
        for d in (host, src, cfg, fake, os.path.join(host, "run", "kelson")):
            os.makedirs(d)
        for b in ["kelsond", "kelson-shim", "kelson-shim-engine", "kelson-init"]:
            with open(os.path.join(src, b), "w") as f:
                f.write(f"binary {b} v1\n")
        def write_config(values):
            cm = of_kind(render(values), "ConfigMap")[0]
            for k, v in cm["data"].items():
                with open(os.path.join(cfg, k), "w") as f:
                    f.write(v)
        write_config({})
        with open(os.path.join(fake, "nsenter"), "w") as f:
            f.write(FAKE_NSENTER)
        os.chmod(os.path.join(fake, "nsenter"), 0o755)
        log = os.path.join(t, "calls")
        env = dict(os.environ, HOST=host, SRC=src, CFG=cfg, PATH=fake + ":" + os.environ["PATH"],
                   FAKE_LOG=log, FAKE_STATE=os.path.join(t, "active"),
                   FAKE_SOCKET=os.path.join(host, "run", "kelson", "kelson.sock"))
        def run():
            open(log, "w").close()
            out = subprocess.run(["sh", os.path.join(cfg, "install.sh")], env=env, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stdout + out.stderr
            return [l.strip() for l in open(log)]
        calls = run()
        assert calls == ["systemctl daemon-reload", "systemctl enable kelson.service",
                         "systemctl is-active --quiet kelson.service", "systemctl start kelson.service"], calls
        kelsond = os.path.join(host, "usr", "local", "bin", "kelsond")
        assert open(kelsond).read() == "binary kelsond v1\n"
        assert os.stat(kelsond).st_mode & 0o777 == 0o755
        assert os.path.exists(os.path.join(host, "etc", "kelson", "config.toml"))
        assert os.path.exists(os.path.join(host, "etc", "systemd", "system", "kelson.service"))
        # Nothing changed: nothing restarted.
        assert run() == ["systemctl is-active --quiet kelson.service"]
        # A new binary: installed by rename (the old inode, which a running process may hold,
        # is left intact), then one restart.
        before = os.stat(kelsond).st_ino
        with open(os.path.join(src, "kelson-shim"), "w") as f:
            f.write("binary kelson-shim v2\n")
        calls = run()
        assert calls == ["systemctl daemon-reload", "systemctl enable kelson.service",
                         "systemctl is-active --quiet kelson.service", "systemctl restart kelson.service"], calls
        assert os.stat(kelsond).st_ino == before, "an unchanged binary was rewritten"
        assert open(os.path.join(host, "usr", "local", "bin", "kelson-shim")).read() == "binary kelson-shim v2\n"
        leftovers = [f for _, _, fs in os.walk(host) for f in fs if f.endswith(".kelson-new")]
        assert not leftovers, leftovers
        # restartOnChange off: a change is installed but the running service is left alone.
        write_config({"restartOnChange": False, "logLevel": "debug"})
        calls = run()
        assert "systemctl restart kelson.service" not in calls, calls


if failures:
    print(f"{len(failures)} chart test(s) failed: {failures}")
    sys.exit(1)
print("chart tests passed")
