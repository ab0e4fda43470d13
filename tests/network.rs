//! Pod networking through real CNI plugins (Debian's containernetworking-plugins: bridge,
//! host-local, portmap). kelsond runs in a network namespace of its own (`unshare --net`), so
//! the bridge, veths and iptables rules exist only there and no packet leaves the machine.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

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

fn pod_cfg(name: &str, logs: &Path, host_port: Option<i32>) -> cri::PodSandboxConfig {
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
            cgroup_parent: format!("/kelson-nettest-{}/{name}", std::process::id()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn run_pod(
    c: &mut Cri,
    cfg: cri::PodSandboxConfig,
) -> Result<(String, String), tonic::Status> {
    let id = c
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cfg),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
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
    let cfg = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    };
    let id = c
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(cfg),
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await?
        .into_inner()
        .container_id;
    c.runtime.start_container(req::start(&id)).await?;
    Ok(id)
}

async fn remove_pod(c: &mut Cri, id: &str) -> anyhow::Result<()> {
    c.runtime.stop_pod_sandbox(req::stop_pod(id)).await?;
    c.runtime.remove_pod_sandbox(req::remove_pod(id)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_talk_hostport_cycles_and_failing_plugins() -> anyhow::Result<()> {
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
    let plugins = tempfile::tempdir()?;
    std::fs::write(
        plugins.path().join("kelson-test-fail"),
        "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then echo '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"refused by test plugin\"}'; exit 1; fi\nexit 0\n",
    )?;
    std::fs::write(
        plugins.path().join("kelson-test-hang"),
        "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then sleep 60; fi\nexit 0\n",
    )?;
    for f in ["kelson-test-fail", "kelson-test-hang"] {
        Command::new("chmod")
            .arg("755")
            .arg(plugins.path().join(f))
            .status()?;
    }
    let opts = DaemonOptions {
        netns: false,
        conflist: Some(common::bridge_conflist(ipam.path(), None)),
        extra_bin_dirs: vec![plugins.path().to_owned()],
        plugin_timeout: Some("2s".into()),
        ..Default::default()
    };
    // Pull on the machine's network (the registry is on its loopback), then move kelsond into a
    // network namespace of its own for everything that touches networking.
    let mut d = Daemon::start_opts(Path::new(common::KELSOND), "", opts)?;
    d.hosts(&registry.host, &registry.hosts_toml())?;
    common::pull(&d, &image).await?;
    d.set_netns(true);
    d.restart()?;
    let mut c = d.cri().await?;
    let logs = tempfile::tempdir()?;

    // Two pods reach each other over the bridge; a hostPort maps from the "host" to a pod.
    let cfg_a = pod_cfg("a", logs.path(), Some(18080));
    let (a, ip_a) = run_pod(&mut c, cfg_a.clone()).await?;
    let cfg_b = pod_cfg("b", logs.path(), None);
    let (b, ip_b) = run_pod(&mut c, cfg_b.clone()).await?;
    assert!(
        ip_a.starts_with("10.77.0.") && ip_b.starts_with("10.77.0.") && ip_a != ip_b,
        "{ip_a} {ip_b}"
    );
    container(
        &mut c,
        &a,
        &cfg_a,
        &image,
        "server",
        &[
            "/bin/nc",
            "-ll",
            "-p",
            "8080",
            "-e",
            "/bin/echo",
            "hello from a",
        ],
    )
    .await?;
    let client = container(
        &mut c,
        &b,
        &cfg_b,
        &image,
        "client",
        &["/bin/sleep", "3600"],
    )
    .await?;
    let mut got = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !got.contains("hello from a") {
        let r = c
            .runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: client.clone(),
                cmd: vec![
                    "/bin/nc".into(),
                    "-w".into(),
                    "2".into(),
                    ip_a.clone(),
                    "8080".into(),
                ],
                timeout: 5,
            })
            .await?
            .into_inner();
        got = String::from_utf8_lossy(&r.stdout).into_owned();
    }
    assert!(
        got.contains("hello from a"),
        "pod b could not reach pod a: {got:?}"
    );
    let via_host = in_netns(&d, &["busybox", "nc", "-w", "2", "10.77.0.1", "18080"]);
    assert!(
        via_host.contains("hello from a"),
        "hostPort 18080 did not reach pod a: {via_host}"
    );
    assert_eq!(common::allocations(ipam.path()), 2);
    pod_stats_and_metrics(&mut c, &b, &client).await?;
    remove_pod(&mut c, &a).await?;
    remove_pod(&mut c, &b).await?;
    remove_pod(&mut c, &b).await?; // DEL again is fine
    assert_eq!(common::allocations(ipam.path()), 0, "IPs released");
    let links = in_netns(&d, &["ip", "-o", "link"]);
    assert!(!links.contains("veth"), "veths left: {links}");
    let nat = in_netns(&d, &["iptables-save", "-t", "nat"]);
    assert!(!nat.contains("18080"), "hostPort rules left: {nat}");

    // 20 create/remove cycles leak nothing.
    for i in 0..20 {
        let (p, _) = run_pod(
            &mut c,
            pod_cfg(&format!("cycle{i}"), logs.path(), Some(19000 + i)),
        )
        .await?;
        remove_pod(&mut c, &p).await?;
    }
    assert_eq!(common::allocations(ipam.path()), 0);
    assert!(!in_netns(&d, &["ip", "-o", "link"]).contains("veth"));
    assert!(
        !in_netns(&d, &["iptables-save", "-t", "nat"]).contains("--dport 19"),
        "hostPort rules left after cycles"
    );
    assert_eq!(common::count(&d.state.join("pods")), 0);

    // A failing plugin after bridge: the error names it, and bridge's work is undone.
    std::fs::write(
        d.net_d.join("10-test.conflist"),
        common::bridge_conflist(ipam.path(), Some("kelson-test-fail")),
    )?;
    let err = run_pod(&mut c, pod_cfg("fails", logs.path(), None))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("kelson-test-fail")
            && err.message().contains("refused by test plugin"),
        "{err:?}"
    );
    assert_eq!(common::allocations(ipam.path()), 0);
    assert!(!in_netns(&d, &["ip", "-o", "link"]).contains("veth"));
    // A hanging plugin is killed at the timeout, with the same cleanup.
    std::fs::write(
        d.net_d.join("10-test.conflist"),
        common::bridge_conflist(ipam.path(), Some("kelson-test-hang")),
    )?;
    let t = Instant::now();
    let err = run_pod(&mut c, pod_cfg("hangs", logs.path(), None))
        .await
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(20));
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("kelson-test-hang") && err.message().contains("did not finish"),
        "{err:?}"
    );
    assert_eq!(common::allocations(ipam.path()), 0);
    assert!(
        c.runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items
            .is_empty()
    );
    assert_eq!(common::count(&d.state.join("pods")), 0);
    common::remove_cgroup_tree(&format!("kelson-nettest-{}", std::process::id()));
    Ok(())
}

/// eth0's received bytes as the pod itself sees them (/proc/net/dev read inside the pod).
async fn rx_inside(c: &mut Cri, container: &str) -> anyhow::Result<u64> {
    let r = c
        .runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: container.into(),
            cmd: vec!["/bin/cat".into(), "/proc/net/dev".into()],
            timeout: 5,
        })
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
