//! Mount propagation of volumes: which host mount a volume's source sits on, and whether that
//! mount can carry what the request asks for (pure, over the text of /proc/self/mountinfo).
//! A Bidirectional volume needs a shared source mount (mounts made on either side reach the
//! other only through a peer group), HostToContainer a shared or slave one. Where the source
//! cannot, the request is refused by name rather than given a private mount that silently
//! propagates nothing — the check containerd makes too.

use std::io::Read;
use std::path::Path;

use k8s_cri::v1 as cri;

/// Largest /proc/self/mountinfo read (a node with many pods has thousands of mounts).
pub const MAX_MOUNTINFO_BYTES: u64 = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PropagationError {
    #[error(
        "mounts {path}: {wanted} propagation needs its source on a {needs} mount, but {mount_point} is not (make it shared with `mount --make-rshared {mount_point}`)"
    )]
    NotPropagating {
        path: String,
        wanted: &'static str,
        needs: &'static str,
        mount_point: String,
    },
    #[error("mounts {path}: no mount holds the source")]
    NoMount { path: String },
    #[error("reading /proc/self/mountinfo: {0}")]
    Read(std::io::Error),
}

/// What a host mount passes on, from its optional fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub shared: bool,
    pub slave: bool,
}

/// Undo mountinfo's octal escapes (`\040` for a space, …).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount that holds `path` (an absolute, resolved path): the last listed mount whose mount
/// point is `path` or one of its ancestors, the deepest first (later mounts stack on earlier
/// ones at the same point). Returns its mount point and mode.
pub fn holding_mount(mountinfo: &str, path: &Path) -> Option<(String, Mode)> {
    let mut best: Option<(usize, String, Mode)> = None;
    for line in mountinfo.lines() {
        let mut f = line.split(' ');
        let (Some(_id), Some(_parent), Some(_dev), Some(_root), Some(point)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let point = unescape(point);
        let _opts = f.next();
        let mut mode = Mode {
            shared: false,
            slave: false,
        };
        for opt in f.by_ref() {
            if opt == "-" {
                break;
            }
            mode.shared |= opt.starts_with("shared:");
            mode.slave |= opt.starts_with("master:");
        }
        if !path.starts_with(&point) {
            continue;
        }
        let depth = Path::new(&point).components().count();
        if best.as_ref().is_none_or(|(d, _, _)| depth >= *d) {
            best = Some((depth, point, mode));
        }
    }
    best.map(|(_, p, m)| (p, m))
}

/// Check one volume's source against the mount that holds it.
pub fn check(m: &cri::Mount, mountinfo: &str, resolved: &Path) -> Result<(), PropagationError> {
    let (wanted, needs) = match cri::MountPropagation::try_from(m.propagation) {
        Ok(cri::MountPropagation::PropagationBidirectional) => ("Bidirectional", "shared"),
        Ok(cri::MountPropagation::PropagationHostToContainer) => {
            ("HostToContainer", "shared or slave")
        }
        _ => return Ok(()),
    };
    let (mount_point, mode) =
        holding_mount(mountinfo, resolved).ok_or_else(|| PropagationError::NoMount {
            path: m.container_path.clone(),
        })?;
    let ok = match needs {
        "shared" => mode.shared,
        _ => mode.shared || mode.slave,
    };
    if ok {
        Ok(())
    } else {
        Err(PropagationError::NotPropagating {
            path: m.container_path.clone(),
            wanted,
            needs,
            mount_point,
        })
    }
}

/// The host's mount table, bounded.
pub fn read_mountinfo() -> Result<String, PropagationError> {
    let mut s = String::new();
    std::fs::File::open("/proc/self/mountinfo")
        .and_then(|f| f.take(MAX_MOUNTINFO_BYTES).read_to_string(&mut s))
        .map_err(PropagationError::Read)?;
    Ok(s)
}

/// Whether the container's root must be a shared mount: some volume is Bidirectional, so
/// mounts the container makes under it must travel back to the host's peer group.
pub fn needs_shared_root(mounts: &[cri::Mount]) -> bool {
    mounts
        .iter()
        .any(|m| m.propagation == cri::MountPropagation::PropagationBidirectional as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /proc rw,nosuid - proc proc rw
40 22 0:40 / /mnt/private rw - tmpfs tmpfs rw
41 22 0:41 / /mnt/slave rw master:7 - tmpfs tmpfs rw
42 22 0:42 / /mnt/with\\040space rw shared:9 master:3 - tmpfs tmpfs rw
43 40 0:43 / /mnt/private/shared rw shared:12 - tmpfs tmpfs rw
";

    fn mount(path: &str, p: cri::MountPropagation) -> cri::Mount {
        cri::Mount {
            container_path: "/c".into(),
            host_path: path.into(),
            propagation: p as i32,
            ..Default::default()
        }
    }

    #[test]
    fn finds_the_deepest_mount() {
        let (p, m) = holding_mount(INFO, Path::new("/mnt/private/shared/x")).unwrap();
        assert_eq!(p, "/mnt/private/shared");
        assert!(m.shared);
        let (p, m) = holding_mount(INFO, Path::new("/mnt/private/y")).unwrap();
        assert_eq!(p, "/mnt/private");
        assert!(!m.shared && !m.slave);
        assert_eq!(holding_mount(INFO, Path::new("/srv")).unwrap().0, "/");
        let (p, m) = holding_mount(INFO, Path::new("/mnt/with space/d")).unwrap();
        assert_eq!(p, "/mnt/with space");
        assert!(m.shared && m.slave);
        // "/mnt/privateX" is not under "/mnt/private".
        assert_eq!(
            holding_mount(INFO, Path::new("/mnt/privateX")).unwrap().0,
            "/"
        );
    }

    #[test]
    fn checks_what_each_mode_needs() {
        use cri::MountPropagation::*;
        let ok = |path: &str, p| check(&mount(path, p), INFO, Path::new(path));
        assert!(ok("/mnt/private/a", PropagationPrivate).is_ok());
        assert!(ok("/srv/a", PropagationBidirectional).is_ok());
        assert!(ok("/mnt/slave/a", PropagationHostToContainer).is_ok());
        let e = ok("/mnt/slave/a", PropagationBidirectional).unwrap_err();
        assert!(e.to_string().contains("/mnt/slave"), "{e}");
        assert!(ok("/mnt/private/a", PropagationHostToContainer).is_err());
        assert!(ok("/mnt/private/shared/a", PropagationBidirectional).is_ok());
        assert!(needs_shared_root(&[mount("/x", PropagationBidirectional)]));
        assert!(!needs_shared_root(&[mount(
            "/x",
            PropagationHostToContainer
        )]));
    }
}
