//! One CNI plugin process, talked to under a single deadline: its config written to stdin,
//! stdout and stderr read (each capped), and its exit awaited — all of it inside the plugin
//! timeout. A plugin that never reads its stdin, or that exits while a child it forked still
//! holds stdout or stderr open, cannot hold pod creation past that deadline: then the plugin's
//! whole process group is killed and reaped.
//!
//! One thread and `poll(2)` over the three pipes, not a thread per pipe: a reader thread blocked
//! on a pipe a forked child keeps open could never be joined nor stopped.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Longest wait in one `poll` before the child's exit is checked again (an exit wakes no pipe
/// when a forked child holds them).
const POLL_SLICE: Duration = Duration::from_millis(20);

/// What a plugin left behind when it finished in time.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Why a plugin did not finish in time.
#[derive(Debug, PartialEq, Eq)]
pub enum Overran {
    /// It was still running at the deadline.
    Running,
    /// It had exited, but its stdout or stderr was still held open (by a child it forked).
    OutputHeld,
}

/// Feed `input` to `child`'s stdin, collect at most `cap` bytes of each of stdout and stderr,
/// and wait for its exit and both outputs' end, all before `deadline`. `Err(Overran)` once the
/// deadline passed: the process group led by `child` has then been killed and `child` reaped.
pub fn communicate(
    child: &mut Child,
    input: &[u8],
    cap: usize,
    deadline: Instant,
) -> io::Result<Result<Finished, Overran>> {
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    for fd in [
        stdin.as_ref().map(|s| s.as_fd()),
        stdout.as_ref().map(|s| s.as_fd()),
        stderr.as_ref().map(|s| s.as_fd()),
    ]
    .into_iter()
    .flatten()
    {
        nonblocking(fd)?;
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut written = 0;
    let mut status = None;
    loop {
        if input.len() == written {
            stdin = None; // EOF for the plugin
        }
        if status.is_none() {
            status = child.try_wait()?;
        }
        if let Some(status) = status.filter(|_| stdout.is_none() && stderr.is_none()) {
            return Ok(Ok(Finished {
                status,
                stdout: out,
                stderr: err,
            }));
        }
        let now = Instant::now();
        if now >= deadline {
            kill_group(child);
            return Ok(Err(if status.is_some() {
                Overran::OutputHeld
            } else {
                Overran::Running
            }));
        }
        let wait = (deadline - now).min(POLL_SLICE);
        let mut fds = Vec::with_capacity(3);
        if let Some(s) = &stdin {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLOUT));
        }
        if let Some(s) = &stdout {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
        }
        if let Some(s) = &stderr {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
        }
        if !fds.is_empty() {
            let ms = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            std::thread::sleep(wait);
        }
        if let Some(s) = stdin.as_mut() {
            match s.write(&input[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The plugin closed its stdin (exited, or does not want more): stop feeding it.
                Err(_) => stdin = None,
            }
        }
        drain(&mut stdout, &mut out, cap)?;
        drain(&mut stderr, &mut err, cap)?;
    }
}

/// Read what `pipe` has now into `buf` (past `cap`, read and dropped, so a chatty plugin never
/// blocks on a full pipe); at end of file the pipe is closed (`None`).
fn drain<R: Read>(pipe: &mut Option<R>, buf: &mut Vec<u8>, cap: usize) -> io::Result<()> {
    let Some(r) = pipe.as_mut() else {
        return Ok(());
    };
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match r.read(&mut chunk) {
            Ok(0) => {
                *pipe = None;
                return Ok(());
            }
            Ok(n) => {
                let keep = n.min(cap.saturating_sub(buf.len()));
                buf.extend_from_slice(&chunk[..keep]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// SIGKILL to the plugin's process group (it was started as the group's leader: a hung
/// plugin's children go too), then reap the plugin.
fn kill_group(child: &mut Child) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    fn sh(script: &str) -> Child {
        Command::new("/bin/sh")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap()
    }

    fn within(d: Duration) -> Instant {
        Instant::now() + d
    }

    #[test]
    fn feeds_stdin_and_collects_both_outputs() {
        let mut c = sh("cat; echo oops >&2; exit 3");
        let input = vec![b'x'; 1 << 20]; // far more than a pipe holds
        let f = communicate(&mut c, &input, 2 << 20, within(Duration::from_secs(30)))
            .unwrap()
            .unwrap();
        assert_eq!(f.status.code(), Some(3));
        assert_eq!(f.stdout, input);
        assert_eq!(f.stderr, b"oops\n");
    }

    #[test]
    fn output_past_the_cap_is_dropped_not_waited_on() {
        let mut c = sh("head -c 300000 /dev/zero");
        let f = communicate(&mut c, b"", 1000, within(Duration::from_secs(30)))
            .unwrap()
            .unwrap();
        assert!(f.status.success());
        assert_eq!(f.stdout.len(), 1000);
    }

    /// A plugin that never reads a config larger than the pipe: the deadline still holds.
    #[test]
    fn a_plugin_not_reading_its_stdin_is_killed_at_the_deadline() {
        let mut c = sh("sleep 30");
        let t = Instant::now();
        let r = communicate(
            &mut c,
            &vec![b'{'; 1 << 20],
            1 << 20,
            within(Duration::from_secs(1)),
        );
        assert_eq!(r.unwrap().err(), Some(Overran::Running));
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }

    /// A plugin that exits while a child it forked keeps stdout open: the deadline covers the
    /// reading too, and the child (in the plugin's process group) is killed with it.
    #[test]
    fn output_held_by_a_forked_child_ends_at_the_deadline() {
        let mut c = sh("sleep 30 & echo $!; exit 0");
        let t = Instant::now();
        let r = communicate(&mut c, b"", 1 << 20, within(Duration::from_secs(1)));
        assert_eq!(r.unwrap().err(), Some(Overran::OutputHeld));
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }
}
