//! Resource statistics: a pod's network namespace (`netdev.rs`), CPU rates between cgroup
//! samples (read by `crate::cgroups::read`), and the cAdvisor-named metrics built from them
//! (`metrics.rs`). Reading is cheap (a handful of small files per cgroup) and pure parsing is
//! unit-tested; the CRI conversion lives in `cri/stats.rs`.

pub mod metrics;
pub mod netdev;

pub use crate::cgroups::Sample;

use std::collections::HashMap;
use std::sync::Mutex;

/// Nano-cores between two cumulative samples taken `dt_ns` apart.
pub fn nano_cores(prev_cpu_ns: u64, cpu_ns: u64, dt_ns: u64) -> u64 {
    if dt_ns == 0 {
        return 0;
    }
    ((cpu_ns.saturating_sub(prev_cpu_ns) as u128 * 1_000_000_000u128) / dt_ns as u128) as u64
}

/// The previous cumulative CPU reading per cgroup, for instantaneous nano-cores.
#[derive(Default)]
pub struct Rates(Mutex<HashMap<String, (i64, u64)>>);

impl Rates {
    /// Record `cpu_ns` read at `now_ns` for `key`; the rate since the previous reading.
    pub fn update(&self, key: &str, now_ns: i64, cpu_ns: u64) -> Option<u64> {
        let mut prev = self.0.lock().unwrap_or_else(|p| p.into_inner());
        prev.insert(key.to_owned(), (now_ns, cpu_ns))
            .map(|(t, cpu)| nano_cores(cpu, cpu_ns, (now_ns - t).max(0) as u64))
    }

    /// Drop what is kept for `key` (its cgroup is gone).
    pub fn forget(&self, key: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(
            nano_cores(0, 500_000_000, 1_000_000_000),
            500_000_000,
            "half a core"
        );
        assert_eq!(nano_cores(10, 5, 1_000), 0, "counter reset");
        assert_eq!(nano_cores(0, 1, 0), 0);
    }
}
