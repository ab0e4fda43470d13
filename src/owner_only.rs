//! The modes of everything kelsond writes below its root and state dirs: owner-only (files
//! 0600, dirs 0700), chosen here and never left to the umask. Container specs carry secrets
//! (env values from Kubernetes secrets) and the store every container's config, so no other
//! user of the node may read them (CVE-2021-41103's class). The daemon's umask (077, set first
//! thing in `main`) is the second line: a create this module does not own is private too.
//! Never used for what a container sees (volumes, the rootfs): those keep the modes the
//! container expects.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Every file kelsond writes for itself.
pub const FILE: u32 = 0o600;
/// Every directory kelsond makes for itself.
pub const DIR: u32 = 0o700;
/// A directory every user-namespaced pod's root must cross (the root and state dirs and their
/// shared `containers/`, `pods/`): search without listing. What lies below stays private.
pub const TRAVERSE: u32 = 0o711;
/// A pod's or container's own dir in a user-namespaced pod: search for the pod root's group
/// only (the container library prepares those containers as that id), read for no one.
pub const TRAVERSE_GROUP: u32 = 0o710;
/// A file bound into containers and read there by any user (`/etc/hosts`, `/etc/resolv.conf`,
/// `/etc/hostname`): readable as in any image, reachable only through a private dir.
pub const BOUND_INTO_CONTAINERS: u32 = 0o644;
/// The umask of kelsond and its helpers: nothing they create is readable by group or others
/// unless its mode is set explicitly.
pub const UMASK: u32 = 0o077;

/// Set the process's umask to `UMASK` (inherited by kelsond's children: the shim sets the
/// OCI default back for the containers it makes).
pub fn restrict_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(UMASK as _));
}

/// `path` and any missing parents as private dirs (existing ones keep their mode).
pub fn create_dir_all(path: &Path) -> std::io::Result<()> {
    create_dir_all_mode(path, DIR)
}

/// `path` and any missing parents with `mode` (not reduced by the umask; existing dirs keep
/// theirs).
pub fn create_dir_all_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        create_dir_all_mode(parent, mode)?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => set_mode(path, mode),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Write `bytes` to `path` as a private file (replacing its content; an existing file's mode
/// is narrowed too). A symlink at `path` is refused, never followed.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_mode(path, bytes, FILE)
}

/// `write` with `mode` instead of `FILE`.
pub fn write_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)
}

/// Write a private file under a temporary name beside `path` and rename it into place, so a
/// reader sees the old content or the new, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Set `path`'s permission bits to `mode`, not following a symlink at `path`.
pub fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    if std::fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Err(std::io::Error::from_raw_os_error(nix::libc::ELOOP));
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Narrow an existing file to `FILE` (one written by an older kelsond, or by a library that
/// chooses its own mode); a missing file (or a parent that is not a dir) is fine.
pub fn narrow_file(path: &Path) -> std::io::Result<()> {
    match set_mode(path, FILE) {
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(nix::libc::ENOTDIR) =>
        {
            Ok(())
        }
        r => r,
    }
}

/// Let a user-namespaced pod's root cross `dir` and nothing more: root-owned, group `gid`
/// (the pod root's group on the host), mode `TRAVERSE_GROUP`.
pub fn traversable_by_group(dir: &Path, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(0), Some(gid))?;
    set_mode(dir, TRAVERSE_GROUP)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn modes_are_exact_and_never_follow_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        for p in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&d.path().join(p)), DIR, "{p}");
        }
        let f = deep.join("f");
        std::fs::write(&f, b"old").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        write(&f, b"secret").unwrap();
        assert_eq!(
            (mode(&f), std::fs::read(&f).unwrap()),
            (FILE, b"secret".to_vec())
        );
        write_atomic(&deep.join("g"), b"x").unwrap();
        assert_eq!(mode(&deep.join("g")), FILE);
        write_mode(&deep.join("hosts"), b"x", BOUND_INTO_CONTAINERS).unwrap();
        assert_eq!(mode(&deep.join("hosts")), BOUND_INTO_CONTAINERS);
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"host").unwrap();
        std::os::unix::fs::symlink(&victim, deep.join("link")).unwrap();
        assert!(write(&deep.join("link"), b"x").is_err());
        assert!(set_mode(&deep.join("link"), 0o777).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"host");
        narrow_file(&d.path().join("missing")).unwrap();
        narrow_file(&f.join("below-a-file")).unwrap();
    }
}
