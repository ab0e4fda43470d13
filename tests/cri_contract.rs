//! The CRI contract where kubelet (and critest) rely on it: idempotent verbs for ids kelson never
//! made, a missing command failing StartContainer (not CreateContainer), RunAsGroup needing a
//! user, the process's groups as containerd sets them, HOSTNAME and host-network hostnames,
//! Bidirectional mount propagation, and Localhost seccomp profiles by kubelet's absolute path.

mod common;

use std::time::Duration;

use anyhow::Context;
use k8s_cri::v1 as cri;
use kelson_testkit::cri as req;
use kelson_testkit::daemon::Cri;
use tonic::Code;

/// A pod with its own cgroup tree and log dir under `logs`.
async fn pod(
    c: &mut Cri,
    name: &str,
    logs: &std::path::Path,
) -> anyhow::Result<(String, cri::PodSandboxConfig, String)> {
    let top = format!("kelson-contract-{}-{name}", std::process::id());
    let cfg = common::pod_config(name, "default", &format!("/{top}/p"), logs);
    let id = common::run_pod(c, &cfg).await?;
    Ok((id, cfg, top))
}

/// A daemon with the standard image pulled and one pod `name` running in it.
struct World {
    e: common::Env,
    image: String,
    c: Cri,
    logs: tempfile::TempDir,
    pod: String,
    cfg: cri::PodSandboxConfig,
    top: String,
}

async fn world(name: &str) -> anyhow::Result<World> {
    let e = common::env().await?;
    let image = common::pull_standard(&e).await?;
    let mut c = e.daemon.cri().await?;
    let logs = tempfile::tempdir()?;
    let (pod, cfg, top) = pod(&mut c, name, logs.path()).await?;
    Ok(World {
        e,
        image,
        c,
        logs,
        pod,
        cfg,
        top,
    })
}

async fn remove_pod(c: &mut Cri, id: &str, top: &str) -> anyhow::Result<()> {
    c.runtime.remove_pod_sandbox(req::remove_pod(id)).await?;
    common::remove_cgroup_tree(top);
    Ok(())
}

fn security(ctr: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    ctr.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// Stop and Remove of pods and containers kelson never made — a UUID, as critest sends, upper
/// case, a path — succeed; asking for their status is NotFound; an empty id is refused.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_ids_of_any_shape_are_not_found() -> anyhow::Result<()> {
    let e = common::env().await?;
    let mut c = e.daemon.cri().await?;
    let foreign = [
        "0b5d5a0e-7c1c-4f4e-9a52-3c1b2f1e8f00",
        "ABCDEF",
        "../../etc",
        &"f".repeat(65),
    ];
    for id in foreign {
        c.runtime
            .stop_pod_sandbox(req::stop_pod(id))
            .await
            .with_context(|| format!("StopPodSandbox {id}"))?;
        c.runtime
            .remove_pod_sandbox(req::remove_pod(id))
            .await
            .with_context(|| format!("RemovePodSandbox {id}"))?;
        c.runtime
            .stop_container(req::stop(id, 1))
            .await
            .with_context(|| format!("StopContainer {id}"))?;
        c.runtime
            .remove_container(req::remove(id))
            .await
            .with_context(|| format!("RemoveContainer {id}"))?;
        let s = c
            .runtime
            .container_status(req::status(id))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::NotFound, "{id}: {s:?}");
        let s = c
            .runtime
            .pod_sandbox_status(req::pod_status(id))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::NotFound, "{id}: {s:?}");
    }
    let s = c
        .runtime
        .container_status(req::status(""))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    Ok(())
}

/// kubelet creates, then starts, and backs off on start failures: a command that does not exist
/// (or cannot be executed) is created fine and fails StartContainer with the reason; the
/// container is then exited with StartError, and removal leaves nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_command_fails_at_start() -> anyhow::Result<()> {
    let World {
        e,
        image,
        mut c,
        logs: _logs,
        pod,
        cfg,
        top,
    } = world("startfail").await?;
    for (name, cmd, why) in [
        ("missing", "no-such-command", "not found"),
        ("abs-missing", "/no/such/command", "no-such"),
        // A file that is not executable.
        ("not-exec", "/etc/passwd", "permission"),
    ] {
        let id = common::create(
            &mut c,
            &pod,
            &cfg,
            common::container_config(name, &image, &[cmd]),
        )
        .await
        .with_context(|| format!("CreateContainer {cmd} must succeed"))?;
        let st = common::container_status(&mut c, &id).await?;
        assert_eq!(st.state, cri::ContainerState::ContainerCreated as i32);
        let err = c
            .runtime
            .start_container(req::start(&id))
            .await
            .unwrap_err();
        assert!(
            err.message().to_lowercase().contains(why) || err.message().contains(cmd),
            "{cmd}: {err:?}"
        );
        let st = common::container_status(&mut c, &id).await?;
        assert_eq!(
            st.state,
            cri::ContainerState::ContainerExited as i32,
            "{st:?}"
        );
        assert_eq!(st.reason, "StartError", "{st:?}");
        assert_eq!(st.exit_code, 128);
        assert!(st.message.contains(cmd), "{st:?}");
        // A second start is refused: the container has exited.
        let again = c
            .runtime
            .start_container(req::start(&id))
            .await
            .unwrap_err();
        assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
        c.runtime.remove_container(req::remove(&id)).await?;
    }
    // A good command in the same pod still starts (nothing was left in the way).
    let id = common::create_start(
        &mut c,
        &pod,
        &cfg,
        common::container_config("good", &image, &["/bin/sleep", "60"]),
    )
    .await?;
    let st = common::container_status(&mut c, &id).await?;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    remove_pod(&mut c, &pod, &top).await?;
    assert_eq!(common::mounts_of(&e.daemon), 0, "mounts left behind");
    Ok(())
}

/// A stop returns within its timeout even when the container ignores the stop signal (critest
/// and other callers wait exactly that long): SIGKILL comes just before the deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_returns_by_its_deadline() -> anyhow::Result<()> {
    let World {
        e: _e,
        image,
        mut c,
        logs: _logs,
        pod,
        cfg,
        top,
    } = world("stopper").await?;
    let id = common::create_start(
        &mut c,
        &pod,
        &cfg,
        common::container_config(
            "stubborn",
            &image,
            &[
                "/bin/sh",
                "-c",
                "trap '' TERM; while true; do /bin/sleep 1; done",
            ],
        ),
    )
    .await?;
    let timeout = Duration::from_secs(4);
    let t = std::time::Instant::now();
    c.runtime
        .stop_container(req::stop(&id, timeout.as_secs() as i64))
        .await?;
    let took = t.elapsed();
    assert!(
        took < timeout,
        "StopContainer took {took:?} for a {timeout:?} timeout"
    );
    assert!(
        took.as_secs_f64() > timeout.as_secs_f64() * 0.7,
        "the container was killed before its grace period: {took:?}"
    );
    let st = common::container_status(&mut c, &id).await?;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 137);
    remove_pod(&mut c, &pod, &top).await?;
    Ok(())
}

/// (name, run_as_user, run_as_username, strict, `id -G`, the groups ContainerStatus reports)
type GroupCase = (
    &'static str,
    Option<i64>,
    &'static str,
    bool,
    &'static str,
    Vec<i64>,
);

/// `id -G` in container `id` and the user ContainerStatus reports for it.
async fn groups_of(c: &mut Cri, id: &str) -> anyhow::Result<(String, cri::LinuxContainerUser)> {
    let (code, out, err) = common::exec_sync(c, id, &["/bin/busybox", "id", "-G"]).await?;
    anyhow::ensure!(code == 0, "id -G: {err}");
    let st = common::container_status(c, id).await?;
    let u = st
        .user
        .and_then(|u| u.linux)
        .context("status has the user")?;
    Ok((out.trim().to_owned(), u))
}

/// A container `name` of `image` sleeping as `uid` with the request's supplemental `groups`.
fn sleeper_with_groups(
    name: &str,
    image: &str,
    uid: Option<i64>,
    groups: Vec<i64>,
) -> cri::ContainerConfig {
    let mut ctr = common::container_config(name, image, &["/bin/sleep", "60"]);
    let sc = security(&mut ctr);
    sc.run_as_user = uid.map(|value| cri::Int64Value { value });
    sc.supplemental_groups = groups;
    ctr
}

/// The process's groups as containerd sets them and ContainerStatus reports them: the primary
/// gid, the image's groups for the user (Merge) and the request's; Strict leaves out the
/// image's.
#[tokio::test(flavor = "multi_thread")]
async fn groups_as_containerd_sets_them() -> anyhow::Result<()> {
    use kelson_testkit::TarBuilder;
    let e = common::env().await?;
    // An image whose default user (uid 1000, gid 1000) belongs to group 50000 in /etc/group.
    let etc = TarBuilder::new()
        .dir("etc", 0o755)
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\ndefault-user:x:1000:1000::/home:/bin/sh\n",
        )
        .file(
            "etc/group",
            0o644,
            b"root:x:0:\ndefault-user:x:1000:\ngroup-in-image:x:50000:default-user\n",
        )
        .finish();
    let image = common::push_with_layer(
        &e,
        "test/groups",
        "v1",
        etc,
        serde_json::json!({"User": "1000"}),
    )
    .await?;
    let mut c = e.daemon.cri().await?;
    let logs = tempfile::tempdir()?;
    let (pod, cfg, top) = pod(&mut c, "groups", logs.path()).await?;
    let merged = || vec![1000, 1234, 50000];
    let cases: [GroupCase; 5] = [
        // (name, run_as_user, run_as_username, strict, `id -G`, status groups)
        ("merge", None, "", false, "1000 1234 50000", merged()),
        ("strict", None, "", true, "1000 1234", vec![1000, 1234]),
        ("by-uid", Some(1000), "", false, "1000 1234 50000", merged()),
        (
            "by-name",
            None,
            "default-user",
            false,
            "1000 1234 50000",
            merged(),
        ),
        // A uid the image does not know: gid 0 and the request's groups.
        (
            "unknown-uid",
            Some(4242),
            "",
            false,
            "0 1234",
            vec![0, 1234],
        ),
    ];
    for (name, uid, username, strict, want_id, want_status) in cases {
        let mut ctr = sleeper_with_groups(name, &image, uid, vec![1234]);
        let sc = security(&mut ctr);
        sc.run_as_username = username.into();
        if strict {
            sc.supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
        }
        let id = common::create_start(&mut c, &pod, &cfg, ctr)
            .await
            .with_context(|| name.to_owned())?;
        let (ids, user) = groups_of(&mut c, &id).await?;
        assert_eq!(ids, want_id, "{name}: id -G");
        let mut got = user.supplemental_groups.clone();
        got.sort();
        assert_eq!(got, want_status, "{name}: ContainerStatus.user");
    }
    remove_pod(&mut c, &pod, &top).await
}

/// The image without a group file: the primary gid and the request's groups.
#[tokio::test(flavor = "multi_thread")]
async fn groups_without_a_group_file_are_the_primary_gid_and_the_requests() -> anyhow::Result<()> {
    use kelson_testkit::TarBuilder;
    let e = common::env().await?;
    let bare = TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/passwd", 0o644, b"u:x:1000:1000::/:/bin/sh\n")
        .file("etc/.wh.group", 0o644, b"")
        .finish();
    let bare =
        common::push_with_layer(&e, "test/nogroup", "v1", bare, serde_json::json!({})).await?;
    let mut t = common::TestPod::start(e, "kelson-contract-nogroup", "nogroup").await?;
    let ctr = sleeper_with_groups("no-group-entry", &bare, Some(1000), vec![77]);
    let id = t.run(ctr).await?;
    let (ids, _) = groups_of(&mut t.c, &id).await?;
    assert_eq!(ids, "1000 77");
    t.remove().await
}

/// RunAsGroup without RunAsUser (or a username) is refused by name.
#[tokio::test(flavor = "multi_thread")]
async fn run_as_group_without_a_user_is_refused() -> anyhow::Result<()> {
    let mut w = world("group-only").await?;
    let mut ctr = common::container_config("group-only", &w.image, &["/bin/sleep", "60"]);
    security(&mut ctr).run_as_group = Some(cri::Int64Value { value: 1002 });
    let err = common::create(&mut w.c, &w.pod, &w.cfg, ctr)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("run_as_group"), "{err:?}");
    remove_pod(&mut w.c, &w.pod, &w.top).await
}

/// HOSTNAME is the pod's hostname (the node's for a host-network pod), and may be replaced by
/// the request; a host-network pod cannot be given a hostname of its own.
#[tokio::test(flavor = "multi_thread")]
async fn hostnames_as_kubelet_expects() -> anyhow::Result<()> {
    let World {
        e: _e,
        image,
        mut c,
        logs,
        pod,
        cfg,
        top,
    } = world("named-pod").await?;
    let id = common::create_start(
        &mut c,
        &pod,
        &cfg,
        common::container_config("env", &image, &["/bin/sleep", "60"]),
    )
    .await?;
    let (_, env, _) = common::exec_sync(&mut c, &id, &["/bin/busybox", "env"]).await?;
    assert!(env.lines().any(|l| l == "HOSTNAME=named-pod"), "{env}");
    let (_, name, _) = common::exec_sync(&mut c, &id, &["/bin/busybox", "hostname"]).await?;
    assert_eq!(name.trim(), "named-pod");
    let mut ctr = common::container_config("env2", &image, &["/bin/sleep", "60"]);
    ctr.envs = vec![cri::KeyValue {
        key: "HOSTNAME".into(),
        value: "given".into(),
    }];
    let id = common::create_start(&mut c, &pod, &cfg, ctr).await?;
    let (_, env, _) = common::exec_sync(&mut c, &id, &["/bin/busybox", "env"]).await?;
    assert_eq!(
        env.lines()
            .filter(|l| l.starts_with("HOSTNAME="))
            .collect::<Vec<_>>(),
        ["HOSTNAME=given"]
    );
    remove_pod(&mut c, &pod, &top).await?;

    // Host network: the node's hostname, and no other.
    let node = nix::unistd::gethostname()?
        .into_string()
        .unwrap_or_default();
    let host_net = |hostname: &str| {
        let mut cfg = common::pod_config(
            "host-net",
            "default",
            &format!("/kelson-contract-{}-hn/p", std::process::id()),
            logs.path(),
        );
        cfg.hostname = hostname.into();
        cfg.linux
            .get_or_insert_with(Default::default)
            .security_context = Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        cfg
    };
    let err = common::run_pod(&mut c, &host_net("not-the-node"))
        .await
        .unwrap_err();
    let s = err
        .downcast_ref::<tonic::Status>()
        .context("a gRPC status")?;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("not-the-node"), "{s:?}");
    let cfg = host_net("");
    let pod = common::run_pod(&mut c, &cfg).await?;
    let id = common::create_start(
        &mut c,
        &pod,
        &cfg,
        common::container_config("hn", &image, &["/bin/sleep", "60"]),
    )
    .await?;
    let (_, name, _) = common::exec_sync(&mut c, &id, &["/bin/busybox", "hostname"]).await?;
    assert_eq!(name.trim(), node);
    let (_, env, _) = common::exec_sync(&mut c, &id, &["/bin/busybox", "env"]).await?;
    assert!(
        env.lines().any(|l| l == format!("HOSTNAME={node}")),
        "{env}"
    );
    remove_pod(
        &mut c,
        &pod,
        &format!("kelson-contract-{}-hn", std::process::id()),
    )
    .await?;
    Ok(())
}

/// A privileged pod `name` (its cgroup in `kelson-contract-<name>-<pid>`) and the standard image.
async fn privileged_pod(name: &str) -> anyhow::Result<(common::TestPod, String)> {
    let (e, image) = common::env_standard().await?;
    let logs = tempfile::tempdir()?;
    let top = format!("kelson-contract-{name}-{}", std::process::id());
    let mut cfg = common::pod_config(name, "default", &format!("/{top}/p"), logs.path());
    cfg.linux
        .get_or_insert_with(Default::default)
        .security_context = Some(cri::LinuxSandboxSecurityContext {
        privileged: true,
        ..Default::default()
    });
    Ok((
        common::TestPod::with_config(e, top, logs, cfg).await?,
        image,
    ))
}

/// `dir` bind-mounted on itself with `propagation` (MS_SHARED or MS_PRIVATE), unmounted when
/// the guard drops.
fn own_mount(dir: &std::path::Path, propagation: nix::mount::MsFlags) -> anyhow::Result<Unmount> {
    use nix::mount::{MsFlags, mount};
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
    let guard = Unmount(vec![dir.to_owned()]);
    mount(None::<&str>, dir, None::<&str>, propagation, None::<&str>)?;
    Ok(guard)
}

/// A privileged container `name` sleeping with `host` mounted at `at` with `propagation`.
fn with_propagation(
    name: &str,
    image: &str,
    at: &str,
    host: &std::path::Path,
    propagation: cri::MountPropagation,
) -> cri::ContainerConfig {
    let mut ctr = common::container_config(name, image, &["/bin/sleep", "600"]);
    ctr.mounts = vec![cri::Mount {
        propagation: propagation as i32,
        ..common::bind(at, host)
    }];
    security(&mut ctr).privileged = true;
    ctr
}

/// Bidirectional: a mount made inside the container under the volume appears on the host, and
/// one made on the host appears inside.
#[tokio::test(flavor = "multi_thread")]
async fn bidirectional_mounts_reach_the_host() -> anyhow::Result<()> {
    let (mut t, image) = privileged_pod("bidi").await?;
    // The host side: a directory made its own shared mount (as kubelet's pods dir is).
    let shared = tempfile::tempdir()?;
    let _unmount = own_mount(shared.path(), nix::mount::MsFlags::MS_SHARED)?;
    std::fs::create_dir(shared.path().join("from-container"))?;
    std::fs::create_dir(shared.path().join("from-host"))?;
    let mut ctr = with_propagation(
        "bidi",
        &image,
        "/mnt/bidi",
        shared.path(),
        cri::MountPropagation::PropagationBidirectional,
    );
    security(&mut ctr).run_as_user = Some(cri::Int64Value { value: 0 });
    let id = t.run(ctr).await?;
    let (code, _, err) = common::exec_sync(
        &mut t.c,
        &id,
        &[
            "/bin/sh",
            "-c",
            "/bin/busybox mount -t tmpfs tmpfs /mnt/bidi/from-container && echo made-inside > /mnt/bidi/from-container/f",
        ],
    )
    .await?;
    assert_eq!(code, 0, "mount inside the container: {err}");
    let inside = shared.path().join("from-container/f");
    let mut seen = String::new();
    for _ in 0..50 {
        if let Ok(s) = std::fs::read_to_string(&inside) {
            seen = s;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen, "made-inside\n",
        "the container's mount did not reach the host"
    );
    nix::mount::mount(
        Some("tmpfs"),
        &shared.path().join("from-host"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )?;
    std::fs::write(shared.path().join("from-host/g"), "made-outside\n")?;
    let (_, out, _) = common::exec_sync(
        &mut t.c,
        &id,
        &["/bin/busybox", "cat", "/mnt/bidi/from-host/g"],
    )
    .await?;
    assert_eq!(out, "made-outside\n");
    t.c.runtime.remove_container(req::remove(&id)).await?;
    for d in ["from-container", "from-host"] {
        let _ = nix::mount::umount2(&shared.path().join(d), nix::mount::MntFlags::MNT_DETACH);
    }
    let e = remove_test_pod(t).await?;
    assert_eq!(common::mounts_of(&e.daemon), 0, "mounts left behind");
    Ok(())
}

/// A private source cannot carry Bidirectional (nor HostToContainer): refused by name instead
/// of silently propagating nothing.
#[tokio::test(flavor = "multi_thread")]
async fn propagation_from_a_private_source_is_refused_by_name() -> anyhow::Result<()> {
    let (mut t, image) = privileged_pod("private").await?;
    let private = tempfile::tempdir()?;
    let _unmount = own_mount(private.path(), nix::mount::MsFlags::MS_PRIVATE)?;
    for p in [
        cri::MountPropagation::PropagationBidirectional,
        cri::MountPropagation::PropagationHostToContainer,
    ] {
        let ctr = with_propagation("private", &image, "/mnt/p", private.path(), p);
        let err = common::create(&mut t.c, &t.pod, &t.cfg, ctr)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message().contains("/mnt/p") && err.message().contains("shared"),
            "{err:?}"
        );
    }
    let e = remove_test_pod(t).await?;
    assert_eq!(common::mounts_of(&e.daemon), 0, "mounts left behind");
    Ok(())
}

/// RemovePodSandbox and the test's cgroup tree: the daemon, to look at what is left.
async fn remove_test_pod(mut t: common::TestPod) -> anyhow::Result<common::Env> {
    remove_pod(&mut t.c, &t.pod, &t.top).await?;
    Ok(t.e)
}

struct Unmount(Vec<std::path::PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// kubelet resolves a Localhost seccomp profile under its own root (which an operator can
/// move) and sends the absolute path: with no confinement root configured (the default), a
/// profile anywhere applies; a relative reference has nothing to be relative to.
#[tokio::test(flavor = "multi_thread")]
async fn localhost_seccomp_by_absolute_path() -> anyhow::Result<()> {
    let World {
        e: _e,
        image,
        mut c,
        logs: _logs,
        pod,
        cfg,
        top,
    } = world("seccomp-abs").await?;
    let kubelet_root = tempfile::tempdir()?;
    let profile = kubelet_root.path().join("seccomp/no-mkdir.json");
    std::fs::create_dir_all(profile.parent().unwrap())?;
    std::fs::write(
        &profile,
        br#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )?;
    let with = |name: &str, r: &str| {
        let mut ctr = common::container_config(name, &image, &["/bin/sleep", "60"]);
        let sc = security(&mut ctr);
        sc.run_as_user = Some(cri::Int64Value { value: 0 });
        sc.seccomp = Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Localhost as i32,
            localhost_ref: r.into(),
        });
        ctr
    };
    let id = common::create_start(
        &mut c,
        &pod,
        &cfg,
        with("abs", &profile.display().to_string()),
    )
    .await?;
    let (code, _, _) = common::exec_sync(&mut c, &id, &["/bin/busybox", "mkdir", "/tmp/x"]).await?;
    assert_ne!(code, 0, "the profile did not apply");
    let (code, _, err) =
        common::exec_sync(&mut c, &id, &["/bin/busybox", "touch", "/tmp/y"]).await?;
    assert_eq!(code, 0, "{err}");
    let err = common::create(&mut c, &pod, &cfg, with("rel", "no-mkdir.json"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("absolute"), "{err:?}");
    remove_pod(&mut c, &pod, &top).await?;
    Ok(())
}
