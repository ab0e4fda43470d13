//! RuntimeClass handlers: Debian's runc and crun as OCI-runtime handlers next to the native
//! default, driven by the same shim — logs, exec, exit codes, stop, restarts of kelsond — and
//! handlers that do not exist or are not installed refused by name.

mod common;

use std::path::Path;

use anyhow::Context;
use k8s_cri::v1 as cri;
use kelson_testkit::cri as req;

const HANDLERS: &str = r#"
[runtimes.runc]
type = "oci"
path = "/usr/sbin/runc"

[runtimes.crun]
type = "oci"
path = "/usr/bin/crun"

[runtimes.missing]
type = "oci"
path = "/nonexistent/runsc"
"#;

/// What the OCI runtime itself says of the container (`<runtime> --root R state ID`).
fn runtime_state(binary: &str, root: &Path, id: &str) -> Option<serde_json::Value> {
    let out = std::process::Command::new(binary)
        .arg("--root")
        .arg(root)
        .args(["state", id])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

#[tokio::test(flavor = "multi_thread")]
async fn runc_and_crun_run_containers_through_the_shim() -> anyhow::Result<()> {
    let mut e = common::env_config(HANDLERS).await?;
    let image = common::pull_standard(&e).await?;
    let mut c = e.daemon.cri().await?;

    // Status lists every handler, the native default first.
    let status = c.runtime.status(req::runtime_status()).await?.into_inner();
    let names: Vec<&str> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, ["", "crun", "missing", "runc"]);

    let top = format!("kelson-handlers-{}", std::process::id());
    let logs = tempfile::tempdir()?;
    let mut running = Vec::new();
    for (handler, binary) in [("runc", "/usr/sbin/runc")] {
        let root = e.daemon.state.join("runtimes").join(handler);
        let cfg = common::pod_config(
            handler,
            "default",
            &format!("/{top}/{handler}"),
            logs.path(),
        );
        let pod = common::run_pod_with(&mut c, &cfg, handler).await?;
        let pod_status = c
            .runtime
            .pod_sandbox_status(req::pod_status(&pod))
            .await?
            .into_inner()
            .status
            .context("no pod status")?;
        assert_eq!(pod_status.runtime_handler, handler);

        // A long-running container: its output in the CRI log, the runtime's own state says
        // it runs it, exec works with the container's user, seccomp is the runtime's.
        let mut ctr = common::container_config(
            "main",
            &image,
            &[
                "/bin/busybox",
                "sh",
                "-c",
                &format!("echo hello from {handler}; exec /bin/sleep 3600"),
            ],
        );
        ctr.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                seccomp: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = common::create_start(&mut c, &pod, &cfg, ctr)
            .await
            .with_context(|| format!("a container under {handler}"))?;
        let st = runtime_state(binary, &root, &id)
            .with_context(|| format!("{handler} does not know {id}"))?;
        assert_eq!(st["status"], "running", "{handler}: {st}");
        let log = logs.path().join(handler).join("main.log");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&format!("stdout F hello from {handler}"))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{handler}: nothing logged"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let (code, out, err) =
            common::exec_sync(&mut c, &id, &["/bin/busybox", "id", "-u"]).await?;
        assert_eq!(
            (code, out.trim()),
            (0, "65534"),
            "{handler}: exec runs as the image's USER: {err}"
        );
        let (code, _, _) =
            common::exec_sync(&mut c, &id, &["/bin/busybox", "sh", "-c", "exit 3"]).await?;
        assert_eq!(code, 3, "{handler}: an exec's exit code");
        let (_, st, _) = common::exec_sync(
            &mut c,
            &id,
            &["/bin/busybox", "grep", "Seccomp:", "/proc/self/status"],
        )
        .await?;
        assert!(st.contains('2'), "{handler}: exec'd process filtered: {st}");
        running.push((handler, binary, root.clone(), pod.clone(), id.clone()));

        // A container that ends by itself: its exit code and reason.
        let quick =
            common::container_config("quick", &image, &["/bin/busybox", "sh", "-c", "exit 7"]);
        let qid = common::create_start(&mut c, &pod, &cfg, quick).await?;
        let s = common::wait_exited(&mut c, &qid).await?;
        assert_eq!((s.exit_code, s.reason.as_str()), (7, "Error"), "{handler}");
        c.runtime.remove_container(req::remove(&qid)).await?;
        assert!(
            runtime_state(binary, &root, &qid).is_none(),
            "{handler} still has {qid}"
        );
        assert!(
            !e.daemon
                .state
                .join("engine")
                .join(format!("{qid}.runtime.json"))
                .exists()
        );
    }

    // A user-namespaced pod under runc: kelson makes the namespaces and the idmapped layers,
    // runc joins them.
    {
        let ns = kelson_testkit::pod_userns(65536 * 50);
        let mut cfg = common::pod_config("uns", "default", &format!("/{top}/uns"), logs.path());
        cfg.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(ns.clone()),
            ..Default::default()
        });
        let pod = common::run_pod_with(&mut c, &cfg, "runc").await?;
        let mut ctr = common::container_config("u", &image, &["/bin/sleep", "3600"]);
        ctr.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(ns),
                run_as_user: Some(cri::Int64Value { value: 0 }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = common::create_start(&mut c, &pod, &cfg, ctr).await?;
        let (_, map, _) =
            common::exec_sync(&mut c, &id, &["/bin/busybox", "cat", "/proc/self/uid_map"]).await?;
        assert_eq!(
            map.split_whitespace().collect::<Vec<_>>(),
            ["0", &(65536 * 50).to_string(), "65536"]
        );
        let (_, owner, _) = common::exec_sync(
            &mut c,
            &id,
            &["/bin/busybox", "stat", "-c", "%u", "/bin/busybox"],
        )
        .await?;
        assert_eq!(owner.trim(), "0", "idmapped layers under runc");
        c.runtime.remove_pod_sandbox(req::remove_pod(&pod)).await?;
    }

    // kelsond killed and restarted: containers of both runtimes run on and are controlled.
    e.daemon.crash()?;
    e.daemon.restart()?;
    let mut c = e.daemon.cri().await?;
    for (handler, binary, root, pod, id) in &running {
        let s = common::container_status(&mut c, id).await?;
        assert_eq!(
            s.state,
            cri::ContainerState::ContainerRunning as i32,
            "{handler} after restart"
        );
        c.runtime.stop_container(req::stop(id, 1)).await?;
        let s = common::wait_exited(&mut c, id).await?;
        // sleep as PID 1 ignores SIGTERM: killed at the timeout.
        assert_eq!(s.exit_code, 137, "{handler}: SIGKILL after the grace");
        c.runtime.remove_pod_sandbox(req::remove_pod(pod)).await?;
        assert!(
            runtime_state(binary, root, id).is_none(),
            "{handler} still has {id}"
        );
    }

    // crun: runs where it accepts the host's cgroups. crun 1.8 refuses every container on a
    // cgroup v1 host whose v2 hierarchy has a controller (this machine's has hugetlb), even
    // with its cgroup manager disabled: then the runtime's own reason comes back by name and
    // nothing is left.
    let cfg = common::pod_config("crun", "default", &format!("/{top}/crun"), logs.path());
    let pod = common::run_pod_with(&mut c, &cfg, "crun").await?;
    match common::create_start(
        &mut c,
        &pod,
        &cfg,
        common::container_config("c", &image, &["/bin/sleep", "3600"]),
    )
    .await
    {
        Ok(id) => {
            let st = runtime_state("/usr/bin/crun", &e.daemon.state.join("runtimes/crun"), &id);
            assert_eq!(st.context("crun does not know it")?["status"], "running");
        }
        Err(err) => {
            let s = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
            assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
            assert!(s.message().contains("/usr/bin/crun: "), "{s:?}");
            println!("crun here: {}", s.message());
        }
    }
    c.runtime.remove_pod_sandbox(req::remove_pod(&pod)).await?;

    // Unknown handlers and uninstalled runtimes are refused by name, leaving nothing.
    let cfg = common::pod_config("nope", "default", &format!("/{top}/nope"), logs.path());
    let err = common::run_pod_with(&mut c, &cfg, "gvisor")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("gvisor"), "{err:?}");
    let pod = common::run_pod_with(&mut c, &cfg, "missing").await?;
    let err = c
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(common::container_config("c", &image, &["/bin/true"])),
            sandbox_config: Some(cfg.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("/nonexistent/runsc"), "{err:?}");
    c.runtime.remove_pod_sandbox(req::remove_pod(&pod)).await?;
    assert_eq!(common::mounts_of(&e.daemon), 0);
    assert_eq!(
        common::count(&e.daemon.state.join("engine")),
        0,
        "engine state left"
    );
    common::remove_cgroup_tree(&top);
    Ok(())
}
