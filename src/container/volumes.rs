//! The image's `VOLUME`s: each directory is made in the container's rootfs when the image does
//! not have it (CRI-O's `image_volumes = "mkdir"`: the path exists, with the image's content
//! if it had any, and belongs to the container's user when kelson makes it). Resolved with
//! `openat2(RESOLVE_IN_ROOT)` from the rootfs, so no path or symlink in the image can make
//! kelson create anything outside it.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

/// More VOLUME entries than any real image has.
pub const MAX_IMAGE_VOLUMES: usize = 256;
/// Longest VOLUME path accepted.
pub const MAX_VOLUME_PATH: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VolumeError {
    #[error("image config: more than {MAX_IMAGE_VOLUMES} volumes")]
    TooMany,
    #[error("image volume {0:?} must be a non-empty path without .. or NUL")]
    BadPath(String),
}

/// The image config's `Volumes` keys, checked, as absolute paths.
///
/// A key that is not absolute is rooted at `/` as it is, as containerd does for Linux
/// containers: images built on Windows carry `C:/dir` (and `:dir`), which become `/C:/dir` (and
/// `/:dir`) — the drive letter stays, a directory named `C:`, so the files the image put under
/// `C:/dir` are in the volume.
pub fn from_config(config: &serde_json::Value) -> Result<Vec<String>, VolumeError> {
    let Some(map) = config["config"]["Volumes"].as_object() else {
        return Ok(Vec::new());
    };
    if map.len() > MAX_IMAGE_VOLUMES {
        return Err(VolumeError::TooMany);
    }
    map.keys().map(|p| absolute(p)).collect()
}

fn absolute(p: &str) -> Result<String, VolumeError> {
    let bad = || VolumeError::BadPath(p.chars().take(120).collect());
    if p.is_empty() || p.contains('\0') || p.split('/').any(|c| c == "..") {
        return Err(bad());
    }
    let abs = if p.starts_with('/') {
        p.to_owned()
    } else {
        format!("/{p}")
    };
    if abs.len() > MAX_VOLUME_PATH {
        return Err(bad());
    }
    Ok(abs)
}

/// An image volume's dir, as docker and containerd make it.
const VOLUME_MODE: u32 = 0o755;

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_DIRECTORY)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// Make `path` (and its missing parents) inside `rootfs`, owned by `owner`. A path the image
/// has already is left as it is. A path through something that is not a directory, or a
/// symlink whose in-root target is missing, is skipped with a warning (a volume is a
/// convenience of the image; it never reaches outside the rootfs and never fails the
/// container).
pub fn make(rootfs: &Path, path: &str, owner: (u32, u32)) {
    let root = match nix::fcntl::open(
        rootfs,
        OFlag::O_DIRECTORY | OFlag::O_PATH | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(volume = path, error = %e, "image volume: opening the rootfs");
            return;
        }
    };
    let comps: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if let Err((comp, e)) = make_in(&root, &comps, owner) {
        tracing::warn!(volume = path, at = comp, error = %e, "image volume not made");
    }
}

fn make_in<'a>(
    root: &OwnedFd,
    comps: &[&'a str],
    owner: (u32, u32),
) -> Result<OwnedFd, (&'a str, Errno)> {
    let Some((last, parent)) = comps.split_last() else {
        return nix::unistd::dup(root).map_err(|e| ("/", e));
    };
    let joined = comps.join("/");
    match openat2(root.as_fd(), joined.as_str(), how(OFlag::O_PATH)) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err((last, e)),
    }
    let dir = make_in(root, parent, owner)?;
    // mkdirat never follows a final symlink: a dangling one fails here with EEXIST.
    nix::sys::stat::mkdirat(dir.as_fd(), *last, Mode::from_bits_truncate(VOLUME_MODE))
        .map_err(|e| (*last, e))?;
    nix::unistd::fchownat(
        dir.as_fd(),
        *last,
        Some(nix::unistd::Uid::from_raw(owner.0)),
        Some(nix::unistd::Gid::from_raw(owner.1)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| (*last, e))?;
    // The mode the image's users expect, not what kelsond's umask left of it; on the dir
    // just made, by fd (O_NOFOLLOW: never through a symlink).
    let made = openat2(dir.as_fd(), *last, how(OFlag::O_RDONLY | OFlag::O_NOFOLLOW))
        .map_err(|e| (*last, e))?;
    nix::sys::stat::fchmod(made.as_fd(), Mode::from_bits_truncate(VOLUME_MODE))
        .map_err(|e| (*last, e))?;
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn volumes_are_checked() {
        let v = |vols: serde_json::Value| from_config(&json!({"config": {"Volumes": vols}}));
        assert_eq!(v(json!({"/data": {}})).unwrap(), ["/data"]);
        assert_eq!(
            from_config(&json!({"config": {}})).unwrap(),
            Vec::<String>::new()
        );
        // Not absolute (images built on Windows): rooted at `/`, the drive letter kept.
        for (key, want) in [
            ("C:/weird_test_dir", "/C:/weird_test_dir"),
            (":colon_prefixed", "/:colon_prefixed"),
            ("data", "/data"),
            ("c:\\dir", "/c:\\dir"),
        ] {
            assert_eq!(v(json!({key: {}})).unwrap(), [want], "{key}");
        }
        let long = "a".repeat(MAX_VOLUME_PATH);
        for bad in [
            "",
            "/../../etc",
            "/a/../b",
            "C:/../x",
            "/a\u{0}b",
            long.as_str(),
        ] {
            assert!(
                matches!(v(json!({bad: {}})), Err(VolumeError::BadPath(_))),
                "{bad}"
            );
        }
        let many: serde_json::Map<String, serde_json::Value> =
            (0..300).map(|i| (format!("/v{i}"), json!({}))).collect();
        assert_eq!(
            v(serde_json::Value::Object(many)),
            Err(VolumeError::TooMany)
        );
    }

    #[test]
    fn volumes_stay_inside_the_rootfs() {
        let host = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir(r.join("kept")).unwrap();
        std::fs::write(r.join("kept/file"), b"image").unwrap();
        std::fs::write(r.join("plain"), b"not a dir").unwrap();
        std::os::unix::fs::symlink(host.path(), r.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../..", r.join("up")).unwrap();
        std::fs::create_dir(r.join("inroot")).unwrap();
        std::os::unix::fs::symlink("/inroot", r.join("good")).unwrap();
        for v in [
            "/data/cache",
            "/kept",
            "/plain/x",
            "/abs/escape",
            "/up/escape",
            "/good/x",
            "/C:/weird_test_dir",
        ] {
            make(r, v, (1000, 1000));
        }
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(r.join("data/cache")).unwrap();
        assert!(m.is_dir() && m.uid() == 1000);
        assert_eq!(std::fs::read(r.join("kept/file")).unwrap(), b"image");
        assert_eq!(std::fs::metadata(r.join("kept")).unwrap().uid(), 0);
        assert!(
            r.join("inroot/x").is_dir(),
            "an in-root symlink is followed"
        );
        assert!(r.join("C:/weird_test_dir").is_dir());
        // "/up" resolves to the rootfs itself: the volume is made there, not in the host's /.
        assert!(r.join("escape").is_dir());
        assert!(!Path::new("/escape").exists());
        assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 0);
    }
}
