//! The shim's handling of a container's stdio on the real kernel: how unterminated and long
//! output is framed in the CRI log file (byte for byte), ExecSync of a command that leaves a
//! child holding its output, and stdio a user-namespaced pod's root (and image VOLUMEs) can use.

mod common;

use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_cri::v1 as cri;
use kelson_testkit::cri as req;
use kelson_testkit::daemon::Cri;

/// Records of a CRI log file: (stream, tag, content), each timestamp checked.
fn records(log: &str) -> anyhow::Result<Vec<(String, String, String)>> {
    anyhow::ensure!(log.is_empty() || log.ends_with('\n'), "torn last record");
    log.lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let ts = f.next().unwrap_or("");
            anyhow::ensure!(
                ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes().get(10) == Some(&b'T'),
                "timestamp {ts:?} in {l:?}"
            );
            let stream = f.next().context("no stream")?.to_owned();
            let tag = f.next().context("no tag")?.to_owned();
            Ok((stream, tag, f.next().unwrap_or("").to_owned()))
        })
        .collect()
}

/// What kubelet shows for `stream`: `P` records joined, a newline after each `F` record.
fn kubelet_view(recs: &[(String, String, String)], stream: &str) -> String {
    let mut out = String::new();
    for (s, tag, content) in recs.iter().filter(|r| r.0 == stream) {
        assert!(s == "stdout" || s == "stderr");
        out.push_str(content);
        if tag == "F" {
            out.push('\n');
        }
    }
    out
}

async fn start_in(
    c: &mut Cri,
    pod: &str,
    cfg: &cri::PodSandboxConfig,
    ctr: cri::ContainerConfig,
) -> anyhow::Result<String> {
    common::create_start(c, pod, cfg, ctr).await
}

async fn remove_pod(c: &mut Cri, pod: &str, top: &str) -> anyhow::Result<()> {
    c.runtime.stop_pod_sandbox(req::stop_pod(pod)).await?;
    c.runtime.remove_pod_sandbox(req::remove_pod(pod)).await?;
    common::remove_cgroup_tree(top);
    Ok(())
}

/// The pod's CRI log file of container `name`.
fn log_of(logs: &std::path::Path, pod: &str, name: &str) -> std::path::PathBuf {
    logs.join(pod).join(format!("{name}.log"))
}

#[tokio::test(flavor = "multi_thread")]
async fn unterminated_output_is_logged_as_partial_records() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let top = format!("kelson-shimio-p-{}", std::process::id());
    let logs = tempfile::tempdir()?;
    let cfg = common::pod_config("partial", "default", &format!("/{top}/p"), logs.path());
    let pod = common::run_pod(&mut c, &cfg).await?;
    // stdout: a whole line, then one without its newline. stderr: one line longer than a
    // record may be (16 KiB), never terminated.
    let id = start_in(
        &mut c,
        &pod,
        &cfg,
        common::container_config(
            "p",
            &image,
            &[
                "/bin/sh",
                "-c",
                "echo first; printf tail; head -c 16500 /dev/zero | busybox tr '\\0' x >&2",
            ],
        ),
    )
    .await?;
    let s = common::wait_exited(&mut c, &id).await?;
    assert_eq!(s.exit_code, 0, "{s:?}");
    let log = std::fs::read_to_string(log_of(logs.path(), "partial", "p"))?;
    let recs = records(&log)?;
    let stdout: Vec<_> = recs.iter().filter(|r| r.0 == "stdout").collect();
    let of = |s: &str, t: &str, c: &str| (s.to_owned(), t.to_owned(), c.to_owned());
    assert_eq!(
        stdout,
        [&of("stdout", "F", "first"), &of("stdout", "P", "tail")]
    );
    let stderr: Vec<(&str, usize)> = recs
        .iter()
        .filter(|r| r.0 == "stderr")
        .map(|r| (r.1.as_str(), r.2.len()))
        .collect();
    assert_eq!(stderr, [("P", 16384), ("P", 116)]);
    assert!(
        recs.iter()
            .all(|r| r.0 != "stderr" || r.2.bytes().all(|b| b == b'x'))
    );
    // kubelet shows exactly the bytes the container wrote, with no newline added at the end.
    assert_eq!(kubelet_view(&recs, "stdout"), "first\ntail");
    assert_eq!(kubelet_view(&recs, "stderr"), "x".repeat(16500));
    remove_pod(&mut c, &pod, &top).await
}

async fn exec_sync(
    c: &mut Cri,
    id: &str,
    script: &str,
    timeout: i64,
) -> Result<(cri::ExecSyncResponse, Duration), tonic::Status> {
    let t0 = Instant::now();
    let r = c
        .runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
            timeout,
        })
        .await?
        .into_inner();
    Ok((r, t0.elapsed()))
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_returns_when_a_background_child_keeps_its_output() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let top = format!("kelson-shimio-x-{}", std::process::id());
    let logs = tempfile::tempdir()?;
    let cfg = common::pod_config("bgexec", "default", &format!("/{top}/x"), logs.path());
    let pod = common::run_pod(&mut c, &cfg).await?;
    let id = start_in(
        &mut c,
        &pod,
        &cfg,
        common::container_config("main", &image, &["/bin/sleep", "3600"]),
    )
    .await?;
    const TIMEOUT: i64 = 30;
    const BACKGROUND: &str = "sleep 31536000";

    // The command exits at once; its background child keeps stdout and stderr open for a year.
    let mut held = c.clone();
    let held_id = id.clone();
    let exec = tokio::spawn(async move {
        exec_sync(
            &mut held,
            &held_id,
            &format!("echo started; echo also >&2; {BACKGROUND} &"),
            TIMEOUT,
        )
        .await
    });
    // Meanwhile the shim answers everything else: state (ContainerStatus asks the shim) and a
    // second exec, which finishes first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (quick, quick_took) = exec_sync(&mut c, &id, "echo quick", TIMEOUT).await?;
    assert_eq!(
        (quick.exit_code, quick.stdout.as_slice()),
        (0, &b"quick\n"[..])
    );
    assert!(
        !exec.is_finished(),
        "the held exec answered before the quick one"
    );
    let mut slowest_status = Duration::ZERO;
    while !exec.is_finished() {
        let t0 = Instant::now();
        let st = common::container_status(&mut c, &id).await?;
        slowest_status = slowest_status.max(t0.elapsed());
        assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (r, took) = exec.await??;
    assert_eq!(
        (r.exit_code, r.stdout.as_slice(), r.stderr.as_slice()),
        (0, &b"started\n"[..], &b"also\n"[..]),
        "{r:?}"
    );
    // Answered after the bounded drain, far sooner than the request's timeout (let alone
    // the child's year), and the other calls each took a fraction of it.
    let timeout = Duration::from_secs(TIMEOUT as u64);
    assert!(took * 5 < timeout, "ExecSync took {took:?}");
    assert!(
        slowest_status * 4 < took && quick_took * 2 < took,
        "status took up to {slowest_status:?}, a quick exec {quick_took:?}, the held exec {took:?}"
    );
    // A background child that lets go of the output costs no drain at all.
    let (free, free_took) = exec_sync(
        &mut c,
        &id,
        &format!("{BACKGROUND} >/dev/null 2>&1 &"),
        TIMEOUT,
    )
    .await?;
    assert_eq!(free.exit_code, 0);
    assert!(
        free_took * 2 < took,
        "a child without the output: {free_took:?}, one with it: {took:?}"
    );
    // Both children go on running in the container, as with runc.
    let (ps, _) = exec_sync(&mut c, &id, "ps -o args", TIMEOUT).await?;
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert_eq!(
        ps.lines().filter(|l| l.trim() == BACKGROUND).count(),
        2,
        "{ps}"
    );
    let st = common::container_status(&mut c, &id).await?;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    remove_pod(&mut c, &pod, &top).await
}

/// kubelet's mapping for this file's user-namespaced pod (a multiple of 65536 no other test
/// file uses).
const USERNS_HOST_BASE: u32 = 65536 * 53;

/// Run as `uid` in the user-namespaced pod.
fn in_userns(mut ctr: cri::ContainerConfig, uid: i64) -> cri::ContainerConfig {
    let linux = ctr.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    sc.run_as_user = Some(cri::Int64Value { value: uid });
    sc.namespace_options = Some(kelson_testkit::pod_userns(USERNS_HOST_BASE));
    ctr
}

/// The user-namespaced pod `name` (its cgroup in the tree `kelson-shimio-<prefix>-<pid>`) and
/// an image declaring VOLUMEs: one the image lacks (with a missing parent), one it has.
async fn userns_pod(prefix: &str, name: &str) -> anyhow::Result<(common::TestPod, String)> {
    let e = common::env().await?;
    let image = common::push_with_layer(
        &e,
        "test/volumes-userns",
        "v1",
        kelson_testkit::TarBuilder::new()
            .dir("srv", 0o755)
            .file("srv/kept", 0o644, b"image\n")
            .finish(),
        serde_json::json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"],
            "Volumes": {"/cache/data": {}, "/srv": {}}}),
    )
    .await?;
    let top = format!("kelson-shimio-{prefix}-{}", std::process::id());
    let logs = tempfile::tempdir()?;
    let mut cfg = common::pod_config(name, "default", &format!("/{top}/u"), logs.path());
    cfg.linux.as_mut().context("linux")?.security_context =
        Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(kelson_testkit::pod_userns(USERNS_HOST_BASE)),
            ..Default::default()
        });
    Ok((
        common::TestPod::with_config(e, top, logs, cfg).await?,
        image,
    ))
}

/// The pod's root container `root`: it reopens its stdio, writes both image volumes and
/// sleeps. Its expected stdout and stderr.
const ROOT_SCRIPT: &str = "echo hi > /dev/stdout; echo err > /dev/stderr; \
                           echo vol > /cache/data/f && cat /cache/data/f; \
                           echo more >> /srv/kept && cat /srv/kept; exec sleep 3600";
const ROOT_STDOUT: &str = "hi\nvol\nimage\nmore\n";

/// Start `ROOT_SCRIPT` as the pod's root (kelsond's log printed if that fails): its id.
async fn start_root(t: &mut common::TestPod, image: &str) -> anyhow::Result<String> {
    let ctr = in_userns(
        common::container_config("root", image, &["/bin/sh", "-c", ROOT_SCRIPT]),
        0,
    );
    match t.run(ctr).await {
        Ok(id) => Ok(id),
        Err(err) => {
            println!("{}", t.e.daemon.log());
            Err(err.context("a container in a user-namespaced pod"))
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn user_namespaced_non_root_user_can_reopen_its_stdio() -> anyhow::Result<()> {
    let (mut t, image) = userns_pod("n", "userns-user").await?;
    let user = t
        .run(in_userns(
            common::container_config(
                "user",
                &image,
                &["/bin/sh", "-c", "id -u > /dev/stdout; echo e > /dev/stderr"],
            ),
            1000,
        ))
        .await?;
    let s = common::wait_exited(&mut t.c, &user).await?;
    let user_log = std::fs::read_to_string(log_of(t.logs.path(), "userns-user", "user"))?;
    assert_eq!(s.exit_code, 0, "{user_log}");
    let recs = records(&user_log)?;
    assert_eq!(kubelet_view(&recs, "stdout"), "1000\n", "{user_log}");
    assert_eq!(kubelet_view(&recs, "stderr"), "e\n", "{user_log}");
    t.remove().await
}

#[tokio::test(flavor = "multi_thread")]
async fn user_namespaced_root_can_reopen_its_stdio_and_write_image_volumes() -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let (mut t, image) = userns_pod("u", "userns-io").await?;
    let root = start_root(&mut t, &image).await?;
    let path = log_of(t.logs.path(), "userns-io", "root");
    let deadline = Instant::now() + Duration::from_secs(20);
    let recs = loop {
        let recs = records(&std::fs::read_to_string(&path).unwrap_or_default())?;
        if kubelet_view(&recs, "stdout") == ROOT_STDOUT || Instant::now() > deadline {
            break recs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (
            kubelet_view(&recs, "stdout").as_str(),
            kubelet_view(&recs, "stderr").as_str()
        ),
        (ROOT_STDOUT, "err\n"),
        "{recs:?}"
    );
    let st = common::container_status(&mut t.c, &root).await?;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    // The volume kelson made is the pod's root's on the host, as is the copy of /srv.
    let rootfs = t.e.daemon.dir.path().join("root/containers").join(&root);
    let made = std::fs::metadata(rootfs.join("upper/cache/data/f"))?;
    assert_eq!(
        (made.uid(), made.gid()),
        (USERNS_HOST_BASE, USERNS_HOST_BASE)
    );
    // An exec'd command's stdio (the shim's pipes for ExecSync) too.
    let (r, _) = exec_sync(
        &mut t.c,
        &root,
        "echo out > /dev/stdout; echo err > /dev/stderr; id -u",
        20,
    )
    .await?;
    assert_eq!(
        (r.exit_code, r.stdout.as_slice(), r.stderr.as_slice()),
        (0, &b"out\n0\n"[..], &b"err\n"[..]),
        "{r:?}"
    );
    // The container's stdout on the host: the pod root's pipe, still closed to everyone else.
    let info =
        t.c.runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: root.clone(),
                verbose: true,
            })
            .await?
            .into_inner()
            .info;
    let info: serde_json::Value = serde_json::from_str(info.get("info").context("no info")?)?;
    let pid = info["pid"].as_u64().context("no pid")?;
    for fd in [1, 2] {
        let m = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))?;
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()));
        assert_eq!((m.uid(), m.gid()), (USERNS_HOST_BASE, USERNS_HOST_BASE));
        assert_eq!(m.mode() & 0o077, 0, "fd {fd}: mode {:o}", m.mode());
    }
    t.remove().await
}
