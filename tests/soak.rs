//! Soak tests: what months on a node look like, compressed. 1000 container create/start/
//! remove cycles must leave kelsond's memory, fds and the node's mounts, cgroups and shims
//! flat; 100 running pods are polled for stats for minutes, every answer complete, memory and
//! fds flat, the last polls no slower than the first (a ratio measured in one run).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use kelson_testkit::cri as req;
use kelson_testkit::daemon::Cri;
use kelson_testkit::measure::rss_kib;

/// Cgroup dirs (memory controller) under `top`, recursively.
fn cgroups(top: &str) -> usize {
    fn walk(p: &Path) -> usize {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| 1 + walk(&e.path()))
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&Path::new("/sys/fs/cgroup/memory").join(top))
}

#[derive(Debug, PartialEq)]
struct Counts {
    fds: usize,
    mounts: usize,
    cgroups: usize,
    container_dirs: usize,
    containers: usize,
}

#[tokio::test(flavor = "multi_thread")]
async fn thousand_create_remove_cycles_stay_flat() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let d = &e.daemon;
    let pid = d.pid().unwrap();
    let mut c = d.cri().await?;
    let logs = tempfile::tempdir()?;
    let top = format!("kelson-soak1-{}", std::process::id());
    let cfg = common::pod_config("cycles", "soak", &format!("/{top}/cycles"), logs.path());
    let pod = common::run_pod(&mut c, &cfg).await?;
    let counts = |c: usize| Counts {
        fds: common::fds(pid),
        mounts: common::mounts_of(d),
        cgroups: cgroups(&top),
        container_dirs: common::count(&d.state.join("containers")),
        containers: c,
    };

    const CYCLES: usize = 1000;
    const WARM: usize = 100;
    let mut warm = None;
    let began = Instant::now();
    for i in 0..CYCLES {
        let id = common::create_start(
            &mut c,
            &pod,
            &cfg,
            common::container_config(&format!("c{}", i % 7), &image, &["/bin/true"]),
        )
        .await?;
        // Mostly exited by itself, sometimes still running: both removal paths.
        c.runtime.remove_container(req::remove(&id)).await?;
        if i + 1 == WARM {
            let listed = c
                .runtime
                .list_containers(cri::ListContainersRequest { filter: None })
                .await?
                .into_inner()
                .containers
                .len();
            warm = Some((counts(listed), rss_kib(pid)));
        }
    }
    let listed = c
        .runtime
        .list_containers(cri::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers
        .len();
    let (warm_counts, warm_rss) = warm.unwrap();
    let end = counts(listed);
    let rss = rss_kib(pid);
    println!(
        "{CYCLES} cycles in {:?}; after {WARM}: {warm_counts:?}, {warm_rss} KiB; after {CYCLES}: {end:?}, {rss} KiB",
        began.elapsed()
    );
    assert_eq!(
        end, warm_counts,
        "fds, mounts, cgroups, container dirs flat"
    );
    assert_eq!(end.containers, 0);
    // Memory: a little allocator noise, no per-cycle growth (900 cycles × even 4 KiB would
    // be 3.5 MiB).
    assert!(
        rss <= warm_rss + warm_rss / 10 + 1024,
        "kelsond RSS {warm_rss} KiB after {WARM} cycles, {rss} KiB after {CYCLES}"
    );
    c.runtime.remove_pod_sandbox(req::remove_pod(&pod)).await?;
    assert_eq!(common::mounts_of(d), 0);
    common::remove_cgroup_tree(&top);
    Ok(())
}

/// One round of the polls kubelet makes every 10 s: container and pod stats for everything.
async fn poll(c: &mut Cri) -> anyhow::Result<(usize, usize, Duration)> {
    let t = Instant::now();
    let ctrs = c
        .runtime
        .list_container_stats(cri::ListContainerStatsRequest { filter: None })
        .await?
        .into_inner()
        .stats;
    let pods = c
        .runtime
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
        .await?
        .into_inner()
        .stats;
    let took = t.elapsed();
    for s in &ctrs {
        anyhow::ensure!(
            s.cpu.is_some() && s.memory.is_some() && s.writable_layer.is_some(),
            "incomplete container stats {s:?}"
        );
    }
    for s in &pods {
        let l = s.linux.as_ref().expect("linux pod stats");
        anyhow::ensure!(
            l.cpu.is_some() && l.memory.is_some() && l.containers.len() == 1,
            "incomplete pod stats {s:?}"
        );
    }
    Ok((ctrs.len(), pods.len(), took))
}

/// The number in the environment variable `var` (for longer or denser runs by hand), else
/// `default`.
fn knob(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `n` pods `p0..` in the namespace `soak`, their cgroups below `top`, each running a container
/// that prints a line every second (a little work, so the stats move): the pods' ids.
async fn ticking_pods(
    c: &mut Cri,
    image: &str,
    top: &str,
    logs: &std::path::Path,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let mut pods = Vec::new();
    for i in 0..n {
        let name = format!("p{i}");
        let cfg = common::pod_config(&name, "soak", &format!("/{top}/{name}"), logs);
        let pod = common::run_pod(c, &cfg).await?;
        let app = common::container_config(
            "app",
            image,
            &["/bin/sh", "-c", "while :; do echo tick; sleep 1; done"],
        );
        common::create_start(c, &pod, &cfg, app).await?;
        pods.push(pod);
    }
    Ok(pods)
}

/// Poll every `interval` for `hold`, each poll complete for `pods` pods: the median poll time
/// of the first and of the last quarter, and the number of polls.
async fn poll_for(
    c: &mut Cri,
    pid: u32,
    pods: usize,
    hold: Duration,
    interval: Duration,
) -> anyhow::Result<(Duration, Duration, usize)> {
    let mut early = Vec::new();
    let mut late = Vec::new();
    let began = Instant::now();
    let mut rounds = 0;
    while began.elapsed() < hold {
        let (n_c, n_p, took) = poll(c).await?;
        assert_eq!((n_c, n_p), (pods, pods), "every poll complete");
        if began.elapsed() < hold / 4 {
            early.push(took);
        } else if began.elapsed() > hold * 3 / 4 {
            late.push(took);
        }
        rounds += 1;
        if rounds % 50 == 0 {
            println!(
                "poll {rounds}: {took:?}, RSS {} KiB, fds {}",
                rss_kib(pid),
                common::fds(pid)
            );
        }
        tokio::time::sleep(interval).await;
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    Ok((median(&mut early), median(&mut late), rounds))
}

/// The containers in state Running.
async fn running(c: &mut Cri) -> anyhow::Result<usize> {
    let filter = cri::ContainerFilter {
        state: Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerRunning as i32,
        }),
        ..Default::default()
    };
    Ok(c.runtime
        .list_containers(cri::ListContainersRequest {
            filter: Some(filter),
        })
        .await?
        .into_inner()
        .containers
        .len())
}

/// One scenario (what is measured is how kelsond holds up over time), each check labelled.
#[tokio::test(flavor = "multi_thread")]
async fn hundred_pods_polled_for_stats_for_minutes() -> anyhow::Result<()> {
    const PODS: usize = 100;
    let hold = Duration::from_secs(knob("KELSON_SOAK_SECS", 120));
    let interval = Duration::from_millis(knob("KELSON_SOAK_INTERVAL_MS", 1000));
    let (e, image) = common::env_standard().await?;
    let d = &e.daemon;
    let pid = d.pid().unwrap();
    let mut c = d.cri().await?;
    let logs = tempfile::tempdir()?;
    let top = format!("kelson-soak2-{}", std::process::id());
    let pods = ticking_pods(&mut c, &image, &top, logs.path(), PODS).await?;

    let first = poll(&mut c).await?;
    assert_eq!((first.0, first.1), (PODS, PODS), "the first poll complete");
    let (fds0, rss0) = (common::fds(pid), rss_kib(pid));
    let (m_early, m_late, rounds) = poll_for(&mut c, pid, PODS, hold, interval).await?;
    let (fds1, rss1) = (common::fds(pid), rss_kib(pid));
    println!(
        "{PODS} pods, {rounds} polls over {hold:?}: poll median {m_early:?} early, {m_late:?} late; fds {fds0} -> {fds1}; RSS {rss0} -> {rss1} KiB"
    );
    assert!(fds1 <= fds0 + 2, "fds {fds0} -> {fds1}");
    assert!(rss1 <= rss0 + rss0 / 10 + 1024, "RSS {rss0} -> {rss1} KiB");
    assert!(
        m_late.as_secs_f64() <= m_early.as_secs_f64() * 3.0,
        "polls slowed down: {m_early:?} -> {m_late:?}"
    );
    assert_eq!(
        running(&mut c).await?,
        PODS,
        "every container still running"
    );
    for p in pods {
        c.runtime.remove_pod_sandbox(req::remove_pod(&p)).await?;
    }
    assert_eq!(common::mounts_of(d), 0, "no mount left");
    common::remove_cgroup_tree(&top);
    Ok(())
}
