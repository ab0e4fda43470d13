//! A named network namespace (`ip netns add`) for tests: a stand-in for a node's host network
//! that outlives kelsond's restarts, so nothing a test does to networking touches the machine's.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

pub struct NetNs {
    pub name: String,
    pub path: PathBuf,
}

impl NetNs {
    /// `ip netns add <prefix>-<pid>` with its loopback up. Deleted on drop.
    pub fn create(prefix: &str) -> anyhow::Result<NetNs> {
        let name = format!("{prefix}-{}", std::process::id());
        // A namespace left by an earlier, killed run of this test has our name only if the
        // pid was reused; replace it.
        let _ = Command::new("ip").args(["netns", "delete", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .context("running ip netns add")?;
        if !out.status.success() {
            bail!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let ns = NetNs {
            path: PathBuf::from("/run/netns").join(&name),
            name,
        };
        // nsenter, not `ip netns exec` (which remounts /sys and hides the cgroup mounts).
        Command::new("nsenter")
            .arg(format!("--net={}", ns.path.display()))
            .args(["ip", "link", "set", "lo", "up"])
            .status()
            .context("bringing up lo")?;
        Ok(ns)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}
