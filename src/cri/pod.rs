//! CRI pod sandbox verbs: validation, conversion between `PodRecord` and the CRI types, and
//! ListPodSandbox filtering (pure, tested here).

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use tonic::{Code, Status};

use super::Shared;
use crate::pod::PodError;
use crate::store::{PodRecord, PodState};

impl From<PodError> for Status {
    fn from(e: PodError) -> Status {
        let code = match &e {
            PodError::Invalid(_)
            | PodError::Id(_)
            | PodError::Files(_)
            | PodError::UnknownHandler(_)
            | PodError::Userns(_)
            | PodError::Ambiguous(_) => Code::InvalidArgument,
            PodError::Unsupported(_) => Code::FailedPrecondition,
            PodError::Security(s) => super::container::security_code(s),
            PodError::Cgroup(crate::cgroups::CgroupError::Invalid { .. }) => Code::InvalidArgument,
            PodError::NotFound(_) => Code::NotFound,
            PodError::Network(
                crate::network::NetworkError::Conf(_)
                | crate::network::NetworkError::PluginMissing { .. },
            ) => Code::FailedPrecondition,
            PodError::Network(_) => Code::Unavailable,
            PodError::NameTaken { .. } => Code::AlreadyExists,
            PodError::Cgroup(_)
            | PodError::Namespace(_)
            | PodError::Io { .. }
            | PodError::Store(_) => Code::Internal,
        };
        super::status::log_error(code, &e);
        Status::new(code, e.to_string())
    }
}

pub(crate) fn config(rec: &PodRecord) -> cri::PodSandboxConfig {
    serde_json::from_value(rec.config.clone()).unwrap_or_default()
}

fn state(rec: &PodRecord) -> i32 {
    match rec.state {
        PodState::Ready => cri::PodSandboxState::SandboxReady as i32,
        PodState::NotReady => cri::PodSandboxState::SandboxNotready as i32,
    }
}

pub fn to_sandbox(rec: &PodRecord) -> cri::PodSandbox {
    let c = config(rec);
    cri::PodSandbox {
        id: rec.id.clone(),
        metadata: c.metadata,
        state: state(rec),
        created_at: rec.created_at,
        labels: c.labels,
        annotations: c.annotations,
        runtime_handler: rec.runtime_handler.clone(),
    }
}

pub fn to_status(rec: &PodRecord) -> cri::PodSandboxStatus {
    let c = config(rec);
    let ns = c
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    cri::PodSandboxStatus {
        id: rec.id.clone(),
        metadata: c.metadata,
        state: state(rec),
        created_at: rec.created_at,
        // Pod IPs arrive with CNI networking.
        network: Some(cri::PodSandboxNetworkStatus {
            ip: rec.ips.first().cloned().unwrap_or_default(),
            additional_ips: rec
                .ips
                .iter()
                .skip(1)
                .map(|ip| cri::PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace { options: Some(ns) }),
        }),
        labels: c.labels,
        annotations: c.annotations,
        runtime_handler: rec.runtime_handler.clone(),
    }
}

/// ListPodSandbox's filter: id prefix, state, and every selector label equal.
pub fn matches(rec: &PodRecord, f: &cri::PodSandboxFilter) -> bool {
    if !f.id.is_empty() && !rec.id.starts_with(&f.id) {
        return false;
    }
    if let Some(s) = &f.state {
        if s.state != state(rec) {
            return false;
        }
    }
    if f.label_selector.is_empty() {
        return true;
    }
    let labels = config(rec).labels;
    f.label_selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PodError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::from)
}

pub async fn run(
    rt: &Shared,
    req: cri::RunPodSandboxRequest,
) -> Result<cri::RunPodSandboxResponse, Status> {
    let config = req
        .config
        .ok_or_else(|| Status::invalid_argument("RunPodSandbox: config is required"))?;
    let pods = rt.pods.clone();
    let handler = req.runtime_handler;
    let rec = blocking(move || pods.run(config, &handler)).await?;
    tracing::Span::current().record("pod", rec.id.as_str());
    Ok(cri::RunPodSandboxResponse {
        pod_sandbox_id: rec.id,
    })
}

pub async fn stop(rt: &Shared, id: String) -> Result<cri::StopPodSandboxResponse, Status> {
    tracing::Span::current().record("pod", id.as_str());
    if let Ok(pod) = rt.pods.find(&id) {
        // CRI: running containers of a stopped sandbox are forcibly terminated. Through the
        // CRI verb, so event subscribers hear of each as if it had been stopped by itself.
        for c in rt.containers.of_pod(&pod.id)? {
            super::container::stop(
                rt,
                cri::StopContainerRequest {
                    container_id: c.id,
                    timeout: 0,
                },
            )
            .await?;
        }
    }
    let pods = rt.pods.clone();
    blocking(move || pods.stop(&id)).await?;
    Ok(cri::StopPodSandboxResponse {})
}

pub async fn remove(rt: &Shared, id: String) -> Result<cri::RemovePodSandboxResponse, Status> {
    tracing::Span::current().record("pod", id.as_str());
    if let Ok(pod) = rt.pods.find(&id) {
        // Through the CRI verb: each container's deleted event goes out (kubelet's evented
        // PLEG drops the container from its cache on it).
        for c in rt.containers.of_pod(&pod.id)? {
            super::container::remove(rt, c.id).await?;
        }
    }
    let pods = rt.pods.clone();
    blocking(move || pods.remove(&id)).await?;
    Ok(cri::RemovePodSandboxResponse {})
}

/// PortForward: a single-use URL on the streaming server for the ready pod's ports.
pub async fn port_forward(
    rt: &Shared,
    req: cri::PortForwardRequest,
) -> Result<cri::PortForwardResponse, Status> {
    tracing::Span::current().record("pod", req.pod_sandbox_id.as_str());
    if let Some(p) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
        return Err(Status::invalid_argument(format!(
            "PortForward: port {p} is not 1-65535"
        )));
    }
    let pod = rt.pods.find(&req.pod_sandbox_id)?;
    if pod.state != PodState::Ready {
        return Err(Status::failed_precondition(format!(
            "PortForward: pod sandbox {} is not ready",
            pod.id
        )));
    }
    let url = rt
        .streaming
        .url(crate::streaming::Session::PortForward(req))
        .map_err(|e| Status::resource_exhausted(e.to_string()))?;
    Ok(cri::PortForwardResponse { url })
}

pub async fn status(
    rt: &Shared,
    req: cri::PodSandboxStatusRequest,
) -> Result<cri::PodSandboxStatusResponse, Status> {
    tracing::Span::current().record("pod", req.pod_sandbox_id.as_str());
    let pods = rt.pods.clone();
    let id = req.pod_sandbox_id;
    let rec = blocking(move || pods.find(&id)).await?;
    let mut info = HashMap::new();
    if req.verbose {
        let v = serde_json::json!({
            "config": rec.config, "netns": rec.netns, "ipcns": rec.ipcns, "utsns": rec.utsns,
            "shm": rec.shm, "cgroup": rec.cgroup,
        });
        info.insert("info".to_owned(), v.to_string());
    }
    Ok(cri::PodSandboxStatusResponse {
        status: Some(to_status(&rec)),
        info,
        containers_statuses: vec![],
        timestamp: 0,
    })
}

pub async fn list(
    rt: &Shared,
    req: cri::ListPodSandboxRequest,
) -> Result<cri::ListPodSandboxResponse, Status> {
    let pods = rt.pods.clone();
    let all = blocking(move || pods.list()).await?;
    let items = all
        .iter()
        .filter(|r| req.filter.as_ref().is_none_or(|f| matches(r, f)))
        .map(to_sandbox)
        .collect();
    Ok(cri::ListPodSandboxResponse { items })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, ready: bool, labels: &[(&str, &str)]) -> PodRecord {
        let cfg = cri::PodSandboxConfig {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        PodRecord {
            id: id.into(),
            state: if ready {
                PodState::Ready
            } else {
                PodState::NotReady
            },
            config: serde_json::to_value(cfg).unwrap(),
            ..Default::default()
        }
    }

    #[test]
    fn filters() {
        let r = rec("abc123", true, &[("app", "web"), ("tier", "fe")]);
        let f = |id: &str, st: Option<i32>, sel: &[(&str, &str)]| cri::PodSandboxFilter {
            id: id.into(),
            state: st.map(|state| cri::PodSandboxStateValue { state }),
            label_selector: sel
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        assert!(matches(&r, &f("", None, &[])));
        assert!(matches(&r, &f("abc", None, &[])));
        assert!(!matches(&r, &f("abd", None, &[])));
        assert!(matches(&r, &f("", Some(0), &[])));
        assert!(!matches(&r, &f("", Some(1), &[])));
        assert!(matches(&r, &f("", None, &[("app", "web")])));
        assert!(!matches(
            &r,
            &f("", None, &[("app", "web"), ("tier", "be")])
        ));
        assert!(!matches(&rec("x", false, &[]), &f("", Some(0), &[])));
    }
}
