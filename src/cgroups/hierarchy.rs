//! Which cgroup hierarchies kelson manages (v1 controllers or the v2 unified tree, from
//! /proc/self/mountinfo), and where a cgroup's directories are in them; kubelet's cgroupfs
//! `cgroup_parent` is validated here before anything is made below it.

use std::path::PathBuf;

use super::CgroupError;

/// Deepest cgroup path accepted.
pub const MAX_CGROUP_DEPTH: usize = 32;
/// Longest cgroup path accepted.
pub const MAX_CGROUP_PATH: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// Mount points of the v1 controller hierarchies (named hierarchies like `name=systemd` are
    /// not controllers and are left alone).
    V1(Vec<PathBuf>),
    /// The unified hierarchy's mount point.
    V2(PathBuf),
}

/// Pick the hierarchy kelson manages from a mountinfo text: v2 when /sys/fs/cgroup itself is
/// cgroup2 (unified mode); otherwise the v1 controllers (legacy and hybrid modes).
pub fn parse_mountinfo(text: &str) -> Option<Hierarchy> {
    let mut v1 = Vec::new();
    let mut v2_root = None;
    for line in text.lines() {
        // fields: id parent maj:min root mountpoint opts [optional...] - fstype source superopts
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mountpoint = pre.split(' ').nth(4).unwrap_or("");
        let mut post = post.split(' ');
        let fstype = post.next().unwrap_or("");
        let superopts = post.nth(1).unwrap_or("");
        match fstype {
            "cgroup2" if mountpoint == "/sys/fs/cgroup" => {
                v2_root = Some(PathBuf::from(mountpoint))
            }
            "cgroup" => {
                let is_controller = superopts.split(',').any(|o| {
                    matches!(
                        o,
                        "cpu"
                            | "cpuacct"
                            | "cpuset"
                            | "memory"
                            | "devices"
                            | "freezer"
                            | "blkio"
                            | "pids"
                            | "hugetlb"
                            | "net_cls"
                            | "net_prio"
                            | "perf_event"
                            | "rdma"
                            | "misc"
                    )
                });
                if is_controller {
                    v1.push(PathBuf::from(mountpoint));
                }
            }
            _ => {}
        }
    }
    match (v2_root, v1.is_empty()) {
        (Some(root), _) => Some(Hierarchy::V2(root)),
        (None, false) => {
            v1.sort();
            v1.dedup();
            Some(Hierarchy::V1(v1))
        }
        (None, true) => None,
    }
}

pub fn detect() -> Result<Hierarchy, CgroupError> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| CgroupError::Io {
            path: "/proc/self/mountinfo".into(),
            op: "read",
            source,
        })?;
    parse_mountinfo(&text).ok_or(CgroupError::NoHierarchy)
}

/// Normalise kubelet's `cgroup_parent` (cgroupfs form, e.g. `/kubepods/burstable/pod<uid>`) to
/// a relative path of plain components. `..`, `.`, empty components and odd characters are
/// refused, so the path cannot leave the hierarchy or name a control file.
pub fn validate(path: &str) -> Result<String, CgroupError> {
    let bad = |reason| CgroupError::Invalid {
        path: path.chars().take(120).collect(),
        reason,
    };
    if path.len() > MAX_CGROUP_PATH {
        return Err(bad("too long"));
    }
    let comps: Vec<&str> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|c| !c.is_empty())
        .collect();
    if comps.is_empty() {
        return Err(bad("empty"));
    }
    if comps.len() > MAX_CGROUP_DEPTH {
        return Err(bad("too deep"));
    }
    for c in &comps {
        if *c == "." || *c == ".." {
            return Err(bad("contains . or .."));
        }
        if !c
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@'))
        {
            return Err(bad("only letters, digits and _ - . : @ are allowed"));
        }
        // Control files are named `<controller>.<key>`; a directory may not look like one.
        const CONTROLLERS: [&str; 10] = [
            "cgroup.", "memory.", "cpu.", "cpuset.", "cpuacct.", "pids.", "io.", "blkio.",
            "hugetlb.", "devices.",
        ];
        if CONTROLLERS.iter().any(|p| c.starts_with(p)) {
            return Err(bad("names a cgroup control file"));
        }
    }
    Ok(comps.join("/"))
}

impl Hierarchy {
    /// The directory of cgroup `rel` in every managed hierarchy.
    pub fn dirs(&self, rel: &str) -> Vec<PathBuf> {
        match self {
            Hierarchy::V1(mounts) => mounts.iter().map(|m| m.join(rel)).collect(),
            Hierarchy::V2(root) => vec![root.join(rel)],
        }
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.dirs(rel).iter().all(|d| d.is_dir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
28 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
    const UNIFIED: &str = "\
25 1 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn detects_modes() {
        assert_eq!(
            parse_mountinfo(HYBRID),
            Some(Hierarchy::V1(vec![
                "/sys/fs/cgroup/cpu,cpuacct".into(),
                "/sys/fs/cgroup/memory".into(),
                "/sys/fs/cgroup/pids".into()
            ]))
        );
        assert_eq!(
            parse_mountinfo(UNIFIED),
            Some(Hierarchy::V2("/sys/fs/cgroup".into()))
        );
        assert_eq!(parse_mountinfo(""), None);
    }

    #[test]
    fn validates_paths() {
        assert_eq!(
            validate("/kubepods/burstable/pod1234").unwrap(),
            "kubepods/burstable/pod1234"
        );
        assert_eq!(validate("kubepods.slice").unwrap(), "kubepods.slice");
        for bad in [
            "",
            "/",
            "/a/../b",
            "a/./b",
            "a b",
            "a/cgroup.procs",
            "a/memory.max",
            "x\n",
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        assert!(validate(&"a/".repeat(40)).is_err());
    }
}
