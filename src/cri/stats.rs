//! CRI stats and metrics: `ContainerStats`, `ListContainerStats`, `PodSandboxStats`,
//! `ListPodSandboxStats` and `ListPodSandboxMetrics`, built from `crate::stats` readings.
//! Reading runs on the blocking pool (small file reads, one short thread per pod netns).

use std::collections::HashSet;

use k8s_cri::v1 as cri;
use tonic::Status;

use super::Shared;
use super::container::{config as container_config, record};
use super::pod::config as pod_config;
use super::status::EdgeError;
use crate::cgroups::{Sample, read as cgroup};
use crate::container::StatsSample;
use crate::stats::metrics::{Extra, Labels};
use crate::stats::{metrics, netdev};
use crate::store::{ContainerRecord, PodRecord, PodState};

fn u64v(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn cpu(ts: i64, s: &Sample, rate: Option<u64>) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: ts,
        usage_core_nano_seconds: u64v(s.cpu_ns),
        usage_nano_cores: rate.and_then(u64v),
    }
}

fn memory(ts: i64, s: &Sample) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp: ts,
        working_set_bytes: u64v(s.working_set),
        available_bytes: s
            .memory_limit
            .map(|l| l.saturating_sub(s.working_set))
            .and_then(u64v),
        usage_bytes: u64v(s.memory_usage),
        rss_bytes: u64v(s.rss),
        page_faults: u64v(s.page_faults),
        major_page_faults: u64v(s.major_page_faults),
    }
}

fn swap(ts: i64, s: &Sample) -> Option<cri::SwapUsage> {
    let used = s.swap_usage?;
    Some(cri::SwapUsage {
        timestamp: ts,
        swap_available_bytes: s.swap_limit.map(|l| l.saturating_sub(used)).and_then(u64v),
        swap_usage_bytes: u64v(used),
    })
}

fn to_container_stats(rt: &Shared, rec: &ContainerRecord) -> cri::ContainerStats {
    let c = container_config(rec);
    let ts = now_ns();
    let (sample, (bytes, inodes)): (Option<StatsSample>, _) = rt.containers.stats(rec);
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: rec.id.clone(),
            metadata: c.metadata,
            labels: c.labels,
            annotations: c.annotations,
        }),
        cpu: sample.as_ref().map(|(s, rate)| cpu(ts, s, *rate)),
        memory: sample.as_ref().map(|(s, _)| memory(ts, s)),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: ts,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: rt.images.image_fs_mountpoint().display().to_string(),
            }),
            used_bytes: u64v(bytes),
            inodes_used: u64v(inodes),
        }),
        swap: sample.as_ref().and_then(|(s, _)| swap(ts, s)),
    }
}

/// `read` of each record, on the blocking pool: stats read cgroup, /proc and netns files.
async fn read_each<R: Send + 'static, S: Send + 'static>(
    rt: &Shared,
    recs: Vec<R>,
    read: fn(&Shared, &R) -> S,
) -> Result<Vec<S>, Status> {
    let rt = rt.clone();
    Ok(
        tokio::task::spawn_blocking(move || recs.iter().map(|r| read(&rt, r)).collect())
            .await
            .map_err(EdgeError::task("stats"))?,
    )
}

pub async fn container(
    rt: &Shared,
    req: cri::ContainerStatsRequest,
) -> Result<cri::ContainerStatsResponse, Status> {
    record("container", &req.container_id);
    let rec = rt.containers.find(&req.container_id)?;
    let stats = read_each(rt, vec![rec], to_container_stats).await?.pop();
    Ok(cri::ContainerStatsResponse { stats })
}

pub async fn pod(
    rt: &Shared,
    req: cri::PodSandboxStatsRequest,
) -> Result<cri::PodSandboxStatsResponse, Status> {
    record("pod", &req.pod_sandbox_id);
    let pod = rt.pods.find(&req.pod_sandbox_id)?;
    let stats = read_each(rt, vec![pod], to_pod_stats).await?.pop();
    Ok(cri::PodSandboxStatsResponse { stats })
}

pub async fn list_containers(
    rt: &Shared,
    req: cri::ListContainerStatsRequest,
) -> Result<cri::ListContainerStatsResponse, Status> {
    let f = req.filter.unwrap_or_default();
    let all = rt.containers.list()?;
    let live: HashSet<String> = all.iter().map(|r| r.id.clone()).collect();
    let recs: Vec<ContainerRecord> = all
        .into_iter()
        .filter(|r| {
            (f.id.is_empty() || r.id.starts_with(&f.id))
                && (f.pod_sandbox_id.is_empty() || r.pod_id.starts_with(&f.pod_sandbox_id))
        })
        .filter(|r| super::selected(&f.label_selector, &container_config(r).labels))
        .collect();
    let stats = read_each(rt, recs, to_container_stats).await?;
    // Readings of containers gone since (one that raced its removal included) are dropped.
    rt.containers
        .prune_rates(&live.iter().map(String::as_str).collect());
    Ok(cri::ListContainerStatsResponse { stats })
}

/// The pod's network counters; None for host-network pods and pods whose namespace is gone.
fn network(pod: &PodRecord, ts: i64) -> Option<cri::NetworkUsage> {
    if pod.netns.is_empty() {
        return None;
    }
    let ifs = netdev::read_in(std::path::Path::new(&pod.netns)).ok()?;
    let usage = |i: &netdev::IfStats| cri::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: u64v(i.rx_bytes),
        rx_errors: u64v(i.rx_errors),
        tx_bytes: u64v(i.tx_bytes),
        tx_errors: u64v(i.tx_errors),
    };
    Some(cri::NetworkUsage {
        timestamp: ts,
        default_interface: ifs
            .iter()
            .find(|i| i.name == crate::network::POD_IFNAME)
            .map(usage),
        interfaces: ifs.iter().map(usage).collect(),
    })
}

fn to_pod_stats(rt: &Shared, pod: &PodRecord) -> cri::PodSandboxStats {
    let c = pod_config(pod);
    let ts = now_ns();
    let h = rt.pods.cgroups();
    let sample = cgroup::read(h, &pod.cgroup);
    let rate = sample.map(|s| rt.pods.cpu_rate(&pod.id, ts, s.cpu_ns));
    let containers = rt
        .containers
        .of_pod(&pod.id)
        .unwrap_or_default()
        .iter()
        .map(|r| to_container_stats(rt, r))
        .collect();
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: pod.id.clone(),
            metadata: c.metadata,
            labels: c.labels,
            annotations: c.annotations,
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: sample.map(|s| cpu(ts, &s, rate.flatten())),
            memory: sample.map(|s| memory(ts, &s)),
            network: network(pod, ts),
            process: cgroup::process_count(h, &pod.cgroup).map(|n| cri::ProcessUsage {
                timestamp: ts,
                process_count: u64v(n),
            }),
            containers,
        }),
        windows: None,
    }
}

pub async fn list_pods(
    rt: &Shared,
    req: cri::ListPodSandboxStatsRequest,
) -> Result<cri::ListPodSandboxStatsResponse, Status> {
    let f = req.filter.unwrap_or_default();
    let all = rt.pods.list()?;
    let live: HashSet<String> = all.iter().map(|p| p.id.clone()).collect();
    let pods: Vec<PodRecord> = all
        .into_iter()
        .filter(|p| f.id.is_empty() || p.id.starts_with(&f.id))
        .filter(|p| super::selected(&f.label_selector, &pod_config(p).labels))
        .collect();
    let stats = read_each(rt, pods, to_pod_stats).await?;
    rt.pods
        .prune_rates(&live.iter().map(String::as_str).collect());
    Ok(cri::ListPodSandboxStatsResponse { stats })
}

/// cAdvisor-named metrics of every ready pod: the pod cgroup and network with
/// `container=""`, then each container whose cgroup exists.
fn to_pod_metrics(rt: &Shared, pod: &PodRecord) -> cri::PodSandboxMetrics {
    let c = pod_config(pod);
    let meta = c.metadata.unwrap_or_default();
    let h = rt.pods.cgroups();
    let ts = now_ns();
    let pod_labels = Labels {
        container: String::new(),
        id: format!("/{}", pod.cgroup),
        image: String::new(),
        name: pod.id.clone(),
        namespace: meta.namespace.clone(),
        pod: meta.name.clone(),
    };
    let mut pod_metrics = Vec::new();
    if let Some(s) = cgroup::read(h, &pod.cgroup) {
        let extra = Extra {
            processes: cgroup::process_count(h, &pod.cgroup),
            started_at: pod.created_at,
            ..Default::default()
        };
        pod_metrics.extend(metrics::cgroup_metrics(&pod_labels, &s, &extra, ts));
    }
    if !pod.netns.is_empty()
        && let Ok(ifs) = netdev::read_in(std::path::Path::new(&pod.netns))
    {
        pod_metrics.extend(metrics::network_metrics(&pod_labels, &ifs, ts));
    }
    let device = rt.images.image_fs_mountpoint().display().to_string();
    let container_metrics = rt
        .containers
        .of_pod(&pod.id)
        .unwrap_or_default()
        .iter()
        .filter_map(|rec| {
            let cg = rt.containers.cgroup_of(pod, rec);
            let s = cgroup::read(h, &cg)?;
            let cc = container_config(rec);
            let labels = Labels {
                container: cc.metadata.map(|m| m.name).unwrap_or_default(),
                id: format!("/{cg}"),
                image: cc.image.map(|i| i.image).unwrap_or_default(),
                name: rec.id.clone(),
                namespace: meta.namespace.clone(),
                pod: meta.name.clone(),
            };
            let (bytes, inodes) = crate::image::snapshot::disk_usage(
                &std::path::Path::new(&rec.root_dir).join("upper"),
            );
            let extra = Extra {
                writable: Some((bytes, inodes, device.clone())),
                processes: cgroup::process_count(h, &cg),
                started_at: rec.started_at,
            };
            Some(cri::ContainerMetrics {
                container_id: rec.id.clone(),
                metrics: metrics::cgroup_metrics(&labels, &s, &extra, ts),
            })
        })
        .collect();
    cri::PodSandboxMetrics {
        pod_sandbox_id: pod.id.clone(),
        metrics: pod_metrics,
        container_metrics,
    }
}

pub async fn pod_metrics(rt: &Shared) -> Result<cri::ListPodSandboxMetricsResponse, Status> {
    let pods: Vec<PodRecord> = rt
        .pods
        .list()?
        .into_iter()
        .filter(|p| p.state == PodState::Ready)
        .collect();
    let pod_metrics = read_each(rt, pods, to_pod_metrics).await?;
    Ok(cri::ListPodSandboxMetricsResponse { pod_metrics })
}
