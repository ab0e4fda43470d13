//! The conformance cases. Each is an async fn over a `Cri`; `run` executes them all and reports.

use std::future::Future;
use std::pin::Pin;

use anyhow::{Context, bail, ensure};
use k8s_cri::v1 as cri;
use tonic::Code;

use crate::Cri;

/// What the suite needs from the environment.
#[derive(Debug, Clone)]
pub struct Options {
    /// A pullable image reference (`registry/repo:tag`) the runtime can reach.
    pub image: String,
    /// A reference in the same registry that does not exist.
    pub missing_image: String,
    /// Where pod log directories may be created (kubelet uses /var/log/pods).
    pub log_dir: std::path::PathBuf,
}

type CaseFn = for<'a> fn(
    &'a Cri,
    &'a Options,
) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;

pub struct Case {
    pub name: &'static str,
    pub run: CaseFn,
}

macro_rules! case {
    ($name:ident) => {
        Case {
            name: stringify!($name),
            run: |c, o| Box::pin($name(c, o)),
        }
    };
}

pub fn cases() -> Vec<Case> {
    let mut cases = crate::contract::cases();
    cases.extend([
        case!(version_reports_runtime),
        case!(status_reports_runtime_ready),
        case!(runtime_config_answers),
        case!(pull_list_status_remove),
        case!(pull_is_idempotent),
        case!(status_of_missing_image_is_empty),
        case!(remove_of_missing_image_succeeds),
        case!(pull_missing_image_fails_not_found),
        case!(pull_invalid_reference_is_rejected),
        case!(empty_image_spec_is_invalid),
        case!(image_fs_info_reports_usage),
        case!(pod_sandbox_lifecycle),
        case!(container_lifecycle_logs_and_exec),
        case!(container_exit_code_and_reason),
        case!(unterminated_output_is_logged_partial),
        case!(exec_sync_returns_while_a_background_child_holds_its_output),
        case!(exec_streams_over_spdy_and_websocket),
        case!(attach_to_a_running_container),
        case!(port_forward_over_spdy),
        case!(port_forward_over_spdy_in_websocket),
        case!(container_events_follow_the_lifecycle),
    ]);
    cases
}

#[derive(Debug, Default)]
pub struct Report {
    pub passed: Vec<&'static str>,
    pub failed: Vec<(&'static str, String)>,
}

impl Report {
    pub fn summary(&self) -> String {
        format!("{} passed, {} failed", self.passed.len(), self.failed.len())
    }
}

pub async fn run(cri: &Cri, opts: &Options, filter: Option<&str>) -> Report {
    let mut r = Report::default();
    for c in cases() {
        if filter.is_some_and(|f| !c.name.contains(f)) {
            continue;
        }
        match (c.run)(cri, opts).await {
            Ok(()) => {
                println!("ok   {}", c.name);
                r.passed.push(c.name);
            }
            Err(e) => {
                println!("FAIL {}: {e:#}", c.name);
                r.failed.push((c.name, format!("{e:#}")));
            }
        }
    }
    r
}

pub fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

/// PullImage without credentials; returns the image ref.
pub async fn pull(c: &Cri, image: &str) -> Result<String, tonic::Status> {
    let mut c = c.clone();
    Ok(c.image
        .pull_image(cri::PullImageRequest {
            image: spec(image),
            auth: None,
            sandbox_config: None,
        })
        .await?
        .into_inner()
        .image_ref)
}

async fn status(c: &Cri, image: &str) -> anyhow::Result<Option<cri::Image>> {
    let mut c = c.clone();
    Ok(c.image
        .image_status(cri::ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await?
        .into_inner()
        .image)
}

async fn remove(c: &Cri, image: &str) -> anyhow::Result<()> {
    let mut c = c.clone();
    c.image
        .remove_image(cri::RemoveImageRequest { image: spec(image) })
        .await?;
    Ok(())
}

async fn version_reports_runtime(c: &Cri, _: &Options) -> anyhow::Result<()> {
    let mut c = c.clone();
    let v = c
        .runtime
        .version(cri::VersionRequest {
            version: "0.1.0".into(),
        })
        .await?
        .into_inner();
    ensure!(!v.runtime_name.is_empty(), "empty runtime_name");
    ensure!(!v.runtime_version.is_empty(), "empty runtime_version");
    ensure!(
        v.runtime_api_version == "v1",
        "runtime_api_version {:?}, want v1",
        v.runtime_api_version
    );
    Ok(())
}

async fn status_reports_runtime_ready(c: &Cri, _: &Options) -> anyhow::Result<()> {
    let mut c = c.clone();
    let s = c
        .runtime
        .status(cri::StatusRequest { verbose: false })
        .await?
        .into_inner();
    let conds = s.status.context("no status")?.conditions;
    let rt = conds
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .context("no RuntimeReady condition")?;
    ensure!(
        rt.status,
        "RuntimeReady is false: {} {}",
        rt.reason,
        rt.message
    );
    let net = conds
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .context("no NetworkReady condition")?;
    ensure!(
        net.status || !net.reason.is_empty(),
        "NetworkReady false without a reason"
    );
    Ok(())
}

/// RuntimeConfig arrived in CRI v1 with Kubernetes 1.28; kubelet treats Unimplemented as "use
/// my own cgroup driver setting", so a runtime older than the RPC (containerd 1.6) passes.
async fn runtime_config_answers(c: &Cri, _: &Options) -> anyhow::Result<()> {
    let mut c = c.clone();
    let r = match c.runtime.runtime_config(cri::RuntimeConfigRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::Unimplemented => return Ok(()),
        Err(s) => return Err(s.into()),
    };
    let linux = r.linux.context("no linux runtime config")?;
    ensure!(
        cri::CgroupDriver::try_from(linux.cgroup_driver).is_ok(),
        "bad cgroup driver {}",
        linux.cgroup_driver
    );
    Ok(())
}

async fn pull_list_status_remove(c: &Cri, o: &Options) -> anyhow::Result<()> {
    let id = pull(c, &o.image).await?;
    ensure!(
        id.starts_with("sha256:"),
        "image_ref {id:?} is not an image id"
    );
    let img = status(c, &o.image)
        .await?
        .context("ImageStatus after pull found nothing")?;
    ensure!(img.id == id, "status id {} != pulled {id}", img.id);
    ensure!(
        img.repo_tags
            .iter()
            .any(|t| o.image.ends_with(t.as_str()) || t.ends_with(&o.image)),
        "repo_tags {:?} lack {}",
        img.repo_tags,
        o.image
    );
    ensure!(
        img.repo_digests.iter().all(|d| d.contains("@sha256:")),
        "repo_digests {:?}",
        img.repo_digests
    );
    ensure!(img.size > 0, "size is 0");
    // by id and by repo digest too
    ensure!(
        status(c, &id).await?.is_some(),
        "status by id found nothing"
    );
    let rd = img.repo_digests.first().context("no repo digest")?.clone();
    ensure!(
        status(c, &rd).await?.is_some(),
        "status by repo digest found nothing"
    );
    let mut cc = c.clone();
    let all = cc
        .image
        .list_images(cri::ListImagesRequest { filter: None })
        .await?
        .into_inner()
        .images;
    ensure!(all.iter().any(|i| i.id == id), "ListImages lacks {id}");
    let filtered = cc
        .image
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec(&o.image),
            }),
        })
        .await?
        .into_inner()
        .images;
    ensure!(
        // containerd ignores the filter (kubelet never sends one): the image must be there,
        // and nothing but it when the runtime does filter (checked against kelson by its own
        // tests).
        filtered.iter().any(|i| i.id == id),
        "filtered list {:?}",
        filtered.iter().map(|i| &i.id).collect::<Vec<_>>()
    );
    remove(c, &id).await?;
    ensure!(
        status(c, &o.image).await?.is_none(),
        "image still there after RemoveImage by id"
    );
    ensure!(
        status(c, &rd).await?.is_none(),
        "repo digest still resolves after RemoveImage"
    );
    Ok(())
}

async fn pull_is_idempotent(c: &Cri, o: &Options) -> anyhow::Result<()> {
    let a = pull(c, &o.image).await?;
    let b = pull(c, &o.image).await?;
    ensure!(a == b, "two pulls gave {a} and {b}");
    remove(c, &a).await
}

async fn status_of_missing_image_is_empty(c: &Cri, o: &Options) -> anyhow::Result<()> {
    ensure!(
        status(c, &o.missing_image).await?.is_none(),
        "status of a missing image returned one"
    );
    Ok(())
}

async fn remove_of_missing_image_succeeds(c: &Cri, o: &Options) -> anyhow::Result<()> {
    remove(c, &o.missing_image).await
}

async fn pull_missing_image_fails_not_found(c: &Cri, o: &Options) -> anyhow::Result<()> {
    match pull(c, &o.missing_image).await {
        Ok(id) => bail!("pulling a missing image returned {id}"),
        Err(s) => {
            // containerd reports registry 404s as NotFound or Unknown with "not found" in the text.
            ensure!(
                s.code() == Code::NotFound || s.message().contains("not found"),
                "got {:?}: {}",
                s.code(),
                s.message()
            );
            Ok(())
        }
    }
}

/// A pull of `image` must fail as a bad request (containerd answers Unknown for some).
async fn expect_rejected(c: &Cri, image: &str) -> anyhow::Result<()> {
    match pull(c, image).await {
        Ok(id) => bail!("{image:?} pulled as {id}"),
        Err(s) => {
            ensure!(
                matches!(s.code(), Code::InvalidArgument | Code::Unknown),
                "got {:?}: {}",
                s.code(),
                s.message()
            );
            Ok(())
        }
    }
}

async fn pull_invalid_reference_is_rejected(c: &Cri, _: &Options) -> anyhow::Result<()> {
    expect_rejected(c, "Not A Valid//Reference").await
}

async fn empty_image_spec_is_invalid(c: &Cri, _: &Options) -> anyhow::Result<()> {
    expect_rejected(c, "").await
}

/// Usage may come from a periodic scan (containerd: every 10 s), so it is polled for a while.
async fn image_fs_info_reports_usage(c: &Cri, o: &Options) -> anyhow::Result<()> {
    let id = pull(c, &o.image).await?;
    let mut cc = c.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(25);
    let fs = loop {
        let r = cc
            .image
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await?
            .into_inner();
        let fs = r
            .image_filesystems
            .into_iter()
            .next()
            .context("no image filesystem")?;
        let counted = fs.used_bytes.as_ref().is_some_and(|u| u.value > 0);
        if counted || std::time::Instant::now() > deadline {
            break fs;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    ensure!(
        fs.fs_id.as_ref().is_some_and(|f| !f.mountpoint.is_empty()),
        "no mountpoint"
    );
    ensure!(
        fs.used_bytes.as_ref().is_some_and(|u| u.value > 0),
        "used_bytes 0 with an image present"
    );
    ensure!(
        fs.inodes_used.as_ref().is_some_and(|u| u.value > 0),
        "inodes_used 0 with an image present"
    );
    ensure!(fs.timestamp > 0, "no timestamp");
    remove(c, &id).await
}

fn pod_config(o: &Options, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("conformance-{name}"),
            namespace: "conformance".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: o.log_dir.join(name).display().to_string(),
        labels: [
            ("suite".to_owned(), "conformance".to_owned()),
            ("pod".to_owned(), name.to_owned()),
        ]
        .into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("/conformance/{name}"),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) async fn run_pod(
    c: &Cri,
    o: &Options,
    name: &str,
) -> anyhow::Result<(String, cri::PodSandboxConfig)> {
    let mut cc = c.clone();
    let cfg = pod_config(o, name);
    let id = cc
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    Ok((id, cfg))
}

async fn pod_state(c: &Cri, id: &str) -> Result<i32, tonic::Status> {
    let mut cc = c.clone();
    Ok(cc
        .runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .map(|s| s.state)
        .unwrap_or(-1))
}

pub(crate) async fn remove_pod(c: &Cri, id: &str) -> anyhow::Result<()> {
    let mut cc = c.clone();
    cc.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    cc.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    Ok(())
}

async fn pod_sandbox_lifecycle(c: &Cri, o: &Options) -> anyhow::Result<()> {
    let (id, _) = run_pod(c, o, "lifecycle").await?;
    ensure!(
        pod_state(c, &id).await? == cri::PodSandboxState::SandboxReady as i32,
        "not ready after RunPodSandbox"
    );
    let mut cc = c.clone();
    let f = cri::PodSandboxFilter {
        label_selector: [("pod".to_owned(), "lifecycle".to_owned())].into(),
        ..Default::default()
    };
    let items = cc
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: Some(f) })
        .await?
        .into_inner()
        .items;
    ensure!(
        items.len() == 1 && items[0].id == id,
        "label filter found {} pods",
        items.len()
    );
    for _ in 0..2 {
        cc.runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .context("StopPodSandbox (idempotent)")?;
    }
    ensure!(
        pod_state(c, &id).await? == cri::PodSandboxState::SandboxNotready as i32,
        "still ready after StopPodSandbox"
    );
    for _ in 0..2 {
        cc.runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .context("RemovePodSandbox (idempotent)")?;
    }
    match pod_state(c, &id).await {
        Err(s) if s.code() == Code::NotFound => Ok(()),
        other => bail!("status of a removed pod: {other:?}"),
    }
}

pub(crate) fn container_config(o: &Options, name: &str, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: spec(&o.image),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

pub(crate) async fn container_state(c: &Cri, id: &str) -> anyhow::Result<cri::ContainerStatus> {
    let mut cc = c.clone();
    cc.runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .context("no status")
}

pub(crate) async fn wait_exit(c: &Cri, id: &str) -> anyhow::Result<cri::ContainerStatus> {
    for _ in 0..500 {
        let s = container_state(c, id).await?;
        if s.state == cri::ContainerState::ContainerExited as i32 {
            return Ok(s);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    bail!("container {id} did not exit")
}

async fn container_lifecycle_logs_and_exec(c: &Cri, o: &Options) -> anyhow::Result<()> {
    pull(c, &o.image).await?;
    let (pod, pod_cfg) = run_pod(c, o, "ctr").await?;
    let mut cc = c.clone();
    let cfg = container_config(
        o,
        "main",
        "echo hello; trap 'exit 0' TERM; while true; do sleep 0.1; done",
    );
    let id = cc
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: Some(pod_cfg),
        })
        .await?
        .into_inner()
        .container_id;
    ensure!(
        container_state(c, &id).await?.state == cri::ContainerState::ContainerCreated as i32,
        "not CREATED after CreateContainer"
    );
    cc.runtime
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;
    ensure!(
        container_state(c, &id).await?.state == cri::ContainerState::ContainerRunning as i32,
        "not RUNNING after StartContainer"
    );
    let r = cc
        .runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo out; echo err >&2; exit 5".into(),
            ],
            timeout: 10,
        })
        .await?
        .into_inner();
    ensure!(
        r.stdout == b"out\n" && r.stderr == b"err\n" && r.exit_code == 5,
        "ExecSync gave {:?} {:?} {}",
        r.stdout,
        r.stderr,
        r.exit_code
    );
    cc.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 10,
        })
        .await?;
    let s = wait_exit(c, &id).await?;
    ensure!(
        s.exit_code == 0,
        "exit code {} after a trapped SIGTERM",
        s.exit_code
    );
    let log =
        std::fs::read_to_string(&s.log_path).with_context(|| format!("reading {}", s.log_path))?;
    let first = log.lines().next().unwrap_or("");
    let mut f = first.splitn(4, ' ');
    let (ts, stream, tag, msg) = (
        f.next().unwrap_or(""),
        f.next().unwrap_or(""),
        f.next().unwrap_or(""),
        f.next().unwrap_or(""),
    );
    ensure!(
        ts.ends_with('Z') && ts.contains('T') && (stream, tag, msg) == ("stdout", "F", "hello"),
        "first log line {first:?}"
    );
    for _ in 0..2 {
        cc.runtime
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
            .context("RemoveContainer (idempotent)")?;
    }
    ensure!(
        container_state(c, &id).await.is_err(),
        "status of a removed container"
    );
    remove_pod(c, &pod).await
}

async fn container_exit_code_and_reason(c: &Cri, o: &Options) -> anyhow::Result<()> {
    pull(c, &o.image).await?;
    let (pod, pod_cfg) = run_pod(c, o, "exit").await?;
    let mut cc = c.clone();
    let id = cc
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config(o, "fail", "exit 3")),
            sandbox_config: Some(pod_cfg),
        })
        .await?
        .into_inner()
        .container_id;
    cc.runtime
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;
    let s = wait_exit(c, &id).await?;
    ensure!(
        s.exit_code == 3 && s.reason == "Error",
        "exit {} reason {:?}",
        s.exit_code,
        s.reason
    );
    ensure!(
        s.finished_at >= s.started_at && s.started_at > 0,
        "times {} {}",
        s.started_at,
        s.finished_at
    );
    cc.runtime
        .remove_container(cri::RemoveContainerRequest { container_id: id })
        .await?;
    remove_pod(c, &pod).await
}

/// Output that ends without a newline ends the log with a partial (`P`) record: kubelet adds
/// a newline after every full (`F`) one, which the container never wrote.
async fn unterminated_output_is_logged_partial(c: &Cri, o: &Options) -> anyhow::Result<()> {
    pull(c, &o.image).await?;
    let (pod, pod_cfg) = run_pod(c, o, "partial").await?;
    let mut cc = c.clone();
    let result = async {
        let id = cc
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config(
                    o,
                    "main",
                    "echo whole; printf unterminated",
                )),
                sandbox_config: Some(pod_cfg),
            })
            .await?
            .into_inner()
            .container_id;
        cc.runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
        let s = wait_exit(c, &id).await?;
        let log = std::fs::read_to_string(&s.log_path)
            .with_context(|| format!("reading {}", s.log_path))?;
        ensure!(log.ends_with('\n'), "the last record is torn: {log:?}");
        let recs: Vec<(&str, &str)> = log
            .lines()
            .map(|l| {
                let mut f = l.splitn(4, ' ').skip(2);
                (f.next().unwrap_or(""), f.next().unwrap_or(""))
            })
            .collect();
        ensure!(
            recs == [("F", "whole"), ("P", "unterminated")],
            "log records {recs:?}"
        );
        anyhow::Ok(())
    }
    .await;
    remove_pod(c, &pod).await?;
    result
}

/// ExecSync of a command that exits at once but leaves a child holding its stdout and stderr
/// (`sh -c 'daemon &'`, common in exec probes): the answer is the command's, well within the
/// request's timeout; the child goes on in the container.
async fn exec_sync_returns_while_a_background_child_holds_its_output(
    c: &Cri,
    o: &Options,
) -> anyhow::Result<()> {
    use std::time::{Duration, Instant};
    const TIMEOUT: i64 = 20;
    let (pod, id) = running(
        c,
        o,
        "bgexec",
        "trap 'exit 0' TERM; while true; do sleep 0.1; done",
    )
    .await?;
    let mut cc = c.clone();
    let result = async {
        let t0 = Instant::now();
        let call = cc.runtime.exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo started; sleep 31536000 &".into(),
            ],
            timeout: TIMEOUT,
        });
        let r = tokio::time::timeout(Duration::from_secs(TIMEOUT as u64 * 2), call)
            .await
            .context("ExecSync did not answer")?
            .context("ExecSync")?
            .into_inner();
        let took = t0.elapsed();
        ensure!(
            r.exit_code == 0 && r.stdout == b"started\n",
            "ExecSync gave {} {:?} {:?}",
            r.exit_code,
            r.stdout,
            r.stderr
        );
        ensure!(
            took < Duration::from_secs(TIMEOUT as u64) / 2,
            "ExecSync took {took:?} of its {TIMEOUT} s"
        );
        let ps = cc
            .runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["/bin/sh".into(), "-c".into(), "ps -o args".into()],
                timeout: TIMEOUT,
            })
            .await?
            .into_inner();
        let ps = String::from_utf8_lossy(&ps.stdout);
        ensure!(
            ps.lines().any(|l| l.trim() == "sleep 31536000"),
            "the background child is gone: {ps}"
        );
        anyhow::Ok(())
    }
    .await;
    remove_pod(c, &pod).await?;
    result
}

/// A running container in its own pod, started from `script`.
async fn running(
    c: &Cri,
    o: &Options,
    pod_name: &str,
    script: &str,
) -> anyhow::Result<(String, String)> {
    pull(c, &o.image).await?;
    let (pod, pod_cfg) = run_pod(c, o, pod_name).await?;
    let mut cc = c.clone();
    let id = cc
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config(o, "main", script)),
            sandbox_config: Some(pod_cfg),
        })
        .await?
        .into_inner()
        .container_id;
    cc.runtime
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;
    Ok((pod, id))
}

/// Exec through the streaming server as kubectl does: SPDY/3.1 (`v4.channel.k8s.io`, what the
/// API server speaks to the runtime) with stdin, stdout, stderr and the exit Status, then
/// WebSocket (v5 or v4, whichever the runtime speaks).
async fn exec_streams_over_spdy_and_websocket(c: &Cri, o: &Options) -> anyhow::Result<()> {
    use crate::stream;
    let (pod, id) = running(
        c,
        o,
        "stream",
        "trap 'exit 0' TERM; while true; do sleep 0.1; done",
    )
    .await?;
    let mut cc = c.clone();
    let url = |stdin: bool, cmd: &str| cri::ExecRequest {
        container_id: id.clone(),
        cmd: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
        tty: false,
        stdin,
        stdout: true,
        stderr: true,
    };
    let result = async {
        let u = cc
            .runtime
            .exec(url(true, "cat; echo err >&2; exit 3"))
            .await?
            .into_inner()
            .url;
        let mut s = stream::spdy::connect(
            &u,
            &["v4.channel.k8s.io", "v3.channel.k8s.io"],
            true,
            true,
            true,
        )
        .await?;
        s.stdin(b"through spdy\n", true).await?;
        let out = s.collect(std::time::Duration::from_secs(30)).await?;
        ensure!(
            out.stdout == b"through spdy\n" && out.stderr == b"err\n" && out.exit_code() == Some(3),
            "SPDY exec gave {:?} {:?} {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.error)
        );
        let u = cc
            .runtime
            .exec(url(false, "echo over websocket"))
            .await?
            .into_inner()
            .url;
        let out = stream::connect(&u, &["v5.channel.k8s.io", "v4.channel.k8s.io"])
            .await?
            .collect(std::time::Duration::from_secs(30))
            .await?;
        ensure!(
            out.stdout == b"over websocket\n" && out.exit_code() == Some(0),
            "WebSocket exec gave {:?} {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.error)
        );
        anyhow::Ok(())
    }
    .await;
    remove_pod(c, &pod).await?;
    result
}

/// Attach (`kubectl attach -i`) to a container created with stdin: a line sent over SPDY comes
/// back on stdout; leaving the session keeps the container running; a second attacher (over
/// WebSocket) finds stdin still open.
async fn attach_to_a_running_container(c: &Cri, o: &Options) -> anyhow::Result<()> {
    use crate::stream;
    use kelson_proto::spdy::frame::Frame;
    use std::time::Duration;
    pull(c, &o.image).await?;
    let (pod, pod_cfg) = run_pod(c, o, "attach").await?;
    let mut cc = c.clone();
    let result = async {
        let mut cfg = container_config(o, "main", r#"while read l; do echo "got:$l"; done"#);
        cfg.stdin = true;
        let id = cc
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(cfg),
                sandbox_config: Some(pod_cfg),
            })
            .await?
            .into_inner()
            .container_id;
        cc.runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
        let attach = |id: &str| cri::AttachRequest {
            container_id: id.into(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        };
        let u = cc.runtime.attach(attach(&id)).await?.into_inner().url;
        let mut s = stream::spdy::connect(&u, &["v4.channel.k8s.io"], true, true, true).await?;
        let stdout_id = s.streams.get("stdout").copied().unwrap_or(0);
        // Joining is asynchronous on every runtime: send until the answer shows up.
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut next_send = std::time::Instant::now();
        while !String::from_utf8_lossy(&seen).contains("got:over-spdy") {
            ensure!(
                std::time::Instant::now() < deadline,
                "no echo over SPDY attach; stdout {:?}",
                String::from_utf8_lossy(&seen)
            );
            if std::time::Instant::now() >= next_send {
                s.stdin(b"over-spdy\n", false).await?;
                next_send = std::time::Instant::now() + Duration::from_secs(2);
            }
            if let Ok(f) = tokio::time::timeout(Duration::from_millis(200), s.next()).await {
                match f? {
                    Some(Frame::Data {
                        stream_id, data, ..
                    }) if stream_id == stdout_id => seen.extend_from_slice(&data),
                    Some(_) => {}
                    None => bail!("SPDY attach ended early"),
                }
            }
        }
        drop(s);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let st = cc
            .runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .unwrap_or_default();
        ensure!(
            st.state == cri::ContainerState::ContainerRunning as i32,
            "leaving an attach session stopped the container (state {})",
            st.state
        );
        let u = cc.runtime.attach(attach(&id)).await?.into_inner().url;
        let mut s = stream::connect(&u, &["v5.channel.k8s.io", "v4.channel.k8s.io"]).await?;
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut next_send = std::time::Instant::now();
        while !String::from_utf8_lossy(&seen).contains("got:over-websocket") {
            ensure!(
                std::time::Instant::now() < deadline,
                "no echo over WebSocket attach; stdout {:?}",
                String::from_utf8_lossy(&seen)
            );
            if std::time::Instant::now() >= next_send {
                s.send(stream::STDIN, b"over-websocket\n").await?;
                next_send = std::time::Instant::now() + Duration::from_secs(2);
            }
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(200), s.recv()).await {
                match r? {
                    Some((stream::STDOUT, d)) => seen.extend_from_slice(&d),
                    Some(_) => {}
                    None => bail!("WebSocket attach ended early"),
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    remove_pod(c, &pod).await?;
    result
}

/// PortForward over SPDY (`portforward.k8s.io`) to a server listening on the pod's loopback.
async fn port_forward_over_spdy(c: &Cri, o: &Options) -> anyhow::Result<()> {
    use crate::stream;
    let (pod, _) = running(
        c,
        o,
        "portfwd",
        "exec nc -ll -p 18089 -e /bin/echo forwarded",
    )
    .await?;
    let mut cc = c.clone();
    let result = async {
        let u = cc
            .runtime
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: pod.clone(),
                port: vec![18089],
            })
            .await?
            .into_inner()
            .url;
        let mut s = stream::spdy::connect_portforward(&u).await?;
        // The server takes a moment to listen.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let f = s
                .forward(18089, b"", std::time::Duration::from_secs(10))
                .await?;
            if f.data == b"forwarded\n" {
                return anyhow::Ok(());
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "port-forward gave {:?}, error {:?}",
                    String::from_utf8_lossy(&f.data),
                    String::from_utf8_lossy(&f.error)
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    .await;
    remove_pod(c, &pod).await?;
    result
}

/// PortForward as crictl and kubectl speak it since Kubernetes 1.30: SPDY/3.1 tunnelled in
/// WebSocket binary messages (`SPDY/3.1+portforward.k8s.io`), split as client-go writes it.
/// Two connections in one session to an echo server on the pod's loopback, bytes both ways.
async fn port_forward_over_spdy_in_websocket(c: &Cri, o: &Options) -> anyhow::Result<()> {
    use crate::stream;
    use std::time::{Duration, Instant};
    let (pod, _) = running(c, o, "portfwdws", "exec nc -ll -p 18090 -e /bin/cat").await?;
    let mut cc = c.clone();
    let result = async {
        let u = cc
            .runtime
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: pod.clone(),
                port: vec![18090],
            })
            .await?
            .into_inner()
            .url;
        let mut s = stream::spdy::connect_portforward_websocket(&u).await?;
        // The server takes a moment to listen.
        let deadline = Instant::now() + Duration::from_secs(15);
        let first = loop {
            let f = s
                .forward(18090, b"first connection", Duration::from_secs(10))
                .await?;
            if !f.data.is_empty() || Instant::now() > deadline {
                break f;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let second = s
            .forward(18090, b"second connection", Duration::from_secs(10))
            .await?;
        for (f, want) in [
            (first, &b"first connection"[..]),
            (second, b"second connection"),
        ] {
            if f.data != want {
                anyhow::bail!(
                    "port-forward gave {:?}, error {:?}; want {:?}",
                    String::from_utf8_lossy(&f.data),
                    String::from_utf8_lossy(&f.error),
                    String::from_utf8_lossy(want)
                );
            }
        }
        s.close().await
    }
    .await;
    remove_pod(c, &pod).await?;
    result
}

/// The next event for `id` on `s` (events for other ids — a runtime may report sandboxes too —
/// are passed over), within 20 s.
async fn next_event_for(
    s: &mut tonic::Streaming<cri::ContainerEventResponse>,
    id: &str,
) -> anyhow::Result<cri::ContainerEventResponse> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let ev = tokio::time::timeout_at(deadline, s.message())
            .await
            .with_context(|| format!("no event for {id} within 20 s"))?
            .context("GetContainerEvents stream")?
            .context("GetContainerEvents stream ended")?;
        if ev.container_id == id {
            return Ok(ev);
        }
    }
}

/// Check the next four events for container `id` of pod `uid`: created, started, stopped,
/// deleted, each with the pod's status (kubelet's evented PLEG drops an event without it) and,
/// but for deleted, the container's own status in the state the event names.
async fn expect_lifecycle_events(
    s: &mut tonic::Streaming<cri::ContainerEventResponse>,
    id: &str,
    uid: &str,
) -> anyhow::Result<()> {
    use cri::ContainerEventType as T;
    use cri::ContainerState as S;
    for (want, state) in [
        (T::ContainerCreatedEvent, Some(S::ContainerCreated)),
        (T::ContainerStartedEvent, Some(S::ContainerRunning)),
        (T::ContainerStoppedEvent, Some(S::ContainerExited)),
        (T::ContainerDeletedEvent, None),
    ] {
        let ev = next_event_for(s, id).await?;
        ensure!(
            ev.container_event_type == want as i32,
            "event {} for {id}, expected {want:?}",
            ev.container_event_type
        );
        ensure!(ev.created_at > 0, "{want:?}: created_at unset");
        let pod_uid = ev
            .pod_sandbox_status
            .as_ref()
            .and_then(|p| p.metadata.as_ref())
            .map(|m| m.uid.as_str());
        ensure!(
            pod_uid == Some(uid),
            "{want:?}: pod status metadata uid {pod_uid:?}, expected {uid}"
        );
        if let Some(state) = state {
            let st = ev
                .containers_statuses
                .iter()
                .find(|st| st.id == id)
                .with_context(|| format!("{want:?}: no status for the container"))?;
            ensure!(
                st.state == state as i32,
                "{want:?}: container state {}, expected {state:?}",
                st.state
            );
        }
    }
    Ok(())
}

/// GetContainerEvents, as kubelet's evented PLEG reads it: a subscriber from before the
/// container sees created, started, stopped and deleted — through the container verbs, and
/// for a container its pod's StopPodSandbox and RemovePodSandbox take down.
async fn container_events_follow_the_lifecycle(c: &Cri, o: &Options) -> anyhow::Result<()> {
    pull(c, &o.image).await?;
    let mut cc = c.clone();
    let mut events = cc
        .runtime
        .get_container_events(cri::GetEventsRequest {})
        .await
        .context("GetContainerEvents")?
        .into_inner();
    let (pod, pod_cfg) = run_pod(c, o, "events").await?;
    let uid = pod_cfg
        .metadata
        .as_ref()
        .map(|m| m.uid.clone())
        .unwrap_or_default();
    let result = async {
        let create_start = |name: &'static str| {
            let (mut cc, pod, pod_cfg) = (c.clone(), pod.clone(), pod_cfg.clone());
            async move {
                let id = cc
                    .runtime
                    .create_container(cri::CreateContainerRequest {
                        pod_sandbox_id: pod,
                        config: Some(container_config(o, name, "exec sleep 3600")),
                        sandbox_config: Some(pod_cfg),
                    })
                    .await?
                    .into_inner()
                    .container_id;
                cc.runtime
                    .start_container(cri::StartContainerRequest {
                        container_id: id.clone(),
                    })
                    .await?;
                anyhow::Ok(id)
            }
        };
        let by_verbs = create_start("by-verbs").await?;
        cc.runtime
            .stop_container(cri::StopContainerRequest {
                container_id: by_verbs.clone(),
                timeout: 0,
            })
            .await?;
        cc.runtime
            .remove_container(cri::RemoveContainerRequest {
                container_id: by_verbs.clone(),
            })
            .await?;
        expect_lifecycle_events(&mut events, &by_verbs, &uid)
            .await
            .context("container stopped and removed by its own verbs")?;
        let by_pod = create_start("by-pod").await?;
        remove_pod(c, &pod).await?;
        expect_lifecycle_events(&mut events, &by_pod, &uid)
            .await
            .context("container stopped and removed with its pod")
    }
    .await;
    remove_pod(c, &pod).await?;
    result
}
