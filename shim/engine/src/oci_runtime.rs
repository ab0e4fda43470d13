//! A RuntimeClass handler that is an external OCI runtime (runc, crun, youki, runsc, …): the
//! engine's create/start/exec/delete through that runtime's command line, with the same
//! stdio, pid files and exit codes as the native path, so the shim keeps logs, attach and
//! exit records exactly as for native containers. Which runtime a container uses is recorded
//! by kelsond beside the engine's state (`<engine root>/<id>.runtime.json`) before the shim is
//! spawned, so no caller needs to know.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What kelsond records for a container of an OCI-runtime handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    /// The runtime binary.
    pub binary: PathBuf,
    /// Its state root (`--root`).
    pub root: PathBuf,
    /// The container's bundle (config.json).
    pub bundle: PathBuf,
    /// Extra global options from the handler's config.
    pub args: Vec<String>,
    /// The container's cgroupsPath is systemd's slice:prefix:name (`--systemd-cgroup`).
    pub systemd_cgroup: bool,
}

/// A runtime's state root, when the engine makes it: root's only.
const RUNTIME_ROOT_MODE: u32 = 0o700;

/// The record's path for container `id` under the engine's state root.
pub fn record(engine_root: &Path, id: &str) -> PathBuf {
    engine_root.join(format!("{id}.runtime.json"))
}

/// The OCI runtime container `id` runs under, if it is not native.
pub fn handler(engine_root: &Path, id: &str) -> Result<Option<Handler>, String> {
    match std::fs::read(record(engine_root, id)) {
        Ok(b) => {
            let bad = |e: &dyn std::fmt::Display| format!("runtime record of {id}: {e}");
            let v: serde_json::Value = serde_json::from_slice(&b).map_err(|e| bad(&e))?;
            let path = |k: &str| {
                v[k].as_str()
                    .filter(|p| p.starts_with('/'))
                    .map(PathBuf::from)
                    .ok_or_else(|| bad(&format!("no absolute {k}")))
            };
            Ok(Some(Handler {
                binary: path("binary")?,
                root: path("root")?,
                bundle: path("bundle")?,
                args: v["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect(),
                systemd_cgroup: v["systemd_cgroup"].as_bool().unwrap_or(false),
            }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("runtime record of {id}: {e}")),
    }
}

impl Handler {
    /// The runtime with its global options; its own log (JSON lines) goes to `log`.
    fn command(&self, log: &Path) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(log)
            .arg("--log-format")
            .arg("json");
        if self.systemd_cgroup {
            c.arg("--systemd-cgroup");
        }
        c.args(&self.args);
        c
    }

    fn log_file(&self, id: &str, op: &str) -> PathBuf {
        self.root
            .join(format!("{id}.{op}.{}.log", std::process::id()))
    }

    /// Run `op`; on failure, the runtime's own error message (from its log, else its status).
    fn run(&self, id: &str, op: &str, build: impl FnOnce(&mut Command)) -> Result<i32, String> {
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(RUNTIME_ROOT_MODE)
                .create(&self.root)
                .map_err(|e| format!("{op}: runtime root {}: {e}", self.root.display()))?;
        }
        let log = self.log_file(id, op);
        let mut cmd = self.command(&log);
        build(&mut cmd);
        let status = cmd
            .status()
            .map_err(|e| format!("{op}: running {}: {e}", self.binary.display()));
        let errors = last_error(&std::fs::read_to_string(&log).unwrap_or_default());
        let _ = std::fs::remove_file(&log);
        let status = status?;
        match (status.code(), errors) {
            (Some(0), _) => Ok(0),
            (_, Some(msg)) => Err(format!("{op}: {}: {msg}", self.binary.display())),
            (Some(code), None) => Ok(code),
            (None, None) => Err(format!("{op}: {} {status}", self.binary.display())),
        }
    }

    /// `create`: the container's init waits for `start`; its stdio are this process's (runc
    /// and crun hand their own stdio to the container).
    pub fn create(&self, id: &str, pid_file: &Path, console: Option<&Path>) -> Result<(), String> {
        let code = self.run(id, "create", |c| {
            c.arg("create").arg("--bundle").arg(&self.bundle);
            c.arg("--pid-file").arg(pid_file);
            if let Some(s) = console {
                c.arg("--console-socket").arg(s);
            }
            c.arg(id);
        })?;
        ok(code, "create")
    }

    pub fn start(&self, id: &str) -> Result<(), String> {
        let code = self.run(id, "start", |c| {
            c.args(["start", id]).stdin(Stdio::null());
        })?;
        ok(code, "start")
    }

    /// `delete --force`; a container the runtime does not know is already gone.
    pub fn delete(&self, id: &str) -> Result<(), String> {
        let r = self.run(id, "delete", |c| {
            c.args(["delete", "--force", id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        });
        match r {
            Ok(0) => Ok(()),
            Err(e) if e.contains("not exist") || e.contains("not found") => Ok(()),
            Ok(code) => Err(format!("delete: exit status {code}")),
            Err(e) => Err(e),
        }
    }

    /// `exec` in the foreground: the runtime waits for the process and exits with its status
    /// (128 + n for a signal), stdio are this process's.
    pub fn exec(&self, id: &str, process: &Path, pid_file: &Path) -> Result<i32, String> {
        self.run(id, "exec", |c| {
            c.arg("exec").arg("--process").arg(process);
            c.arg("--pid-file").arg(pid_file).arg(id);
        })
    }

    /// `exec` on a terminal the runtime makes in the container; the master goes to
    /// `console`. Detached (runtimes need that with a console socket): the caller, a child
    /// subreaper, waits for the process itself. Returns its pid.
    pub fn exec_detached_tty(
        &self,
        id: &str,
        process: &Path,
        pid_file: &Path,
        console: &Path,
    ) -> Result<i32, String> {
        let code = self.run(id, "exec", |c| {
            c.arg("exec").arg("--tty").arg("--detach");
            c.arg("--console-socket").arg(console);
            c.arg("--process").arg(process);
            c.arg("--pid-file").arg(pid_file).arg(id);
            c.stdin(Stdio::null());
        })?;
        ok(code, "exec")?;
        std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| "exec: the runtime wrote no pid".to_owned())
    }
}

fn ok(code: i32, op: &str) -> Result<(), String> {
    if code == 0 {
        Ok(())
    } else {
        Err(format!("{op}: exit status {code}"))
    }
}

/// The last error a runtime logged (runc and crun: JSON lines with `level` and `msg`).
pub fn last_error(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .find_map(|v| v["msg"].as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtimes_last_error_is_found() {
        let log = r#"{"level":"warning","msg":"cgroup v1 is deprecated","time":"2026"}
{"level":"error","msg":"container_linux.go:380: starting container process caused: exec: \"/nope\": no such file","time":"2026"}
not json
{"msg": "crun: make `/x`: Permission denied", "level": "error", "time": "2026"}
"#;
        assert_eq!(
            last_error(log).unwrap(),
            "crun: make `/x`: Permission denied"
        );
        assert_eq!(last_error("{\"level\":\"info\",\"msg\":\"x\"}"), None);
    }

    #[test]
    fn records_are_read_or_absent() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(handler(d.path(), "c1").unwrap(), None);
        std::fs::write(
            record(d.path(), "c1"),
            r#"{"binary":"/usr/sbin/runc","root":"/run/r","bundle":"/b","args":["--platform=systrap"]}"#,
        )
        .unwrap();
        let h = handler(d.path(), "c1").unwrap().unwrap();
        assert_eq!(h.binary, PathBuf::from("/usr/sbin/runc"));
        assert_eq!(h.args, ["--platform=systrap"]);
        let cmd = h.command(Path::new("/l"));
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--root",
                "/run/r",
                "--log",
                "/l",
                "--log-format",
                "json",
                "--platform=systrap"
            ]
        );
        std::fs::write(
            record(d.path(), "c3"),
            r#"{"binary":"runc","root":"/r","bundle":"/b"}"#,
        )
        .unwrap();
        assert!(handler(d.path(), "c3").is_err(), "a relative binary");
        std::fs::write(record(d.path(), "c2"), b"{").unwrap();
        assert!(handler(d.path(), "c2").is_err());
    }
}
