//! The container user: numeric ids, or names looked up in the image's /etc/passwd and
//! /etc/group, read through the rootfs with `openat2(RESOLVE_IN_ROOT)` so a symlinked passwd file
//! cannot point at the host's, and only when it is a regular file of bounded size.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

/// Largest /etc/passwd or /etc/group read.
pub const MAX_PASSWD_BYTES: u64 = 4 << 20;
/// Highest id accepted (ids are 32-bit and -1 is reserved; CVE-2024-40635 came from not checking).
pub const MAX_ID: i64 = (1 << 31) - 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user {0:?} not found in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in the image's /etc/group")]
    UnknownGroup(String),
    #[error("id {0} is outside 0..2^31-1")]
    OutOfRange(i64),
    #[error("run_as_group is set without run_as_user or run_as_username")]
    GroupWithoutUser,
}

/// Read a file from the rootfs, never leaving it; None when missing, irregular or too large.
pub fn read_in_root(rootfs: &Path, path: &str) -> Option<String> {
    let root = nix::fcntl::open(
        rootfs,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(root.as_fd(), path.trim_start_matches('/'), how).ok()?;
    let f = std::fs::File::from(fd);
    let m = f.metadata().ok()?;
    if !m.is_file() || m.len() > MAX_PASSWD_BYTES {
        return None;
    }
    let mut s = String::new();
    f.take(MAX_PASSWD_BYTES).read_to_string(&mut s).ok()?;
    Some(s)
}

fn check(id: i64) -> Result<u32, UserError> {
    if !(0..=MAX_ID).contains(&id) {
        return Err(UserError::OutOfRange(id));
    }
    Ok(id as u32)
}

/// `(name or uid) → (uid, primary gid)` from passwd text.
fn lookup_user(passwd: &str, user: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && (f[0] == user || f[2] == user))
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    })
}

fn lookup_group(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

/// Groups listing `user` as a member (supplementary groups, as the image defines them).
fn member_groups(group: &str, user: &str) -> Vec<u32> {
    group
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[3].split(',').any(|m| m == user))
                .then(|| f[2].parse().ok())
                .flatten()
        })
        .collect()
}

/// Resolve the container user from the request (run_as_user/run_as_group/run_as_username,
/// supplemental groups) or the image's `User` ("name", "uid", "uid:gid", "name:group").
/// The request's supplemental groups and its `supplemental_groups_policy` (Strict or Merge).
#[derive(Debug, Clone, Copy, Default)]
pub struct Supplemental<'a> {
    pub groups: &'a [i64],
    pub strict: bool,
}

pub fn resolve(
    passwd: Option<&str>,
    group: Option<&str>,
    image_user: &str,
    run_as_user: Option<i64>,
    run_as_username: &str,
    run_as_group: Option<i64>,
    supplemental: Supplemental<'_>,
) -> Result<(u32, u32, Vec<u32>), UserError> {
    // A group without a user would run the image's user under a group kubelet chose for
    // another: the CRI refuses it (as containerd and CRI-O do).
    if run_as_group.is_some() && run_as_user.is_none() && run_as_username.is_empty() {
        return Err(UserError::GroupWithoutUser);
    }
    let (passwd, group) = (passwd.unwrap_or(""), group.unwrap_or(""));
    let (user_part, group_part) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    let (uid, mut gid, name) = if let Some(u) = run_as_user {
        let uid = check(u)?;
        let gid = lookup_user(passwd, &uid.to_string())
            .map(|(_, g)| g)
            .unwrap_or(0);
        (uid, gid, lookup_name(passwd, uid))
    } else if !run_as_username.is_empty() {
        let (u, g) = lookup_user(passwd, run_as_username)
            .ok_or_else(|| UserError::UnknownUser(run_as_username.into()))?;
        (u, g, Some(run_as_username.to_owned()))
    } else if user_part.is_empty() {
        (0, 0, Some("root".into()))
    } else if let Ok(n) = user_part.parse::<i64>() {
        let uid = check(n)?;
        let gid = lookup_user(passwd, &uid.to_string())
            .map(|(_, g)| g)
            .unwrap_or(0);
        (uid, gid, lookup_name(passwd, uid))
    } else {
        let (u, g) = lookup_user(passwd, user_part)
            .ok_or_else(|| UserError::UnknownUser(user_part.into()))?;
        (u, g, Some(user_part.to_owned()))
    };
    if run_as_user.is_none() && run_as_username.is_empty() {
        if let Some(g) = group_part.filter(|g| !g.is_empty()) {
            gid = match g.parse::<i64>() {
                Ok(n) => check(n)?,
                Err(_) => {
                    lookup_group(group, g).ok_or_else(|| UserError::UnknownGroup(g.into()))?
                }
            };
        }
    }
    if let Some(g) = run_as_group {
        gid = check(g)?;
    }
    // The process's groups, as containerd sets them: the primary gid itself, then (Merge) the
    // user's groups from the image's /etc/group, then the request's. Strict leaves out the
    // image's. kubelet compares ContainerStatus.user with `id -G` inside, so both come from here.
    let mut gids: Vec<u32> = vec![gid];
    if !supplemental.strict {
        gids.extend(name.map(|n| member_groups(group, &n)).unwrap_or_default());
    }
    for g in supplemental.groups {
        gids.push(check(*g)?);
    }
    gids.sort_unstable();
    gids.dedup();
    Ok((uid, gid, gids))
}

fn lookup_name(passwd: &str, uid: u32) -> Option<String> {
    let u = uid.to_string();
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[2] == u).then(|| f[0].to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1001::/home/web:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nweb:x:1001:\nextra:x:2000:web,other\n";

    fn r(
        img: &str,
        u: Option<i64>,
        name: &str,
        g: Option<i64>,
        sup: &[i64],
    ) -> Result<(u32, u32, Vec<u32>), UserError> {
        resolve(
            Some(PASSWD),
            Some(GROUP),
            img,
            u,
            name,
            g,
            Supplemental {
                groups: sup,
                strict: false,
            },
        )
    }

    #[test]
    fn strict_policy_leaves_out_the_images_groups() {
        let strict = |img: &str, sup: &[i64]| {
            resolve(
                Some(PASSWD),
                Some(GROUP),
                img,
                None,
                "",
                None,
                Supplemental {
                    groups: sup,
                    strict: true,
                },
            )
        };
        assert_eq!(strict("web", &[]).unwrap(), (1000, 1001, vec![1001]));
        assert_eq!(
            strict("web", &[3000]).unwrap(),
            (1000, 1001, vec![1001, 3000])
        );
        assert_eq!(
            r("web", None, "", None, &[3000]).unwrap(),
            (1000, 1001, vec![1001, 2000, 3000])
        );
    }

    #[test]
    fn resolves_like_the_other_runtimes() {
        assert_eq!(r("", None, "", None, &[]).unwrap(), (0, 0, vec![0]));
        assert_eq!(
            r("web", None, "", None, &[]).unwrap(),
            (1000, 1001, vec![1001, 2000])
        );
        assert_eq!(
            r("1000", None, "", None, &[]).unwrap(),
            (1000, 1001, vec![1001, 2000])
        );
        assert_eq!(
            r("4242:77", None, "", None, &[]).unwrap(),
            (4242, 77, vec![77])
        );
        assert_eq!(
            r("web:extra", None, "", None, &[]).unwrap(),
            (1000, 2000, vec![2000])
        );
        assert_eq!(
            r("web", Some(5), "", Some(6), &[7]).unwrap(),
            (5, 6, vec![6, 7])
        );
        assert_eq!(
            r("", None, "web", None, &[]).unwrap(),
            (1000, 1001, vec![1001, 2000])
        );
        assert_eq!(
            r("nobody", None, "", None, &[]),
            Err(UserError::UnknownUser("nobody".into()))
        );
        assert_eq!(
            r("4294967295", None, "", None, &[]),
            Err(UserError::OutOfRange(4294967295))
        );
        assert_eq!(
            r("", Some(-1), "", None, &[]),
            Err(UserError::OutOfRange(-1))
        );
        // A group needs a user; a username user gets its image groups too.
        assert_eq!(
            r("web", None, "", Some(1002), &[]),
            Err(UserError::GroupWithoutUser)
        );
        assert_eq!(
            r("", None, "web", Some(1002), &[9]).unwrap(),
            (1000, 1002, vec![9, 1002, 2000])
        );
        // No group file: just the primary gid and the request's groups.
        assert_eq!(
            resolve(
                Some(PASSWD),
                None,
                "web",
                None,
                "",
                None,
                Supplemental {
                    groups: &[5],
                    strict: false
                }
            )
            .unwrap(),
            (1000, 1001, vec![5, 1001])
        );
        // A uid the image does not know: gid 0.
        assert_eq!(
            r("", Some(4242), "", None, &[]).unwrap(),
            (4242, 0, vec![0])
        );
    }

    #[test]
    fn reads_only_inside_the_rootfs() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", d.path().join("etc/passwd")).unwrap();
        // the absolute link resolves inside the rootfs, where there is no etc/shadow
        assert_eq!(read_in_root(d.path(), "/etc/passwd"), None);
        std::fs::write(d.path().join("etc/group"), GROUP).unwrap();
        assert_eq!(read_in_root(d.path(), "/etc/group").as_deref(), Some(GROUP));
        std::fs::create_dir(d.path().join("etc/dir")).unwrap();
        assert_eq!(read_in_root(d.path(), "/etc/dir"), None);
    }
}
