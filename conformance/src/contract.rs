//! Cases for the parts of the CRI contract kubelet and critest lean on beyond the happy path:
//! idempotent verbs for ids of any shape, a missing command failing at start (not create),
//! RunAsGroup needing a user, a stop returning within its timeout, and HOSTNAME.

use anyhow::{Context, bail, ensure};
use k8s_cri::v1 as cri;
use tonic::Code;

use crate::Cri;
use crate::suite::{
    Case, Options, container_config, container_state, pull, remove_pod, run_pod, wait_exit,
};

macro_rules! case {
    ($name:ident) => {
        Case {
            name: stringify!($name),
            run: |c, o| Box::pin($name(c, o)),
        }
    };
}

/// CreateContainer in `pod`: the container's id.
async fn create(
    c: &Cri,
    pod: &str,
    cfg: &cri::PodSandboxConfig,
    ctr: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    let mut cc = c.clone();
    Ok(cc
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(ctr),
            sandbox_config: Some(cfg.clone()),
        })
        .await?
        .into_inner()
        .container_id)
}

/// StartContainer.
async fn start(c: &Cri, id: &str) -> Result<(), tonic::Status> {
    let mut cc = c.clone();
    cc.runtime
        .start_container(cri::StartContainerRequest {
            container_id: id.into(),
        })
        .await?;
    Ok(())
}

pub fn cases() -> Vec<Case> {
    vec![
        case!(unknown_ids_stop_and_remove_fine),
        case!(missing_command_fails_at_start),
        case!(run_as_group_needs_a_user),
        case!(stop_returns_within_its_timeout),
        case!(hostname_variable_is_the_pods),
    ]
}

/// A UUID (what critest sends) names no pod or container: stop and remove succeed, status is
/// NotFound.
async fn unknown_ids_stop_and_remove_fine(c: &Cri, _: &Options) -> anyhow::Result<()> {
    let mut cc = c.clone();
    let id = "8d7c6a52-3f0e-4b8e-9c1d-5a2b7e4f9c30";
    cc.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .context("StopPodSandbox of an unknown id")?;
    cc.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .context("RemovePodSandbox of an unknown id")?;
    cc.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: id.into(),
            timeout: 0,
        })
        .await
        .context("StopContainer of an unknown id")?;
    cc.runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.into(),
        })
        .await
        .context("RemoveContainer of an unknown id")?;
    match cc
        .runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
    {
        Err(s) if s.code() == Code::NotFound => Ok(()),
        other => bail!("ContainerStatus of an unknown id: {other:?}"),
    }
}

/// kubelet creates, then starts, and backs off on start failures: a command that does not
/// exist is created fine and fails StartContainer; the container is then exited.
async fn missing_command_fails_at_start(c: &Cri, o: &Options) -> anyhow::Result<()> {
    pull(c, &o.image).await?;
    let (pod, cfg) = run_pod(c, o, "startfail").await?;
    let mut ctr = container_config(o, "missing", "");
    ctr.command = vec!["/no/such/command".into()];
    let id = create(c, &pod, &cfg, ctr)
        .await
        .context("CreateContainer of a missing command must succeed")?;
    let started = start(c, &id).await;
    ensure!(
        started.is_err(),
        "StartContainer of a missing command succeeded"
    );
    let st = wait_exit(c, &id).await?;
    ensure!(st.exit_code != 0, "exit code 0 after a failed start");
    remove_pod(c, &pod).await
}

/// RunAsGroup without RunAsUser (or a username) is refused.
async fn run_as_group_needs_a_user(c: &Cri, o: &Options) -> anyhow::Result<()> {
    pull(c, &o.image).await?;
    let (pod, cfg) = run_pod(c, o, "groupnouser").await?;
    let mut ctr = container_config(o, "g", "sleep 60");
    ctr.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_group: Some(cri::Int64Value { value: 1002 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let r = create(c, &pod, &cfg, ctr).await;
    remove_pod(c, &pod).await?;
    ensure!(r.is_err(), "RunAsGroup without RunAsUser was accepted");
    Ok(())
}

/// A container that ignores SIGTERM is still stopped within the stop's timeout.
async fn stop_returns_within_its_timeout(c: &Cri, o: &Options) -> anyhow::Result<()> {
    pull(c, &o.image).await?;
    let (pod, cfg) = run_pod(c, o, "stopdeadline").await?;
    let mut cc = c.clone();
    let ctr = container_config(o, "stubborn", "trap '' TERM; while true; do sleep 1; done");
    let id = create(c, &pod, &cfg, ctr).await?;
    start(c, &id).await?;
    let timeout = std::time::Duration::from_secs(3);
    let t = std::time::Instant::now();
    cc.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: timeout.as_secs() as i64,
        })
        .await?;
    let took = t.elapsed();
    let st = container_state(c, &id).await?;
    remove_pod(c, &pod).await?;
    ensure!(
        took < timeout,
        "StopContainer took {took:?} with a timeout of {timeout:?}"
    );
    ensure!(
        st.state == cri::ContainerState::ContainerExited as i32,
        "not exited after StopContainer"
    );
    Ok(())
}

/// The container's HOSTNAME variable is the pod's hostname, as containerd and Docker set it.
async fn hostname_variable_is_the_pods(c: &Cri, o: &Options) -> anyhow::Result<()> {
    pull(c, &o.image).await?;
    let (pod, cfg) = run_pod(c, o, "hostnamevar").await?;
    let mut cc = c.clone();
    let ctr = container_config(o, "h", "sleep 60");
    let id = create(c, &pod, &cfg, ctr).await?;
    start(c, &id).await?;
    let r = cc
        .runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["/bin/sh".into(), "-c".into(), "echo $HOSTNAME".into()],
            timeout: 10,
        })
        .await?
        .into_inner();
    remove_pod(c, &pod).await?;
    let out = String::from_utf8_lossy(&r.stdout);
    ensure!(out.trim() == "hostnamevar", "HOSTNAME is {out:?}");
    Ok(())
}
