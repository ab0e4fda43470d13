//! What the benchmarks measure: percentiles of durations and a process's memory from /proc.

use std::time::Duration;

/// The `p` quantile (0..=1) of `v`, in milliseconds (sorts `v`).
pub fn percentile_ms(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len().saturating_sub(1)) as f64 * p).round() as usize;
    v.get(i).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

/// Resident set size in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// (USS, PSS) in KiB from smaps_rollup: private clean + dirty, and proportional set size.
pub fn uss_pss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>()
    };
    (
        field("Private_Clean:") + field("Private_Dirty:"),
        field("Pss:"),
    )
}
