//! Reaping: SIGCHLD reaches the loop through a self-pipe, every exited child is reaped (the shim
//! is a child subreaper), and the container's init's exit becomes the exit record and the
//! answer to every waiter. Exec'd commands' codes are left in `reaped` for `exec_session`.
//! It never blocks in waitpid and never signals a process.

use std::os::unix::net::UnixStream;

use kelson_proto::shim as msg;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::control::respond;
use super::{Shim, container_cgroup, now_ns};
use crate::exit_record::Exit;

/// A socket that becomes readable on SIGCHLD (signal-hook's self-pipe). A handler rather than a
/// blocked mask + signalfd: a blocked mask would be inherited by the container's processes.
pub fn sigchld_fd() -> Result<UnixStream, String> {
    let (r, w) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    r.set_nonblocking(true)
        .and(w.set_nonblocking(true))
        .map_err(|e| format!("socketpair: {e}"))?;
    signal_hook::low_level::pipe::register(nix::libc::SIGCHLD, w)
        .map_err(|e| format!("SIGCHLD handler: {e}"))?;
    Ok(r)
}

/// A finished child's pid and exit code: its status, or 128 + the signal that ended it.
fn wait_code(s: WaitStatus) -> Option<(i32, i32)> {
    match s {
        WaitStatus::Exited(p, c) => Some((p.as_raw(), c)),
        WaitStatus::Signaled(p, sig, _) => Some((p.as_raw(), 128 + sig as i32)),
        _ => None,
    }
}

impl Shim {
    pub(super) fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(s) => {
                    if let Some((pid, code)) = wait_code(s) {
                        if pid == self.init {
                            self.on_init_exit(code);
                        } else {
                            self.reaped.insert(pid, code);
                        }
                    }
                }
            }
        }
    }

    fn on_init_exit(&mut self, code: i32) {
        let e = Exit {
            code,
            finished_at: now_ns(),
            started_at: self.started_at,
            oom_killed: code == 137 && container_cgroup::oom_killed(&self.cfg.bundle),
        };
        if let Err(err) = e.write(&self.cfg.dir) {
            eprintln!("kelson-shim: writing exit record: {err}");
        }
        self.exit = Some(e);
        self.status = msg::Status::Exited;
        self.stdin = None;
        self.stdin_buf.clear();
        for w in std::mem::take(&mut self.waiters) {
            respond(
                w,
                msg::Response {
                    state: Some(self.state()),
                    ..Default::default()
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn exit_codes_are_the_status_or_128_plus_the_signal() {
        let p = Pid::from_raw(42);
        assert_eq!(wait_code(WaitStatus::Exited(p, 0)), Some((42, 0)));
        assert_eq!(wait_code(WaitStatus::Exited(p, 3)), Some((42, 3)));
        assert_eq!(
            wait_code(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some((42, 137))
        );
        assert_eq!(
            wait_code(WaitStatus::Signaled(p, Signal::SIGTERM, true)),
            Some((42, 143))
        );
        // Stopped or continued children have not exited: nothing to record.
        assert_eq!(wait_code(WaitStatus::Stopped(p, Signal::SIGSTOP)), None);
        assert_eq!(wait_code(WaitStatus::Continued(p)), None);
        assert_eq!(wait_code(WaitStatus::StillAlive), None);
    }
}
