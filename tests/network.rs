//! Pod networking through real CNI plugins (Debian's containernetworking-plugins: bridge,
//! host-local, portmap). kelsond runs in a network namespace of its own (`unshare --net`), so
//! the bridge, veths and iptables rules exist only there and no packet leaves the machine.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_cri::v1 as cri;
use kelson_testkit::cri as req;
use kelson_testkit::daemon::Cri;
use kelson_testkit::{Daemon, DaemonOptions};
use tonic::Code;

/// Run a command in kelsond's network namespace (the tests' "host").
fn in_netns(d: &Daemon, args: &[&str]) -> String {
    let pid = d.pid().expect("kelsond running");
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(args)
        .output()
        .expect("nsenter");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn pod_cfg(name: &str, logs: &Path, host_port: Option<i32>, top: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "net".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.join(name).display().to_string(),
        port_mappings: host_port
            .map(|h| {
                vec![cri::PortMapping {
                    protocol: cri::Protocol::Tcp as i32,
                    container_port: 8080,
                    host_port: h,
                    host_ip: String::new(),
                }]
            })
            .unwrap_or_default(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("/{top}/{name}"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn run_pod(
    c: &mut Cri,
    cfg: cri::PodSandboxConfig,
) -> Result<(String, String), tonic::Status> {
    let id = common::run_pod_with(c, &cfg, "").await?;
    let ip = c
        .runtime
        .pod_sandbox_status(req::pod_status(&id))
        .await?
        .into_inner()
        .status
        .unwrap()
        .network
        .unwrap()
        .ip;
    Ok((id, ip))
}

async fn container(
    c: &mut Cri,
    pod: &str,
    pod_cfg: &cri::PodSandboxConfig,
    image: &str,
    name: &str,
    cmd: &[&str],
) -> anyhow::Result<String> {
    let cfg = common::container_config(name, image, cmd);
    common::create_start(c, pod, pod_cfg, cfg).await
}

async fn remove_pod(c: &mut Cri, id: &str) -> anyhow::Result<()> {
    c.runtime.stop_pod_sandbox(req::stop_pod(id)).await?;
    c.runtime.remove_pod_sandbox(req::remove_pod(id)).await?;
    Ok(())
}

/// How long the `kelson-test-fork` plugin's child sleeps (a value no other test uses, so the
/// test can tell whether it is still alive).
const FORKED_SLEEP: u32 = 3607;

/// kelsond in a network namespace of its own (bridge + host-local + portmap, IPAM state in
/// `ipam`, test plugins that fail, hang, fork or record their arguments on ADD next to
/// Debian's), its pods in the cgroup tree `kelson-nettest-<test>-<pid>`.
struct Net {
    d: Daemon,
    c: Cri,
    ipam: tempfile::TempDir,
    plugins: tempfile::TempDir,
    logs: tempfile::TempDir,
    top: String,
}

impl Net {
    /// With `pull`, the image is pulled first on the machine's network (the registry is on its
    /// loopback), then kelsond moves into its own for everything that touches networking.
    async fn start(
        test: &str,
        pull: Option<(&kelson_testkit::Registry, &str)>,
    ) -> anyhow::Result<Net> {
        if !Path::new("/usr/lib/cni/bridge").exists() {
            anyhow::bail!("CNI plugins missing: run packaging/setup.sh");
        }
        let ipam = tempfile::tempdir()?;
        let plugins = tempfile::tempdir()?;
        std::fs::write(
            plugins.path().join("kelson-test-fail"),
            "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then echo '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"refused by test plugin\"}'; exit 1; fi\nexit 0\n",
        )?;
        std::fs::write(
            plugins.path().join("kelson-test-hang"),
            "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then sleep 60; fi\nexit 0\n",
        )?;
        // Exits at once on ADD, leaving a child that holds its stdout and stderr open.
        std::fs::write(
            plugins.path().join("kelson-test-fork"),
            format!(
                "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then sleep {FORKED_SLEEP} & fi\nexit 0\n"
            ),
        )?;
        // Records the CNI_ARGS it was given.
        std::fs::write(
            plugins.path().join("kelson-test-args"),
            format!(
                "#!/bin/sh\ncat >/dev/null\necho \"$CNI_ARGS\" >> {}/args\nexit 0\n",
                plugins.path().display()
            ),
        )?;
        for f in [
            "kelson-test-fail",
            "kelson-test-hang",
            "kelson-test-fork",
            "kelson-test-args",
        ] {
            Command::new("chmod")
                .arg("755")
                .arg(plugins.path().join(f))
                .status()?;
        }
        let opts = DaemonOptions {
            netns: pull.is_none(),
            conflist: Some(common::bridge_conflist(ipam.path(), None)),
            extra_bin_dirs: vec![plugins.path().to_owned()],
            plugin_timeout: Some("2s".into()),
            ..Default::default()
        };
        let mut d = Daemon::start_opts(Path::new(common::KELSOND), "", opts)?;
        if let Some((registry, image)) = pull {
            d.hosts(&registry.host, &registry.hosts_toml())?;
            common::pull(&d, image).await?;
            d.set_netns(true);
            d.restart()?;
        }
        let c = d.cri().await?;
        Ok(Net {
            d,
            c,
            ipam,
            plugins,
            logs: tempfile::tempdir()?,
            top: format!("kelson-nettest-{test}-{}", std::process::id()),
        })
    }

    fn pod(&self, name: &str, host_port: Option<i32>) -> cri::PodSandboxConfig {
        pod_cfg(name, self.logs.path(), host_port, &self.top)
    }

    /// No IP allocated, no veth on the "host".
    fn nothing_allocated(&self) {
        assert_eq!(common::allocations(self.ipam.path()), 0, "IPs left");
        let links = in_netns(&self.d, &["ip", "-o", "link"]);
        assert!(!links.contains("veth"), "veths left: {links}");
    }

    /// Put a failing or hanging plugin after bridge in the conflist.
    fn chain(&self, plugin: &str) -> anyhow::Result<()> {
        Ok(std::fs::write(
            self.d.net_d.join("10-test.conflist"),
            common::bridge_conflist(self.ipam.path(), Some(plugin)),
        )?)
    }

    fn finish(self) {
        common::remove_cgroup_tree(&self.top);
    }
}

/// Two pods reach each other over the bridge; a hostPort maps from the "host" to a pod; the pod
/// that talked has stats and metrics (checked by `pod_stats_and_metrics`); removing the pods
/// (twice, DEL again is fine) releases the IPs, veths and hostPort rules.
#[tokio::test(flavor = "multi_thread")]
async fn pods_talk_over_the_bridge_and_through_a_host_port() -> anyhow::Result<()> {
    let registry = kelson_testkit::Registry::start(Default::default())?;
    kelson_testkit::Pusher::new(&registry)?
        .image(
            "test/standard",
            "v1",
            &kelson_testkit::TestImages::standard("amd64", false)?,
        )
        .await?;
    let image = format!("{}/test/standard:v1", registry.host);
    let n = Net::start("talk", Some((&registry, &image))).await?;
    let c = &mut n.c.clone();

    let cfg_a = n.pod("a", Some(18080));
    let (a, ip_a) = run_pod(c, cfg_a.clone()).await?;
    let cfg_b = n.pod("b", None);
    let (b, ip_b) = run_pod(c, cfg_b.clone()).await?;
    assert!(
        ip_a.starts_with("10.77.0.") && ip_b.starts_with("10.77.0.") && ip_a != ip_b,
        "{ip_a} {ip_b}"
    );
    let server = [
        "/bin/nc",
        "-ll",
        "-p",
        "8080",
        "-e",
        "/bin/echo",
        "hello from a",
    ];
    container(c, &a, &cfg_a, &image, "server", &server).await?;
    let client = container(c, &b, &cfg_b, &image, "client", &["/bin/sleep", "3600"]).await?;
    let mut got = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !got.contains("hello from a") {
        let r = c
            .runtime
            .exec_sync(req::exec(
                &client,
                &["/bin/nc", "-w", "2", &ip_a, "8080"],
                5,
            ))
            .await?
            .into_inner();
        got = String::from_utf8_lossy(&r.stdout).into_owned();
    }
    assert!(
        got.contains("hello from a"),
        "pod b could not reach pod a: {got:?}"
    );
    let via_host = in_netns(&n.d, &["busybox", "nc", "-w", "2", "10.77.0.1", "18080"]);
    assert!(
        via_host.contains("hello from a"),
        "hostPort 18080 did not reach pod a: {via_host}"
    );
    assert_eq!(common::allocations(n.ipam.path()), 2);
    pod_stats_and_metrics(c, &b, &client).await?;
    remove_pod(c, &a).await?;
    remove_pod(c, &b).await?;
    remove_pod(c, &b).await?; // DEL again is fine
    n.nothing_allocated();
    let nat = in_netns(&n.d, &["iptables-save", "-t", "nat"]);
    assert!(!nat.contains("18080"), "hostPort rules left: {nat}");
    n.finish();
    Ok(())
}

/// 20 create/remove cycles of pods with a hostPort leak no IP, veth, hostPort rule or pod dir.
#[tokio::test(flavor = "multi_thread")]
async fn pod_network_cycles_leak_nothing() -> anyhow::Result<()> {
    let mut n = Net::start("cycles", None).await?;
    for i in 0..20 {
        let cfg = n.pod(&format!("cycle{i}"), Some(19000 + i));
        let (p, _) = run_pod(&mut n.c, cfg).await?;
        remove_pod(&mut n.c, &p).await?;
    }
    n.nothing_allocated();
    assert!(
        !in_netns(&n.d, &["iptables-save", "-t", "nat"]).contains("--dport 19"),
        "hostPort rules left after cycles"
    );
    assert_eq!(common::count(&n.d.state.join("pods")), 0);
    n.finish();
    Ok(())
}

/// A failing plugin after bridge: the error names it, and bridge's work is undone. A hanging
/// plugin is killed at the timeout, with the same cleanup, and no pod is left.
#[tokio::test(flavor = "multi_thread")]
async fn failing_and_hanging_plugins_are_named_and_undone() -> anyhow::Result<()> {
    let mut n = Net::start("plugins", None).await?;
    n.chain("kelson-test-fail")?;
    let cfg = n.pod("fails", None);
    let err = run_pod(&mut n.c, cfg).await.unwrap_err();
    assert!(
        err.message().contains("kelson-test-fail")
            && err.message().contains("refused by test plugin"),
        "{err:?}"
    );
    n.nothing_allocated();

    n.chain("kelson-test-hang")?;
    let t = Instant::now();
    let cfg = n.pod("hangs", None);
    let err = run_pod(&mut n.c, cfg).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(20));
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("kelson-test-hang") && err.message().contains("did not finish"),
        "{err:?}"
    );
    assert_eq!(common::allocations(n.ipam.path()), 0);
    assert!(
        n.c.runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items
            .is_empty()
    );
    assert_eq!(common::count(&n.d.state.join("pods")), 0);
    n.finish();
    Ok(())
}

/// A plugin that exits at once but leaves a child holding its stdout and stderr open: the plugin
/// timeout covers reading its output too — RunPodSandbox fails at the timeout naming why, the
/// child (in the plugin's process group) is killed, bridge's work is undone.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_whose_child_holds_its_output_ends_at_the_timeout() -> anyhow::Result<()> {
    let mut n = Net::start("fork", None).await?;
    n.chain("kelson-test-fork")?;
    let cfg = n.pod("forks", None);
    let t = Instant::now();
    let err = run_pod(&mut n.c, cfg).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("kelson-test-fork")
            && err.message().contains("held its output open"),
        "{err:?}"
    );
    let left = Command::new("pgrep")
        .args(["-f", &format!("^sleep {FORKED_SLEEP}$")])
        .output()?;
    assert!(
        left.stdout.is_empty(),
        "the plugin's child survived: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    n.nothing_allocated();
    assert_eq!(common::count(&n.d.state.join("pods")), 0);
    n.finish();
    Ok(())
}

/// Pod name, namespace and uid reach plugins inside `CNI_ARGS` (`K=v;K=v`): a value with `;` or
/// `=` that would add or override an argument is refused at RunPodSandbox, before any plugin
/// runs; a plain pod's arguments arrive as kubelet's are.
#[tokio::test(flavor = "multi_thread")]
async fn pod_names_cannot_smuggle_cni_arguments() -> anyhow::Result<()> {
    let mut n = Net::start("args", None).await?;
    n.chain("kelson-test-args")?;
    let record = n.plugins.path().join("args");
    let mut bad = n.pod("web", None);
    bad.metadata.as_mut().unwrap().name = "web;K8S_POD_NAMESPACE=kube-system".into();
    let mut bad_ns = n.pod("web", None);
    bad_ns.metadata.as_mut().unwrap().namespace = "default;IgnoreUnknown=0".into();
    let mut bad_uid = n.pod("web", None);
    bad_uid.metadata.as_mut().unwrap().uid = "u=1".into();
    for (cfg, field) in [
        (bad, "metadata.name"),
        (bad_ns, "metadata.namespace"),
        (bad_uid, "metadata.uid"),
    ] {
        let err = run_pod(&mut n.c, cfg).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(field), "{err:?}");
    }
    assert!(!record.exists(), "a plugin ran for a refused pod");
    n.nothing_allocated();

    let cfg = n.pod("plain", None);
    let (id, _) = run_pod(&mut n.c, cfg).await?;
    let args = std::fs::read_to_string(&record)?;
    assert_eq!(args.lines().count(), 1, "{args}");
    let line = args.trim();
    assert!(line.contains("K8S_POD_NAME=plain;"), "{line}");
    assert_eq!(line.matches("K8S_POD_NAMESPACE=").count(), 1, "{line}");
    remove_pod(&mut n.c, &id).await?;
    n.nothing_allocated();
    n.finish();
    Ok(())
}

/// eth0's received bytes as the pod itself sees them (/proc/net/dev read inside the pod).
async fn rx_inside(c: &mut Cri, container: &str) -> anyhow::Result<u64> {
    let r = c
        .runtime
        .exec_sync(req::exec(container, &["/bin/cat", "/proc/net/dev"], 5))
        .await?
        .into_inner();
    let text = String::from_utf8_lossy(&r.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("eth0:"))
        .ok_or_else(|| anyhow::anyhow!("no eth0 in {text}"))?;
    Ok(line
        .split_once(':')
        .unwrap()
        .1
        .split_whitespace()
        .next()
        .unwrap()
        .parse()?)
}

/// PodSandboxStats / ListPodSandboxStats / ListPodSandboxMetrics of a pod that has talked over
/// its network: counters read from the pod's namespace lie between two readings taken inside the
/// pod, processes and containers are reported, and the cAdvisor metrics carry the same figures.
async fn pod_stats_and_metrics(c: &mut Cri, pod: &str, client: &str) -> anyhow::Result<()> {
    let rx = pod_stats_lie_between_readings_inside(c, pod, client)
        .await
        .context("PodSandboxStats")?;
    listed_pod_stats_filter_and_have_a_cpu_rate(c, pod)
        .await
        .context("ListPodSandboxStats")?;
    pod_metrics_carry_the_same_figures(c, pod, client, rx)
        .await
        .context("ListPodSandboxMetrics")
}

/// PodSandboxStats: eth0's received bytes lie between two readings inside the pod, lo is left
/// out, processes, memory, CPU and the one container are reported: eth0's received bytes.
async fn pod_stats_lie_between_readings_inside(
    c: &mut Cri,
    pod: &str,
    client: &str,
) -> anyhow::Result<u64> {
    let before = rx_inside(c, client).await?;
    let stats = c
        .runtime
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.into(),
        })
        .await?
        .into_inner()
        .stats
        .expect("stats");
    let after = rx_inside(c, client).await?;
    assert_eq!(stats.attributes.as_ref().unwrap().id, pod);
    let linux = stats.linux.expect("linux stats");
    let net = linux.network.expect("network stats");
    let eth0 = net.default_interface.expect("default interface");
    assert_eq!(eth0.name, "eth0");
    let rx = eth0.rx_bytes.unwrap().value;
    assert!(
        before > 0 && before <= rx && rx <= after,
        "{before} <= {rx} <= {after}"
    );
    assert!(eth0.tx_bytes.unwrap().value > 0);
    assert!(net.interfaces.iter().all(|i| i.name != "lo"));
    let procs = linux
        .process
        .expect("process usage")
        .process_count
        .unwrap()
        .value;
    assert!(procs >= 1, "the client's sleep at least: {procs}");
    assert!(
        linux
            .memory
            .expect("memory")
            .working_set_bytes
            .unwrap()
            .value
            > 0
    );
    assert!(
        linux
            .cpu
            .expect("cpu")
            .usage_core_nano_seconds
            .unwrap()
            .value
            > 0
    );
    assert_eq!(linux.containers.len(), 1);
    assert_eq!(linux.containers[0].attributes.as_ref().unwrap().id, client);
    Ok(rx)
}

/// ListPodSandboxStats: both pods unfiltered, one by id, with a CPU rate at the second reading.
async fn listed_pod_stats_filter_and_have_a_cpu_rate(c: &mut Cri, pod: &str) -> anyhow::Result<()> {
    let all = c
        .runtime
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
        .await?
        .into_inner()
        .stats;
    assert!(all.len() >= 2, "both pods listed");
    let only = c
        .runtime
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id: pod.into(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .stats;
    assert_eq!(only.len(), 1);
    // A second reading has an instantaneous CPU rate.
    let cpu = only[0].linux.as_ref().unwrap().cpu.as_ref().unwrap();
    assert!(cpu.usage_nano_cores.is_some(), "rate after two samples");
    Ok(())
}

/// ListPodSandboxMetrics: the pod's network and its container's working set, labelled as the
/// descriptors say, with at least the figures the stats had.
async fn pod_metrics_carry_the_same_figures(
    c: &mut Cri,
    pod: &str,
    client: &str,
    rx: u64,
) -> anyhow::Result<()> {
    let descriptors = c
        .runtime
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await?
        .into_inner()
        .descriptors;
    let metrics = c
        .runtime
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await?
        .into_inner()
        .pod_metrics;
    let mine = metrics
        .iter()
        .find(|m| m.pod_sandbox_id == pod)
        .expect("the pod's metrics");
    let keys = |name: &str| {
        descriptors
            .iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("{name} described"))
            .label_keys
            .clone()
    };
    let rx_metric = mine
        .metrics
        .iter()
        .find(|m| m.name == "container_network_receive_bytes_total")
        .expect("pod network metric");
    let k = keys(&rx_metric.name);
    assert_eq!(k.len(), rx_metric.label_values.len());
    let label = |keys: &[String], m: &cri::Metric, key: &str| {
        m.label_values[keys.iter().position(|k| k == key).unwrap()].clone()
    };
    assert_eq!(label(&k, rx_metric, "interface"), "eth0");
    assert_eq!(label(&k, rx_metric, "pod"), "b");
    assert_eq!(label(&k, rx_metric, "container"), "");
    assert!(rx_metric.value.unwrap().value >= rx);
    let ctr = &mine.container_metrics[0];
    assert_eq!(ctr.container_id, client);
    let ws = ctr
        .metrics
        .iter()
        .find(|m| m.name == "container_memory_working_set_bytes")
        .expect("container working set");
    let k = keys(&ws.name);
    assert_eq!(label(&k, ws, "container"), "client");
    assert_eq!(label(&k, ws, "namespace"), "net");
    assert!(ws.value.unwrap().value > 0);
    for m in mine
        .metrics
        .iter()
        .chain(mine.container_metrics.iter().flat_map(|c| c.metrics.iter()))
    {
        assert_eq!(keys(&m.name).len(), m.label_values.len(), "{}", m.name);
    }
    Ok(())
}
