//! Containers on the real kernel: create/start/stop/remove through kelsond and its shim, the CRI
//! log file byte for byte, exit codes and reasons, STOPSIGNAL and kill timeouts, ExecSync,
//! resource limits in the cgroup files, and nothing left behind.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use kelson_testkit::cri as req;
use kelson_testkit::daemon::Cri;
use tonic::Code;

struct Pod {
    id: String,
    logs: tempfile::TempDir,
    cgroup: String,
}

/// A pod `name`, its cgroup in a tree of its own (`remove_pod` removes the tree: a tree shared
/// by the file's tests would be removed under a test still creating a container).
async fn pod(c: &mut Cri, name: &str) -> anyhow::Result<Pod> {
    let logs = tempfile::tempdir()?;
    let cgroup = format!("kelson-ctest-{}-{name}/{name}", std::process::id());
    let cfg = req::pod(name, "default", &format!("/{cgroup}"), logs.path());
    let id = common::run_pod(c, &cfg).await?;
    Ok(Pod { id, logs, cgroup })
}

/// A container `name` labelled `app=<name>`, logging to `<name>/0.log`.
fn ctr(name: &str, image: &str, cmd: &[&str]) -> cri::ContainerConfig {
    req::labelled(req::container(name, image, cmd, &format!("{name}/0.log")))
}

async fn create(c: &mut Cri, p: &Pod, cfg: cri::ContainerConfig) -> Result<String, tonic::Status> {
    Ok(c.runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: p.id.clone(),
            config: Some(cfg),
            sandbox_config: None,
        })
        .await?
        .into_inner()
        .container_id)
}

async fn status(c: &mut Cri, id: &str) -> cri::ContainerStatus {
    c.runtime
        .container_status(req::status(id))
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
}

async fn wait_exited(c: &mut Cri, id: &str) -> cri::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(c, id).await;
        if s.state == cri::ContainerState::ContainerExited as i32 || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cgroup_dir(p: &Pod, id: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup/memory").join(&p.cgroup).join(id)
}

/// Remove the pod and the test's cgroup tree.
async fn remove_pod(c: &mut Cri, p: &Pod) -> anyhow::Result<()> {
    c.runtime.remove_pod_sandbox(req::remove_pod(&p.id)).await?;
    common::remove_cgroup_tree(p.cgroup.split('/').next().unwrap());
    Ok(())
}

async fn start(c: &mut Cri, id: &str) -> anyhow::Result<()> {
    c.runtime.start_container(req::start(id)).await?;
    Ok(())
}

/// Remove `id` twice (the second is a no-op); its cgroup and its directory are gone.
async fn remove_leaves_nothing(
    c: &mut Cri,
    e: &common::Env,
    p: &Pod,
    id: &str,
) -> anyhow::Result<()> {
    c.runtime.remove_container(req::remove(id)).await?;
    c.runtime.remove_container(req::remove(id)).await?;
    assert!(!cgroup_dir(p, id).exists());
    assert!(!e.daemon.root.join("containers").join(id).exists());
    Ok(())
}

/// Remove the pod: no mount of this daemon's is left, and the test's cgroup tree goes.
async fn remove_pod_leaves_no_mounts(c: &mut Cri, e: &common::Env, p: &Pod) -> anyhow::Result<()> {
    c.runtime.remove_pod_sandbox(req::remove_pod(&p.id)).await?;
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")?
            .contains(&e.daemon.dir.path().display().to_string()),
        "mounts left"
    );
    common::remove_cgroup_tree(p.cgroup.split('/').next().unwrap());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_job_reports_its_exit_code_and_a_cri_framed_log() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let p = pod(&mut c, "batch").await?;
    let id = create(
        &mut c,
        &p,
        ctr(
            "job",
            &image,
            &[
                "/bin/sh",
                "-c",
                "echo hello; echo oops >&2; printf partial; exit 3",
            ],
        ),
    )
    .await?;
    let s = status(&mut c, &id).await;
    assert_eq!(s.state, cri::ContainerState::ContainerCreated as i32);
    start(&mut c, &id).await?;
    let s = wait_exited(&mut c, &id).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"), "{s:?}");
    assert!(s.started_at > 0 && s.finished_at >= s.started_at);
    assert_eq!(
        s.log_path,
        p.logs.path().join("job/0.log").display().to_string()
    );
    let log = std::fs::read_to_string(&s.log_path)?;
    let lines: Vec<(&str, &str, &str)> = log
        .lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let ts = f.next().unwrap();
            assert!(ts.ends_with('Z') && ts.len() == 30, "timestamp {ts}");
            (f.next().unwrap(), f.next().unwrap(), f.next().unwrap_or(""))
        })
        .collect();
    assert!(lines.contains(&("stdout", "F", "hello")), "{log}");
    assert!(lines.contains(&("stderr", "F", "oops")), "{log}");
    assert!(lines.contains(&("stdout", "P", "partial")), "{log}");
    remove_leaves_nothing(&mut c, &e, &p, &id).await?;
    let err = c
        .runtime
        .container_status(req::status(&id))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    remove_pod_leaves_no_mounts(&mut c, &e, &p).await
}

/// The image's user (65534) runs the command; the rootfs is an overlay of the image layers
/// (a whiteout hides a lower file) with the pod's hostname.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_runs_as_the_image_user_on_the_image_layers() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let p = pod(&mut c, "layers").await?;
    let ok = create(
        &mut c,
        &p,
        ctr(
            "whoami",
            &image,
            &[
                "/bin/sh",
                "-c",
                "id -u; cat /etc/hostname; test -e /etc/old.conf || echo whiteout-ok",
            ],
        ),
    )
    .await?;
    start(&mut c, &ok).await?;
    let s = wait_exited(&mut c, &ok).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    let log = std::fs::read_to_string(&s.log_path)?;
    assert!(
        log.contains("stdout F 65534\n")
            && log.contains("stdout F layers\n")
            && log.contains("stdout F whiteout-ok\n"),
        "{log}"
    );
    remove_leaves_nothing(&mut c, &e, &p, &ok).await?;
    remove_pod_leaves_no_mounts(&mut c, &e, &p).await
}

/// A long-running container that exits 0 on SIGTERM, with a memory limit and CPU shares.
fn web(image: &str) -> cri::ContainerConfig {
    let mut cfg = ctr(
        "web",
        image,
        &[
            "/bin/sh",
            "-c",
            "trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
        ],
    );
    let r = req::resources(&mut cfg);
    r.memory_limit_in_bytes = 64 << 20;
    r.cpu_shares = 256;
    cfg
}

/// A kelsond with the standard image, a pod `pod_name`, and `web` started in it.
async fn running_web(pod_name: &str) -> anyhow::Result<(common::Env, String, Cri, Pod, String)> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let p = pod(&mut c, pod_name).await?;
    let web = create(&mut c, &p, web(&image)).await?;
    start(&mut c, &web).await?;
    // Its TERM trap is set once it says so: a stop before that would find none.
    let log = status(&mut c, &web).await.log_path;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("stdout F ready")) {
        anyhow::ensure!(Instant::now() < deadline, "web never said it was ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((e, image, c, p, web))
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_land_in_the_cgroup_and_update_live() -> anyhow::Result<()> {
    let (_e, _image, mut c, p, web) = running_web("limits").await?;
    assert_eq!(
        status(&mut c, &web).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    assert_eq!(
        std::fs::read_to_string(cgroup_dir(&p, &web).join("memory.limit_in_bytes"))?.trim(),
        (64u64 << 20).to_string()
    );
    let shares = Path::new("/sys/fs/cgroup/cpu,cpuacct")
        .join(&p.cgroup)
        .join(&web)
        .join("cpu.shares");
    if shares.exists() {
        assert_eq!(std::fs::read_to_string(shares)?.trim(), "256");
    }
    // Live resource update: the cgroup file changes and status reports the new value.
    let new = cri::LinuxContainerResources {
        memory_limit_in_bytes: 128 << 20,
        ..Default::default()
    };
    c.runtime
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: web.clone(),
            linux: Some(new),
            ..Default::default()
        })
        .await?;
    assert_eq!(
        std::fs::read_to_string(cgroup_dir(&p, &web).join("memory.limit_in_bytes"))?.trim(),
        (128u64 << 20).to_string()
    );
    let st = status(&mut c, &web).await;
    assert_eq!(
        st.resources
            .and_then(|r| r.linux)
            .map(|l| l.memory_limit_in_bytes),
        Some(128 << 20)
    );
    c.runtime.remove_pod_sandbox(req::remove_pod(&p.id)).await?;
    assert!(!cgroup_dir(&p, &web).exists());
    common::remove_cgroup_tree(p.cgroup.split('/').next().unwrap());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_returns_output_exit_code_and_honours_its_timeout() -> anyhow::Result<()> {
    let (_e, _image, mut c, p, web) = running_web("exec").await?;
    let r = c
        .runtime
        .exec_sync(req::sh(&web, "echo out; echo err >&2; exit 7", 10))
        .await?
        .into_inner();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 7)
    );
    let started = Instant::now();
    let err = c
        .runtime
        .exec_sync(req::exec(&web, &["/bin/sleep", "30"], 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(15));
    for _ in 0..20 {
        let r = c
            .runtime
            .exec_sync(req::exec(&web, &["/bin/true"], 5))
            .await?
            .into_inner();
        assert_eq!(r.exit_code, 0);
    }
    // The container's process starts with no blocked signals (nothing leaks from the shim).
    let r = c
        .runtime
        .exec_sync(req::exec(&web, &["/bin/cat", "/proc/1/status"], 5))
        .await?
        .into_inner();
    let st = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(st.lines().any(|l| l == "SigBlk:\t0000000000000000"), "{st}");
    remove_pod(&mut c, &p).await?;
    Ok(())
}

/// `n` bytes of `line` (16 bytes, newline included) repeated, as `yes <line> | head -c n` writes.
fn repeated(line: &str, n: usize) -> Vec<u8> {
    format!("{line}\n")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(n)
        .collect()
}

/// ExecSync output larger than one frame of the shim protocol (4 MiB) comes back whole up to
/// the cap of 16 MiB per stream; beyond it, it is cut at the cap (and logged), as containerd
/// does, and the command still runs to its end.
#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_returns_output_up_to_the_cap_and_truncates_beyond() -> anyhow::Result<()> {
    const MIB: usize = 1 << 20;
    let (e, _image, c, p, web) = running_web("bigexec").await?;
    // Both streams at their cap make an answer over kubelet's 16 MiB: read it all here.
    let mut runtime = c.runtime.clone().max_decoding_message_size(64 * MIB);
    for (mib, kept) in [(5, 5 * MIB), (20, 16 * MIB)] {
        let n = mib * MIB;
        let script = format!(
            "busybox yes 0123456789abcde 2>/dev/null | head -c {n}; busybox yes ABCDEFGHIJKLMNO 2>/dev/null | head -c {n} >&2; exit 3"
        );
        let r = runtime
            .exec_sync(req::sh(&web, &script, 60))
            .await
            .map_err(|s| anyhow::anyhow!("{mib} MiB: {s:?}"))?
            .into_inner();
        assert_eq!(r.exit_code, 3, "{mib} MiB");
        assert_eq!(r.stdout.len(), kept, "{mib} MiB stdout");
        assert_eq!(r.stderr.len(), kept, "{mib} MiB stderr");
        assert!(
            r.stdout == repeated("0123456789abcde", kept),
            "{mib} MiB stdout bytes"
        );
        assert!(
            r.stderr == repeated("ABCDEFGHIJKLMNO", kept),
            "{mib} MiB stderr bytes"
        );
    }
    assert!(
        e.daemon.log().contains("exec output truncated"),
        "the truncation is logged"
    );
    let mut c = c;
    remove_pod(&mut c, &p).await
}

/// The image can be removed while a container uses it: the container keeps its layers, and a
/// new container of it needs the image pulled again.
#[tokio::test(flavor = "multi_thread")]
async fn a_running_container_keeps_the_layers_of_a_removed_image() -> anyhow::Result<()> {
    let (e, image, mut c, p, web) = running_web("rmi").await?;
    let img_id = status(&mut c, &web).await.image_id;
    c.image.remove_image(req::remove_image(&image)).await?;
    c.image.remove_image(req::remove_image(&img_id)).await?;
    let r = c
        .runtime
        .exec_sync(req::exec(&web, &["/bin/cat", "/etc/passwd"], 5))
        .await?
        .into_inner();
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("nobody"),
        "rootfs still readable"
    );
    assert_eq!(
        common::count(&e.daemon.root.join("snapshots")) - 1,
        4,
        "the container's layers were kept"
    );
    let err = create(&mut c, &p, ctr("late", &image, &["/bin/true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    common::pull(&e.daemon, &image).await?;
    remove_pod(&mut c, &p).await?;
    Ok(())
}

/// Stop: SIGTERM is trapped and the container exits 0 well before the timeout; one that ignores
/// SIGTERM is killed at the timeout; removing the pod removes its containers.
#[tokio::test(flavor = "multi_thread")]
async fn stop_sends_sigterm_then_kills_at_the_timeout() -> anyhow::Result<()> {
    let (_e, image, mut c, p, web) = running_web("svc").await?;
    let f = cri::ContainerFilter {
        state: Some(cri::ContainerStateValue { state: 1 }),
        ..Default::default()
    };
    let running = c
        .runtime
        .list_containers(cri::ListContainersRequest { filter: Some(f) })
        .await?
        .into_inner()
        .containers;
    assert_eq!(
        running.iter().map(|x| x.id.clone()).collect::<Vec<_>>(),
        vec![web.clone()]
    );
    c.runtime.stop_container(req::stop(&web, 30)).await?;
    let s = status(&mut c, &web).await;
    assert_eq!(
        (s.state, s.exit_code),
        (cri::ContainerState::ContainerExited as i32, 0)
    );
    assert!(std::fs::read_to_string(&s.log_path)?.contains("stdout F bye"));
    c.runtime.stop_container(req::stop(&web, 30)).await?;

    let stubborn = create(
        &mut c,
        &p,
        ctr(
            "stubborn",
            &image,
            &[
                "/bin/sh",
                "-c",
                "trap '' TERM; while true; do sleep 0.1; done",
            ],
        ),
    )
    .await?;
    start(&mut c, &stubborn).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    c.runtime.stop_container(req::stop(&stubborn, 1)).await?;
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "killed before the timeout"
    );
    assert_eq!(status(&mut c, &stubborn).await.exit_code, 137);

    c.runtime.stop_pod_sandbox(req::stop_pod(&p.id)).await?;
    c.runtime.remove_pod_sandbox(req::remove_pod(&p.id)).await?;
    assert!(
        c.runtime
            .list_containers(cri::ListContainersRequest { filter: None })
            .await?
            .into_inner()
            .containers
            .is_empty()
    );
    assert!(!cgroup_dir(&p, &web).exists());
    common::remove_cgroup_tree(p.cgroup.split('/').next().unwrap());
    Ok(())
}

/// Requests that must fail, each with its code, leaving nothing behind.
#[tokio::test(flavor = "multi_thread")]
async fn bad_create_requests_fail_and_leave_nothing() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let p = pod(&mut c, "edge").await?;
    let before_mounts = common::mounts_of(&e.daemon);
    let err = create(&mut c, &p, ctr("x", "127.0.0.1:1/nope:v1", &["/bin/true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = c
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: "ab".repeat(32),
            config: Some(ctr("x", &image, &["/bin/true"])),
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let mut bad_mount = ctr("x", &image, &["/bin/true"]);
    bad_mount.mounts = vec![req::bind("../../etc", Path::new("/tmp"))];
    assert_eq!(
        create(&mut c, &p, bad_mount).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut bad_log = ctr("x", &image, &["/bin/true"]);
    bad_log.log_path = "../../../etc/cron.d/x".into();
    assert_eq!(
        create(&mut c, &p, bad_log).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    create(
        &mut c,
        &p,
        ctr(
            "dup",
            &image,
            &["/bin/sh", "-c", "while true; do sleep 0.1; done"],
        ),
    )
    .await?;
    assert_eq!(
        create(&mut c, &p, ctr("dup", &image, &["/bin/true"]))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    // Nothing from the failed creates: one rootfs mount (the good container) more than before.
    assert_eq!(common::mounts_of(&e.daemon), before_mounts + 1);
    assert_eq!(common::count(&e.daemon.root.join("containers")), 1);
    c.runtime.remove_pod_sandbox(req::remove_pod(&p.id)).await?;
    assert_eq!(common::mounts_of(&e.daemon), 0);
    common::remove_cgroup_tree(p.cgroup.split('/').next().unwrap());
    Ok(())
}

/// kelsond restarts (and crashes) while the container runs: it keeps running; it exits while
/// kelsond is down: the exit is reported after the restart.
#[tokio::test(flavor = "multi_thread")]
async fn containers_outlive_kelsond_and_their_exit_is_seen_after_restart() -> anyhow::Result<()> {
    let (mut e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let p = pod(&mut c, "restart").await?;
    let id = create(
        &mut c,
        &p,
        ctr(
            "dup",
            &image,
            &["/bin/sh", "-c", "while true; do sleep 0.1; done"],
        ),
    )
    .await?;
    start(&mut c, &id).await?;
    let pid_before = std::fs::read_to_string(
        e.daemon
            .state
            .join("containers")
            .join(&id)
            .join("shim/init.pid"),
    )?;
    e.daemon.crash()?;
    e.daemon.restart()?;
    let mut c = e.daemon.cri().await?;
    assert_eq!(
        status(&mut c, &id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    assert!(Path::new("/proc").join(pid_before.trim()).exists());
    e.daemon.stop()?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid_before.trim().parse()?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    e.daemon.restart()?;
    let mut c = e.daemon.cri().await?;
    let s = status(&mut c, &id).await;
    assert_eq!(
        (s.state, s.exit_code),
        (cri::ContainerState::ContainerExited as i32, 137)
    );
    c.runtime.remove_pod_sandbox(req::remove_pod(&p.id)).await?;
    assert_eq!(
        common::mounts_of(&e.daemon),
        0,
        "pod and container mounts all gone"
    );
    common::remove_cgroup_tree(p.cgroup.split('/').next().unwrap());
    Ok(())
}

/// Zombie processes inside the container: PID 1 (here `sleep`, as a master process that never
/// waits) inherits an orphan that then exits. Without an init nobody reaps it; with
/// `kelson.io/init: "true"` kelson-init is PID 1 and reaps it.
#[tokio::test(flavor = "multi_thread")]
async fn zombies_are_reaped_only_with_the_built_in_init() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let p = pod(&mut c, "zombies").await?;
    // The worker shells out a child, is killed with SIGKILL, its child is orphaned and exits.
    let script = "sh -c 'sh -c \"sleep 0.2\" & kill -9 $$' ; exec sleep 1000";
    let zombies = "for s in /proc/[0-9]*/stat; do read -r l < $s; case \"$l\" in *') Z '*) echo Z;; esac; done | wc -l";
    let mut counts = Vec::new();
    let mut stop_times = Vec::new();
    for init in ["false", "true"] {
        let mut cfg = ctr(
            &format!("master-{init}"),
            &image,
            &["/bin/sh", "-c", script],
        );
        cfg.annotations.insert("kelson.io/init".into(), init.into());
        let id = create(&mut c, &p, cfg).await?;
        start(&mut c, &id).await?;
        tokio::time::sleep(Duration::from_millis(800)).await;
        let r = c
            .runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["/bin/sh".into(), "-c".into(), zombies.into()],
                timeout: 10,
            })
            .await?
            .into_inner();
        counts.push(String::from_utf8_lossy(&r.stdout).trim().to_owned());
        // `sleep` as PID 1 ignores SIGTERM (no handler), so without init only SIGKILL at the
        // timeout stops it; with the init in front, SIGTERM is forwarded and stop is prompt.
        let t = Instant::now();
        c.runtime.stop_container(req::stop(&id, 2)).await?;
        stop_times.push(t.elapsed());
    }
    assert_eq!(counts, ["1", "0"], "zombies without and with kelson-init");
    assert!(
        // Without the init the kill comes at the end of the grace (90 % of the timeout).
        stop_times[0] >= Duration::from_millis(1800) && stop_times[1] < stop_times[0] / 2,
        "{stop_times:?}"
    );
    c.runtime.remove_pod_sandbox(req::remove_pod(&p.id)).await?;
    common::remove_cgroup_tree(p.cgroup.split('/').next().unwrap());
    Ok(())
}

/// A pod that shares its PID namespace: containers see each other's processes, and PID 1 is the
/// pod's holder (kelsond's own binary, no pause image), which also reaps orphans.
#[tokio::test(flavor = "multi_thread")]
async fn shared_pid_namespace_with_holder() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let p = pod(&mut c, "sharedpid").await?;
    let shared = |name: &str, cmd: &[&str]| {
        let mut cfg = ctr(name, &image, cmd);
        cfg.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        cfg
    };
    let a = create(
        &mut c,
        &p,
        shared("a", &["/bin/sh", "-c", "exec sleep 1000"]),
    )
    .await?;
    let b = create(
        &mut c,
        &p,
        shared("b", &["/bin/sh", "-c", "exec sleep 1001"]),
    )
    .await?;
    for id in [&a, &b] {
        start(&mut c, id).await?;
    }
    // The test image links only a few busybox applets; call the rest through busybox itself.
    let script = "busybox tr '\\0' ' ' < /proc/1/cmdline; echo; for f in /proc/[0-9]*/cmdline; do busybox tr '\\0' ' ' < $f; echo; done";
    let r = c
        .runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: b.clone(),
            cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
            timeout: 10,
        })
        .await?
        .into_inner();
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(
        out.lines().next().unwrap_or("").contains("pod-holder"),
        "PID 1 is the holder: {out} (exit {}, stderr {})",
        r.exit_code,
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(
        out.contains("sleep 1000") && out.contains("sleep 1001"),
        "both containers' processes visible: {out}"
    );
    c.runtime.stop_pod_sandbox(req::stop_pod(&p.id)).await?;
    for id in [&a, &b] {
        assert_eq!(
            status(&mut c, id).await.state,
            cri::ContainerState::ContainerExited as i32
        );
    }
    c.runtime.remove_pod_sandbox(req::remove_pod(&p.id)).await?;
    assert_eq!(common::mounts_of(&e.daemon), 0);
    common::remove_cgroup_tree(p.cgroup.split('/').next().unwrap());
    Ok(())
}

/// OOM kill is reported as OOMKilled (exit 137).
#[tokio::test(flavor = "multi_thread")]
async fn an_oom_kill_is_reported_as_oom_killed() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let p = pod(&mut c, "oom").await?;
    // A shell variable grows to ~64 MiB inside a 24 MiB memory limit.
    let mut hog = ctr(
        "hog",
        &image,
        &[
            "/bin/sh",
            "-c",
            "x=$(head -c 67108864 /dev/zero | busybox tr '\\0' a); echo survived",
        ],
    );
    let limits = req::resources(&mut hog);
    limits.memory_limit_in_bytes = 24 << 20;
    limits.memory_swap_limit_in_bytes = 24 << 20;
    let hog = create(&mut c, &p, hog).await?;
    start(&mut c, &hog).await?;
    let s = wait_exited(&mut c, &hog).await;
    assert_eq!(
        (s.exit_code, s.reason.as_str()),
        (137, "OOMKilled"),
        "{s:?}"
    );
    remove_pod(&mut c, &p).await
}

/// A container printing a line every 50 ms, `/dev/null` mapped in at `/dev/kelson-null`.
fn talker(image: &str) -> cri::ContainerConfig {
    let mut talk = ctr(
        "talk",
        image,
        &[
            "/bin/sh",
            "-c",
            "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.05; done",
        ],
    );
    talk.devices = vec![cri::Device {
        container_path: "/dev/kelson-null".into(),
        host_path: "/dev/null".into(),
        permissions: "rw".into(),
    }];
    talk
}

fn reopen(id: &str) -> cri::ReopenContainerLogRequest {
    cri::ReopenContainerLogRequest {
        container_id: id.into(),
    }
}

/// ReopenContainerLog follows kubelet's rotation; on an exited container it is a clear
/// FailedPrecondition.
#[tokio::test(flavor = "multi_thread")]
async fn reopen_container_log_follows_kubelets_rotation() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let p = pod(&mut c, "rotate").await?;
    // Log rotation: kubelet renames the file and asks for a reopen; new lines go to a new file.
    let talk = create(&mut c, &p, talker(&image)).await?;
    start(&mut c, &talk).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = status(&mut c, &talk).await.log_path;
    let rotated = format!("{log}.1");
    std::fs::rename(&log, &rotated)?;
    c.runtime.reopen_container_log(reopen(&talk)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = std::fs::read_to_string(&rotated)?;
    let new = std::fs::read_to_string(&log)?;
    assert!(
        old.contains("stdout F line 0") && !new.is_empty() && !new.contains("stdout F line 0\n"),
        "old:\n{old}\nnew:\n{new}"
    );
    // Reopen on an exited container is a clear FailedPrecondition.
    let done = create(&mut c, &p, ctr("done", &image, &["/bin/true"])).await?;
    start(&mut c, &done).await?;
    let s = wait_exited(&mut c, &done).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    let err = c
        .runtime
        .reopen_container_log(reopen(&done))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    remove_pod(&mut c, &p).await
}

/// A host device can be mapped in and works inside; a device path that is not a device is
/// refused.
#[tokio::test(flavor = "multi_thread")]
async fn host_devices_are_mapped_in_and_non_devices_refused() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let p = pod(&mut c, "devices").await?;
    let talk = create(&mut c, &p, talker(&image)).await?;
    start(&mut c, &talk).await?;
    // The mapped device works inside.
    let r = c
        .runtime
        .exec_sync(req::sh(&talk, "echo x > /dev/kelson-null && echo ok", 5))
        .await?
        .into_inner();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "ok\n",
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    // A device path that is not a device is refused.
    let mut bad = ctr("bad", &image, &["/bin/true"]);
    bad.devices = vec![cri::Device {
        container_path: "/dev/x".into(),
        host_path: "/etc/hostname".into(),
        permissions: "r".into(),
    }];
    assert_eq!(
        create(&mut c, &p, bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    remove_pod(&mut c, &p).await
}

/// A container that runs until stopped, with `mounts`.
fn idle_with(image: &str, mounts: Vec<cri::Mount>) -> cri::ContainerConfig {
    let mut cfg = ctr(
        "m",
        image,
        &["/bin/sh", "-c", "while true; do sleep 0.1; done"],
    );
    cfg.mounts = mounts;
    cfg
}

/// Bind mounts: read-write, read-only, and a missing host path created as a directory; exec
/// runs as the container does (the image's USER, nobody).
#[tokio::test(flavor = "multi_thread")]
async fn bind_mounts_are_writable_read_only_or_created() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let p = pod(&mut c, "mounts").await?;
    let host = tempfile::tempdir()?;
    std::fs::write(host.path().join("in.txt"), "from host\n")?;
    // The container runs as nobody (the image's USER): let it write here.
    std::fs::set_permissions(
        host.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )?;
    let missing = host.path().join("created-by-runtime");
    let mut ro = req::bind("/ro", host.path());
    ro.readonly = true;
    let cfg = idle_with(
        &image,
        vec![
            req::bind("/data", host.path()),
            ro,
            req::bind("/new", &missing),
        ],
    );
    let id = create(&mut c, &p, cfg).await?;
    assert!(
        missing.is_dir(),
        "a missing host path is created as a directory"
    );
    start(&mut c, &id).await?;
    let r = c
        .runtime
        .exec_sync(req::sh(&id, "id -u", 10))
        .await?
        .into_inner();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "65534\n",
        "exec runs as the container's user"
    );
    let r = c
        .runtime
        .exec_sync(req::sh(
            &id,
            "cat /data/in.txt; echo written > /data/out.txt; echo x > /ro/fail.txt || echo ro-refused",
            10,
        ))
        .await?
        .into_inner();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "from host\nro-refused\n",
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(host.path().join("out.txt"))?,
        "written\n"
    );
    assert!(!host.path().join("fail.txt").exists());
    remove_pod(&mut c, &p).await?;
    Ok(())
}

/// HostToContainer (rslave): a mount made on the host under a shared dir appears inside.
#[tokio::test(flavor = "multi_thread")]
async fn host_to_container_propagation_shows_later_host_mounts() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let p = pod(&mut c, "propagation").await?;
    let shared = tempfile::tempdir()?;
    // Propagation needs a shared mount on the host side (as kubelet documents for
    // HostToContainer): make the directory its own shared mount point.
    nix::mount::mount(
        Some(shared.path()),
        shared.path(),
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )?;
    nix::mount::mount(
        None::<&str>,
        shared.path(),
        None::<&str>,
        nix::mount::MsFlags::MS_SHARED,
        None::<&str>,
    )?;
    let _unmount = scopeguard_umount(shared.path());
    let mut m = req::bind("/shared", shared.path());
    m.propagation = cri::MountPropagation::PropagationHostToContainer as i32;
    let id = create(&mut c, &p, idle_with(&image, vec![m])).await?;
    start(&mut c, &id).await?;
    let sub = shared.path().join("sub");
    std::fs::create_dir(&sub)?;
    nix::mount::mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )?;
    std::fs::write(sub.join("late.txt"), "propagated")?;
    let r = c
        .runtime
        .exec_sync(req::sh(&id, "cat /shared/sub/late.txt", 10))
        .await?
        .into_inner();
    nix::mount::umount2(&sub, nix::mount::MntFlags::MNT_DETACH)?;
    assert_eq!(String::from_utf8_lossy(&r.stdout), "propagated");
    remove_pod(&mut c, &p).await?;
    Ok(())
}

/// The image's STOPSIGNAL (SIGUSR1; SIGTERM is ignored by this image) is what stop sends, so
/// stop is prompt and clean.
#[tokio::test(flavor = "multi_thread")]
async fn stop_sends_the_images_stopsignal() -> anyhow::Result<()> {
    let (e, _) = common::env_standard().await?;
    let stop_img = kelson_testkit::Image::new(
        vec![
            kelson_testkit::TestImages::busybox_layer()?,
            kelson_testkit::TestImages::etc_layer(),
        ],
        "amd64",
        false,
        serde_json::json!({"Cmd": ["/bin/sh", "-c", "trap 'echo got-usr1; exit 0' USR1; trap '' TERM; while true; do sleep 0.1; done"], "StopSignal": "SIGUSR1"}),
    );
    kelson_testkit::Pusher::new(&e.registry)?
        .image("test/stopsignal", "v1", &stop_img)
        .await?;
    let stop_ref = format!("{}/test/stopsignal:v1", e.registry.host);
    common::pull(&e.daemon, &stop_ref).await?;
    let mut c = e.daemon.cri().await?;
    let p = pod(&mut c, "stopsignal").await?;
    let s_id = create(&mut c, &p, ctr("stopsig", &stop_ref, &[])).await?;
    start(&mut c, &s_id).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    c.runtime.stop_container(req::stop(&s_id, 20)).await?;
    assert!(t.elapsed() < Duration::from_secs(10));
    let s = status(&mut c, &s_id).await;
    assert_eq!(s.exit_code, 0);
    assert!(std::fs::read_to_string(&s.log_path)?.contains("stdout F got-usr1"));
    remove_pod(&mut c, &p).await?;
    Ok(())
}

/// `kill -9` of a shim: the container is reported exited with a clear reason, what still ran
/// in its cgroup is killed; stop and removal succeed and leave nothing.
#[tokio::test(flavor = "multi_thread")]
async fn shim_killed() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let p = pod(&mut c, "shimkill").await?;
    let id = create(&mut c, &p, ctr("victim", &image, &["/bin/sleep", "3600"])).await?;
    start(&mut c, &id).await?;
    let dir = e.daemon.state.join("containers").join(&id).join("shim");
    let shim: i32 = std::fs::read_to_string(dir.join("shim.pid"))?
        .trim()
        .parse()?;
    let init: i32 = std::fs::read_to_string(dir.join("init.pid"))?
        .trim()
        .parse()?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = status(&mut c, &id).await;
    assert_eq!(
        (s.state, s.reason.as_str(), s.exit_code),
        (cri::ContainerState::ContainerExited as i32, "ShimGone", 255),
        "{s:?}"
    );
    assert!(s.message.contains("shim"), "{}", s.message);
    // Reported exited means exited: nothing of the container runs on unobserved.
    let gone = || {
        std::fs::read_to_string(format!("/proc/{init}/status"))
            .map(|st| st.contains("State:\tZ"))
            .unwrap_or(true)
    };
    for _ in 0..200 {
        if gone() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        gone(),
        "the container's processes were killed with its shim gone"
    );
    // (Emptied, or already gone.)
    let procs =
        std::fs::read_to_string(cgroup_dir(&p, &id).join("cgroup.procs")).unwrap_or_default();
    assert!(
        procs.lines().all(
            |pid| std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))
                .map(|st| st.contains("State:\tZ"))
                .unwrap_or(true)
        ),
        "cgroup emptied: {procs}"
    );
    // Stop and remove still succeed and leave nothing.
    c.runtime.stop_container(req::stop(&id, 10)).await?;
    c.runtime.remove_container(req::remove(&id)).await?;
    assert!(!cgroup_dir(&p, &id).exists());
    c.runtime.remove_pod_sandbox(req::remove_pod(&p.id)).await?;
    assert_eq!(common::mounts_of(&e.daemon), 0);
    common::remove_cgroup_tree(p.cgroup.split('/').next().unwrap());
    Ok(())
}

async fn next(
    s: &mut tonic::Streaming<cri::ContainerEventResponse>,
) -> cri::ContainerEventResponse {
    use futures::StreamExt;
    tokio::time::timeout(Duration::from_secs(20), s.next())
        .await
        .expect("an event within 20 s")
        .expect("stream open")
        .expect("no stream error")
}

/// A GetContainerEvents subscription.
async fn subscribe(c: &mut Cri) -> anyhow::Result<tonic::Streaming<cri::ContainerEventResponse>> {
    Ok(c.runtime
        .get_container_events(cri::GetEventsRequest {})
        .await?
        .into_inner())
}

/// Remove the pod: no mount of this daemon's is left, and the test's cgroup tree goes.
async fn remove_pod_counting_mounts(c: &mut Cri, e: &common::Env, p: &Pod) -> anyhow::Result<()> {
    c.runtime.remove_pod_sandbox(req::remove_pod(&p.id)).await?;
    assert_eq!(common::mounts_of(&e.daemon), 0);
    common::remove_cgroup_tree(p.cgroup.split('/').next().unwrap());
    Ok(())
}

/// GetContainerEvents as evented PLEG uses it: two subscribers see created → started →
/// stopped → deleted with the pod's and containers' statuses; a subscriber that never reads
/// holds nothing up.
#[tokio::test(flavor = "multi_thread")]
async fn container_events_for_evented_pleg() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let mut a = subscribe(&mut c).await?;
    let mut b = subscribe(&mut c).await?;
    // Subscribed and never read: must not slow anything down.
    let _idle = subscribe(&mut c).await?;
    let p = pod(&mut c, "events").await?;
    let id = create(&mut c, &p, ctr("ev", &image, &["/bin/sleep", "3600"])).await?;
    start(&mut c, &id).await?;
    c.runtime.stop_container(req::stop(&id, 0)).await?;
    c.runtime.remove_container(req::remove(&id)).await?;
    use cri::ContainerEventType as T;
    for s in [&mut a, &mut b] {
        let mut seen = Vec::new();
        for want in [
            T::ContainerCreatedEvent,
            T::ContainerStartedEvent,
            T::ContainerStoppedEvent,
            T::ContainerDeletedEvent,
        ] {
            let ev = next(s).await;
            assert_eq!(ev.container_id, id);
            assert_eq!(ev.container_event_type, want as i32, "after {seen:?}");
            assert!(ev.created_at > 0);
            let ps = ev.pod_sandbox_status.as_ref().expect("pod status");
            assert_eq!(ps.id, p.id);
            let mine: Vec<_> = ev
                .containers_statuses
                .iter()
                .filter(|st| st.id == id)
                .collect();
            if want == T::ContainerDeletedEvent {
                assert!(mine.is_empty(), "a deleted container has no status");
            } else {
                let st = mine.first().expect("the container's status");
                let state = match want {
                    T::ContainerCreatedEvent => cri::ContainerState::ContainerCreated,
                    T::ContainerStartedEvent => cri::ContainerState::ContainerRunning,
                    _ => cri::ContainerState::ContainerExited,
                };
                assert_eq!(st.state, state as i32, "{want:?}");
            }
            seen.push(want);
        }
    }
    remove_pod_counting_mounts(&mut c, &e, &p).await
}

/// A container that exits by itself: its stopped event comes from the exit watcher, with the
/// exit code, without any StopContainer.
#[tokio::test(flavor = "multi_thread")]
async fn a_container_exiting_by_itself_sends_its_stopped_event() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let mut a = subscribe(&mut c).await?;
    let p = pod(&mut c, "events-exit").await?;
    let quick = create(
        &mut c,
        &p,
        ctr("quick", &image, &["/bin/sh", "-c", "exit 3"]),
    )
    .await?;
    start(&mut c, &quick).await?;
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let ev = next(&mut a).await;
        assert_eq!(ev.container_id, quick);
        if ev.container_event_type == cri::ContainerEventType::ContainerStoppedEvent as i32 {
            let st = ev
                .containers_statuses
                .iter()
                .find(|s| s.id == quick)
                .expect("status");
            assert_eq!(st.exit_code, 3);
        }
        kinds.push(ev.container_event_type);
    }
    assert_eq!(kinds, vec![0, 1, 2]);
    c.runtime.remove_container(req::remove(&quick)).await?;
    remove_pod_counting_mounts(&mut c, &e, &p).await
}

/// Restart kelsond with a running container: the exit watcher is re-armed and reports the exit.
#[tokio::test(flavor = "multi_thread")]
async fn exit_watchers_are_rearmed_after_a_kelsond_restart() -> anyhow::Result<()> {
    let (mut e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let p = pod(&mut c, "events-restart").await?;
    let long = create(&mut c, &p, ctr("long", &image, &["/bin/sleep", "3600"])).await?;
    start(&mut c, &long).await?;
    e.daemon.restart()?;
    let mut c = e.daemon.cri().await?;
    let mut after = subscribe(&mut c).await?;
    let init: i32 = std::fs::read_to_string(
        e.daemon
            .state
            .join("containers")
            .join(&long)
            .join("shim/init.pid"),
    )?
    .trim()
    .parse()?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let ev = next(&mut after).await;
    assert_eq!(
        (ev.container_id.as_str(), ev.container_event_type),
        (
            long.as_str(),
            cri::ContainerEventType::ContainerStoppedEvent as i32
        )
    );
    c.runtime.remove_container(req::remove(&long)).await?;
    remove_pod_counting_mounts(&mut c, &e, &p).await
}

/// Every process exit sends SIGCHLD to the shim; a status request the shim is reading at that
/// moment must still be answered (a socket read with a timeout is never restarted after a
/// signal). Before the fix, such a request got an error and the container read as ShimGone.
#[tokio::test(flavor = "multi_thread")]
async fn status_stays_right_while_execs_exit() -> anyhow::Result<()> {
    let port = common::free_port();
    let e = common::env_config(&format!("[metrics]\naddress = \"127.0.0.1:{port}\"\n")).await?;
    let image = format!("{}/test/standard:v1", e.registry.host);
    common::pull(&e.daemon, &image).await?;
    let mut c = e.daemon.cri().await?;
    let p = pod(&mut c, "sigchld").await?;
    let id = create(&mut c, &p, ctr("busy", &image, &["/bin/sleep", "3600"])).await?;
    start(&mut c, &id).await?;
    let mut execs = c.clone();
    let exec_id = id.clone();
    let storm = tokio::spawn(async move {
        for _ in 0..150 {
            execs
                .runtime
                .exec_sync(cri::ExecSyncRequest {
                    container_id: exec_id.clone(),
                    cmd: vec!["/bin/true".into()],
                    timeout: 10,
                })
                .await?;
        }
        anyhow::Ok(())
    });
    let mut polls = 0;
    while !storm.is_finished() {
        let st = c
            .runtime
            .container_status(req::status(&id))
            .await?
            .into_inner()
            .status
            .expect("status");
        assert_eq!(
            (st.state, st.reason.as_str()),
            (cri::ContainerState::ContainerRunning as i32, ""),
            "after {polls} polls"
        );
        polls += 1;
    }
    storm.await??;
    assert!(polls > 10, "statuses polled during the execs: {polls}");

    // The metrics endpoint saw all of it: one live shim, one running container, every call.
    let (code, body) = common::http_get(port, "/metrics")?;
    assert_eq!(code, 200, "{body}");
    let get = |series: &str| common::sample(&body, series);
    assert_eq!(get("kelson_shims"), Some(1.0), "{body}");
    assert_eq!(get("kelson_containers{state=\"running\"}"), Some(1.0));
    assert_eq!(get("kelson_pod_sandboxes{state=\"ready\"}"), Some(1.0));
    assert_eq!(
        get("kelson_cri_request_duration_seconds_count{method=\"ExecSync\"}"),
        Some(150.0)
    );
    assert_eq!(
        get("kelson_cri_request_duration_seconds_count{method=\"ContainerStatus\"}"),
        Some(polls as f64)
    );
    assert!(
        get("kelson_image_pull_bytes_total").unwrap_or(0.0) > 1e6,
        "layers were pulled"
    );
    assert_eq!(
        get("kelson_image_pull_duration_seconds_count{result=\"success\"}"),
        Some(1.0)
    );
    // An error is counted with its code; an unknown path is a 404; a client that connects and
    // says nothing does not stop the next scrape.
    let err = c
        .runtime
        .container_status(req::status(&"ab".repeat(32)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let _silent = std::net::TcpStream::connect(("127.0.0.1", port))?;
    let (_, body) = common::http_get(port, "/metrics")?;
    assert_eq!(
        common::sample(
            &body,
            "kelson_cri_request_errors_total{method=\"ContainerStatus\",code=\"NotFound\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(common::http_get(port, "/other")?.0, 404);
    c.runtime.remove_pod_sandbox(req::remove_pod(&p.id)).await?;
    assert_eq!(common::mounts_of(&e.daemon), 0);
    common::remove_cgroup_tree(p.cgroup.split('/').next().unwrap());
    Ok(())
}

/// Every record in a CRI log is whole: `<time> <stream> <P|F> <content>`, newline-terminated.
/// With `settled` false, the file is being written to: a last record still being written (a
/// reader can see half of a write) is left out.
fn parse_log(text: &str, settled: bool) -> Vec<String> {
    let text = if settled {
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "torn last record: {:?}",
            &text[text.len().saturating_sub(300)..]
        );
        text
    } else {
        &text[..text.rfind('\n').map(|i| i + 1).unwrap_or(0)]
    };
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, ' ').collect();
            assert!(
                f.len() == 4
                    && f[0].ends_with('Z')
                    && matches!(f[1], "stdout" | "stderr")
                    && matches!(f[2], "P" | "F"),
                "malformed record {l:?}"
            );
            f[3].to_owned()
        })
        .collect()
}

fn last_number(lines: &[String]) -> Option<u64> {
    lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("line ")?.split(' ').next()?.parse().ok())
}

/// The log directory fills up while a container writes: records are dropped whole (no torn
/// line), the container keeps running, and logging resumes by itself once space returns.
#[tokio::test(flavor = "multi_thread")]
async fn logging_survives_a_full_disk() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let p = pod(&mut c, "fulllog").await?;
    let logs = p.logs.path().to_owned();
    nix::mount::mount(
        Some("tmpfs"),
        &logs,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=512k"),
    )?;
    let unmount = scopeguard_umount(&logs);
    // Leave about 48 KiB free.
    let free = |p: &Path| {
        let s = nix::sys::statvfs::statvfs(p).unwrap();
        s.blocks_available() as u64 * s.fragment_size() as u64
    };
    let filler = logs.join("filler");
    std::fs::write(&filler, vec![0u8; (free(&logs) - 48 * 1024) as usize])?;
    let id = create(
        &mut c,
        &p,
        ctr(
            "writer",
            &image,
            &[
                "/bin/sh",
                "-c",
                "i=0; while :; do echo \"line $i padding-padding-padding-padding-padding\"; i=$((i+1)); done",
            ],
        ),
    )
    .await?;
    start(&mut c, &id).await?;
    let log = logs.join("writer/0.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while free(&logs) > 8 * 1024 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(free(&logs) <= 8 * 1024, "the log filled the disk");
    // Full for a while: records are dropped, never torn.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let full = parse_log(&std::fs::read_to_string(&log)?, true);
    let n_full = last_number(&full).expect("lines before the disk filled");

    std::fs::remove_file(&filler)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut resumed = None;
    while std::time::Instant::now() < deadline {
        let lines = parse_log(&std::fs::read_to_string(&log)?, false);
        if let Some(n) = last_number(&lines).filter(|n| *n > n_full + 100) {
            resumed = Some(n);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(resumed.is_some(), "logging resumed after space returned");
    let st = c
        .runtime
        .container_status(req::status(&id))
        .await?
        .into_inner()
        .status
        .unwrap();
    assert_eq!(
        st.state,
        cri::ContainerState::ContainerRunning as i32,
        "{} {} {}; daemon: {}; shim log: {}",
        st.exit_code,
        st.reason,
        st.message,
        e.daemon.log(),
        std::fs::read_to_string(
            e.daemon
                .state
                .join("containers")
                .join(&id)
                .join("shim/shim.log")
        )
        .unwrap_or_default()
    );
    c.runtime.remove_pod_sandbox(req::remove_pod(&p.id)).await?;
    drop(unmount);
    common::remove_cgroup_tree(p.cgroup.split('/').next().unwrap());
    Ok(())
}

/// Unmounts `path` (lazily) when dropped, also when the test fails.
fn scopeguard_umount(path: &Path) -> impl Drop {
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    Umount(path.to_owned())
}
