//! A command run in a running container for a streaming session: `kelson-shim-engine exec`
//! as a child of kelsond, with pipes for the session's stdio. The engine joins the container
//! and waits for the command, so its exit status is the command's; it writes the command's
//! pid to a file so that a session that ends early can kill the command itself.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::{ContainerError, ContainerService, RunState};
use crate::store::ContainerRecord;

pub struct ExecProcess {
    /// The engine: stdin (when asked for), stdout and stderr are the command's (without a
    /// terminal; with one, the engine's own output is only its errors).
    pub child: tokio::process::Child,
    /// With a terminal: the pty master (the command's stdin, stdout and stderr).
    pub pty: Option<std::os::fd::OwnedFd>,
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
    /// The running container a command is for (checked non-empty at the CRI edge), a fresh
    /// name for the session, and its pid file.
    async fn exec_target(
        &self,
        id: &str,
    ) -> Result<(ContainerRecord, String, PathBuf), ContainerError> {
        let rec = self.find(id)?;
        if self.view(rec.clone()).await.state != RunState::Running {
            return Err(ContainerError::WrongState {
                id: rec.id.clone(),
                state: "not running",
                op: "exec",
            });
        }
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).map_err(ContainerError::Random)?;
        let name = hex::encode(raw);
        let pid_file = PathBuf::from(&rec.state_dir).join(format!("stream-exec-{name}.pid"));
        Ok((rec, name, pid_file))
    }

    /// `kelson-shim-engine exec` for `rec`, options before the command still to add.
    fn engine_exec(&self, rec: &ContainerRecord, pid_file: &Path) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(self.engine.path());
        c.args(["exec", "--id", &rec.id])
            .arg("--root")
            .arg(self.engine_root())
            .arg("--pid-file")
            .arg(pid_file)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .kill_on_drop(true);
        c
    }

    /// Start `cmd` in running container `id`, stdin piped when `stdin`.
    pub async fn exec_process(
        &self,
        id: &str,
        cmd: &[String],
        stdin: bool,
    ) -> Result<ExecProcess, ContainerError> {
        let (rec, _, pid_file) = self.exec_target(id).await?;
        let mut c = self.engine_exec(&rec, &pid_file);
        if stdin {
            c.arg("--stdin");
        }
        let child = c
            .arg("--")
            .args(cmd)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(ContainerError::EngineSpawn)?;
        Ok(ExecProcess {
            child,
            pty: None,
            pid_file,
        })
    }

    /// Start `cmd` in running container `id` on a terminal of its own: the container library
    /// makes the pty inside the container and sends its master here over a unix socket
    /// (root-only, in kelsond's state dir, removed once used).
    pub async fn exec_tty_process(
        &self,
        id: &str,
        cmd: &[String],
    ) -> Result<ExecProcess, ContainerError> {
        let (rec, name, pid_file) = self.exec_target(id).await?;
        let internal = |step, source| ContainerError::Terminal { step, source };
        let dir = self.dirs.state.join("tty");
        crate::owner_only::create_dir_all(&dir).map_err(|e| internal("socket dir", e))?;
        crate::owner_only::set_mode(&dir, crate::owner_only::DIR)
            .map_err(|e| internal("socket dir", e))?;
        let sock = dir.join(format!("{name}.sock"));
        let listener =
            tokio::net::UnixListener::bind(&sock).map_err(|e| internal("console socket", e))?;
        struct Remove(PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let _cleanup = Remove(sock.clone());
        let mut child = self
            .engine_exec(&rec, &pid_file)
            .arg("--console-socket")
            .arg(&sock)
            .arg("--")
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| internal("starting the engine", e))?;
        // The container's side connects and sends the master; an engine that fails first
        // says why on stderr.
        let accepted = tokio::select! {
            a = tokio::time::timeout(std::time::Duration::from_secs(30), listener.accept()) => a,
            st = child.wait() => {
                let mut msg = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ = e.read_to_string(&mut msg).await;
                }
                return Err(ContainerError::TerminalEngineExited(format!(
                    "{}: {}",
                    st.map(|s| s.to_string()).unwrap_or_default(),
                    msg.trim()
                )));
            }
        };
        let conn = match accepted {
            Ok(Ok((c, _))) => c,
            Ok(Err(e)) => return Err(internal("accepting the console", e)),
            Err(_) => return Err(ContainerError::NoTerminal),
        };
        let conn = conn
            .into_std()
            .and_then(|c| {
                c.set_nonblocking(false)?;
                c.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
                Ok(c)
            })
            .map_err(|e| internal("console connection", e))?;
        let master = tokio::task::spawn_blocking(move || crate::sys::recv_fd(&conn))
            .await?
            .map_err(|e| internal("receiving the terminal", e))?;
        Ok(ExecProcess {
            child,
            pty: Some(master),
            pid_file,
        })
    }
}

impl ContainerService {
    /// Join running container `id`'s stdio through its shim (an attach session). Returns the
    /// shim connection and whether the container runs on a terminal.
    pub async fn attach(
        &self,
        id: &str,
        a: crate::shim_client::msg::Attach,
    ) -> Result<(crate::shim_client::Connection, bool), ContainerError> {
        let rec = self.find(id)?;
        if self.view(rec.clone()).await.state != RunState::Running {
            return Err(ContainerError::WrongState {
                id: rec.id.clone(),
                state: "not running",
                op: "attach",
            });
        }
        let tty = rec.config["tty"].as_bool().unwrap_or(false);
        let conn = self.client(&rec).attach(a).await?;
        Ok((conn, tty))
    }
}
