//! Binaries kelsond runs where a container can reach them are run from a sealed in-memory copy,
//! not from their file: a process in a container that gets hold of `/proc/<pid>/exe` of one of
//! them finds a sealed memfd it cannot write, instead of the host's binary (runc
//! CVE-2019-5736). Two are: the engine (`kelson-shim-engine`, each container's init and each
//! exec'd process until they exec the container's own program), and kelsond itself for the
//! holder of a shared PID namespace (PID 1 of the pod, see `pod::holder`). One copy of each per
//! kelsond; the engine's is shared with every shim through `/proc/<kelsond>/fd/N` (each shim
//! opens its own fd to it at start), so nothing is copied per container or per exec. Where the
//! kernel refuses to execute memfds (`vm.memfd_noexec = 2`), the file is used, with a warning.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

pub struct SealedBinary {
    /// The sealed copy, kept open for kelsond's life.
    fd: Option<OwnedFd>,
    /// The binary on disk.
    disk: PathBuf,
}

impl SealedBinary {
    /// A sealed copy of `disk`, or `disk` itself when that cannot be made or run. The copy is
    /// tried once with `probe`, arguments that make the binary exit at once.
    pub fn new(disk: PathBuf, probe: &[&str]) -> SealedBinary {
        match sealed_copy(&disk) {
            Ok(fd) => {
                let b = SealedBinary { fd: Some(fd), disk };
                // The kernel may refuse to execute memfds: try once.
                match std::process::Command::new(b.path())
                    .args(probe)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                {
                    Ok(_) => b,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot execute a sealed copy of {}; running the file", b.disk.display());
                        SealedBinary {
                            fd: None,
                            disk: b.disk,
                        }
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot make a sealed copy of {}; running the file", disk.display());
                SealedBinary { fd: None, disk }
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

    /// The path another process opens (kelsond's fd, seen from outside; a shim opens it at
    /// start).
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

/// Copy `path` into a memfd named after its file and seal it against any change.
pub fn sealed_copy(path: &Path) -> std::io::Result<OwnedFd> {
    let name = path
        .file_name()
        .map_or_else(|| "kelson".into(), |n| n.to_string_lossy());
    let fd = memfd_create(
        name.as_ref(),
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
        let b = SealedBinary::new(PathBuf::from("/bin/true"), &[]);
        assert!(b.is_sealed(), "memfds are executable here");
        let st = std::process::Command::new(b.path()).status().unwrap();
        assert!(st.success());
        // Named after the file, as /proc/<pid>/exe shows it.
        let exe = std::fs::read_link(b.path()).unwrap();
        assert!(exe.to_string_lossy().starts_with("/memfd:true"), "{exe:?}");
        // Through another process's view of the fd, as a shim opens it: no write.
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(b.for_shim())
            .and_then(|mut f| f.write_all(b"x"))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::EPERM), "{err}");
        let disk = SealedBinary {
            fd: None,
            disk: "/bin/true".into(),
        };
        assert_eq!(disk.path(), Path::new("/bin/true"));
    }
}
