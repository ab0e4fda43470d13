//! Resource statistics: what the kernel says about a cgroup (`cgroup.rs`, v1 and v2) and a pod's
//! network namespace (`netdev.rs`), and the cAdvisor-named metrics built from them
//! (`metrics.rs`). Reading is cheap (a handful of small files per cgroup) and pure parsing is
//! unit-tested; the CRI conversion lives in `cri/stats.rs`.

pub mod cgroup;
pub mod metrics;
pub mod netdev;

pub use cgroup::{Sample, nano_cores};

use std::collections::HashMap;
use std::sync::Mutex;

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
