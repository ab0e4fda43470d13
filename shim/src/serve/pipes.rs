//! The non-blocking pipe ends the loop reads (the container's output, exec sessions' output)
//! and the bounded read each turn makes from one. Moves bytes only: it never interprets them
//! and never blocks.

use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// Reads of one output per turn of the event loop (64 KiB each).
pub const PUMP_READS: usize = 16;

pub fn nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

/// Read what is available from a non-blocking fd; Ok(None) at EOF.
pub fn read_some(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    match nix::unistd::read(fd.as_fd(), buf) {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => Ok(Some(0)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tell_data_nothing_yet_and_eof_apart() {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        nonblocking(&r).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(read_some(&r, &mut buf).unwrap(), Some(0));
        nix::unistd::write(&w, b"hi").unwrap();
        assert_eq!(read_some(&r, &mut buf).unwrap(), Some(2));
        assert_eq!(&buf[..2], b"hi");
        drop(w);
        // Other tests of this process spawn children: one forked right now holds a copy of
        // the write end until its exec closes it (O_CLOEXEC), so EOF may take a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut got = read_some(&r, &mut buf).unwrap();
        while got == Some(0) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            got = read_some(&r, &mut buf).unwrap();
        }
        assert_eq!(got, None, "EOF once the only writer is gone");
    }
}
