//! cAdvisor-named metrics for `ListMetricDescriptors` / `ListPodSandboxMetrics`, which kubelet
//! re-exports on `/metrics/cadvisor` when it runs with `PodAndContainerStatsFromCRI`.
//!
//! One table defines every metric (name, help, type, extra label keys); descriptors and values
//! are both produced from it, so a value can never carry labels its descriptor does not name.
//! Labels follow cAdvisor: `container`, `id` (the cgroup path), `image`, `name` (the runtime's
//! container id), `namespace`, `pod`, then the metric's own (`interface`, `device`, …). The pod's
//! own cgroup and network carry `container=""`, as cAdvisor reports pod-level cgroups. CRI
//! values are unsigned integers, so `*_seconds_total` counters are whole seconds.

use k8s_cri::v1 as cri;

use super::Sample;
use super::netdev::IfStats;

/// The label keys every metric starts with, in order.
pub const BASE_LABELS: [&str; 6] = ["container", "id", "image", "name", "namespace", "pod"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

struct Def {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    extra: &'static [&'static str],
}

const fn def(
    name: &'static str,
    help: &'static str,
    kind: Kind,
    extra: &'static [&'static str],
) -> Def {
    Def {
        name,
        help,
        kind,
        extra,
    }
}

use Kind::{Counter, Gauge};

const DEFS: &[Def] = &[
    def(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        Counter,
        &[],
    ),
    def(
        "container_cpu_user_seconds_total",
        "Cumulative user cpu time consumed in seconds.",
        Counter,
        &[],
    ),
    def(
        "container_cpu_system_seconds_total",
        "Cumulative system cpu time consumed in seconds.",
        Counter,
        &[],
    ),
    def(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        Gauge,
        &[],
    ),
    def(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        Gauge,
        &[],
    ),
    def("container_memory_rss", "Size of RSS in bytes.", Gauge, &[]),
    def(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        Gauge,
        &[],
    ),
    def(
        "container_memory_mapped_file",
        "Size of memory mapped files in bytes.",
        Gauge,
        &[],
    ),
    def(
        "container_memory_swap",
        "Container swap usage in bytes.",
        Gauge,
        &[],
    ),
    def(
        "container_memory_failcnt",
        "Number of memory usage hits limits.",
        Counter,
        &[],
    ),
    def(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures.",
        Counter,
        &["failure_type", "scope"],
    ),
    def(
        "container_oom_events_total",
        "Count of out of memory events observed for the container.",
        Counter,
        &[],
    ),
    def(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        Gauge,
        &[],
    ),
    def(
        "container_spec_memory_swap_limit_bytes",
        "Memory swap limit for the container.",
        Gauge,
        &[],
    ),
    def(
        "container_spec_cpu_shares",
        "CPU share of the container.",
        Gauge,
        &[],
    ),
    def(
        "container_spec_cpu_quota",
        "CPU quota of the container.",
        Gauge,
        &[],
    ),
    def(
        "container_spec_cpu_period",
        "CPU period of the container.",
        Gauge,
        &[],
    ),
    def(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        Gauge,
        &["device"],
    ),
    def(
        "container_fs_inodes_used",
        "Number of inodes used by the container's writable layer on this filesystem.",
        Gauge,
        &["device"],
    ),
    def(
        "container_processes",
        "Number of processes running inside the container.",
        Gauge,
        &[],
    ),
    def(
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        Gauge,
        &[],
    ),
    def(
        "container_last_seen",
        "Last time a container was seen by the exporter.",
        Gauge,
        &[],
    ),
    def(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        Counter,
        &["interface"],
    ),
    def(
        "container_network_receive_packets_total",
        "Cumulative count of packets received.",
        Counter,
        &["interface"],
    ),
    def(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        Counter,
        &["interface"],
    ),
    def(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving.",
        Counter,
        &["interface"],
    ),
    def(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        Counter,
        &["interface"],
    ),
    def(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted.",
        Counter,
        &["interface"],
    ),
    def(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        Counter,
        &["interface"],
    ),
    def(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting.",
        Counter,
        &["interface"],
    ),
];

/// Every metric kelson reports, as `ListMetricDescriptors` answers.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    DEFS.iter()
        .map(|d| cri::MetricDescriptor {
            name: d.name.into(),
            help: d.help.into(),
            label_keys: BASE_LABELS
                .iter()
                .chain(d.extra.iter())
                .map(|s| s.to_string())
                .collect(),
        })
        .collect()
}

/// The base label values of one cgroup (a container, or the pod with `container` empty).
#[derive(Debug, Clone, Default)]
pub struct Labels {
    pub container: String,
    /// cgroup path, "/"-rooted.
    pub id: String,
    pub image: String,
    pub name: String,
    pub namespace: String,
    pub pod: String,
}

impl Labels {
    fn values(&self, extra: &[&str]) -> Vec<String> {
        [
            &self.container,
            &self.id,
            &self.image,
            &self.name,
            &self.namespace,
            &self.pod,
        ]
        .into_iter()
        .cloned()
        .chain(extra.iter().map(|s| s.to_string()))
        .collect()
    }
}

/// Collects metrics for one label set at one timestamp.
struct Out<'a> {
    labels: &'a Labels,
    ts: i64,
    metrics: Vec<cri::Metric>,
}

impl Out<'_> {
    fn push(&mut self, name: &str, extra: &[&str], value: u64) {
        // A name missing from the table is a programming error caught by the tests; at run
        // time it is skipped rather than sent without a descriptor.
        let Some(d) = DEFS.iter().find(|d| d.name == name) else {
            return;
        };
        if d.extra.len() != extra.len() {
            return;
        }
        self.metrics.push(cri::Metric {
            name: name.into(),
            timestamp: self.ts,
            metric_type: match d.kind {
                Counter => cri::MetricType::Counter as i32,
                Gauge => cri::MetricType::Gauge as i32,
            },
            label_values: self.labels.values(extra),
            value: Some(cri::UInt64Value { value }),
        });
    }

    fn opt(&mut self, name: &str, value: Option<u64>) {
        if let Some(v) = value {
            self.push(name, &[], v);
        }
    }
}

const NS_PER_S: u64 = 1_000_000_000;

/// What is known of one cgroup besides its sample.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// Writable layer (bytes, inodes) and the filesystem it lives on.
    pub writable: Option<(u64, u64, String)>,
    pub processes: Option<u64>,
    /// Unix nanoseconds; 0 when not started.
    pub started_at: i64,
}

/// Metrics of one cgroup: CPU, memory, spec limits, writable layer, processes, start time.
pub fn cgroup_metrics(labels: &Labels, s: &Sample, extra: &Extra, ts: i64) -> Vec<cri::Metric> {
    let mut o = Out {
        labels,
        ts,
        metrics: Vec::new(),
    };
    o.push(
        "container_cpu_usage_seconds_total",
        &[],
        s.cpu_ns / NS_PER_S,
    );
    o.opt(
        "container_cpu_user_seconds_total",
        s.cpu_user_ns.map(|n| n / NS_PER_S),
    );
    o.opt(
        "container_cpu_system_seconds_total",
        s.cpu_system_ns.map(|n| n / NS_PER_S),
    );
    o.push("container_memory_usage_bytes", &[], s.memory_usage);
    o.push("container_memory_working_set_bytes", &[], s.working_set);
    o.push("container_memory_rss", &[], s.rss);
    o.push("container_memory_cache", &[], s.cache);
    o.push("container_memory_mapped_file", &[], s.mapped_file);
    o.opt("container_memory_swap", s.swap_usage);
    o.opt("container_memory_failcnt", s.memory_failcnt);
    let minor = s.page_faults.saturating_sub(s.major_page_faults);
    o.push(
        "container_memory_failures_total",
        &["pgfault", "container"],
        minor,
    );
    o.push(
        "container_memory_failures_total",
        &["pgmajfault", "container"],
        s.major_page_faults,
    );
    o.opt("container_oom_events_total", s.oom_kills);
    // cAdvisor reports 0 for "no limit".
    o.push(
        "container_spec_memory_limit_bytes",
        &[],
        s.memory_limit.unwrap_or(0),
    );
    o.opt("container_spec_memory_swap_limit_bytes", s.swap_limit);
    o.opt("container_spec_cpu_shares", s.cpu_shares);
    o.opt("container_spec_cpu_quota", s.cpu_quota_us);
    o.opt("container_spec_cpu_period", s.cpu_period_us);
    if let Some((bytes, inodes, device)) = &extra.writable {
        o.push("container_fs_usage_bytes", &[device], *bytes);
        o.push("container_fs_inodes_used", &[device], *inodes);
    }
    o.opt("container_processes", extra.processes);
    if extra.started_at > 0 {
        o.push(
            "container_start_time_seconds",
            &[],
            extra.started_at as u64 / NS_PER_S,
        );
    }
    o.push("container_last_seen", &[], ts.max(0) as u64 / NS_PER_S);
    o.metrics
}

/// Network counters of a pod's interfaces.
pub fn network_metrics(labels: &Labels, ifs: &[IfStats], ts: i64) -> Vec<cri::Metric> {
    let mut o = Out {
        labels,
        ts,
        metrics: Vec::new(),
    };
    for i in ifs {
        let n = [i.name.as_str()];
        o.push("container_network_receive_bytes_total", &n, i.rx_bytes);
        o.push("container_network_receive_packets_total", &n, i.rx_packets);
        o.push("container_network_receive_errors_total", &n, i.rx_errors);
        o.push(
            "container_network_receive_packets_dropped_total",
            &n,
            i.rx_dropped,
        );
        o.push("container_network_transmit_bytes_total", &n, i.tx_bytes);
        o.push("container_network_transmit_packets_total", &n, i.tx_packets);
        o.push("container_network_transmit_errors_total", &n, i.tx_errors);
        o.push(
            "container_network_transmit_packets_dropped_total",
            &n,
            i.tx_dropped,
        );
    }
    o.metrics
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn full_sample() -> Sample {
        Sample {
            cpu_ns: 2_500_000_000,
            cpu_user_ns: Some(2_000_000_000),
            cpu_system_ns: Some(500_000_000),
            memory_usage: 100,
            working_set: 80,
            rss: 50,
            cache: 30,
            mapped_file: 10,
            page_faults: 12,
            major_page_faults: 2,
            memory_limit: Some(1 << 20),
            swap_usage: Some(0),
            swap_limit: Some(1 << 21),
            memory_failcnt: Some(1),
            oom_kills: Some(0),
            cpu_shares: Some(1024),
            cpu_quota_us: Some(50_000),
            cpu_period_us: Some(100_000),
        }
    }

    #[test]
    fn every_value_matches_its_descriptor() {
        let descs: HashMap<String, cri::MetricDescriptor> = descriptors()
            .into_iter()
            .map(|d| (d.name.clone(), d))
            .collect();
        assert_eq!(descs.len(), DEFS.len(), "names are unique");
        let labels = Labels {
            container: "web".into(),
            id: "/kubepods/pod1/c1".into(),
            image: "busybox:1".into(),
            name: "c1".into(),
            namespace: "default".into(),
            pod: "web-0".into(),
        };
        let extra = Extra {
            writable: Some((4096, 3, "/var/lib/kelson".into())),
            processes: Some(2),
            started_at: 1_700_000_000_000_000_000,
        };
        let mut all = cgroup_metrics(&labels, &full_sample(), &extra, 1_700_000_100_000_000_000);
        all.extend(network_metrics(
            &labels,
            &[IfStats {
                name: "eth0".into(),
                rx_bytes: 5,
                ..Default::default()
            }],
            1,
        ));
        let mut names = std::collections::HashSet::new();
        for m in &all {
            let d = descs.get(&m.name).expect("described");
            assert_eq!(m.label_values.len(), d.label_keys.len(), "{}", m.name);
            assert_eq!(
                m.label_values[..6],
                [
                    "web",
                    "/kubepods/pod1/c1",
                    "busybox:1",
                    "c1",
                    "default",
                    "web-0"
                ]
            );
            names.insert(m.name.clone());
        }
        assert_eq!(
            names.len(),
            DEFS.len(),
            "a full sample reports every metric"
        );
        let get = |n: &str| {
            all.iter()
                .find(|m| m.name == n)
                .unwrap()
                .value
                .unwrap()
                .value
        };
        assert_eq!(get("container_cpu_usage_seconds_total"), 2);
        assert_eq!(get("container_memory_working_set_bytes"), 80);
        assert_eq!(get("container_start_time_seconds"), 1_700_000_000);
        assert_eq!(get("container_network_receive_bytes_total"), 5);
        let failures: Vec<_> = all
            .iter()
            .filter(|m| m.name == "container_memory_failures_total")
            .map(|m| (m.label_values[6].clone(), m.value.unwrap().value))
            .collect();
        assert_eq!(
            failures,
            vec![("pgfault".into(), 10), ("pgmajfault".into(), 2)]
        );
        let counter = all
            .iter()
            .find(|m| m.name == "container_cpu_usage_seconds_total")
            .unwrap();
        assert_eq!(counter.metric_type, cri::MetricType::Counter as i32);
    }

    #[test]
    fn unknown_optional_figures_are_left_out() {
        let labels = Labels::default();
        let s = Sample::default();
        let m = cgroup_metrics(&labels, &s, &Extra::default(), 0);
        assert!(m.iter().all(|m| m.name != "container_memory_swap"));
        assert!(m.iter().all(|m| m.name != "container_start_time_seconds"));
        assert!(
            m.iter()
                .any(|m| m.name == "container_spec_memory_limit_bytes")
        );
    }
}
