//! Container statistics from the cgroup files (v1 and v2), with kubelet's definitions:
//! working set = usage − inactive file pages; nano-cores from two cumulative samples. The file
//! parsing is pure and tested for both versions.

use std::collections::HashMap;
use std::path::Path;

use crate::pod::cgroup::Hierarchy;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Cumulative CPU time, nanoseconds.
    pub cpu_ns: u64,
    pub memory_usage: u64,
    pub working_set: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// Memory limit, when one is set (for `available_bytes`).
    pub memory_limit: Option<u64>,
}

/// `key value` lines (memory.stat, cpu.stat).
pub fn parse_kv(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k, v.trim().parse().ok()?))
        })
        .collect()
}

fn num(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// v1: `cpuacct.usage`, `memory.usage_in_bytes`, `memory.limit_in_bytes`, `memory.stat`.
pub fn sample_v1(cpuacct_usage: &str, mem_usage: &str, mem_limit: &str, mem_stat: &str) -> Sample {
    let stat = parse_kv(mem_stat);
    let usage = num(mem_usage).unwrap_or(0);
    let inactive = stat.get("total_inactive_file").copied().unwrap_or(0);
    // v1 reports "no limit" as a huge page-rounded number.
    let limit = num(mem_limit).filter(|l| *l < (1 << 62));
    Sample {
        cpu_ns: num(cpuacct_usage).unwrap_or(0),
        memory_usage: usage,
        working_set: usage.saturating_sub(inactive),
        rss: stat.get("total_rss").copied().unwrap_or(0),
        page_faults: stat.get("total_pgfault").copied().unwrap_or(0),
        major_page_faults: stat.get("total_pgmajfault").copied().unwrap_or(0),
        memory_limit: limit,
    }
}

/// v2: `cpu.stat`, `memory.current`, `memory.max`, `memory.stat`.
pub fn sample_v2(cpu_stat: &str, mem_current: &str, mem_max: &str, mem_stat: &str) -> Sample {
    let cpu = parse_kv(cpu_stat);
    let stat = parse_kv(mem_stat);
    let usage = num(mem_current).unwrap_or(0);
    Sample {
        cpu_ns: cpu.get("usage_usec").copied().unwrap_or(0) * 1000,
        memory_usage: usage,
        working_set: usage.saturating_sub(stat.get("inactive_file").copied().unwrap_or(0)),
        rss: stat.get("anon").copied().unwrap_or(0),
        page_faults: stat.get("pgfault").copied().unwrap_or(0),
        major_page_faults: stat.get("pgmajfault").copied().unwrap_or(0),
        memory_limit: num(mem_max),
    }
}

/// Read a sample for cgroup `rel`; None when its files are gone (the container exited).
pub fn read(h: &Hierarchy, rel: &str) -> Option<Sample> {
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    match h {
        Hierarchy::V2(root) => {
            let d = root.join(rel);
            Some(sample_v2(
                &read(&d.join("cpu.stat")).unwrap_or_default(),
                &read(&d.join("memory.current"))?,
                &read(&d.join("memory.max")).unwrap_or_default(),
                &read(&d.join("memory.stat")).unwrap_or_default(),
            ))
        }
        Hierarchy::V1(_) => {
            let dirs = h.dirs(rel);
            let find = |f: &str| {
                dirs.iter()
                    .map(|d| d.join(f))
                    .find(|p| p.exists())
                    .and_then(|p| read(&p))
            };
            Some(sample_v1(
                &find("cpuacct.usage").unwrap_or_default(),
                &find("memory.usage_in_bytes")?,
                &find("memory.limit_in_bytes").unwrap_or_default(),
                &find("memory.stat").unwrap_or_default(),
            ))
        }
    }
}

/// Nano-cores between two cumulative samples taken `dt_ns` apart.
pub fn nano_cores(prev_cpu_ns: u64, cpu_ns: u64, dt_ns: u64) -> u64 {
    if dt_ns == 0 {
        return 0;
    }
    ((cpu_ns.saturating_sub(prev_cpu_ns) as u128 * 1_000_000_000u128) / dt_ns as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_samples() {
        let s = sample_v1(
            "123456789\n",
            "10485760\n",
            "9223372036854771712\n",
            "cache 1\ntotal_inactive_file 1048576\ntotal_rss 4096\ntotal_pgfault 10\ntotal_pgmajfault 2\n",
        );
        assert_eq!(
            (
                s.cpu_ns,
                s.memory_usage,
                s.working_set,
                s.rss,
                s.page_faults,
                s.major_page_faults
            ),
            (123456789, 10485760, 9437184, 4096, 10, 2)
        );
        assert_eq!(s.memory_limit, None);
        let s = sample_v2(
            "usage_usec 1500\nuser_usec 1000\n",
            "2097152\n",
            "max\n",
            "anon 8192\ninactive_file 1048576\npgfault 7\npgmajfault 1\n",
        );
        assert_eq!(
            (s.cpu_ns, s.working_set, s.rss, s.page_faults),
            (1_500_000, 1048576, 8192, 7)
        );
        assert_eq!(s.memory_limit, None);
        assert_eq!(sample_v2("", "1\n", "4096\n", "").memory_limit, Some(4096));
    }

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
