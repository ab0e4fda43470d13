//! The systemd cgroup driver: whether this node can honour it, and systemd's slice and scope
//! naming (the pure path logic itself is `kelson_cgroups`, shared with the shim).

pub use kelson_cgroups::{MAX_UNIT_NAME, dir_of, expand_slice, is_systemd, scope_name};

use super::Hierarchy;

/// Whether the systemd cgroup driver can work here: systemd runs the node (`/run/systemd/system`
/// exists) and the hierarchy is unified cgroup v2 — the container library asks systemd for
/// transient scopes only there. Checked once at start-up, so a node configured for systemd
/// that cannot honour it fails loudly instead of making cgroups behind systemd's back.
pub fn systemd_driver_usable(h: &Hierarchy, systemd_running: bool) -> Result<(), String> {
    if !systemd_running {
        return Err(
            "cgroup_driver = \"systemd\" needs systemd running the node (/run/systemd/system is missing); use \"cgroupfs\""
                .into(),
        );
    }
    match h {
        Hierarchy::V2(_) => Ok(()),
        Hierarchy::V1(_) => Err(
            "cgroup_driver = \"systemd\" needs the unified cgroup v2 hierarchy; this node runs cgroup v1 — use \"cgroupfs\" (with kubelet's cgroupDriver the same)"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_systemd_driver_needs_systemd_and_cgroup_v2() {
        let v2 = Hierarchy::V2("/sys/fs/cgroup".into());
        let v1 = Hierarchy::V1(vec!["/sys/fs/cgroup/memory".into()]);
        assert!(systemd_driver_usable(&v2, true).is_ok());
        assert!(
            systemd_driver_usable(&v1, true)
                .unwrap_err()
                .contains("cgroup v1")
        );
        assert!(
            systemd_driver_usable(&v2, false)
                .unwrap_err()
                .contains("systemd running")
        );
    }
}
