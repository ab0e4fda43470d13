//! Reads of the container's cgroup, found through its bundle's config.json: its directory, its
//! pids (to signal them all) and whether the OOM killer acted there. Read only: the engine
//! makes and removes the cgroup, the shim never writes to it.

use std::path::Path;

/// The container's cgroup directory from the bundle's config.json (`linux.cgroupsPath`, a
/// path or systemd's slice:prefix:name).
pub fn cgroup_path(bundle: &Path) -> Option<String> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).ok()?).ok()?;
    kelson_cgroups::dir_of(v["linux"]["cgroupsPath"].as_str()?)
}

/// Every pid in the container's cgroup (v1 pids/memory hierarchy, or v2).
pub fn cgroup_procs(bundle: &Path) -> Vec<i32> {
    let Some(cg) = cgroup_path(bundle) else {
        return vec![];
    };
    for base in [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup",
    ] {
        if let Ok(text) = std::fs::read_to_string(Path::new(base).join(&cg).join("cgroup.procs")) {
            return text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        }
    }
    vec![]
}

/// Whether the kernel's OOM killer acted in the container's cgroup.
pub fn oom_killed(bundle: &Path) -> bool {
    let Some(cg) = cgroup_path(bundle) else {
        return false;
    };
    for f in [
        format!("/sys/fs/cgroup/memory/{cg}/memory.oom_control"),
        format!("/sys/fs/cgroup/{cg}/memory.events"),
    ] {
        if let Ok(text) = std::fs::read_to_string(&f) {
            return counts_an_oom_kill(&text);
        }
    }
    false
}

/// A v1 `memory.oom_control` or v2 `memory.events` with a non-zero `oom_kill` count.
fn counts_an_oom_kill(text: &str) -> bool {
    text.lines()
        .any(|l| l.strip_prefix("oom_kill ").is_some_and(|n| n.trim() != "0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kills_are_read_from_v1_and_v2_counters() {
        let v2 = "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert!(counts_an_oom_kill(v2));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n";
        assert!(!counts_an_oom_kill(v1));
        // `oom` (the limit was hit) and `oom_group_kill` are not a kill of the container.
        assert!(!counts_an_oom_kill("oom 3\noom_group_kill 2\n"));
        assert!(!counts_an_oom_kill(""));
    }

    #[test]
    fn the_cgroup_comes_from_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_path(dir.path()), None);
        assert!(cgroup_procs(dir.path()).is_empty());
        assert!(!oom_killed(dir.path()));
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"linux":{"cgroupsPath":"/kelson/pod/ctr"}}"#,
        )
        .unwrap();
        assert_eq!(cgroup_path(dir.path()).as_deref(), Some("kelson/pod/ctr"));
    }
}
