//! Idmapped mounts for the containers of user-namespaced pods. Each image layer and each volume
//! is cloned (`open_tree`) and given the pod's id mapping (`mount_setattr(MOUNT_ATTR_IDMAP)`):
//! a file owned by host root then appears owned by root in the pod, and what the pod writes
//! lands on disk with the ids it would have had without a user namespace — no chown of the
//! image or the volume. The container library does not make idmapped mounts itself (it skips
//! the OCI `idmap` option), so kelson prepares them on the host and hands it plain paths.
//!
//! Layer clones live only until the overlay is mounted on them (overlayfs keeps private copies
//! of its layers); volume clones stay under the container's dir until it is removed.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::mount::{MoveMountFlags, OpenTreeFlags};

#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    #[error("idmapped mount of {path}: {op}: {source}")]
    Mount {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error(
        "idmapped mount of {path}: its filesystem does not support idmapped mounts, which a pod with a user namespace needs"
    )]
    NotSupported { path: PathBuf },
}

/// Where a container's idmapped volume clones are mounted (`<n>` per CRI mount).
pub fn volume_clones(container_dir: &Path) -> PathBuf {
    container_dir.join("v")
}

/// Where a pod's user namespace is pinned, opened for `mount_setattr`.
pub fn open_userns(path: &Path) -> Result<std::fs::File, IdmapError> {
    std::fs::File::open(path).map_err(|source| IdmapError::Mount {
        path: path.to_owned(),
        op: "open user namespace",
        source,
    })
}

/// Mount an idmapped clone of `src` (with its submounts when `recursive`) at `target`, which
/// is created as a directory or an empty file to match `src`.
pub fn clone_idmapped(
    src: &Path,
    target: &Path,
    userns: &std::fs::File,
    recursive: bool,
) -> Result<(), IdmapError> {
    let err = |op: &'static str| {
        let path = src.to_owned();
        move |e: std::io::Error| IdmapError::Mount {
            path,
            op,
            source: e,
        }
    };
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    let tree = rustix::mount::open_tree(rustix::fs::CWD, src, flags)
        .map_err(|e| err("open_tree")(e.into()))?;
    match crate::sys::idmap_tree(tree.as_fd(), userns.as_fd(), recursive) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
            return Err(IdmapError::NotSupported {
                path: src.to_owned(),
            });
        }
        Err(e) => return Err(err("mount_setattr")(e)),
    }
    if let Some(parent) = target.parent() {
        // Inside the container's own dir (private, or crossable by the pod's root only): the
        // pod's root must cross this one too, to reach a volume clone.
        crate::owner_only::create_dir_all_mode(parent, crate::owner_only::TRAVERSE)
            .map_err(err("create target dir"))?;
    }
    let is_dir = std::fs::metadata(src).map_err(err("stat"))?.is_dir();
    if is_dir {
        std::fs::create_dir(target).map_err(err("create target"))?;
    } else {
        std::fs::File::create_new(target).map_err(err("create target"))?;
    }
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| err("move_mount")(e.into()))
}

/// Detach every mount directly under `dir` and remove the mount points and `dir`
/// (idempotent; missing is fine). Never recursive: a mount point that is still a mount, or a
/// directory that is not empty, is left alone rather than its contents — a volume — deleted.
pub fn release(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        match nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(err) => {
                tracing::warn!(path = %p.display(), error = %err, "unmounting an idmapped mount");
                continue;
            }
        }
        let _ = std::fs::remove_dir(&p).or_else(|_| std::fs::remove_file(&p));
    }
    let _ = std::fs::remove_dir(dir);
}
