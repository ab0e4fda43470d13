//! A path of the image as the container's process will see it: every symlink the image holds
//! along it followed inside the root filesystem (absolute targets from the rootfs's root, `..`
//! never above it), so a check on the result judges where the path really leads — e.g. a
//! WORKDIR that is a symlink to `/proc/self/fd/N`. Components the rootfs does not hold (mounts
//! the runtime makes later, such as `/proc`) are kept as written.
//!
//! Read at create time, before the container's first process runs, from the mounted rootfs;
//! `lstat`/`readlink` only, never an `open` that could follow anything.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// As the kernel allows in one lookup (`MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path:?}: more than {MAX_SYMLINKS} symbolic links in the image")]
pub struct TooManyLinks {
    pub path: String,
}

/// `path` (absolute, inside the container) with the image's symlinks resolved under `rootfs`.
pub fn resolve(rootfs: &Path, path: &str) -> Result<String, TooManyLinks> {
    let mut todo: Vec<OsString> = components(Path::new(path)).into_iter().rev().collect();
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            done.pop();
            continue;
        }
        let host: PathBuf = rootfs.join(done.iter().collect::<PathBuf>()).join(&c);
        let target = match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => std::fs::read_link(&host).ok(),
            _ => None,
        };
        let Some(target) = target else {
            done.push(c);
            continue;
        };
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(TooManyLinks {
                path: path.chars().take(120).collect(),
            });
        }
        if target.is_absolute() {
            done.clear();
        }
        todo.extend(components(&target).into_iter().rev());
    }
    let mut out = String::new();
    for c in &done {
        out.push('/');
        out.push_str(&String::from_utf8_lossy(c.as_bytes()));
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Normal and `..` components (roots and `.` dropped).
fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn follows_the_images_links_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("srv/app")).unwrap();
        std::fs::create_dir(r.join("proc")).unwrap();
        symlink("/proc/self/fd/7", r.join("work")).unwrap();
        symlink("../../proc/1/cwd", r.join("srv/up")).unwrap();
        symlink("srv/app", r.join("app")).unwrap();
        symlink("/../../../host", r.join("escape")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        symlink("hop", r.join("hip")).unwrap();
        symlink("/proc/self", r.join("hop")).unwrap();

        assert_eq!(resolve(r, "/work").unwrap(), "/proc/self/fd/7");
        assert_eq!(resolve(r, "/work/sub").unwrap(), "/proc/self/fd/7/sub");
        assert_eq!(resolve(r, "/srv/up").unwrap(), "/proc/1/cwd");
        assert_eq!(resolve(r, "/app").unwrap(), "/srv/app");
        assert_eq!(resolve(r, "/app/../app/./x").unwrap(), "/srv/app/x");
        assert_eq!(
            resolve(r, "/escape/x").unwrap(),
            "/host/x",
            "never above the root"
        );
        assert_eq!(resolve(r, "/hip/cwd").unwrap(), "/proc/self/cwd");
        assert_eq!(resolve(r, "/").unwrap(), "/");
        assert_eq!(resolve(r, "/missing/dir").unwrap(), "/missing/dir");
        assert!(resolve(r, "/loop").is_err());
    }
}
