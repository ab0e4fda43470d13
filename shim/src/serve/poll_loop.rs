//! The event loop: one `poll` over the control socket, the SIGCHLD self-pipe, the container's
//! outputs and stdin, exec sessions' pipes and attachers, with a timeout at the next exec
//! session's deadline; then each ready fd goes to its owner, and the shim exits once the
//! container has exited and every output has ended. It owns no request, child or byte itself
//! and never blocks anywhere but in `poll`.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::Shim;
use super::container_io::STDIN_BUFFER;
use super::exec_session::ExecSession;

/// The longest sleep in one `poll` while a deadline is pending, in milliseconds.
const MAX_POLL_MS: u128 = 60_000;

/// What a polled fd is.
#[derive(Clone, Copy)]
enum Slot {
    Listener,
    Signal,
    Output(usize),
    Exec(usize, i32),
    Attacher(usize),
    Stdin,
}

/// The poll timeout for the earliest wake-up `wake` (None: sleep until an fd is ready). One
/// millisecond past the deadline, so the loop wakes after it, not just before.
fn poll_timeout(wake: Option<Instant>, now: Instant) -> PollTimeout {
    wake.map(|d| {
        PollTimeout::try_from(
            d.saturating_duration_since(now)
                .as_millis()
                .min(MAX_POLL_MS) as i32
                + 1,
        )
        .unwrap_or(PollTimeout::NONE)
    })
    .unwrap_or(PollTimeout::NONE)
}

impl Shim {
    pub fn run(mut self, listener: UnixListener, mut sigfd: UnixStream) -> ! {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if self.exit.is_some() && self.outputs.is_empty() && self.execs.is_empty() {
                self.shut_down(&listener);
            }
            let wake = self.execs.iter().filter_map(ExecSession::wake_at).min();
            let ready = self.poll_ready(&listener, &sigfd, poll_timeout(wake, Instant::now()));
            self.dispatch(ready, &listener, &mut sigfd, &mut buf);
            self.finish_execs();
        }
    }

    fn shut_down(&mut self, listener: &UnixListener) -> ! {
        // No new callers (they find the exit record instead), then answer the ones
        // already queued on the socket rather than resetting their connections.
        let _ = std::fs::remove_file(&self.cfg.socket);
        while let Ok((conn, _)) = listener.accept() {
            self.serve(conn);
        }
        self.finish_attachers();
        std::process::exit(0);
    }

    /// Wait for any watched fd (or the timeout); the slots that are ready.
    fn poll_ready(
        &self,
        listener: &UnixListener,
        sigfd: &UnixStream,
        timeout: PollTimeout,
    ) -> Vec<Slot> {
        let mut fds = Vec::new();
        let mut slots = Vec::new();
        macro_rules! watch {
            ($fd:expr, $flags:expr, $slot:expr) => {{
                fds.push(PollFd::new($fd, $flags));
                slots.push($slot);
            }};
        }
        watch!(listener.as_fd(), PollFlags::POLLIN, Slot::Listener);
        watch!(sigfd.as_fd(), PollFlags::POLLIN, Slot::Signal);
        for (i, (_, fd, _)) in self.outputs.iter().enumerate() {
            watch!(fd.as_fd(), PollFlags::POLLIN, Slot::Output(i));
        }
        for (i, e) in self.execs.iter().enumerate() {
            for fd in [&e.out, &e.err].into_iter().flatten() {
                watch!(fd.as_fd(), PollFlags::POLLIN, Slot::Exec(i, fd.as_raw_fd()));
            }
        }
        let stdin_full = self.stdin_buf.len() >= STDIN_BUFFER;
        for (i, a) in self.attachers.iter().enumerate() {
            let mut flags = PollFlags::empty();
            if !(a.closing || (a.stdin && stdin_full)) {
                flags |= PollFlags::POLLIN;
            }
            if a.wants_write() {
                flags |= PollFlags::POLLOUT;
            }
            watch!(a.conn().as_fd(), flags, Slot::Attacher(i));
        }
        if let Some(fd) = &self.stdin
            && !self.stdin_buf.is_empty()
        {
            watch!(fd.as_fd(), PollFlags::POLLOUT, Slot::Stdin);
        }
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                eprintln!("kelson-shim: poll: {e}");
                std::process::exit(1);
            }
        }
        fds.iter()
            .zip(slots)
            .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, s)| s)
            .collect()
    }

    /// Hand each ready fd to its owner.
    fn dispatch(
        &mut self,
        ready: Vec<Slot>,
        listener: &UnixListener,
        sigfd: &mut UnixStream,
        buf: &mut [u8],
    ) {
        let mut ready_listener = false;
        let mut ready_out = Vec::new();
        let mut ready_attachers = Vec::new();
        for slot in ready {
            match slot {
                Slot::Listener => ready_listener = true,
                Slot::Signal => {
                    let mut drain = [0u8; 64];
                    while matches!(sigfd.read(&mut drain), Ok(n) if n > 0) {}
                    self.reap();
                }
                Slot::Output(i) => ready_out.push(i),
                Slot::Exec(i, raw) => self.pump_exec(i, raw, buf),
                Slot::Attacher(i) => ready_attachers.push(i),
                Slot::Stdin => self.write_stdin(),
            }
        }
        // Outputs (and attachers) are removed as they end: highest index first.
        for i in ready_out.into_iter().rev() {
            self.pump(i, buf);
        }
        for i in ready_attachers.into_iter().rev() {
            self.serve_attacher(i, buf);
        }
        if ready_listener {
            while let Ok((conn, _)) = listener.accept() {
                self.serve(conn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_loop_sleeps_until_just_past_the_next_deadline() {
        let now = Instant::now();
        assert_eq!(poll_timeout(None, now), PollTimeout::NONE);
        let ms = |t: PollTimeout| i32::from(t);
        assert_eq!(
            ms(poll_timeout(Some(now + Duration::from_millis(250)), now)),
            251
        );
        // A deadline already past: wake at once (1 ms), never block.
        assert_eq!(ms(poll_timeout(Some(now), now + Duration::from_secs(1))), 1);
        // Far deadlines are re-checked every minute.
        assert_eq!(
            ms(poll_timeout(Some(now + Duration::from_secs(7200)), now)),
            60_001
        );
    }
}
