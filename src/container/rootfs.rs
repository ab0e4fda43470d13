//! The container's root filesystem: an overlay of the image's layer snapshots (read-only lower
//! dirs, top layer first) with a per-container upper and work dir. In a user-namespaced pod
//! the lower dirs are idmapped clones of the snapshots (see `idmap`) and the upper dir belongs
//! to the pod's root, so the shared snapshots are never chowned.

use std::path::{Path, PathBuf};

use crate::owner_only;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// The legacy mount API takes options in one page.
pub const MAX_MOUNT_OPTIONS: usize = 4095;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("image has too many layers for one overlay mount option string ({0} bytes)")]
    TooManyLayers(usize),
    #[error(transparent)]
    Idmap(#[from] super::idmap::IdmapError),
    #[error("rootfs {path}: {op}: {reason}")]
    Fs {
        path: PathBuf,
        op: &'static str,
        reason: String,
    },
}

/// Overlay options for `lowers` (bottom layer first, as the image lists them).
pub fn overlay_options(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> Result<String, RootfsError> {
    let lower: Vec<String> = lowers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},index=off",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    if opts.len() > MAX_MOUNT_OPTIONS {
        return Err(RootfsError::TooManyLayers(opts.len()));
    }
    Ok(opts)
}

/// The pod's user namespace and the host ids of its root, for a user-namespaced pod.
pub struct Idmapped<'a> {
    pub userns: &'a std::fs::File,
    pub root: (u32, u32),
}

/// Where the idmapped clones of the layers are mounted while the overlay is made (short: the
/// overlay's option string holds every one of them).
fn layer_clones(dir: &Path) -> PathBuf {
    dir.join("l")
}

/// The mode of a container's `/`, as images have it.
const ROOT_DIR_MODE: u32 = 0o755;

/// Mount the overlay at `dir/rootfs`, with `dir/upper` and `dir/work`.
pub fn mount_rootfs(
    lowers: &[PathBuf],
    dir: &Path,
    idmap: Option<Idmapped>,
) -> Result<PathBuf, RootfsError> {
    let (upper, work, target) = (dir.join("upper"), dir.join("work"), dir.join("rootfs"));
    let fs_err = |path: &Path, op: &'static str| {
        let path = path.to_owned();
        move |e: std::io::Error| RootfsError::Fs {
            path,
            op,
            reason: e.to_string(),
        }
    };
    // The upper dir's mode is the container's `/` (overlayfs takes the merged root's from
    // it): an image's 0755, never kelsond's umask. The container dir around it is private, so
    // no host user reaches the rootfs (or a setuid binary or device node in it) through here.
    for (d, mode) in [
        (&upper, ROOT_DIR_MODE),
        (&work, owner_only::DIR),
        (&target, owner_only::DIR),
    ] {
        owner_only::create_dir_all_mode(d, mode).map_err(fs_err(d, "create"))?;
    }
    let mut lowers = lowers.to_vec();
    if lowers.is_empty() {
        // An image without layers: an empty read-only lower dir keeps overlay happy.
        let empty = dir.join("empty");
        owner_only::create_dir_all(&empty).map_err(fs_err(&empty, "create"))?;
        lowers.push(empty);
    }
    let Some(idmap) = idmap else {
        return mount_rootfs_with(&lowers, &upper, &work, &target);
    };
    std::os::unix::fs::chown(&upper, Some(idmap.root.0), Some(idmap.root.1))
        .map_err(fs_err(&upper, "chown"))?;
    // The container library prepares the container as the pod's root: it must cross this dir
    // to the rootfs and the volume clones, and nobody else may.
    owner_only::traversable_by_group(dir, idmap.root.1).map_err(fs_err(dir, "chmod"))?;
    let clones = layer_clones(dir);
    let mapped = lowers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let t = clones.join(i.to_string());
            super::idmap::clone_idmapped(l, &t, idmap.userns, false)?;
            Ok(t)
        })
        .collect::<Result<Vec<_>, RootfsError>>();
    let mounted = mapped.and_then(|m| mount_rootfs_with(&m, &upper, &work, &target));
    // The overlay holds private clones of its layers: these mounts are no longer needed.
    super::idmap::release(&clones);
    mounted
}

fn mount_rootfs_with(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<PathBuf, RootfsError> {
    let opts = overlay_options(lowers, upper, work)?;
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| RootfsError::Fs {
        path: target.to_owned(),
        op: "mount overlay",
        reason: e.to_string(),
    })?;
    Ok(target.to_owned())
}

/// Unmount (idempotent).
pub fn unmount_rootfs(dir: &Path) -> Result<(), RootfsError> {
    // Left only by a crash between cloning the layers and mounting the overlay.
    super::idmap::release(&layer_clones(dir));
    let target = dir.join("rootfs");
    match umount2(&target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(RootfsError::Fs {
            path: target,
            op: "unmount",
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_put_the_top_layer_first() {
        let o = overlay_options(
            &["/s/a".into(), "/s/b".into()],
            Path::new("/c/u"),
            Path::new("/c/w"),
        )
        .unwrap();
        assert_eq!(o, "lowerdir=/s/b:/s/a,upperdir=/c/u,workdir=/c/w,index=off");
        let many: Vec<PathBuf> = (0..200)
            .map(|i| PathBuf::from(format!("/var/lib/kelson/snapshots/{i:064}/fs")))
            .collect();
        assert!(matches!(
            overlay_options(&many, Path::new("/u"), Path::new("/w")),
            Err(RootfsError::TooManyLayers(_))
        ));
    }
}
