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

    /// Keep only the keys `live` holds: a reading that raced the object's removal (read just
    /// before, recorded just after `forget`) is dropped at the next full listing.
    pub fn retain(&self, live: &std::collections::HashSet<&str>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| live.contains(k.as_str()));
    }

    /// How many objects have a reading kept.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    #[test]
    fn readings_go_with_their_objects() {
        let r = Rates::default();
        assert_eq!(r.update("a", 0, 0), None);
        assert_eq!(
            r.update("a", 1_000_000_000, 1_000_000_000),
            Some(1_000_000_000)
        );
        r.update("b", 0, 0);
        r.update("c", 0, 0);
        r.forget("a");
        assert_eq!(r.len(), 2);
        r.retain(&["c"].into_iter().collect());
        assert_eq!(r.len(), 1);
        assert_eq!(r.update("b", 1, 1), None, "b was dropped");
    }
}
