//! kelsond as a process: configuration errors at start-up, the effective config, the socket,
//! the runtime's answers and conditions, a corrupt database, the systemd cgroup driver.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use k8s_cri::v1 as cri;
use kelson_testkit::Daemon;
use kelson_testkit::cri as req;
use kelson_testkit::daemon::Cri;
use tonic::Code;

fn kelsond(args: &[&str]) -> std::process::Output {
    Command::new(common::KELSOND)
        .args(args)
        .output()
        .expect("running kelsond")
}

#[test]
fn bad_config_is_refused_naming_the_key() {
    let d = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[image]\nmax_concurrent_downlods = 3\n",
            "max_concurrent_downlods",
        ),
        ("log_level = \"loud!!\"\n", "log_level"),
        ("root = \"relative\"\n", "root"),
        (
            "[image]\npull_progress_timeout = \"fast\"\n",
            "pull_progress_timeout",
        ),
    ];
    for (text, key) in cases {
        let p = d.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        let out = kelsond(&["--config", p.to_str().unwrap(), "config"]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{text}: {err}");
    }
    let out = kelsond(&["--config", "/nonexistent/kelson.toml", "config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/kelson.toml"));
}

#[test]
fn config_prints_effective_values_with_flag_overrides() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.toml");
    std::fs::write(
        &p,
        "root = \"/srv/kelson\"\n[image]\nmax_concurrent_downloads = 5\n",
    )
    .unwrap();
    let out = kelsond(&[
        "--config",
        p.to_str().unwrap(),
        "--state",
        "/run/k2",
        "--log-level",
        "debug",
        "config",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let v: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(v["root"].as_str(), Some("/srv/kelson"));
    assert_eq!(v["state"].as_str(), Some("/run/k2"));
    assert_eq!(v["log_level"].as_str(), Some("debug"));
    assert_eq!(v["grpc"]["address"].as_str(), Some("/run/k2/kelson.sock"));
    assert_eq!(v["image"]["max_concurrent_downloads"].as_integer(), Some(5));
    // No file at the default path: embedded defaults.
    let out = kelsond(&["config"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("/var/lib/kelson"));
}

/// kelsond on its own (no registry) and a client to it.
async fn daemon() -> anyhow::Result<(Daemon, Cri)> {
    let d = Daemon::start(Path::new(common::KELSOND), "")?;
    let c = d.cri().await?;
    Ok((d, c))
}

/// The runtime condition `kind` (RuntimeReady, NetworkReady) in a non-verbose Status.
async fn condition(c: &mut Cri, kind: &str) -> anyhow::Result<cri::RuntimeCondition> {
    c.runtime
        .status(req::runtime_status())
        .await?
        .into_inner()
        .status
        .context("no status")?
        .conditions
        .into_iter()
        .find(|c| c.r#type == kind)
        .with_context(|| format!("no {kind} condition"))
}

/// The socket kubelet dials is a unix socket for its owner and group only; Version names kelson
/// and CRI v1, RuntimeConfig the cgroupfs driver, a verbose Status is ready and carries the
/// effective config; stats of no pod or of a missing one are clear errors.
#[tokio::test(flavor = "multi_thread")]
async fn the_socket_answers_version_config_status_and_stats() -> anyhow::Result<()> {
    let (d, mut c) = daemon().await?;
    let m = std::fs::metadata(&d.socket)?;
    assert!(m.file_type().is_socket());
    assert_eq!(m.permissions().mode() & 0o777, 0o660);
    let v = c
        .runtime
        .version(cri::VersionRequest {
            version: "0.1.0".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("kelson", "v1")
    );
    let rc = c
        .runtime
        .runtime_config(cri::RuntimeConfigRequest {})
        .await?
        .into_inner();
    assert_eq!(
        rc.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Cgroupfs as i32
    );
    let s = c
        .runtime
        .status(cri::StatusRequest { verbose: true })
        .await?
        .into_inner();
    let conds = s.status.unwrap().conditions;
    assert!(conds.iter().any(|c| c.r#type == "RuntimeReady" && c.status));
    assert!(conds.iter().any(|c| c.r#type == "NetworkReady" && c.status));
    assert!(s.info["config"].contains(&d.root.display().to_string()));

    // Stats of a pod that does not exist, or of no pod at all: clear errors.
    let err = c
        .runtime
        .pod_sandbox_stats(cri::PodSandboxStatsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    let missing = "ab".repeat(32);
    let err = c
        .runtime
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: missing.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains(&missing), "{}", err.message());
    Ok(())
}

/// The conditions follow the world: NetworkReady the CNI conf dir (not ready, with the reason,
/// when the config is gone or broken, ready again when it comes back), RuntimeReady a writable
/// root (the readiness probe file made a directory fails the write even for root).
#[tokio::test(flavor = "multi_thread")]
async fn ready_conditions_follow_the_cni_conf_dir_and_a_writable_root() -> anyhow::Result<()> {
    let (d, mut c) = daemon().await?;
    let conf = d.net_d.join("10-test.conflist");
    let saved = std::fs::read(&conf)?;
    std::fs::remove_file(&conf)?;
    let n = condition(&mut c, "NetworkReady").await?;
    assert!(
        !n.status && n.reason == "NetworkPluginNotReady" && n.message.contains("no network config"),
        "{n:?}"
    );
    std::fs::write(&conf, b"{ broken")?;
    let n = condition(&mut c, "NetworkReady").await?;
    assert!(!n.status && n.message.contains("10-test.conflist"), "{n:?}");
    std::fs::write(&conf, saved)?;
    assert!(condition(&mut c, "NetworkReady").await?.status);

    let probe = d.root.join(".ready-probe");
    std::fs::create_dir(&probe)?;
    let rt = condition(&mut c, "RuntimeReady").await?;
    assert!(!rt.status && rt.message.contains("not writable"), "{rt:?}");
    std::fs::remove_dir(&probe)?;
    assert!(condition(&mut c, "RuntimeReady").await?.status);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_database_refuses_to_start_and_repair_rebuilds() -> anyhow::Result<()> {
    let mut d = Daemon::start(Path::new(common::KELSOND), "")?;
    d.stop()?;
    let db = d.root.join("kelson.redb");
    std::fs::write(&db, vec![0x42u8; 16384])?;
    let err = d.restart().unwrap_err().to_string();
    assert!(err.contains("repair-db"), "{err}");
    let cfg = d.config.to_str().unwrap().to_owned();
    let out = kelsond(&["--config", &cfg, "repair-db"]);
    assert!(!out.status.success());
    let out = kelsond(&["--config", &cfg, "repair-db", "--rebuild"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.restart()?;
    let mut c = d.cri().await?;
    assert!(
        c.image
            .list_images(cri::ListImagesRequest { filter: None })
            .await?
            .into_inner()
            .images
            .is_empty()
    );
    Ok(())
}

/// The systemd cgroup driver: where systemd runs a cgroup v2 node, containers become transient
/// scopes (`kelson-<id>.scope`) in kubelet's pod slice; elsewhere (this project's CI machine:
/// no systemd, cgroup v1) kelsond refuses to start rather than make cgroups behind the back
/// of a systemd it cannot reach.
#[tokio::test(flavor = "multi_thread")]
async fn systemd_cgroup_driver_makes_scopes_or_refuses_clearly() -> anyhow::Result<()> {
    let systemd = Path::new("/run/systemd/system").is_dir()
        && Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if !systemd {
        let d = tempfile::tempdir()?;
        let cfg = d.path().join("c.toml");
        std::fs::write(&cfg, "cgroup_driver = \"systemd\"\n")?;
        let root = d.path().join("root");
        let state = d.path().join("state");
        let out = kelsond(&[
            "--config",
            cfg.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
        ]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cgroup_driver = \"systemd\" needs"), "{err}");
        assert!(!state.exists(), "a refused start made its dirs");
        println!("no systemd with cgroup v2 here: checked the refusal only");
        return Ok(());
    }
    let e = common::env_config("cgroup_driver = \"systemd\"\n").await?;
    let image = format!("{}/test/standard:v1", e.registry.host);
    common::pull(&e.daemon, &image).await?;
    let mut c = e.daemon.cri().await?;
    let rc = c
        .runtime
        .runtime_config(cri::RuntimeConfigRequest {})
        .await?
        .into_inner();
    assert_eq!(
        rc.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Systemd as i32
    );
    let logs = tempfile::tempdir()?;
    let slice = format!("kelsontest-pod{}.slice", std::process::id());
    let cfg = common::pod_config("sd", "default", &slice, logs.path());
    let pod = common::run_pod(&mut c, &cfg).await?;
    let id = common::create_start(
        &mut c,
        &pod,
        &cfg,
        common::container_config("c", &image, &["/bin/sleep", "3600"]),
    )
    .await?;
    let scope = Path::new("/sys/fs/cgroup/kelsontest.slice")
        .join(&slice)
        .join(format!("kelson-{id}.scope"));
    let procs = std::fs::read_to_string(scope.join("cgroup.procs"))?;
    assert!(
        !procs.trim().is_empty(),
        "no process in {}",
        scope.display()
    );
    let unit = Command::new("systemctl")
        .args(["is-active", &format!("kelson-{id}.scope")])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&unit.stdout).trim(), "active");
    c.runtime.remove_pod_sandbox(req::remove_pod(&pod)).await?;
    assert!(!scope.exists(), "the scope outlived its container");
    Ok(())
}

/// Resumes the stopped shims when dropped, so a failing test leaves none stopped.
struct Stopped(Vec<nix::unistd::Pid>);

impl Stopped {
    fn resume(&mut self) {
        for pid in self.0.drain(..) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        self.resume();
    }
}

/// Start-up and listings ask every shim for its state at once with one deadline: with 20
/// shims wedged (SIGSTOPped), a restarted kelsond answers Version and ListContainers long
/// before 20 one-after-another waits of 5 s would end, lists the wedged containers with their
/// last known state, and they work again once their shims resume.
#[tokio::test(flavor = "multi_thread")]
async fn wedged_shims_cannot_hold_start_up_or_listings() -> anyhow::Result<()> {
    const WEDGED: usize = 20;
    let e = common::env().await?;
    let image = common::pull_standard(&e).await?;
    let mut p = common::TestPod::start(e, "kelson-dtest-wedged", "wedged").await?;
    let mut ids = Vec::new();
    for i in 0..WEDGED {
        let ctr = common::container_config(&format!("c{i}"), &image, &["/bin/sleep", "3600"]);
        ids.push(p.run(ctr).await?);
    }
    // The shims' pids, from the state dir of this test's kelsond.
    let shim_pid = |id: &str| -> anyhow::Result<nix::unistd::Pid> {
        let f =
            p.e.daemon
                .state
                .join("containers")
                .join(id)
                .join("shim/shim.pid");
        let pid: i32 = std::fs::read_to_string(&f)
            .with_context(|| f.display().to_string())?
            .trim()
            .parse()?;
        Ok(nix::unistd::Pid::from_raw(pid))
    };
    let mut stopped = Stopped(Vec::new());
    for id in &ids {
        let pid = shim_pid(id)?;
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
        stopped.0.push(pid);
    }
    let began = std::time::Instant::now();
    p.e.daemon.restart()?;
    p.c = p.e.daemon.cri().await?;
    p.c.runtime
        .version(cri::VersionRequest {
            version: "v1".into(),
        })
        .await?;
    let ready = began.elapsed();
    let asked = std::time::Instant::now();
    let listed =
        p.c.runtime
            .list_containers(cri::ListContainersRequest::default())
            .await?
            .into_inner()
            .containers;
    let listing = asked.elapsed();
    println!("Version {ready:?} after the restart, ListContainers in {listing:?}");
    // One after another, start-up alone would wait 20 × 5 s for the shims.
    assert!(
        ready < std::time::Duration::from_secs(30),
        "kelsond answered Version {ready:?} after the restart"
    );
    assert!(
        listing < std::time::Duration::from_secs(15),
        "ListContainers took {listing:?}"
    );
    assert_eq!(listed.len(), WEDGED);
    for c in &listed {
        assert_eq!(
            c.state,
            cri::ContainerState::ContainerRunning as i32,
            "{}: last known state",
            c.id
        );
    }
    // Resumed, they answer again.
    stopped.resume();
    for id in &ids {
        let (code, out, _) = common::exec_sync(&mut p.c, id, &["/bin/echo", "back"]).await?;
        assert_eq!((code, out.as_str()), (0, "back\n"), "{id}");
    }
    p.remove().await
}

/// Processes now whose command line is exactly `cmd` (with its arguments).
fn procs_running(cmd: &[&str]) -> usize {
    let want = cmd.join("\0") + "\0";
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want.as_bytes()))
        .count()
}

/// The CRI server's bounds: a flood of concurrent calls on one connection runs at most
/// `grpc.max_concurrent_calls_per_connection` of them at a time — the rest wait, unread — and
/// another connection is answered promptly meanwhile; a request over `grpc.max_message_bytes`
/// is refused naming the limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_calls_on_one_connection_cannot_starve_another() -> anyhow::Result<()> {
    const LIMIT: usize = 4;
    let e = common::env_config(&format!(
        "[grpc]\nmax_concurrent_calls_per_connection = {LIMIT}\nmax_message_bytes = 65536\n"
    ))
    .await?;
    let image = common::pull_standard(&e).await?;
    let mut p = common::TestPod::start(e, "kelson-dtest-flood", "flood").await?;
    let ctr = common::container_config("sleeper", &image, &["/bin/sleep", "3600"]);
    let id = p.run(ctr).await?;
    // The flood, on a connection of its own: 24 slow execs and 2000 cheap calls at once.
    let flood = p.e.daemon.cri().await?;
    let slow = ["/bin/sleep", "2.71828"];
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let mut f = flood.clone();
        let id = id.clone();
        calls.spawn(async move {
            f.runtime
                .exec_sync(req::exec(&id, &slow, 60))
                .await
                .map(|_| ())
        });
    }
    for i in 0..2000 {
        let mut f = flood.clone();
        calls.spawn(async move {
            if i % 2 == 0 {
                f.image
                    .list_images(cri::ListImagesRequest::default())
                    .await
                    .map(|_| ())
            } else {
                f.image
                    .image_fs_info(cri::ImageFsInfoRequest {})
                    .await
                    .map(|_| ())
            }
        });
    }
    // Meanwhile, another connection: answered at once, while the flood needs 24 / 4 × 2.7 s.
    let mut other = p.e.daemon.cri().await?;
    let mut most = 0;
    let began = std::time::Instant::now();
    while began.elapsed() < std::time::Duration::from_secs(5) {
        let asked = std::time::Instant::now();
        other
            .runtime
            .version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await?;
        let (code, out, _) = common::exec_sync(&mut other, &id, &["/bin/echo", "me"]).await?;
        assert_eq!((code, out.as_str()), (0, "me\n"));
        let took = asked.elapsed();
        assert!(
            took < std::time::Duration::from_secs(3),
            "another connection waited {took:?} behind the flood"
        );
        most = most.max(procs_running(&slow));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    println!("at most {most} of the flood's execs ran at once");
    assert!(
        (1..=LIMIT).contains(&most),
        "{most} of one connection's calls ran at once, over the limit of {LIMIT}"
    );
    while let Some(r) = calls.join_next().await {
        r??;
    }
    // A request over the message limit is refused by name, before anything is done.
    let err = other
        .image
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: "x".repeat(100_000),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .expect_err("an oversized request is refused");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains("the limit is: 65536 bytes"),
        "{err:?}"
    );
    p.remove().await
}
