//! RuntimeClass handlers: Debian's runc and crun as OCI-runtime handlers next to the native
//! default, driven by the same shim — logs, exec, exit codes, stop, restarts of kelsond — and
//! handlers that do not exist or are not installed refused by name.

mod common;

use std::path::{Path, PathBuf};

use anyhow::Context;
use k8s_cri::v1 as cri;
use kelson_testkit::cri as req;
use kelson_testkit::daemon::Cri;

const HANDLERS: &str = r#"
[runtimes.runc]
type = "oci"
path = "/usr/sbin/runc"
pod_annotations = ["io.kelson.test.pod/*"]
container_annotations = ["io.kelson.test.ctr"]

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

/// kelsond with the handlers above and the standard image pulled; the test's pods in the cgroup
/// tree `kelson-handlers-<test>-<pid>`, their logs in `logs`.
struct Handlers {
    e: common::Env,
    image: String,
    c: Cri,
    top: String,
    logs: tempfile::TempDir,
}

impl Handlers {
    async fn start(test: &str) -> anyhow::Result<Handlers> {
        let e = common::env_config(HANDLERS).await?;
        let image = common::pull_standard(&e).await?;
        let c = e.daemon.cri().await?;
        Ok(Handlers {
            e,
            image,
            c,
            top: format!("kelson-handlers-{test}-{}", std::process::id()),
            logs: tempfile::tempdir()?,
        })
    }

    /// A pod `name` for this test (not yet run).
    fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        common::pod_config(
            name,
            "default",
            &format!("/{}/{name}", self.top),
            self.logs.path(),
        )
    }

    /// Where `handler` keeps its state (its `--root`).
    fn runtime_root(&self, handler: &str) -> PathBuf {
        self.e.daemon.state.join("runtimes").join(handler)
    }

    /// A pod under `handler` running `main`: a shell saying `hello from <handler>`, then
    /// sleeping, under the runtime's default seccomp profile: (pod config, pod, container).
    async fn hello(
        &mut self,
        handler: &str,
    ) -> anyhow::Result<(cri::PodSandboxConfig, String, String)> {
        let cfg = self.pod_config(handler);
        let pod = common::run_pod_with(&mut self.c, &cfg, handler).await?;
        let mut ctr = common::container_config(
            "main",
            &self.image,
            &[
                "/bin/busybox",
                "sh",
                "-c",
                &format!("echo hello from {handler}; exec /bin/sleep 3600"),
            ],
        );
        req::security(&mut ctr).seccomp = Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        });
        let id = common::create_start(&mut self.c, &pod, &cfg, ctr)
            .await
            .with_context(|| format!("a container under {handler}"))?;
        Ok((cfg, pod, id))
    }

    /// Wait (10 s at most) for `line` on stdout in the log of container `ctr` of pod `pod`.
    async fn wait_logged(&self, pod: &str, ctr: &str, line: &str) {
        let log = self.logs.path().join(pod).join(format!("{ctr}.log"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&format!("stdout F {line}"))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{pod}: nothing logged"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Nothing left below kelsond's dirs (mounts, the engine's state), then the cgroup tree.
    fn finish(self) {
        assert_eq!(common::mounts_of(&self.e.daemon), 0);
        assert_eq!(
            common::count(&self.e.daemon.state.join("engine")),
            0,
            "engine state left"
        );
        common::remove_cgroup_tree(&self.top);
    }
}

/// runc as a RuntimeClass handler, one scenario around a restart of kelsond. A long-running
/// container: the pod reports its handler, the output is in the CRI log, runc's own state says
/// it runs it, exec works with the image's user and exit codes, seccomp is the runtime's. A
/// container that ends by itself: its exit code and reason, and removing it removes runc's
/// state. kelsond killed and restarted: the running container runs on and is still controlled.
#[tokio::test(flavor = "multi_thread")]
async fn runc_handler_runs_containers_that_outlive_a_kelsond_restart() -> anyhow::Result<()> {
    let (handler, binary) = ("runc", "/usr/sbin/runc");
    let mut h = Handlers::start("runc").await?;
    let root = h.runtime_root(handler);
    let (cfg, pod, id) = h.hello(handler).await?;

    // The long-running container.
    let pod_status =
        h.c.runtime
            .pod_sandbox_status(req::pod_status(&pod))
            .await?
            .into_inner()
            .status
            .context("no pod status")?;
    assert_eq!(pod_status.runtime_handler, handler);
    let st = runtime_state(binary, &root, &id)
        .with_context(|| format!("{handler} does not know {id}"))?;
    assert_eq!(st["status"], "running", "{handler}: {st}");
    h.wait_logged(handler, "main", &format!("hello from {handler}"))
        .await;
    let (code, out, err) = common::exec_sync(&mut h.c, &id, &["/bin/busybox", "id", "-u"]).await?;
    assert_eq!(
        (code, out.trim()),
        (0, "65534"),
        "{handler}: exec runs as the image's USER: {err}"
    );
    let (code, _, _) =
        common::exec_sync(&mut h.c, &id, &["/bin/busybox", "sh", "-c", "exit 3"]).await?;
    assert_eq!(code, 3, "{handler}: an exec's exit code");
    let (_, st, _) = common::exec_sync(
        &mut h.c,
        &id,
        &["/bin/busybox", "grep", "Seccomp:", "/proc/self/status"],
    )
    .await?;
    assert!(st.contains('2'), "{handler}: exec'd process filtered: {st}");

    // A container that ends by itself.
    let quick =
        common::container_config("quick", &h.image, &["/bin/busybox", "sh", "-c", "exit 7"]);
    let qid = common::create_start(&mut h.c, &pod, &cfg, quick).await?;
    let s = common::wait_exited(&mut h.c, &qid).await?;
    assert_eq!((s.exit_code, s.reason.as_str()), (7, "Error"), "{handler}");
    h.c.runtime.remove_container(req::remove(&qid)).await?;
    assert!(
        runtime_state(binary, &root, &qid).is_none(),
        "{handler} still has {qid}"
    );
    let engine_file = format!("{qid}.runtime.json");
    assert!(!h.e.daemon.state.join("engine").join(engine_file).exists());

    // kelsond killed and restarted.
    h.e.daemon.crash()?;
    h.e.daemon.restart()?;
    h.c = h.e.daemon.cri().await?;
    let s = common::container_status(&mut h.c, &id).await?;
    assert_eq!(
        s.state,
        cri::ContainerState::ContainerRunning as i32,
        "{handler} after restart"
    );
    h.c.runtime.stop_container(req::stop(&id, 1)).await?;
    let s = common::wait_exited(&mut h.c, &id).await?;
    // sleep as PID 1 ignores SIGTERM: killed at the timeout.
    assert_eq!(s.exit_code, 137, "{handler}: SIGKILL after the grace");
    h.c.runtime
        .remove_pod_sandbox(req::remove_pod(&pod))
        .await?;
    assert!(
        runtime_state(binary, &root, &id).is_none(),
        "{handler} still has {id}"
    );
    h.finish();
    Ok(())
}

/// A user-namespaced pod under runc: kelson makes the namespaces and the idmapped layers, runc
/// joins them.
#[tokio::test(flavor = "multi_thread")]
async fn runc_joins_the_user_namespace_and_idmapped_layers_kelson_makes() -> anyhow::Result<()> {
    let mut h = Handlers::start("uns").await?;
    let ns = kelson_testkit::pod_userns(65536 * 50);
    let mut cfg = h.pod_config("uns");
    cfg.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(ns.clone()),
        ..Default::default()
    });
    let pod = common::run_pod_with(&mut h.c, &cfg, "runc").await?;
    let mut ctr = common::container_config("u", &h.image, &["/bin/sleep", "3600"]);
    req::as_root(&mut ctr).namespace_options = Some(ns);
    let id = common::create_start(&mut h.c, &pod, &cfg, ctr).await?;
    let (_, map, _) = common::exec_sync(
        &mut h.c,
        &id,
        &["/bin/busybox", "cat", "/proc/self/uid_map"],
    )
    .await?;
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", &(65536 * 50).to_string(), "65536"]
    );
    let (_, owner, _) = common::exec_sync(
        &mut h.c,
        &id,
        &["/bin/busybox", "stat", "-c", "%u", "/bin/busybox"],
    )
    .await?;
    assert_eq!(owner.trim(), "0", "idmapped layers under runc");
    h.c.runtime
        .remove_pod_sandbox(req::remove_pod(&pod))
        .await?;
    h.finish();
    Ok(())
}

/// Status lists every handler, the native default first; unknown handlers and uninstalled
/// runtimes are refused by name, leaving nothing; crun runs a container or names its refusal.
#[tokio::test(flavor = "multi_thread")]
async fn handlers_are_listed_unknown_ones_refused_and_crun_answers_by_name() -> anyhow::Result<()> {
    let mut h = Handlers::start("other").await?;
    let status =
        h.c.runtime
            .status(req::runtime_status())
            .await?
            .into_inner();
    let names: Vec<&str> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, ["", "crun", "missing", "runc"]);

    let cfg = h.pod_config("nope");
    let err = common::run_pod_with(&mut h.c, &cfg, "gvisor")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("gvisor"), "{err:?}");
    let pod = common::run_pod_with(&mut h.c, &cfg, "missing").await?;
    let ctr = common::container_config("c", &h.image, &["/bin/true"]);
    let err = common::create(&mut h.c, &pod, &cfg, ctr).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("/nonexistent/runsc"), "{err:?}");
    h.c.runtime
        .remove_pod_sandbox(req::remove_pod(&pod))
        .await?;

    // crun: runs where it accepts the host's cgroups. crun 1.8 refuses every container on a
    // cgroup v1 host whose v2 hierarchy has a controller (this machine's has hugetlb), even
    // with its cgroup manager disabled: then the runtime's own reason comes back by name and
    // nothing is left.
    let cfg = h.pod_config("crun");
    let pod = common::run_pod_with(&mut h.c, &cfg, "crun").await?;
    let ctr = common::container_config("c", &h.image, &["/bin/sleep", "3600"]);
    match common::create_start(&mut h.c, &pod, &cfg, ctr).await {
        Ok(id) => {
            let st = runtime_state("/usr/bin/crun", &h.runtime_root("crun"), &id);
            assert_eq!(st.context("crun does not know it")?["status"], "running");
        }
        Err(err) => {
            let s = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
            assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
            assert!(s.message().contains("/usr/bin/crun: "), "{s:?}");
            println!("crun here: {}", s.message());
        }
    }
    h.c.runtime
        .remove_pod_sandbox(req::remove_pod(&pod))
        .await?;
    h.finish();
    Ok(())
}

/// Annotations reach the OCI runtime only through the handler's allow-lists (containerd's
/// `pod_annotations` / `container_annotations`): runtimes act on some (crun on `run.oci.*`), so
/// the rest of a request's annotations never get into the spec the runtime reads — checked in
/// what runc itself reports of the container.
#[tokio::test(flavor = "multi_thread")]
async fn only_allowed_annotations_reach_the_runtime() -> anyhow::Result<()> {
    let mut h = Handlers::start("annotations").await?;
    let mut cfg = h.pod_config("runc");
    for (k, v) in [
        ("io.kelson.test.pod/a", "pod-a"),
        ("run.oci.keep_original_groups", "1"),
        ("io.kelson.test.ctr", "from-pod"),
    ] {
        cfg.annotations.insert(k.into(), v.into());
    }
    let pod = common::run_pod_with(&mut h.c, &cfg, "runc").await?;
    let mut ctr = common::container_config("c", &h.image, &["/bin/sleep", "3600"]);
    for (k, v) in [
        ("io.kelson.test.ctr", "from-container"),
        ("run.oci.systemd.subgroup", "x"),
        ("io.kelson.test.pod/b", "not-for-containers"),
    ] {
        ctr.annotations.insert(k.into(), v.into());
    }
    let id = common::create_start(&mut h.c, &pod, &cfg, ctr).await?;
    let st = runtime_state("/usr/sbin/runc", &h.runtime_root("runc"), &id)
        .context("runc does not know it")?;
    assert_eq!(
        st["annotations"],
        serde_json::json!({"io.kelson.test.pod/a": "pod-a", "io.kelson.test.ctr": "from-container"}),
        "{st}"
    );
    // The CRI side still reports every annotation the request carried.
    let status =
        h.c.runtime
            .container_status(req::status(&id))
            .await?
            .into_inner()
            .status
            .context("no status")?;
    assert_eq!(status.annotations.len(), 3, "{:?}", status.annotations);
    h.c.runtime
        .remove_pod_sandbox(req::remove_pod(&pod))
        .await?;
    h.finish();
    Ok(())
}
