//! CRI pod sandbox verbs: validation, conversion between `PodRecord` and the CRI types, and
//! ListPodSandbox filtering (pure, tested here).

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use tonic::Status;

use super::Shared;
use super::status::EdgeError;
use crate::pod::PodError;
use crate::store::{PodRecord, PodState};

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
    super::selected(&f.label_selector, &config(rec).labels)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PodError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(EdgeError::task("pod sandbox"))?
        .map_err(Status::from)
}

pub async fn run(
    rt: &Shared,
    req: cri::RunPodSandboxRequest,
) -> Result<cri::RunPodSandboxResponse, Status> {
    let req = super::request::run_pod_sandbox(req)?;
    let pods = rt.pods.clone();
    let rec = blocking(move || pods.run(req)).await?;
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
    super::request::port_forward(&req)?;
    let pod = rt.pods.find(&req.pod_sandbox_id)?;
    if pod.state != PodState::Ready {
        return Err(EdgeError::PortForwardNotReady(pod.id).into());
    }
    let url = rt
        .streaming
        .url(crate::streaming::Session::PortForward(req))?;
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
