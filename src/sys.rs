//! The only `unsafe` in kelson: allocator settings that neither std nor nix exposes, handing an
//! fd to tokio's reactor, `mount_setattr(2)` (idmapped mounts; neither nix nor rustix binds
//! it), and `close_range(2)` for a process that must hold no fd of its parent's. Every other system call goes through nix or rustix: receiving an fd over a unix socket
//! and the terminal-size ioctl live here too, safe on rustix's owned fds.
#![allow(unsafe_code)]

/// Cap glibc malloc at `n` arenas. By default glibc gives every thread that allocates an arena of
/// its own (up to 8 per core) and keeps their free pages: after a burst of pod starts on the
/// blocking pool, that is megabytes of daemon RSS for no gain in an I/O-bound process.
/// Call before other threads start. Returns false where unsupported (non-glibc).
pub fn limit_malloc_arenas(n: i32) -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only sets an allocator parameter; it takes plain integers, touches no
        // memory of ours, and is called before any other thread exists.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, n) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        let _ = n;
        false
    }
}

/// Give free heap pages back to the kernel (after a pull's large buffers are dropped).
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim only releases free memory held by the allocator; it takes a plain
        // integer and is thread-safe (it locks each arena).
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// `close_range(first, last, 0)`.
fn close_range(first: libc::c_uint, last: libc::c_uint) -> std::io::Result<()> {
    // SAFETY: the call only closes descriptors and takes plain integers; the callers below state
    // why no owner of the descriptors in the range is left to use or close them again.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0 as libc::c_uint) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Close every descriptor above stdio the process inherited. Call first thing in a
/// single-threaded process (the pod's holder), before it makes any descriptor of its own:
/// then no `OwnedFd` or `File` owns one of those closed.
pub fn close_inherited_fds() -> std::io::Result<()> {
    close_range(3, libc::c_uint::MAX)
}

/// Close stdin, stdout and stderr, once a process has said all it will say to its parent. Std
/// owns no `OwnedFd` for them; a later write to them fails with EBADF instead of landing
/// anywhere, as long as the process opens nothing afterwards (the holder opens nothing).
pub fn close_stdio() -> std::io::Result<()> {
    close_range(0, 2)
}

/// Receive one file descriptor sent with SCM_RIGHTS on `sock` (a pty master from the
/// container library, for a TTY exec). Blocking.
pub fn recv_fd(sock: &std::os::unix::net::UnixStream) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC).map_err(std::io::Error::from)?;
    // rustix hands each passed descriptor over as an OwnedFd: the extra ones a peer may have
    // sent are closed on drop.
    let mut received: Vec<std::os::fd::OwnedFd> = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            received.extend(fds);
        }
    }
    received
        .into_iter()
        .next()
        .ok_or_else(|| std::io::Error::other("no file descriptor in the message"))
}

/// Register an owned, non-blocking fd (a pty master) with tokio's reactor.
pub fn async_fd(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: the OwnedFd is a valid open descriptor owned only by the AsyncFd from here on;
    // nothing replaces or closes it while it is registered (it is closed when the AsyncFd,
    // and with it the registration, is dropped).
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Set a terminal's size (a pty master), which sends SIGWINCH to its foreground processes.
pub fn set_window_size(
    fd: std::os::fd::BorrowedFd<'_>,
    cols: u16,
    rows: u16,
) -> std::io::Result<()> {
    let ws = rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(fd, ws).map_err(std::io::Error::from)
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH [| AT_RECURSIVE], attr)`.
fn mount_setattr(
    fd: std::os::fd::BorrowedFd<'_>,
    recursive: bool,
    attr: &libc::mount_attr,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: the path is a NUL-terminated static empty string, `attr` points at a live
    // `mount_attr` whose exact size is passed, and the fd is borrowed (open for the call).
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the kernel has `mount_setattr(2)` (Linux 5.12+): recursive read-only mounts and
/// idmapped mounts need it.
pub fn mount_setattr_supported() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(probe_mount_setattr)
}

fn probe_mount_setattr() -> bool {
    let Ok(f) = std::fs::File::open("/") else {
        return false;
    };
    use std::os::fd::AsFd;
    // A plain (not detached) directory fd with an attribute that changes nothing: any answer
    // but ENOSYS means the call exists.
    let attr = libc::mount_attr {
        attr_set: 0,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    !matches!(
        mount_setattr(f.as_fd(), false, &attr).map_err(|e| e.raw_os_error()),
        Err(Some(libc::ENOSYS))
    )
}

/// Apply the id mapping of the user namespace `userns` to a detached mount tree (from
/// `open_tree(OPEN_TREE_CLONE)`): files owned by host id H appear as the namespace's id for H.
pub fn idmap_tree(
    tree: std::os::fd::BorrowedFd<'_>,
    userns: std::os::fd::BorrowedFd<'_>,
    recursive: bool,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    mount_setattr(tree, recursive, &attr)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mount_setattr_is_probed() {
        // Linux 5.12+ everywhere kelson runs; the probe must not mistake a refusal for absence.
        assert!(super::mount_setattr_supported());
    }

    #[test]
    fn allocator_calls_are_accepted() {
        #[cfg(target_env = "gnu")]
        assert!(super::limit_malloc_arenas(2));
        super::trim_heap();
    }

    #[test]
    fn a_pty_gets_its_size_and_fds_pass_over_a_socket() {
        use std::os::fd::AsFd;
        let pty = nix::pty::openpty(None, None).unwrap();
        super::set_window_size(pty.master.as_fd(), 132, 43).unwrap();
        let ws = nix::sys::termios::tcgetattr(&pty.slave).map(|_| ()).is_ok();
        assert!(ws);
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::AsRawFd;
        nix::sys::socket::sendmsg::<()>(
            a.as_raw_fd(),
            &[std::io::IoSlice::new(b"x")],
            &[nix::sys::socket::ControlMessage::ScmRights(&[pty
                .master
                .as_raw_fd()])],
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .unwrap();
        let got = super::recv_fd(&b).unwrap();
        assert_ne!(got.as_raw_fd(), pty.master.as_raw_fd());
        // The received fd is the same terminal: its size reads back.
        let ws = rustix::termios::tcgetwinsize(&got).unwrap();
        assert_eq!((ws.ws_col, ws.ws_row), (132, 43));
    }
}
