//! What `kelson-shim serve` is told at start: the container, its paths, its stdio mode, and the
//! engine its short-lived children run from. Parsed once by `main`; it never changes while the
//! shim runs.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::EngineCommand;

pub struct Config {
    pub id: String,
    pub root: PathBuf,
    pub bundle: PathBuf,
    pub dir: PathBuf,
    /// Control socket; kept short (unix socket paths are limited to 108 bytes).
    pub socket: PathBuf,
    /// The CRI log file: the pod's log directory and the path below it.
    pub log: crate::cri_log::LogPath,
    /// Keep the container's stdin open for attachers.
    pub stdin: bool,
    /// Close the container's stdin when the first attacher with stdin leaves.
    pub stdin_once: bool,
    /// The container runs on a terminal (its spec says `terminal: true`).
    pub tty: bool,
    /// The engine (`kelson-shim-engine`, an `EngineBinary`) every create, start and exec runs.
    pub engine: Box<dyn EngineCommand>,
}

/// The engine kelsond gave (`--engine`): its sealed in-memory copy, opened here once and run as
/// `/proc/self/fd/N` (see kelsond's `shim::engine`), kept open for the shim's life; else the
/// one installed next to the shim.
pub struct EngineBinary {
    /// Holds the sealed copy open: `path` names it through this process's fd table.
    _sealed: Option<std::fs::File>,
    path: PathBuf,
}

impl EngineBinary {
    pub fn open(given: Option<&str>) -> Result<EngineBinary, String> {
        Ok(match given {
            Some(p) if p.starts_with("/proc/") => {
                let f =
                    std::fs::File::open(p).map_err(|e| format!("opening the engine {p}: {e}"))?;
                let path = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
                EngineBinary {
                    _sealed: Some(f),
                    path,
                }
            }
            Some(p) => EngineBinary {
                _sealed: None,
                path: PathBuf::from(p),
            },
            None => EngineBinary {
                _sealed: None,
                path: installed_engine(),
            },
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn installed_engine() -> PathBuf {
    std::env::current_exe()
        .map(|e| e.with_file_name("kelson-shim-engine"))
        .unwrap_or_else(|_| PathBuf::from("kelson-shim-engine"))
}

pub fn shim_dir(p: &Path) -> PathBuf {
    p.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_is_the_given_path_else_the_one_beside_the_shim() {
        let given = EngineBinary::open(Some("/usr/bin/kelson-shim-engine")).unwrap();
        assert_eq!(given.path(), Path::new("/usr/bin/kelson-shim-engine"));
        let installed = EngineBinary::open(None).unwrap();
        assert_eq!(
            installed.path().file_name(),
            Some(std::ffi::OsStr::new("kelson-shim-engine"))
        );
    }

    #[test]
    fn a_sealed_copy_is_held_open_and_run_through_this_process() {
        // Any file under /proc stands in for kelsond's memfd: the shim opens it and names it
        // by its own fd, so the copy stays reachable after kelsond exits.
        let e = EngineBinary::open(Some("/proc/self/exe")).unwrap();
        let fd = e._sealed.as_ref().unwrap().as_raw_fd();
        assert_eq!(e.path(), Path::new(&format!("/proc/self/fd/{fd}")));
        let missing = EngineBinary::open(Some("/proc/self/fd/999999"))
            .err()
            .unwrap();
        assert!(
            missing.starts_with("opening the engine /proc/self/fd/999999"),
            "{missing}"
        );
    }
}
