//! The container's root filesystem: an overlay of the image's layer snapshots (read-only lower
//! dirs, top layer first) with a per-container upper and work dir.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// The legacy mount API takes options in one page.
pub const MAX_MOUNT_OPTIONS: usize = 4095;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("image has too many layers for one overlay mount option string ({0} bytes)")]
    TooManyLayers(usize),
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

/// Mount the overlay at `dir/rootfs`, with `dir/upper` and `dir/work`.
pub fn mount_rootfs(lowers: &[PathBuf], dir: &Path) -> Result<PathBuf, RootfsError> {
    let (upper, work, target) = (dir.join("upper"), dir.join("work"), dir.join("rootfs"));
    for d in [&upper, &work, &target] {
        std::fs::create_dir_all(d).map_err(|e| RootfsError::Fs {
            path: d.clone(),
            op: "create",
            reason: e.to_string(),
        })?;
    }
    if lowers.is_empty() {
        // An image without layers: an empty read-only lower dir keeps overlay happy.
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty).map_err(|e| RootfsError::Fs {
            path: empty.clone(),
            op: "create",
            reason: e.to_string(),
        })?;
        return mount_rootfs_with(&[empty], &upper, &work, &target);
    }
    mount_rootfs_with(lowers, &upper, &work, &target)
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
