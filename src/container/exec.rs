//! A command run in a running container for a streaming session: `kelson-shim-engine exec`
//! as a child of kelsond, with pipes for the session's stdio. The engine joins the container
//! and waits for the command, so its exit status is the command's; it writes the command's
//! pid to a file so that a session that ends early can kill the command itself.

use std::path::PathBuf;
use std::process::Stdio;

use super::{ContainerError, ContainerService, RunState};

pub struct ExecProcess {
    /// The engine: stdin (when asked for), stdout and stderr are the command's.
    pub child: tokio::process::Child,
    pid_file: PathBuf,
}

impl ExecProcess {
    /// SIGKILL the command and wait for the engine. The command's pid comes from the
    /// engine's pid file, which appears once the engine has set the command up; killing the
    /// engine before that would orphan the library's half-made process, so this waits for the
    /// file (bounded), kills the command, and lets the engine exit by itself.
    pub async fn kill(&mut self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(pid) = std::fs::read_to_string(&self.pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .filter(|p| *p > 1)
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                break;
            }
            if matches!(self.child.try_wait(), Ok(Some(_)))
                || tokio::time::Instant::now() > deadline
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if tokio::time::timeout(std::time::Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }

    /// Remove the pid file (after the engine has been waited for).
    pub fn cleanup(&self) {
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

impl ContainerService {
    /// Start `cmd` in running container `id`, stdin piped when `stdin`.
    pub async fn exec_process(
        &self,
        id: &str,
        cmd: &[String],
        stdin: bool,
    ) -> Result<ExecProcess, ContainerError> {
        if cmd.is_empty() {
            return Err(ContainerError::Invalid("exec: cmd is empty".into()));
        }
        let rec = self.find(id)?;
        if self.view(rec.clone()).await.state != RunState::Running {
            return Err(ContainerError::WrongState {
                id: rec.id.clone(),
                state: "not running",
                op: "exec",
            });
        }
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw)
            .map_err(|e| ContainerError::Internal(format!("exec: random: {e}")))?;
        let pid_file =
            PathBuf::from(&rec.state_dir).join(format!("stream-exec-{}.pid", hex::encode(raw)));
        let mut c =
            tokio::process::Command::new(self.shim_binary.with_file_name("kelson-shim-engine"));
        c.args(["exec", "--id", &rec.id])
            .arg("--root")
            .arg(self.engine_root())
            .arg("--pid-file")
            .arg(&pid_file);
        if stdin {
            c.arg("--stdin");
        }
        let child = c
            .arg("--")
            .args(cmd)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ContainerError::Internal(format!("exec: starting the engine: {e}")))?;
        Ok(ExecProcess { child, pid_file })
    }
}
