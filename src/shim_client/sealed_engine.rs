//! The engine binary (`kelson-shim-engine`, which becomes each container's init and each exec'd
//! process until they exec the container's own program) is run from a sealed in-memory copy,
//! not from its file: a process in a container that gets hold of `/proc/<pid>/exe` of one of
//! these (e.g. another container of a pod sharing its PID namespace, or an image whose command
//! is `/proc/self/exe`) finds a sealed memfd it cannot write, instead of the host's binary
//! (runc CVE-2019-5736). One copy per kelsond, shared with every shim through
//! `/proc/<kelsond>/fd/N` (each shim opens its own fd to it at start), so nothing is copied per
//! container or per exec. Where the kernel refuses to execute memfds (`vm.memfd_noexec = 2`),
//! the file is used, with a warning.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

pub struct Engine {
    /// The sealed copy, kept open for kelsond's life.
    fd: Option<OwnedFd>,
    /// The binary on disk.
    disk: PathBuf,
}

impl Engine {
    /// A sealed copy of `disk`, or `disk` itself when that cannot be made or run.
    pub fn new(disk: PathBuf) -> Engine {
        match sealed_copy(&disk) {
            Ok(fd) => {
                let e = Engine { fd: Some(fd), disk };
                // The kernel may refuse to execute memfds: try once.
                match std::process::Command::new(e.path())
                    .arg("--probe")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                {
                    Ok(_) => e,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot execute a sealed copy of the engine; running it from {}", e.disk.display());
                        Engine {
                            fd: None,
                            disk: e.disk,
                        }
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot make a sealed copy of the engine; running it from {}", disk.display());
                Engine { fd: None, disk }
            }
        }
    }

    /// The path kelsond's own children execute.
    pub fn path(&self) -> PathBuf {
        match &self.fd {
            Some(fd) => PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            None => self.disk.clone(),
        }
    }

    /// The path a shim opens at start (kelsond's fd, seen from another process).
    pub fn for_shim(&self) -> PathBuf {
        match &self.fd {
            Some(fd) => PathBuf::from(format!(
                "/proc/{}/fd/{}",
                std::process::id(),
                fd.as_raw_fd()
            )),
            None => self.disk.clone(),
        }
    }

    pub fn is_sealed(&self) -> bool {
        self.fd.is_some()
    }
}

/// Copy `path` into a memfd and seal it against any change.
pub fn sealed_copy(path: &Path) -> std::io::Result<OwnedFd> {
    let fd = memfd_create(
        "kelson-shim-engine",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(fd);
    std::io::copy(&mut std::fs::File::open(path)?, &mut file)?;
    file.flush()?;
    let fd = OwnedFd::from(file);
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SEAL
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE,
        ),
    )?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_runs_and_cannot_be_written() {
        let e = Engine::new(PathBuf::from("/bin/true"));
        assert!(e.is_sealed(), "memfds are executable here");
        let st = std::process::Command::new(e.path()).status().unwrap();
        assert!(st.success());
        // Through another process's view of the fd, as a shim opens it: no write.
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(e.for_shim())
            .and_then(|mut f| f.write_all(b"x"))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::EPERM), "{err}");
        let disk = Engine {
            fd: None,
            disk: "/bin/true".into(),
        };
        assert_eq!(disk.path(), Path::new("/bin/true"));
    }
}
