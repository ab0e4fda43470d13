//! Layer snapshots: one read-only directory per layer diff id, `snapshots/<hex>/fs`, used as an
//! overlayfs lowerdir. A snapshot is unpacked into `snapshots/.tmp/<random>` and renamed into
//! place only after its digests check out, so a visible snapshot is always complete.
//!
//! Keyed by diff id rather than chain id: in overlay form each layer is unpacked on its own
//! (whiteouts and opaque markers are stored, not applied), so its tree does not depend on its
//! parents, and two images sharing a layer at different depths share one snapshot.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::dirs::Dirs;

use super::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A snapshot being unpacked; removed on drop unless committed.
pub struct Pending {
    dir: Option<tempfile::TempDir>,
}

impl Pending {
    /// The directory to unpack into.
    pub fn fs(&self) -> PathBuf {
        self.dir
            .as_ref()
            .map(|d| d.path().join("fs"))
            .unwrap_or_default()
    }
}

#[derive(Clone)]
pub struct Snapshots {
    dirs: Dirs,
}

impl Snapshots {
    pub fn new(dirs: Dirs) -> Snapshots {
        Snapshots { dirs }
    }

    pub fn exists(&self, diff_id: &Digest) -> bool {
        self.dirs.snapshot(diff_id).join("fs").is_dir()
    }

    pub fn path(&self, diff_id: &Digest) -> PathBuf {
        self.dirs.snapshot(diff_id).join("fs")
    }

    pub fn prepare(&self) -> Result<Pending, SnapshotError> {
        let tmp = self.dirs.snapshots_tmp();
        // Root-only, as the committed snapshot it becomes: its set-id binaries and file
        // capabilities are never a host user's to run, even if `snapshots/` were opened up.
        let dir = tempfile::Builder::new()
            .prefix("unpack-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(&tmp)
            .map_err(|source| SnapshotError::Io {
                op: "create temp in",
                path: tmp.clone(),
                source,
            })?;
        let fs = dir.path().join("fs");
        std::fs::create_dir(&fs).map_err(|source| SnapshotError::Io {
            op: "create",
            path: fs.clone(),
            source,
        })?;
        Ok(Pending { dir: Some(dir) })
    }

    /// Make `p` the snapshot for `diff_id`. If another pull committed it first, ours is dropped.
    /// Returns the (bytes, inodes) the snapshot uses.
    pub fn commit(&self, mut p: Pending, diff_id: &Digest) -> Result<(u64, u64), SnapshotError> {
        let Some(dir) = p.dir.take() else {
            return Ok((0, 0));
        };
        let usage = disk_usage(&dir.path().join("fs"));
        let usage_file = dir.path().join(USAGE_FILE);
        crate::owner_only::write(&usage_file, format!("{} {}\n", usage.0, usage.1).as_bytes())
            .map_err(|source| SnapshotError::Io {
                op: "write",
                path: usage_file,
                source,
            })?;
        let dest = self.dirs.snapshot(diff_id);
        // Make the unpacked tree durable before it becomes visible.
        let _ = nix::unistd::syncfs(std::fs::File::open(dir.path()).map_err(|source| {
            SnapshotError::Io {
                op: "open",
                path: dir.path().to_owned(),
                source,
            }
        })?);
        let src = dir.keep();
        match std::fs::rename(&src, &dest) {
            Ok(()) => Ok(usage),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(nix::libc::EEXIST | nix::libc::ENOTEMPTY)
                ) =>
            {
                let _ = std::fs::remove_dir_all(&src);
                Ok(usage)
            }
            Err(source) => {
                let _ = std::fs::remove_dir_all(&src);
                Err(SnapshotError::Io {
                    op: "rename into",
                    path: dest,
                    source,
                })
            }
        }
    }

    pub fn list(&self) -> Vec<Digest> {
        let Ok(rd) = std::fs::read_dir(self.dirs.snapshots()) else {
            return vec![];
        };
        rd.flatten()
            .filter_map(|e| {
                Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy())).ok()
            })
            .collect()
    }

    pub fn remove(&self, diff_id: &Digest) -> Result<(), SnapshotError> {
        let p = self.dirs.snapshot(diff_id);
        match std::fs::remove_dir_all(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SnapshotError::Io {
                op: "remove",
                path: p,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Remove unpacks left behind by a crash or an interrupted pull.
    pub fn clean_tmp(&self) {
        if let Ok(rd) = std::fs::read_dir(self.dirs.snapshots_tmp()) {
            for e in rd.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Sidecar of a committed snapshot: "<bytes> <inodes>" measured at commit.
const USAGE_FILE: &str = "usage";

/// The usage recorded for the snapshot dir `dir`; measured afresh if the record is missing.
pub fn read_usage(dir: &Path) -> (u64, u64) {
    let parsed = std::fs::read_to_string(dir.join(USAGE_FILE))
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some((it.next()??, it.next()??))
        });
    parsed.unwrap_or_else(|| disk_usage(&dir.join("fs")))
}

/// Bytes (allocated blocks) and inodes under `root`, hard links counted once, symlinks not followed.
pub fn disk_usage(root: &Path) -> (u64, u64) {
    let mut seen = HashSet::new();
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        bytes += m.blocks() * 512;
        inodes += 1;
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_staging_dir_is_never_a_snapshot_and_goes_with_its_pending() {
        let root = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(&root.path().join("root"), &root.path().join("state"));
        dirs.create().unwrap();
        let snaps = Snapshots::new(dirs.clone());
        let d = Digest::of(b"layer");

        let p = snaps.prepare().unwrap();
        std::fs::write(p.fs().join("unverified"), b"x").unwrap();
        assert!(!snaps.exists(&d));
        assert!(snaps.list().is_empty(), "staging is not listed");
        let staged = p.fs().parent().unwrap().to_owned();
        let mode = std::fs::metadata(&staged).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "staging is root-only: {mode:o}");
        drop(p);
        assert!(!staged.exists());
        assert_eq!(std::fs::read_dir(dirs.snapshots_tmp()).unwrap().count(), 0);

        let p = snaps.prepare().unwrap();
        snaps.commit(p, &d).unwrap();
        assert!(snaps.exists(&d));
        assert_eq!(snaps.list(), vec![d.clone()]);
        let mode = std::fs::metadata(dirs.snapshot(&d))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "a snapshot stays root-only: {mode:o}");
        assert_eq!(std::fs::read_dir(dirs.snapshots_tmp()).unwrap().count(), 0);
    }
}
