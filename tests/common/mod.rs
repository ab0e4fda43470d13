// Shared by the integration tests: start a registry, push the standard images, start kelsond.
#![allow(dead_code)]

use kelson_testkit::{Daemon, Pusher, Registry, RegistryOptions, TestImages};

pub const KELSOND: &str = env!("CARGO_BIN_EXE_kelsond");

pub struct Env {
    pub registry: Registry,
    pub daemon: Daemon,
}

pub async fn env_with(opts: RegistryOptions, extra_config: &str) -> anyhow::Result<Env> {
    let registry = Registry::start(opts)?;
    let daemon = Daemon::start(std::path::Path::new(KELSOND), extra_config)?;
    daemon.hosts(&registry.host, &registry.hosts_toml())?;
    Ok(Env { registry, daemon })
}

pub async fn env() -> anyhow::Result<Env> {
    env_config("").await
}

/// `env()` with `extra` TOML in kelsond's config.
pub async fn env_config(extra: &str) -> anyhow::Result<Env> {
    let e = env_with(RegistryOptions::default(), extra).await?;
    let p = Pusher::new(&e.registry)?;
    p.image(
        "test/standard",
        "v1",
        &TestImages::standard("amd64", false)?,
    )
    .await?;
    Ok(e)
}

#[allow(unused_imports)] // not every test file uses it
pub use kelson_conformance::suite::spec;

pub async fn pull(d: &Daemon, image: &str) -> Result<String, tonic::Status> {
    let c = d
        .cri()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    kelson_conformance::suite::pull(&c, image).await
}

/// Directory entries under `dir` (0 when missing).
pub fn count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

/// Remove a test's cgroup tree (shared with the benchmarks).
pub fn remove_cgroup_tree(top: &str) {
    kelson_testkit::cgroups::remove_tree(top);
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `GET path` over plain HTTP/1.1 on loopback: (status code, body).
pub fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line in {out:?}"))?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// The value of the sample line `series` (name with labels, exactly) in a text exposition.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

/// Debian's bridge + host-local (+ portmap) on `kbr0`, 10.77.0.0/24, IPAM state in `data_dir`.
pub fn bridge_conflist(data_dir: &std::path::Path, extra_plugin: Option<&str>) -> String {
    let mut plugins = vec![
        serde_json::json!({"type": "bridge", "bridge": "kbr0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.77.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data_dir}}),
        serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}}),
    ];
    if let Some(t) = extra_plugin {
        plugins.push(serde_json::json!({"type": t}));
    }
    serde_json::json!({"cniVersion": "1.0.0", "name": "kelson-test", "plugins": plugins})
        .to_string()
}

/// Allocated IPs in host-local's store (one file per address).
pub fn allocations(data_dir: &std::path::Path) -> usize {
    std::fs::read_dir(data_dir.join("kelson-test"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<std::net::IpAddr>()
                        .is_ok()
                })
                .count()
        })
        .unwrap_or(0)
}

/// A pod named `name` (uid `uid-<name>`) in `namespace`, its cgroup at `cgroup_parent`, its
/// logs under `logs/<name>`.
pub fn pod_config(
    name: &str,
    namespace: &str,
    cgroup_parent: &str,
    logs: &std::path::Path,
) -> k8s_cri::v1::PodSandboxConfig {
    kelson_testkit::cri::pod(name, namespace, cgroup_parent, &logs.join(name))
}

/// A container `name` running `cmd` from `image`, logging to `<name>.log`.
pub fn container_config(name: &str, image: &str, cmd: &[&str]) -> k8s_cri::v1::ContainerConfig {
    kelson_testkit::cri::container(name, image, cmd, &format!("{name}.log"))
}

/// RunPodSandbox with the default (native) handler: the pod's id.
pub async fn run_pod(
    c: &mut kelson_testkit::daemon::Cri,
    cfg: &k8s_cri::v1::PodSandboxConfig,
) -> anyhow::Result<String> {
    Ok(run_pod_with(c, cfg, "").await?)
}

/// RunPodSandbox with a RuntimeClass handler: the pod's id.
pub async fn run_pod_with(
    c: &mut kelson_testkit::daemon::Cri,
    cfg: &k8s_cri::v1::PodSandboxConfig,
    handler: &str,
) -> Result<String, tonic::Status> {
    Ok(c.runtime
        .run_pod_sandbox(k8s_cri::v1::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: handler.into(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id)
}

/// CreateContainer: the container's id.
pub async fn create(
    c: &mut kelson_testkit::daemon::Cri,
    pod: &str,
    cfg: &k8s_cri::v1::PodSandboxConfig,
    ctr: k8s_cri::v1::ContainerConfig,
) -> Result<String, tonic::Status> {
    Ok(c.runtime
        .create_container(k8s_cri::v1::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(ctr),
            sandbox_config: Some(cfg.clone()),
        })
        .await?
        .into_inner()
        .container_id)
}

/// Push `repo:tag` — the standard busybox and /etc layers, then `layer` — with `config` as the
/// image's runtime config, and pull it: the image reference.
pub async fn push_with_layer(
    e: &Env,
    repo: &str,
    tag: &str,
    layer: Vec<u8>,
    config: serde_json::Value,
) -> anyhow::Result<String> {
    use kelson_testkit::{Compression, Image, Layer};
    let img = Image::new(
        vec![
            TestImages::busybox_layer()?,
            TestImages::etc_layer(),
            Layer::new(layer, Compression::Gzip),
        ],
        "amd64",
        false,
        config,
    );
    Pusher::new(&e.registry)?.image(repo, tag, &img).await?;
    let image = format!("{}/{repo}:{tag}", e.registry.host);
    pull(&e.daemon, &image).await?;
    Ok(image)
}

/// CreateContainer + StartContainer: the container's id.
pub async fn create_start(
    c: &mut kelson_testkit::daemon::Cri,
    pod: &str,
    cfg: &k8s_cri::v1::PodSandboxConfig,
    ctr: k8s_cri::v1::ContainerConfig,
) -> anyhow::Result<String> {
    use k8s_cri::v1 as cri;
    let id = create(c, pod, cfg, ctr).await?;
    c.runtime
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;
    Ok(id)
}

/// Open file descriptors of process `pid`.
pub fn fds(pid: u32) -> usize {
    count(std::path::Path::new(&format!("/proc/{pid}/fd")))
}

/// Mounts below this daemon's dirs (other tests mount concurrently elsewhere).
pub fn mounts_of(d: &Daemon) -> usize {
    let dir = d.dir.path().display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&dir)))
        .count()
}

/// ContainerStatus (not verbose).
pub async fn container_status(
    c: &mut kelson_testkit::daemon::Cri,
    id: &str,
) -> anyhow::Result<k8s_cri::v1::ContainerStatus> {
    c.runtime
        .container_status(k8s_cri::v1::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .ok_or_else(|| anyhow::anyhow!("no status for {id}"))
}

/// The container's status once it has exited (or after 20 s, whatever it is then).
pub async fn wait_exited(
    c: &mut kelson_testkit::daemon::Cri,
    id: &str,
) -> anyhow::Result<k8s_cri::v1::ContainerStatus> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let s = container_status(c, id).await?;
        if s.state == k8s_cri::v1::ContainerState::ContainerExited as i32
            || std::time::Instant::now() > deadline
        {
            return Ok(s);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// ExecSync: (exit code, stdout, stderr).
pub async fn exec_sync(
    c: &mut kelson_testkit::daemon::Cri,
    id: &str,
    cmd: &[&str],
) -> anyhow::Result<(i32, String, String)> {
    let r = c
        .runtime
        .exec_sync(k8s_cri::v1::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 20,
        })
        .await?
        .into_inner();
    Ok((
        r.exit_code,
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
    ))
}

#[allow(unused_imports)] // not every test file uses it
pub use kelson_testkit::cri::bind;

/// `env()` with the standard image pulled: the environment and the image's reference.
pub async fn env_standard() -> anyhow::Result<(Env, String)> {
    let e = env().await?;
    let image = pull_standard(&e).await?;
    Ok((e, image))
}

/// A pod `name` in the test's cgroup tree `<prefix>-<pid>` (removed by `remove_pod`), its logs
/// in a temporary directory: (the tree's top, the logs, the pod's config, the pod's id).
pub async fn pod_in(
    c: &mut kelson_testkit::daemon::Cri,
    prefix: &str,
    name: &str,
) -> anyhow::Result<(
    String,
    tempfile::TempDir,
    k8s_cri::v1::PodSandboxConfig,
    String,
)> {
    let top = format!("{prefix}-{}", std::process::id());
    let logs = tempfile::tempdir()?;
    let cfg = pod_config(name, "default", &format!("/{top}/{name}"), logs.path());
    let pod = run_pod(c, &cfg).await?;
    Ok((top, logs, cfg, pod))
}

/// RemovePodSandbox, then the test's cgroup tree `top`.
pub async fn remove_pod(
    c: &mut kelson_testkit::daemon::Cri,
    pod: &str,
    top: &str,
) -> anyhow::Result<()> {
    c.runtime
        .remove_pod_sandbox(kelson_testkit::cri::remove_pod(pod))
        .await?;
    remove_cgroup_tree(top);
    Ok(())
}

/// Pull the standard test image `env()` pushed: its reference.
pub async fn pull_standard(e: &Env) -> anyhow::Result<String> {
    let image = format!("{}/test/standard:v1", e.registry.host);
    pull(&e.daemon, &image).await?;
    Ok(image)
}

/// A kelsond (`e`) and one pod of a test, its cgroup in the test's tree `top` (removed by
/// `remove`), its logs below `logs`.
pub struct TestPod {
    pub e: Env,
    pub c: kelson_testkit::daemon::Cri,
    pub top: String,
    pub logs: tempfile::TempDir,
    pub cfg: k8s_cri::v1::PodSandboxConfig,
    pub pod: String,
}

impl TestPod {
    /// A pod `name` in the test's cgroup tree `<prefix>-<pid>`, as `pod_in` makes it.
    pub async fn start(e: Env, prefix: &str, name: &str) -> anyhow::Result<TestPod> {
        let mut c = e.daemon.cri().await?;
        let (top, logs, cfg, pod) = pod_in(&mut c, prefix, name).await?;
        Ok(TestPod {
            e,
            c,
            top,
            logs,
            cfg,
            pod,
        })
    }

    /// The pod `cfg` (its cgroup below `top`, its logs below `logs`).
    pub async fn with_config(
        e: Env,
        top: String,
        logs: tempfile::TempDir,
        cfg: k8s_cri::v1::PodSandboxConfig,
    ) -> anyhow::Result<TestPod> {
        let mut c = e.daemon.cri().await?;
        let pod = run_pod(&mut c, &cfg).await?;
        Ok(TestPod {
            e,
            c,
            top,
            logs,
            cfg,
            pod,
        })
    }

    /// CreateContainer + StartContainer in the pod: the container's id.
    pub async fn run(&mut self, ctr: k8s_cri::v1::ContainerConfig) -> anyhow::Result<String> {
        create_start(&mut self.c, &self.pod, &self.cfg, ctr).await
    }

    /// RemovePodSandbox, then the test's cgroup tree.
    pub async fn remove(mut self) -> anyhow::Result<()> {
        remove_pod(&mut self.c, &self.pod, &self.top).await
    }
}
