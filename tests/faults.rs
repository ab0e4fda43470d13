//! Fault injection: kelsond is killed with SIGKILL at random points of pod and container
//! lifecycles (mid-create, mid-start, mid-stop, mid-remove, between calls), restarted, and the
//! node is checked after each crash the way an operator would audit it: the long-running
//! container kept running, everything listed answers, and nothing exists that is not listed —
//! no mount, cgroup, shim, netns file, IP allocation, state dir or temp file. Then kubelet's
//! clean-up (stop and remove every other pod) must bring the node back to exactly the baseline.
//!
//! kelsond runs in a named network namespace (a stand-in for the host network that outlives
//! its restarts) with Debian's bridge and host-local CNI plugins.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_cri::v1 as cri;
use kelson_testkit::cri as req;
use kelson_testkit::daemon::Cri;
use kelson_testkit::{Daemon, DaemonOptions, NetNs};

/// Crash points per run (each a random moment of one pod's whole lifecycle).
const CRASHES: usize = 16;

/// xorshift64*: a reproducible sequence of crash points (the seed is printed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `KELSON_FAULT_SEED` replays a failed run's crash points (as closely as timing allows).
fn seed() -> anyhow::Result<u64> {
    if let Some(s) = std::env::var("KELSON_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return Ok(s);
    }
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64
        | 1)
}

fn cgroup_top() -> String {
    format!("kelson-ftest-{}", std::process::id())
}

fn pod_cfg(name: &str, logs: &Path) -> cri::PodSandboxConfig {
    common::pod_config(name, "faults", &format!("/{}/{name}", cgroup_top()), logs)
}

/// One pod's whole life as kubelet drives it. Run against a kelsond that gets killed
/// somewhere in the middle, so every call may fail.
async fn lifecycle(socket: PathBuf, name: String, logs: PathBuf, image: String) {
    let run = async {
        let mut c = kelson_conformance::connect(&socket).await?;
        let cfg = pod_cfg(&name, &logs);
        let pod = common::run_pod(&mut c, &cfg).await?;
        let ctr = common::container_config("work", &image, &["/bin/sleep", "3600"]);
        let id = common::create_start(&mut c, &pod, &cfg, ctr).await?;
        c.runtime.stop_container(req::stop(&id, 1)).await?;
        c.runtime.remove_container(req::remove(&id)).await?;
        c.runtime.stop_pod_sandbox(req::stop_pod(&pod)).await?;
        c.runtime.remove_pod_sandbox(req::remove_pod(&pod)).await?;
        anyhow::Ok(())
    };
    let _ = run.await;
}

/// What exists on the node for this daemon, read from the kernel and the filesystem.
#[derive(Debug, Default, PartialEq)]
struct Node {
    /// Mount points under the daemon's dirs.
    mounts: BTreeSet<String>,
    /// Container ids with a running shim.
    shims: BTreeSet<String>,
    /// Container ids with a cgroup dir (any v1 controller) under a pod's cgroup.
    container_cgroups: BTreeSet<String>,
    /// Pod ids holding an IP in host-local's store.
    ip_owners: BTreeSet<String>,
    /// Dirs of state/pods, state/containers, root/containers.
    pod_dirs: BTreeSet<String>,
    container_dirs: BTreeSet<String>,
    /// Anything in the snapshot and content temp dirs.
    temp: BTreeSet<String>,
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn survey(d: &Daemon, ipam: &Path) -> Node {
    let dir = d.dir.path().display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&dir))
        .collect();
    let mut shims = BTreeSet::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("kelson-shim"))
            && args.iter().any(|a| a.starts_with(&dir))
            && let Some(i) = args.iter().position(|a| a == "--id")
            && let Some(id) = args.get(i + 1)
        {
            // A zombie has no cmdline, so what is read here is alive.
            shims.insert(id.clone());
        }
    }
    let mut container_cgroups = BTreeSet::new();
    for ctl in names(Path::new("/sys/fs/cgroup")) {
        let top = Path::new("/sys/fs/cgroup").join(ctl).join(cgroup_top());
        for pod in names(&top) {
            for c in names(&top.join(&pod)) {
                if top.join(&pod).join(&c).is_dir() && c.len() == 64 {
                    container_cgroups.insert(c);
                }
            }
        }
    }
    let ip_owners = std::fs::read_dir(ipam.join("kelson-test"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .parse::<std::net::IpAddr>()
                .is_ok()
        })
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| t.lines().next().map(|l| l.trim().to_owned()))
        .collect();
    let mut container_dirs = names(&d.state.join("containers"));
    container_dirs.extend(names(&d.root.join("containers")));
    let mut temp = BTreeSet::new();
    for t in [d.root.join("snapshots/.tmp"), d.root.join("content/tmp")] {
        temp.extend(
            names(&t)
                .into_iter()
                .map(|n| format!("{}/{n}", t.display())),
        );
    }
    Node {
        mounts,
        shims,
        container_cgroups,
        ip_owners,
        pod_dirs: names(&d.state.join("pods")),
        container_dirs,
        temp,
    }
}

/// Every resource on the node belongs to a pod or container kelsond lists.
fn orphans(node: &Node, pods: &HashSet<String>, ctrs: &HashSet<String>) -> Vec<String> {
    let mut bad = Vec::new();
    for m in &node.mounts {
        let owned = ["/root/containers/", "/state/containers/"].iter().any(|p| {
            m.split_once(p)
                .is_some_and(|(_, rest)| ctrs.contains(rest.split('/').next().unwrap_or("")))
        }) || m
            .split_once("/state/pods/")
            .is_some_and(|(_, rest)| pods.contains(rest.split('/').next().unwrap_or("")));
        if !owned {
            bad.push(format!("mount {m}"));
        }
    }
    for (what, set, owners) in [
        ("shim", &node.shims, ctrs),
        ("container cgroup", &node.container_cgroups, ctrs),
        ("IP allocation of", &node.ip_owners, pods),
        ("pod dir", &node.pod_dirs, pods),
        ("container dir", &node.container_dirs, ctrs),
    ] {
        for x in set {
            if !owners.contains(x) {
                bad.push(format!("{what} {x}"));
            }
        }
    }
    for t in &node.temp {
        bad.push(format!("temp file {t}"));
    }
    bad
}

async fn listed(c: &mut Cri) -> anyhow::Result<(HashSet<String>, HashSet<String>)> {
    let pods: HashSet<String> = c
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect();
    let ctrs: Vec<cri::Container> = c
        .runtime
        .list_containers(cri::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers;
    for ct in &ctrs {
        anyhow::ensure!(
            pods.contains(&ct.pod_sandbox_id),
            "container {} listed without its pod {}",
            ct.id,
            ct.pod_sandbox_id
        );
        // Every listed container answers a status call.
        c.runtime.container_status(req::status(&ct.id)).await?;
    }
    for p in &pods {
        c.runtime.pod_sandbox_status(req::pod_status(p)).await?;
    }
    Ok((pods, ctrs.into_iter().map(|c| c.id).collect()))
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| !s.contains("State:\tZ"))
}

/// What the random-crash scenario runs on: a registry with the standard image, kelsond with
/// Debian's bridge plugin living in a named netns (the image pulled before it moved there).
/// Fields drop in this order: kelsond first.
struct Rig {
    d: Daemon,
    image: String,
    _ns: NetNs,
    logs: tempfile::TempDir,
    ipam: tempfile::TempDir,
    _registry: kelson_testkit::Registry,
}

async fn bridge_daemon_in_a_netns() -> anyhow::Result<Rig> {
    if !Path::new("/usr/lib/cni/bridge").exists() {
        anyhow::bail!("CNI plugins missing: run packaging/setup.sh");
    }
    let registry = kelson_testkit::Registry::start(Default::default())?;
    kelson_testkit::Pusher::new(&registry)?
        .image(
            "test/standard",
            "v1",
            &kelson_testkit::TestImages::standard("amd64", false)?,
        )
        .await?;
    let image = format!("{}/test/standard:v1", registry.host);
    let ipam = tempfile::tempdir()?;
    let logs = tempfile::tempdir()?;
    let ns = NetNs::create("kelson-faults")?;
    let mut d = Daemon::start_opts(
        Path::new(common::KELSOND),
        "",
        DaemonOptions {
            conflist: Some(common::bridge_conflist(ipam.path(), None)),
            ..Default::default()
        },
    )?;
    d.hosts(&registry.host, &registry.hosts_toml())?;
    // Pull on the machine's loopback (the registry is there), then live in the namespace.
    common::pull(&d, &image).await?;
    d.set_netns_path(Some(ns.path.clone()));
    d.restart()?;
    Ok(Rig {
        _registry: registry,
        _ns: ns,
        d,
        image,
        ipam,
        logs,
    })
}

/// The container that must live through every crash: (its pod, its id, its init's pid).
async fn start_sentinel(c: &mut Cri, n: &Rig) -> anyhow::Result<(String, String, i32)> {
    let cfg = pod_cfg("sentinel", n.logs.path());
    let pod = common::run_pod(c, &cfg).await?;
    let ctr = common::container_config("sentinel", &n.image, &["/bin/sleep", "3600"]);
    let id = common::create_start(c, &pod, &cfg, ctr).await?;
    let init: i32 =
        std::fs::read_to_string(n.d.state.join("containers").join(&id).join("shim/init.pid"))?
            .trim()
            .parse()?;
    Ok((pod, id, init))
}

/// How long one whole lifecycle takes here (crash points are drawn from that span, or from
/// `KELSON_FAULT_SPAN_MS`, which narrows them to the start of the lifecycle), in ms. The
/// lifecycle must leave `baseline`.
async fn calibrate(n: &Rig, baseline: &Node) -> u64 {
    let began = Instant::now();
    lifecycle(
        n.d.socket.clone(),
        "calibrate".into(),
        n.logs.path().to_owned(),
        n.image.clone(),
    )
    .await;
    let span = std::env::var("KELSON_FAULT_SPAN_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(began.elapsed().as_millis().max(50) as u64);
    assert_eq!(
        &survey(&n.d, n.ipam.path()),
        baseline,
        "a full lifecycle without a crash leaves the baseline"
    );
    span
}

/// After a restart (`ctx` names the crash): the sentinel runs on and nothing exists that is
/// not listed. The pods listed.
async fn check_converged(
    c: &mut Cri,
    n: &Rig,
    ctx: &str,
    sentinel: &str,
    sentinel_init: i32,
) -> anyhow::Result<HashSet<String>> {
    let s = c
        .runtime
        .container_status(req::status(sentinel))
        .await
        .with_context(|| format!("{ctx}: the sentinel's status\n{}", n.d.log()))?
        .into_inner()
        .status
        .unwrap();
    assert_eq!(
        s.state,
        cri::ContainerState::ContainerRunning as i32,
        "{ctx}: the sentinel runs on: {s:?}"
    );
    assert!(alive(sentinel_init), "{ctx}: the sentinel's process lives");
    let (pods, ctrs) = listed(c).await?;
    let node = survey(&n.d, n.ipam.path());
    let bad = orphans(&node, &pods, &ctrs);
    assert!(
        bad.is_empty(),
        "{ctx}: not owned by anything listed: {bad:#?}\nlisted pods {pods:?}, containers {ctrs:?}\n{}",
        n.d.log()
    );
    Ok(pods)
}

/// kubelet's clean-up: every pod but `keep` stopped and removed.
async fn clean_up_like_kubelet(
    c: &mut Cri,
    ctx: &str,
    pods: &HashSet<String>,
    keep: &str,
) -> anyhow::Result<()> {
    for p in pods.iter().filter(|p| *p != keep) {
        c.runtime
            .stop_pod_sandbox(req::stop_pod(p))
            .await
            .map_err(|e| anyhow::anyhow!("{ctx}: stop pod {p}: {e}"))?;
        c.runtime
            .remove_pod_sandbox(req::remove_pod(p))
            .await
            .map_err(|e| anyhow::anyhow!("{ctx}: remove pod {p}: {e}"))?;
    }
    Ok(())
}

/// One sequential scenario: crash, restart, check, clean up, `CRASHES` times; each check names
/// the crash (and the seed that reproduces it).
#[tokio::test(flavor = "multi_thread")]
async fn kelsond_killed_at_random_points_converges() -> anyhow::Result<()> {
    let mut n = bridge_daemon_in_a_netns().await?;
    let mut c = n.d.cri().await?;
    let (sentinel_pod, sentinel, sentinel_init) = start_sentinel(&mut c, &n).await?;
    let baseline = survey(&n.d, n.ipam.path());
    assert_eq!(baseline.shims.len(), 1, "{baseline:?}");
    assert_eq!(baseline.ip_owners.len(), 1, "{baseline:?}");
    assert_eq!(baseline.container_cgroups.len(), 1, "{baseline:?}");
    assert!(baseline.mounts.len() >= 2, "{baseline:?}");
    println!("baseline: {baseline:#?}");
    let span = calibrate(&n, &baseline).await;
    let baseline_fds = common::fds(n.d.pid().unwrap());

    let seed = seed()?;
    println!("crash points: seed {seed}, lifecycle span {span} ms");
    let mut rng = Rng(seed);
    let mut at = Vec::new();
    for i in 0..CRASHES {
        let delay = rng.next() % (span + span / 4);
        at.push(delay);
        let task = tokio::spawn(lifecycle(
            n.d.socket.clone(),
            format!("p{i}"),
            n.logs.path().to_owned(),
            n.image.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(delay)).await;
        n.d.crash()?;
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        n.d.restart()?;
        c = n.d.cri().await?;

        let ctx = format!("crash {i} at {delay} ms of {span} (seed {seed})");
        let pods = check_converged(&mut c, &n, &ctx, &sentinel, sentinel_init).await?;
        clean_up_like_kubelet(&mut c, &ctx, &pods, &sentinel_pod).await?;
        let after = survey(&n.d, n.ipam.path());
        assert_eq!(after, baseline, "{ctx}: back to the baseline");
        let fds = common::fds(n.d.pid().unwrap());
        assert!(
            fds <= baseline_fds + 4,
            "{ctx}: kelsond holds {fds} fds, {baseline_fds} before"
        );
    }
    println!("crashed at (ms): {at:?}");

    c.runtime
        .remove_pod_sandbox(req::remove_pod(&sentinel_pod))
        .await?;
    assert!(!alive(sentinel_init));
    let end = survey(&n.d, n.ipam.path());
    assert_eq!(end, Node::default(), "nothing left at the end");
    n.d.stop()?;
    common::remove_cgroup_tree(&cgroup_top());
    Ok(())
}

/// Blobs and snapshots in the image store (names), and whatever its temp dirs hold.
fn image_store(d: &Daemon) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    let mut snaps = names(&d.root.join("snapshots"));
    snaps.remove(".tmp");
    let temp = names(&d.root.join("snapshots/.tmp"))
        .into_iter()
        .chain(names(&d.root.join("content/tmp")))
        .collect();
    (names(&d.root.join("content/sha256")), snaps, temp)
}

/// kelsond killed at random moments of a pull: after each restart the image is either whole
/// (listed, removable) or absent, and the store holds nothing of the interrupted pull — no
/// blob, snapshot or temp file beyond what the other image uses.
#[tokio::test(flavor = "multi_thread")]
async fn kelsond_killed_mid_pull_leaves_a_whole_image_or_none() -> anyhow::Result<()> {
    let registry = kelson_testkit::Registry::start(Default::default())?;
    let p = kelson_testkit::Pusher::new(&registry)?;
    p.image(
        "test/standard",
        "v1",
        &kelson_testkit::TestImages::standard("amd64", false)?,
    )
    .await?;
    let layers = (1..=4)
        .map(|i| {
            kelson_testkit::TestImages::bulk_layer(6 << 20, i, kelson_testkit::Compression::Gzip)
        })
        .collect();
    p.image(
        "faults/big",
        "v1",
        &kelson_testkit::Image::new(layers, "amd64", false, serde_json::json!({})),
    )
    .await?;
    let standard = format!("{}/test/standard:v1", registry.host);
    let big = format!("{}/faults/big:v1", registry.host);
    let mut d = Daemon::start(Path::new(common::KELSOND), "")?;
    d.hosts(&registry.host, &registry.hosts_toml())?;
    common::pull(&d, &standard).await?;
    let baseline = image_store(&d);

    let began = Instant::now();
    common::pull(&d, &big).await?;
    let span = began.elapsed().as_millis().max(20) as u64;
    let mut c = d.cri().await?;
    c.image
        .remove_image(cri::RemoveImageRequest {
            image: common::spec(&big),
        })
        .await?;
    assert_eq!(image_store(&d), baseline, "removal leaves the baseline");

    let seed = seed()?;
    println!("pull span {span} ms, seed {seed}");
    let mut rng = Rng(seed);
    for i in 0..8 {
        let delay = rng.next() % span;
        let socket = d.socket.clone();
        let image = big.clone();
        let task = tokio::spawn(async move {
            if let Ok(c) = kelson_conformance::connect(&socket).await {
                let _ = kelson_conformance::suite::pull(&c, &image).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(delay)).await;
        d.crash()?;
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        d.restart()?;
        c = d.cri().await?;
        let ctx = format!("crash {i} at {delay} ms of {span} (seed {seed})");
        let listed = c
            .image
            .image_status(cri::ImageStatusRequest {
                image: common::spec(&big),
                verbose: false,
            })
            .await?
            .into_inner()
            .image
            .is_some();
        if listed {
            c.image
                .remove_image(cri::RemoveImageRequest {
                    image: common::spec(&big),
                })
                .await?;
        }
        assert_eq!(
            image_store(&d),
            baseline,
            "{ctx}: image listed: {listed}; the store holds nothing else"
        );
        assert!(
            c.image
                .image_status(cri::ImageStatusRequest {
                    image: common::spec(&standard),
                    verbose: false,
                })
                .await?
                .into_inner()
                .image
                .is_some(),
            "{ctx}: the other image stays"
        );
    }
    // And the pull completes after all that.
    common::pull(&d, &big).await?;
    Ok(())
}
