//! Making and removing cgroupfs pod directories, on v1 (one directory per controller
//! hierarchy; cpuset children get their parent's sets) and v2. Only the directories asked for,
//! below paths `hierarchy::validate` has checked.

use std::path::{Path, PathBuf};

use super::{CgroupError, Hierarchy};

/// cgroupfs dirs as every runtime makes them: the tree is the node's view, read by monitoring
/// and by containers' processes (their limits), and holds nothing secret; kelsond's umask must
/// not narrow it.
const CGROUP_DIR_MODE: u32 = 0o755;

impl Hierarchy {
    /// Create `rel` (and missing parents) everywhere; returns whether it did not exist before.
    pub fn create(&self, rel: &str) -> Result<bool, CgroupError> {
        let existed = self.exists(rel);
        let roots: Vec<&Path> = match self {
            Hierarchy::V1(mounts) => mounts.iter().map(PathBuf::as_path).collect(),
            Hierarchy::V2(root) => vec![root.as_path()],
        };
        for root in roots {
            let d = root.join(rel);
            // v1 cpuset children start with empty sets and refuse tasks: copy the parent's down.
            if matches!(self, Hierarchy::V1(_)) && root.join("cpuset.cpus").exists() {
                create_cpuset(&d)?;
            } else {
                crate::owner_only::create_dir_all_mode(&d, CGROUP_DIR_MODE).map_err(|source| {
                    CgroupError::Io {
                        path: d.clone(),
                        op: "create",
                        source,
                    }
                })?;
            }
        }
        Ok(!existed)
    }

    /// Remove `rel`'s leaf directories (a cgroup directory is removed with rmdir).
    pub fn remove(&self, rel: &str) -> Result<(), CgroupError> {
        for d in self.dirs(rel) {
            match std::fs::remove_dir(&d) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(CgroupError::Io {
                        path: d,
                        op: "remove",
                        source: e,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn create_cpuset(d: &Path) -> Result<(), CgroupError> {
    if d.is_dir() {
        return Ok(());
    }
    if let Some(parent) = d.parent() {
        if !parent.is_dir() {
            create_cpuset(parent)?;
        }
    }
    crate::owner_only::create_dir_all_mode(d, CGROUP_DIR_MODE).map_err(|source| {
        CgroupError::Io {
            path: d.to_owned(),
            op: "create",
            source,
        }
    })?;
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let from = d.parent().map(|p| p.join(f)).unwrap_or_default();
        let v = std::fs::read_to_string(&from).map_err(|source| CgroupError::Io {
            path: from.clone(),
            op: "read",
            source,
        })?;
        let to = d.join(f);
        std::fs::write(&to, v.trim()).map_err(|source| CgroupError::Io {
            path: to,
            op: "write",
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_create_and_remove_on_the_unified_hierarchy() {
        // cgroup2 at /sys/fs/cgroup (unified host) or /sys/fs/cgroup/unified (hybrid host).
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = mountinfo.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split(' ').next() == Some("cgroup2")).then(|| pre.split(' ').nth(4))?
        });
        let Some(root) = root.map(Path::new) else {
            let skip = "KELSON_SKIP_CGROUP2";
            assert!(
                std::env::var_os(skip).is_some_and(|v| v == "1"),
                "no cgroup2 hierarchy in /proc/self/mountinfo; {skip}=1 skips this test"
            );
            // Straight to stderr: the harness captures eprintln! and would hide the skip.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIP v2_create_and_remove: no cgroup2 ({skip}=1)"
            );
            return;
        };
        let h = Hierarchy::V2(root.to_owned());
        let rel = format!("kelson-unit-{}/pod", std::process::id());
        assert!(h.create(&rel).unwrap());
        assert!(root.join(&rel).join("cgroup.procs").exists());
        assert!(!h.create(&rel).unwrap(), "second create reports it existed");
        h.remove(&rel).unwrap();
        h.remove(rel.split('/').next().unwrap()).unwrap();
        assert!(!root.join(&rel).exists());
    }
}
