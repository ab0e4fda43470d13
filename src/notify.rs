//! systemd's readiness protocol (`Type=notify`): one `READY=1` datagram to `$NOTIFY_SOCKET`
//! once kelsond serves CRI, so `kubelet.service` ordered after `kelson.service` starts against
//! a runtime that answers. Written by hand: it is one datagram (sd_notify(3)), not worth a
//! crate; outside systemd (no variable) it does nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Tell the service manager kelsond is ready; a failure is logged, never fatal.
pub fn ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path.to_string_lossy(), "READY=1\n") {
        tracing::warn!(error = %e, "telling systemd kelsond is ready");
    }
}

fn address(path: &str) -> std::io::Result<SocketAddr> {
    // `@name` is an abstract socket (systemd uses a path, but accepts both).
    match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None => SocketAddr::from_pathname(path),
    }
}

fn send(path: &str, msg: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(msg.as_bytes(), &address(path)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ready_reaches_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        super::send(&path.display().to_string(), "READY=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
        assert!(super::address("@kelson-test").is_ok());
    }
}
