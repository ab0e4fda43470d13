//! Containers created with a terminal (`tty: true`): libcontainer makes the pty inside the
//! container during create and sends its master over a console socket (SCM_RIGHTS); the shim
//! listens there, keeps the master for the container's life (output, stdin, resizes).
//! rustix does the fd passing and the window-size ioctl with owned fds, so the shim keeps
//! `forbid(unsafe_code)`.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};

/// Bind the console socket, root only.
pub fn listen(path: &Path) -> Result<UnixListener, String> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(|e| format!("console socket: {e}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("console socket: {e}"))?;
    l.set_nonblocking(true)
        .map_err(|e| format!("console socket: {e}"))?;
    Ok(l)
}

/// Wait (while `creator` runs, at most `within`) for the master to arrive.
pub fn receive(
    listener: &UnixListener,
    creator: &mut Child,
    within: Duration,
) -> Result<OwnedFd, String> {
    let deadline = Instant::now() + within;
    loop {
        match listener.accept() {
            Ok((conn, _)) => return recv_fd(&conn),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("console socket: {e}")),
        }
        if let Ok(Some(st)) = creator.try_wait() {
            // It may have connected just before exiting.
            if let Ok((conn, _)) = listener.accept() {
                return recv_fd(&conn);
            }
            return Err(format!("creator exited ({st}) without sending a terminal"));
        }
        if Instant::now() >= deadline {
            return Err("no terminal from the creator in time".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn recv_fd(conn: &impl AsFd) -> Result<OwnedFd, String> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut data = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut data)];
    // The creator writes one message; the socket is blocking, bounded by the creator's life.
    rustix::io::ioctl_fionbio(conn, false).map_err(|e| format!("console socket: {e}"))?;
    recvmsg(conn, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
        .map_err(|e| format!("receiving the terminal: {e}"))?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    // Anything beyond the one master is closed here (dropped).
    fds.into_iter()
        .next()
        .ok_or_else(|| "the console socket message carried no terminal".to_owned())
}

/// Set the terminal's size (the container's processes get SIGWINCH).
pub fn set_size(master: impl AsFd, width: u16, height: u16) -> std::io::Result<()> {
    rustix::termios::tcsetwinsize(
        master,
        rustix::termios::Winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_sent_over_the_socket_arrives_and_resizes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let l = listen(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A stand-in creator: open a pty and send the master as libcontainer does.
        let pty =
            rustix::pty::openpt(rustix::pty::OpenptFlags::RDWR | rustix::pty::OpenptFlags::NOCTTY)
                .unwrap();
        let conn = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let fds = [pty.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut ctl = rustix::net::SendAncillaryBuffer::new(&mut space);
        assert!(ctl.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            &conn,
            &[std::io::IoSlice::new(b"/dev/ptmx")],
            &mut ctl,
            rustix::net::SendFlags::empty(),
        )
        .unwrap();
        let mut creator = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let got = receive(&l, &mut creator, Duration::from_secs(5)).unwrap();
        let _ = creator.kill();
        let _ = creator.wait();
        set_size(&got, 123, 45).unwrap();
        let ws = rustix::termios::tcgetwinsize(&pty).unwrap();
        assert_eq!((ws.ws_col, ws.ws_row), (123, 45));
    }

    #[test]
    fn a_creator_that_dies_without_a_terminal_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let l = listen(&dir.path().join("c.sock")).unwrap();
        let mut creator = std::process::Command::new("true").spawn().unwrap();
        let e = receive(&l, &mut creator, Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("without sending a terminal"), "{e}");
    }
}
