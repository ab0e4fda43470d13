//! Pod sandboxes on the real kernel: pinned namespaces, hostname, DNS files, /dev/shm, the pod
//! cgroup; status, list filters; idempotent stop/remove; bad requests leave nothing behind.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_cri::v1 as cri;
use kelson_testkit::Daemon;
use kelson_testkit::cri as req;
use kelson_testkit::daemon::Cri;
use tonic::Code;

/// Mounts below the daemon's dirs (pinned namespaces, shm).
fn mounts_under(d: &Daemon) -> Vec<String> {
    let dir = d.dir.path().display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&dir)))
        .map(str::to_owned)
        .collect()
}

fn pod_config(name: &str, cgroup_parent: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        log_directory: format!("/var/log/pods/default_{name}"),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        labels: HashMap::from([("app".to_owned(), name.to_owned())]),
        annotations: HashMap::from([("note".to_owned(), "data only".to_owned())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn run(
    c: &mut kelson_testkit::daemon::Cri,
    config: cri::PodSandboxConfig,
) -> Result<String, tonic::Status> {
    Ok(c.runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id)
}

fn nsenter(flag: &str, path: &str, cmd: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("{flag}={path}"))
        .args(cmd)
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "nsenter {flag} {cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pod "web" (hostname `web-host`, DNS, labels) in the cgroup `kelson-test-<pid>-<test>/podA`
/// on a kelsond of its own.
struct Web {
    d: Daemon,
    c: Cri,
    /// The pod's cgroup parent, below the test's tree.
    parent: String,
    id: String,
}

impl Web {
    async fn start(test: &str) -> anyhow::Result<Web> {
        let d = Daemon::start(Path::new(common::KELSOND), "")?;
        let mut c = d.cri().await?;
        let parent = format!("kelson-test-{}-{test}/podA", std::process::id());
        let id = run(&mut c, pod_config("web", &format!("/{parent}"))).await?;
        Ok(Web { d, c, parent, id })
    }

    /// The verbose status: the status and the info's `netns` and `utsns` paths.
    async fn status(&mut self) -> anyhow::Result<(cri::PodSandboxStatus, String, String)> {
        let st = self
            .c
            .runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: self.id.clone(),
                verbose: true,
            })
            .await?
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(&st.info["info"])?;
        let ns = |k: &str| info[k].as_str().unwrap().to_owned();
        Ok((st.status.unwrap(), ns("netns"), ns("utsns")))
    }

    fn pod_dir(&self) -> PathBuf {
        self.d.state.join("pods").join(&self.id)
    }

    /// The PID of the holder of the pod's shared PID namespace.
    fn holder(&self) -> anyhow::Result<i32> {
        Ok(
            std::fs::read_to_string(self.pod_dir().join("pidns.holder"))?
                .trim()
                .parse()?,
        )
    }

    fn cgroup(&self) -> PathBuf {
        Path::new("/sys/fs/cgroup/memory").join(&self.parent)
    }

    /// Remove the test's cgroup tree (the pod's own is gone with the pod).
    fn finish(self) {
        common::remove_cgroup_tree(self.parent.split('/').next().unwrap());
    }
}

/// The namespaces are real and pinned: lo is up, the hostname is set, only inside; net, ipc,
/// uts and (CRI's default PID mode is POD) pid are pinned, the shared PID namespace has this
/// kelsond's own binary as PID 1; /dev/shm is a 64 MiB tmpfs; resolv.conf and hosts are written,
/// the pod cgroup is made. Pods are listed with no filter, by label, by id prefix and by state.
#[tokio::test(flavor = "multi_thread")]
async fn pods_get_pinned_namespaces_shm_files_a_cgroup_and_are_listed() -> anyhow::Result<()> {
    let mut w = Web::start("ns").await?;
    assert_eq!(w.id.len(), 64);
    let (status, netns, utsns) = w.status().await?;
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(status.metadata.unwrap().name, "web");
    assert_eq!(status.labels["app"], "web");

    let links = nsenter("--net", &netns, &["ip", "-o", "link"]);
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");
    assert_eq!(
        links.lines().count(),
        1,
        "a fresh netns has only lo: {links}"
    );
    assert_eq!(nsenter("--uts", &utsns, &["hostname"]).trim(), "web-host");
    assert_ne!(nix_hostname(), "web-host");
    let m = mounts_under(&w.d);
    assert_eq!(
        m.iter().filter(|l| l.contains(" - nsfs ")).count(),
        4,
        "{m:#?}"
    );
    let holder = w.holder()?;
    let cmdline = std::fs::read(format!("/proc/{holder}/cmdline"))?;
    assert!(String::from_utf8_lossy(&cmdline).contains("pod-holder"));
    let ns_pid = std::fs::read_to_string(format!("/proc/{holder}/status"))?;
    assert!(
        ns_pid
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1")),
        "holder is PID 1 in its namespace: {ns_pid}"
    );
    assert!(
        m.iter()
            .any(|l| l.contains(" - tmpfs ") && l.contains("size=65536k")),
        "{m:#?}"
    );

    let pod_dir = w.pod_dir();
    assert_eq!(
        std::fs::read_to_string(pod_dir.join("resolv.conf"))?,
        "nameserver 10.96.0.10\nsearch default.svc.cluster.local\noptions ndots:5\n"
    );
    assert!(std::fs::read_to_string(pod_dir.join("hosts"))?.contains("web-host"));
    assert!(w.cgroup().is_dir(), "pod cgroup in the memory hierarchy");

    // ListPodSandbox with no filter, by label, by id prefix, and by state once one is stopped.
    let id = w.id.clone();
    let id2 = run(&mut w.c, pod_config("db", "")).await?;
    let lister = w.c.clone();
    let list = |f: Option<cri::PodSandboxFilter>| {
        let mut c = lister.clone();
        async move {
            c.runtime
                .list_pod_sandbox(cri::ListPodSandboxRequest { filter: f })
                .await
                .unwrap()
                .into_inner()
                .items
        }
    };
    assert_eq!(list(None).await.len(), 2);
    let by_label = cri::PodSandboxFilter {
        label_selector: HashMap::from([("app".into(), "db".into())]),
        ..Default::default()
    };
    assert_eq!(
        list(Some(by_label))
            .await
            .iter()
            .map(|p| p.id.clone())
            .collect::<Vec<_>>(),
        vec![id2.clone()]
    );
    let by_prefix = cri::PodSandboxFilter {
        id: id[..8].into(),
        ..Default::default()
    };
    assert_eq!(list(Some(by_prefix)).await.len(), 1);
    w.c.runtime.stop_pod_sandbox(req::stop_pod(&id)).await?;
    let not_ready = cri::PodSandboxFilter {
        state: Some(cri::PodSandboxStateValue { state: 1 }),
        ..Default::default()
    };
    assert_eq!(list(Some(not_ready)).await.len(), 1);
    for p in [&id, &id2] {
        w.c.runtime.remove_pod_sandbox(req::remove_pod(p)).await?;
        w.c.runtime.remove_pod_sandbox(req::remove_pod(p)).await?;
    }
    w.finish();
    Ok(())
}

/// The pod's lifecycle to the end. The same name again is AlreadyExists, mounting nothing new.
/// Stop releases the namespaces and shm and kills the PID-namespace holder, the pod is NotReady;
/// repeated, it succeeds. Remove takes everything, the cgroup included; repeated, it succeeds;
/// then the pod is NotFound and its name is free again.
#[tokio::test(flavor = "multi_thread")]
async fn stop_and_remove_release_everything_and_can_be_repeated() -> anyhow::Result<()> {
    let mut w = Web::start("stop").await?;
    let id = w.id.clone();
    let (_, netns, _) = w.status().await?;
    let holder = w.holder()?;

    // Same name again.
    let before = mounts_under(&w.d).len();
    let err = run(&mut w.c, pod_config("web", "")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(mounts_under(&w.d).len(), before);

    // Stop.
    w.c.runtime.stop_pod_sandbox(req::stop_pod(&id)).await?;
    w.c.runtime.stop_pod_sandbox(req::stop_pod(&id)).await?;
    let st =
        w.c.runtime
            .pod_sandbox_status(req::pod_status(&id))
            .await?
            .into_inner();
    assert_eq!(
        st.status.unwrap().state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    assert!(!Path::new(&netns).exists());
    // Gone, or a zombie waiting for the host's init to reap it (it was re-parented there).
    let dead = || {
        std::fs::read_to_string(format!("/proc/{holder}/status"))
            .map(|st| {
                st.lines()
                    .any(|l| l.starts_with("State:") && l.contains('Z'))
            })
            .unwrap_or(true)
    };
    for _ in 0..100 {
        if dead() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        dead(),
        "holder still alive after stop: {}",
        std::fs::read_to_string(format!("/proc/{holder}/status")).unwrap_or_default()
    );

    // Remove.
    w.c.runtime.remove_pod_sandbox(req::remove_pod(&id)).await?;
    w.c.runtime.remove_pod_sandbox(req::remove_pod(&id)).await?;
    let err =
        w.c.runtime
            .pod_sandbox_status(req::pod_status(&id))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(mounts_under(&w.d).is_empty(), "{:#?}", mounts_under(&w.d));
    assert!(!w.pod_dir().exists());
    assert!(!w.cgroup().exists());
    let again = run(&mut w.c, pod_config("web", "")).await?;
    w.c.runtime
        .remove_pod_sandbox(req::remove_pod(&again))
        .await?;
    w.finish();
    Ok(())
}

fn nix_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_fail_clearly_and_leave_nothing() -> anyhow::Result<()> {
    let d = Daemon::start(Path::new(common::KELSOND), "")?;
    let mut c = d.cri().await?;
    let mut no_meta = pod_config("x", "");
    no_meta.metadata = None;
    let mut bad_host = pod_config("x", "");
    bad_host.hostname = "Bad_Host".into();
    let mut dns_inject = pod_config("x", "");
    dns_inject.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.0.0.1\nnameserver 6.6.6.6".into()],
        ..Default::default()
    });
    let cases = [
        (no_meta, "metadata"),
        (bad_host, "hostname"),
        (dns_inject, "dns_config.servers"),
        (pod_config("x", "/../../escape"), "cgroup path"),
        (pod_config("x", "/kubepods/cgroup.procs"), "control file"),
        (pod_config("x/y", ""), "metadata.name"),
    ];
    for (cfg, what) in cases {
        let err = run(&mut c, cfg).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(what), "{what}: {}", err.message());
    }
    let err = c
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("h", "")),
            runtime_handler: "gvisor".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("gvisor"), "{}", err.message());
    assert!(
        c.runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items
            .is_empty()
    );
    assert!(mounts_under(&d).is_empty());
    assert_eq!(common::count(&d.state.join("pods")), 0);
    // Unknown ids: stop and remove succeed (kubelet relies on it); status is NotFound; junk is invalid.
    let unknown = "ab".repeat(32);
    c.runtime.stop_pod_sandbox(req::stop_pod(&unknown)).await?;
    c.runtime
        .remove_pod_sandbox(req::remove_pod(&unknown))
        .await?;
    let err = c
        .runtime
        .pod_sandbox_status(req::pod_status(&unknown))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // An id kelson never makes names nothing: stopping it succeeds (critest sends UUIDs), and
    // it never reaches a path.
    c.runtime
        .stop_pod_sandbox(req::stop_pod("../../etc"))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn host_network_pod_and_restart() -> anyhow::Result<()> {
    let mut d = Daemon::start(Path::new(common::KELSOND), "")?;
    let mut c = d.cri().await?;
    let mut cfg = pod_config("hostnet", "");
    // kubelet sends no hostname for a host-network pod (it has the node's).
    cfg.hostname.clear();
    cfg.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            network: cri::NamespaceMode::Node as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let hostnet = run(&mut c, cfg).await?;
    let pod_dir = d.state.join("pods").join(&hostnet);
    assert!(!pod_dir.join("netns").exists() && !pod_dir.join("utsns").exists());
    assert!(pod_dir.join("ipcns").exists());
    assert_eq!(
        std::fs::read_to_string(pod_dir.join("hostname"))?.trim(),
        nix_hostname()
    );
    let own = run(&mut c, pod_config("own", "")).await?;

    // A restart keeps the pods Ready; a crash after which the namespaces vanished marks NotReady.
    d.restart()?;
    let mut c = d.cri().await?;
    let state = |c: &mut kelson_testkit::daemon::Cri, id: String| {
        let mut c = c.clone();
        async move {
            c.runtime
                .pod_sandbox_status(req::pod_status(&id))
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap()
                .state
        }
    };
    assert_eq!(state(&mut c, own.clone()).await, 0);
    d.crash()?;
    let netns = d.state.join("pods").join(&own).join("netns");
    assert!(Command::new("umount").arg(&netns).status()?.success());
    d.restart()?;
    let mut c = d.cri().await?;
    assert_eq!(
        state(&mut c, own.clone()).await,
        1,
        "vanished namespace reported NotReady"
    );
    assert_eq!(state(&mut c, hostnet.clone()).await, 0);
    for p in [own, hostnet] {
        c.runtime.remove_pod_sandbox(req::remove_pod(&p)).await?;
    }
    assert!(mounts_under(&d).is_empty());
    Ok(())
}
