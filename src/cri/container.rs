//! CRI container verbs: validation, conversion between domain views and CRI types, filtering.

use std::collections::HashMap;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::ContainerEventType as Event;
use tonic::Status;

use super::status::EdgeError;
use super::{Shared, events, request};
use crate::container::{RunState, View};
use crate::store::ContainerRecord;

/// Cap on ExecSync output per stream (CVE-2022-1708: unbounded probe output exhausted memory);
/// beyond it output is read and dropped, as containerd does. The shim keeps no more.
pub const MAX_EXEC_SYNC_OUTPUT: u64 = crate::shim_client::MAX_EXEC_OUTPUT;
/// The largest ExecSync answer: both streams at their cap, and room for the rest of the
/// message. The CRI server's encoding limit is at least this (`cri_socket`).
pub const MAX_EXEC_SYNC_RESPONSE: usize = 2 * MAX_EXEC_SYNC_OUTPUT as usize + (64 << 10);

/// The most of a container's OCI spec (its bundle's config.json) a verbose status reads: far
/// above any spec kelsond writes, which is built from a request under the gRPC message limit.
pub const MAX_RUNTIME_SPEC_BYTES: u64 = 16 << 20;

pub(crate) fn config(rec: &ContainerRecord) -> cri::ContainerConfig {
    serde_json::from_value(rec.config.clone()).unwrap_or_default()
}

fn cri_state(s: RunState) -> i32 {
    (match s {
        RunState::Created => cri::ContainerState::ContainerCreated,
        RunState::Running => cri::ContainerState::ContainerRunning,
        RunState::Exited => cri::ContainerState::ContainerExited,
    }) as i32
}

fn image_ref(rt: &Shared, rec: &ContainerRecord) -> String {
    rt.images
        .resolve(&rec.image_id)
        .ok()
        .flatten()
        .and_then(|(i, _)| i.repo_digests.first().cloned())
        .unwrap_or_else(|| rec.image_id.clone())
}

pub fn to_container(rt: &Shared, v: &View) -> cri::Container {
    let c = config(&v.rec);
    cri::Container {
        id: v.rec.id.clone(),
        pod_sandbox_id: v.rec.pod_id.clone(),
        metadata: c.metadata,
        image: Some(cri::ImageSpec {
            image: v.rec.image.clone(),
            ..Default::default()
        }),
        image_ref: image_ref(rt, &v.rec),
        state: cri_state(v.state),
        created_at: v.rec.created_at,
        labels: c.labels,
        annotations: c.annotations,
        image_id: v.rec.image_id.clone(),
    }
}

pub fn to_status(rt: &Shared, v: &View) -> cri::ContainerStatus {
    let c = config(&v.rec);
    cri::ContainerStatus {
        id: v.rec.id.clone(),
        metadata: c.metadata,
        state: cri_state(v.state),
        created_at: v.rec.created_at,
        started_at: v.started_at,
        finished_at: v.finished_at,
        exit_code: v.exit_code,
        image: Some(cri::ImageSpec {
            image: v.rec.image.clone(),
            ..Default::default()
        }),
        image_ref: image_ref(rt, &v.rec),
        reason: v.reason.clone(),
        message: v.message.clone(),
        labels: c.labels,
        annotations: c.annotations,
        mounts: c.mounts,
        log_path: v.rec.log_path.clone(),
        resources: c
            .linux
            .and_then(|l| l.resources)
            .map(|r| cri::ContainerResources {
                linux: Some(r),
                windows: None,
            }),
        image_id: v.rec.image_id.clone(),
        user: container_user(&v.rec),
    }
}

/// The identity the container's process started with (kubelet shows the effective groups),
/// from the spec the container was created with.
fn container_user(rec: &ContainerRecord) -> Option<cri::ContainerUser> {
    let path = std::path::Path::new(&rec.state_dir).join("bundle/config.json");
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let u = &spec["process"]["user"];
    Some(cri::ContainerUser {
        linux: Some(cri::LinuxContainerUser {
            uid: u["uid"].as_i64()?,
            gid: u["gid"].as_i64()?,
            supplemental_groups: u["additionalGids"]
                .as_array()
                .map(|a| a.iter().filter_map(|g| g.as_i64()).collect())
                .unwrap_or_default(),
        }),
    })
}

/// The OCI runtime spec the container was created with, as its bundle holds it.
fn runtime_spec(rec: &ContainerRecord) -> Result<serde_json::Value, EdgeError> {
    use std::io::Read;
    let path = std::path::Path::new(&rec.state_dir).join("bundle/config.json");
    let id = || rec.id.clone();
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_RUNTIME_SPEC_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|source| EdgeError::RuntimeSpecUnreadable {
            id: id(),
            path: path.clone(),
            source,
        })?;
    if bytes.len() as u64 > MAX_RUNTIME_SPEC_BYTES {
        return Err(EdgeError::RuntimeSpecTooLarge {
            id: id(),
            path,
            max: MAX_RUNTIME_SPEC_BYTES,
        });
    }
    serde_json::from_slice(&bytes).map_err(|source| EdgeError::RuntimeSpecMalformed {
        id: id(),
        path,
        source,
    })
}

pub fn matches(v: &View, f: &cri::ContainerFilter) -> bool {
    if !f.id.is_empty() && !v.rec.id.starts_with(&f.id) {
        return false;
    }
    if !f.pod_sandbox_id.is_empty() && !v.rec.pod_id.starts_with(&f.pod_sandbox_id) {
        return false;
    }
    if f.state
        .as_ref()
        .is_some_and(|s| s.state != cri_state(v.state))
    {
        return false;
    }
    super::selected(&f.label_selector, &config(&v.rec).labels)
}

pub(crate) fn record(field: &str, id: &str) {
    tracing::Span::current().record(field, id);
}

pub async fn create(
    rt: &Shared,
    req: cri::CreateContainerRequest,
) -> Result<cri::CreateContainerResponse, Status> {
    record("pod", &req.pod_sandbox_id);
    let id = rt
        .containers
        .create(request::create_container(req)?)
        .await?;
    record("container", &id);
    if let Ok(rec) = rt.containers.find(&id) {
        events::emit(rt, &id, &rec.pod_id, Event::ContainerCreatedEvent).await;
    }
    Ok(cri::CreateContainerResponse { container_id: id })
}

pub async fn start(rt: &Shared, id: String) -> Result<cri::StartContainerResponse, Status> {
    record("container", &id);
    if let Err(e) = rt.containers.start(&id).await {
        // A command that could not start leaves the container exited: evented PLEG learns
        // that from a STOPPED event, as for any other exit.
        if let crate::container::ContainerError::StartFailed { id, .. } = &e
            && let Ok(rec) = rt.containers.find(id)
        {
            events::emit(rt, &rec.id, &rec.pod_id, Event::ContainerStoppedEvent).await;
        }
        return Err(e.into());
    }
    if let Ok(rec) = rt.containers.find(&id) {
        events::emit(rt, &rec.id, &rec.pod_id, Event::ContainerStartedEvent).await;
        events::watch_exit(rt, rec.id, rec.pod_id);
    }
    Ok(cri::StartContainerResponse {})
}

pub async fn stop(
    rt: &Shared,
    req: cri::StopContainerRequest,
) -> Result<cri::StopContainerResponse, Status> {
    record("container", &req.container_id);
    let timeout = Duration::from_secs(req.timeout.max(0) as u64);
    rt.containers.stop(&req.container_id, timeout).await?;
    if let Ok(rec) = rt.containers.find(&req.container_id) {
        events::emit(rt, &rec.id, &rec.pod_id, Event::ContainerStoppedEvent).await;
    }
    Ok(cri::StopContainerResponse {})
}

pub async fn remove(rt: &Shared, id: String) -> Result<cri::RemoveContainerResponse, Status> {
    record("container", &id);
    let known = rt.containers.find(&id).ok();
    rt.containers.remove(&id).await?;
    if let Some(rec) = known {
        // Removing a running container stops it first.
        events::emit(rt, &rec.id, &rec.pod_id, Event::ContainerStoppedEvent).await;
        events::emit(rt, &rec.id, &rec.pod_id, Event::ContainerDeletedEvent).await;
    }
    Ok(cri::RemoveContainerResponse {})
}

pub async fn status(
    rt: &Shared,
    req: cri::ContainerStatusRequest,
) -> Result<cri::ContainerStatusResponse, Status> {
    record("container", &req.container_id);
    let rec = rt.containers.find(&req.container_id)?;
    let v = rt.containers.view(rec).await;
    let mut info = HashMap::new();
    if req.verbose {
        // The keys containerd and CRI-O report (crictl inspect and critest read them), plus
        // kelson's own dirs.
        let j = serde_json::json!({
            "sandboxID": v.rec.pod_id,
            "pid": v.pid,
            "config": v.rec.config,
            "runtimeSpec": runtime_spec(&v.rec)?,
            "rootDir": v.rec.root_dir,
            "stateDir": v.rec.state_dir,
        });
        info.insert("info".to_owned(), j.to_string());
    }
    Ok(cri::ContainerStatusResponse {
        status: Some(to_status(rt, &v)),
        info,
    })
}

pub async fn list(
    rt: &Shared,
    req: cri::ListContainersRequest,
) -> Result<cri::ListContainersResponse, Status> {
    let candidates = rt
        .containers
        .list()?
        .into_iter()
        .filter(|rec| {
            req.filter.as_ref().is_none_or(|f| {
                (f.id.is_empty() || rec.id.starts_with(&f.id))
                    && (f.pod_sandbox_id.is_empty() || rec.pod_id.starts_with(&f.pod_sandbox_id))
            })
        })
        .collect();
    // Every shim asked at once, within one deadline: wedged shims cost the listing that once.
    let containers = rt
        .containers
        .views(candidates)
        .await
        .iter()
        .filter(|v| req.filter.as_ref().is_none_or(|f| matches(v, f)))
        .map(|v| to_container(rt, v))
        .collect();
    Ok(cri::ListContainersResponse { containers })
}

/// Exec: a single-use URL on the streaming server for this command.
pub async fn exec(rt: &Shared, r: cri::ExecRequest) -> Result<cri::ExecResponse, Status> {
    record("container", &r.container_id);
    request::exec(&r)?;
    // The container must exist now (the session checks that it still runs).
    rt.containers.find(&r.container_id)?;
    let url = rt.streaming.url(crate::streaming::Session::Exec(r))?;
    Ok(cri::ExecResponse { url })
}

pub async fn attach(rt: &Shared, r: cri::AttachRequest) -> Result<cri::AttachResponse, Status> {
    record("container", &r.container_id);
    request::attach(&r)?;
    // The container must run now, as containerd requires (the session checks again).
    let rec = rt.containers.find(&r.container_id)?;
    if rt.containers.view(rec.clone()).await.state != RunState::Running {
        return Err(crate::container::ContainerError::WrongState {
            id: rec.id,
            state: "not running",
            op: "attach",
        }
        .into());
    }
    let url = rt.streaming.url(crate::streaming::Session::Attach(r))?;
    Ok(cri::AttachResponse { url })
}

pub async fn exec_sync(
    rt: &Shared,
    req: cri::ExecSyncRequest,
) -> Result<cri::ExecSyncResponse, Status> {
    record("container", &req.container_id);
    request::exec_sync(&req)?;
    let timeout = Duration::from_secs(req.timeout.max(0) as u64);
    let r = rt
        .containers
        .exec_sync(&req.container_id, req.cmd, timeout, MAX_EXEC_SYNC_OUTPUT)
        .await?;
    if r.timed_out {
        return Err(EdgeError::ExecTimedOut(req.timeout).into());
    }
    Ok(cri::ExecSyncResponse {
        stdout: r.stdout,
        stderr: r.stderr,
        exit_code: r.exit_code,
    })
}

pub async fn reopen_log(
    rt: &Shared,
    id: String,
) -> Result<cri::ReopenContainerLogResponse, Status> {
    record("container", &id);
    rt.containers.reopen_log(&id).await?;
    Ok(cri::ReopenContainerLogResponse {})
}

pub async fn update_resources(
    rt: &Shared,
    req: cri::UpdateContainerResourcesRequest,
) -> Result<cri::UpdateContainerResourcesResponse, Status> {
    record("container", &req.container_id);
    let (id, linux) = request::update_container_resources(req)?;
    rt.containers.update_resources(&id, linux).await?;
    Ok(cri::UpdateContainerResourcesResponse {})
}
