//! Reading one cgroup's files (v1 and v2) into a sample, with kubelet's and cAdvisor's
//! definitions: working set = usage − inactive file pages; process count from `pids.current`,
//! else by counting `cgroup.procs` in the subtree; the pids in a cgroup. Parsing takes a
//! file-reading function, so both versions are tested without a kernel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::Hierarchy;

/// Clock ticks per second in `cpuacct.stat`: USER_HZ, which Linux fixes at 100 in its ABI on
/// every architecture kelson builds for.
const USER_HZ: u64 = 100;
/// v1 reports "no limit" as a huge page-rounded number.
const V1_UNLIMITED: u64 = 1 << 62;
/// Deepest subtree walked when counting processes (pod → container → nested).
const MAX_WALK_DEPTH: usize = 4;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Cumulative CPU time, nanoseconds (and its user / system split, when known).
    pub cpu_ns: u64,
    pub cpu_user_ns: Option<u64>,
    pub cpu_system_ns: Option<u64>,
    pub memory_usage: u64,
    pub working_set: u64,
    pub rss: u64,
    pub cache: u64,
    pub mapped_file: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// Memory limit, when one is set (for `available_bytes`).
    pub memory_limit: Option<u64>,
    /// Swap in use (v1: memsw − usage, when swap accounting is on; v2: memory.swap.current).
    pub swap_usage: Option<u64>,
    pub swap_limit: Option<u64>,
    /// Times the memory limit was hit (v1 failcnt, v2 memory.events `max`).
    pub memory_failcnt: Option<u64>,
    /// OOM kills inside the cgroup.
    pub oom_kills: Option<u64>,
    /// CPU shares (v2 weight converted as kubelet does), CFS quota and period (µs).
    pub cpu_shares: Option<u64>,
    pub cpu_quota_us: Option<u64>,
    pub cpu_period_us: Option<u64>,
}

/// `key value` lines (memory.stat, cpu.stat, memory.events).
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

/// A v1 sample from the files `read(name)` returns (searched across the controllers);
/// None when `memory.usage_in_bytes` is missing (the cgroup is gone).
pub fn sample_v1(read: &dyn Fn(&str) -> Option<String>) -> Option<Sample> {
    let usage = num(&read("memory.usage_in_bytes")?)?;
    let mem_stat = read("memory.stat").unwrap_or_default();
    let stat = parse_kv(&mem_stat);
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    let cpuacct = read("cpuacct.stat").unwrap_or_default();
    let ticks = parse_kv(&cpuacct);
    let ns = |k: &str| {
        ticks
            .get(k)
            .map(|t| t.saturating_mul(1_000_000_000 / USER_HZ))
    };
    let memsw = read("memory.memsw.usage_in_bytes").and_then(|t| num(&t));
    let oom = read("memory.oom_control").unwrap_or_default();
    let quota = read("cpu.cfs_quota_us")
        .and_then(|t| t.trim().parse::<i64>().ok())
        .filter(|q| *q > 0)
        .map(|q| q as u64);
    Some(Sample {
        cpu_ns: read("cpuacct.usage").and_then(|t| num(&t)).unwrap_or(0),
        cpu_user_ns: ns("user"),
        cpu_system_ns: ns("system"),
        memory_usage: usage,
        working_set: usage.saturating_sub(get("total_inactive_file")),
        rss: get("total_rss"),
        cache: get("total_cache"),
        mapped_file: get("total_mapped_file"),
        page_faults: get("total_pgfault"),
        major_page_faults: get("total_pgmajfault"),
        memory_limit: read("memory.limit_in_bytes")
            .and_then(|t| num(&t))
            .filter(|l| *l < V1_UNLIMITED),
        swap_usage: memsw.map(|m| m.saturating_sub(usage)),
        swap_limit: read("memory.memsw.limit_in_bytes")
            .and_then(|t| num(&t))
            .filter(|l| *l < V1_UNLIMITED),
        memory_failcnt: read("memory.failcnt").and_then(|t| num(&t)),
        oom_kills: parse_kv(&oom).get("oom_kill").copied(),
        cpu_shares: read("cpu.shares").and_then(|t| num(&t)),
        cpu_quota_us: quota,
        cpu_period_us: read("cpu.cfs_period_us").and_then(|t| num(&t)),
    })
}

/// A v2 sample; None when `memory.current` is missing (no memory controller, or gone), in
/// which case the CPU figures alone come from `cpu_only_v2`.
pub fn sample_v2(read: &dyn Fn(&str) -> Option<String>) -> Option<Sample> {
    let usage = num(&read("memory.current")?)?;
    let mut s = cpu_only_v2(read);
    let mem_stat = read("memory.stat").unwrap_or_default();
    let stat = parse_kv(&mem_stat);
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    let events = read("memory.events").unwrap_or_default();
    let events = parse_kv(&events);
    s.memory_usage = usage;
    s.working_set = usage.saturating_sub(get("inactive_file"));
    s.rss = get("anon");
    s.cache = get("file");
    s.mapped_file = get("file_mapped");
    s.page_faults = get("pgfault");
    s.major_page_faults = get("pgmajfault");
    s.memory_limit = read("memory.max").and_then(|t| num(&t));
    s.swap_usage = read("memory.swap.current").and_then(|t| num(&t));
    s.swap_limit = read("memory.swap.max").and_then(|t| num(&t));
    s.memory_failcnt = events.get("max").copied();
    s.oom_kills = events.get("oom_kill").copied();
    Some(s)
}

/// The CPU part of a v2 sample (`cpu.stat` is a core file, present without the controller).
fn cpu_only_v2(read: &dyn Fn(&str) -> Option<String>) -> Sample {
    let cpu_stat = read("cpu.stat").unwrap_or_default();
    let cpu = parse_kv(&cpu_stat);
    let us = |k: &str| cpu.get(k).map(|v| v.saturating_mul(1000));
    let (quota, period) = read("cpu.max")
        .map(|t| parse_cpu_max(&t))
        .unwrap_or((None, None));
    Sample {
        cpu_ns: us("usage_usec").unwrap_or(0),
        cpu_user_ns: us("user_usec"),
        cpu_system_ns: us("system_usec"),
        cpu_shares: read("cpu.weight")
            .and_then(|t| num(&t))
            .map(weight_to_shares),
        cpu_quota_us: quota,
        cpu_period_us: period,
        ..Default::default()
    }
}

/// `cpu.max`: "max 100000" or "50000 100000".
fn parse_cpu_max(text: &str) -> (Option<u64>, Option<u64>) {
    let mut it = text.split_whitespace();
    let quota = it.next().and_then(|q| q.parse().ok());
    let period = it.next().and_then(|p| p.parse().ok());
    (quota, period)
}

/// cgroup v2 weight (1..10000) back to v1 shares (2..262144), the inverse of the conversion
/// kubelet and runc apply.
pub fn weight_to_shares(weight: u64) -> u64 {
    let w = weight.clamp(1, 10_000);
    2 + ((w - 1) * 262_142) / 9_999
}

/// Read a sample for cgroup `rel`; None when its files are gone (the container exited).
pub fn read(h: &Hierarchy, rel: &str) -> Option<Sample> {
    match h {
        Hierarchy::V2(root) => {
            let d = root.join(rel);
            let read = |f: &str| std::fs::read_to_string(d.join(f)).ok();
            sample_v2(&read).or_else(|| d.is_dir().then(|| cpu_only_v2(&read)))
        }
        Hierarchy::V1(_) => {
            let dirs = h.dirs(rel);
            let read = |f: &str| {
                dirs.iter()
                    .find_map(|d| std::fs::read_to_string(d.join(f)).ok())
            };
            sample_v1(&read)
        }
    }
}

/// Processes in cgroup `rel` and below: `pids.current` where the pids controller has it, else
/// the lines of every `cgroup.procs` in the subtree.
pub fn process_count(h: &Hierarchy, rel: &str) -> Option<u64> {
    let dirs = h.dirs(rel);
    if let Some(n) = dirs
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join("pids.current")).ok())
        .and_then(|t| num(&t))
    {
        return Some(n);
    }
    // Any one hierarchy holds every process; the first that has the cgroup will do.
    let dir = dirs.into_iter().find(|d| d.is_dir())?;
    Some(count_procs(&dir, 0))
}

/// The pids listed in cgroup `rel`'s `cgroup.procs`, hierarchy by hierarchy (a v1 pid appears
/// once per hierarchy that holds it); empty once the cgroup is gone.
pub fn procs(h: &Hierarchy, rel: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for dir in h.dirs(rel) {
        let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
            continue;
        };
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    pids
}

fn count_procs(dir: &Path, depth: usize) -> u64 {
    let own = std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count() as u64)
        .unwrap_or(0);
    if depth >= MAX_WALK_DEPTH {
        return own;
    }
    let children: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    own + children
        .iter()
        .map(|c| count_procs(c, depth + 1))
        .sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = list
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |f: &str| m.get(f).cloned()
    }

    #[test]
    fn v1_sample() {
        let s = sample_v1(&files(&[
            ("cpuacct.usage", "123456789\n"),
            ("cpuacct.stat", "user 7\nsystem 3\n"),
            ("memory.usage_in_bytes", "10485760\n"),
            ("memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory.memsw.usage_in_bytes", "11534336\n"),
            ("memory.failcnt", "4\n"),
            ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            ("cpu.shares", "512\n"),
            ("cpu.cfs_quota_us", "-1\n"),
            ("cpu.cfs_period_us", "100000\n"),
            (
                "memory.stat",
                "cache 1\ntotal_cache 2097152\ntotal_mapped_file 4096\ntotal_inactive_file 1048576\ntotal_rss 4096\ntotal_pgfault 10\ntotal_pgmajfault 2\n",
            ),
        ]))
        .unwrap();
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
        assert_eq!(
            (s.cpu_user_ns, s.cpu_system_ns),
            (Some(70_000_000), Some(30_000_000))
        );
        assert_eq!((s.cache, s.mapped_file), (2097152, 4096));
        assert_eq!(s.memory_limit, None, "v1's huge number means no limit");
        assert_eq!(s.swap_usage, Some(1048576));
        assert_eq!((s.memory_failcnt, s.oom_kills), (Some(4), Some(2)));
        assert_eq!(
            (s.cpu_shares, s.cpu_quota_us, s.cpu_period_us),
            (Some(512), None, Some(100000))
        );
        assert!(
            sample_v1(&files(&[("cpuacct.usage", "1")])).is_none(),
            "gone cgroup"
        );
    }

    #[test]
    fn v2_sample() {
        let s = sample_v2(&files(&[
            ("cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n"),
            ("memory.current", "2097152\n"),
            ("memory.max", "max\n"),
            ("memory.swap.current", "8192\n"),
            ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
            ("cpu.weight", "100\n"),
            ("cpu.max", "50000 100000\n"),
            (
                "memory.stat",
                "anon 8192\nfile 4096\nfile_mapped 4096\ninactive_file 1048576\npgfault 7\npgmajfault 1\n",
            ),
        ]))
        .unwrap();
        assert_eq!(
            (s.cpu_ns, s.working_set, s.rss, s.page_faults),
            (1_500_000, 1048576, 8192, 7)
        );
        assert_eq!(
            (s.cpu_user_ns, s.cpu_system_ns),
            (Some(1_000_000), Some(500_000))
        );
        assert_eq!(s.memory_limit, None);
        assert_eq!(s.swap_usage, Some(8192));
        assert_eq!((s.memory_failcnt, s.oom_kills), (Some(3), Some(1)));
        assert_eq!(
            (s.cpu_quota_us, s.cpu_period_us),
            (Some(50000), Some(100000))
        );
        assert_eq!(s.cpu_shares, Some(weight_to_shares(100)));
        let limited = sample_v2(&files(&[
            ("memory.current", "1\n"),
            ("memory.max", "4096\n"),
        ]));
        assert_eq!(limited.unwrap().memory_limit, Some(4096));
        assert!(sample_v2(&files(&[("cpu.stat", "usage_usec 1\n")])).is_none());
        assert_eq!(
            cpu_only_v2(&files(&[("cpu.stat", "usage_usec 2\n")])).cpu_ns,
            2000
        );
    }

    #[test]
    fn weights_map_back_to_shares_as_kubelet_converts_them() {
        // kubelet: weight = 1 + ((shares − 2) × 9999) / 262142.
        assert_eq!(weight_to_shares(1), 2);
        assert_eq!(weight_to_shares(10_000), 262_144);
        assert_eq!(
            weight_to_shares(39),
            998,
            "1024 shares → weight 39 → back within rounding"
        );
        assert_eq!(weight_to_shares(0), 2, "out of range clamps");
    }

    #[test]
    fn processes_are_counted_in_the_subtree() {
        let d = tempfile::tempdir().unwrap();
        let pod = d.path().join("pod");
        std::fs::create_dir_all(pod.join("c1/nested")).unwrap();
        std::fs::create_dir_all(pod.join("c2")).unwrap();
        std::fs::write(pod.join("cgroup.procs"), "").unwrap();
        std::fs::write(pod.join("c1/cgroup.procs"), "10\n11\n").unwrap();
        std::fs::write(pod.join("c1/nested/cgroup.procs"), "12\n").unwrap();
        std::fs::write(pod.join("c2/cgroup.procs"), "20\n").unwrap();
        let h = Hierarchy::V2(d.path().to_owned());
        assert_eq!(process_count(&h, "pod"), Some(4));
        std::fs::write(pod.join("pids.current"), "9\n").unwrap();
        assert_eq!(process_count(&h, "pod"), Some(9), "pids.current wins");
        assert_eq!(process_count(&h, "missing"), None);
    }
}
