//! Every CRI request checked at the edge, one function per verb: what must be present, well
//! formed and within bounds, before a domain service sees it. The services take what these
//! return as trusted; what needs the node's state (a pod's record, the host) they check
//! themselves.

use std::collections::HashMap;

use k8s_cri::v1 as cri;

use crate::container::{CreateRequest, MAX_LOG_PATH};
use crate::pod::RunRequest;

/// Longest pod name, namespace or uid, and container name, accepted (Kubernetes allows 253).
pub const MAX_META_FIELD: usize = 253;
/// Labels and annotations of a pod: count and total size caps.
pub const MAX_KV_ENTRIES: usize = 1024;
pub const MAX_KV_BYTES: usize = 256 * 1024;

/// A request refused for what it says: always `InvalidArgument`, naming the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("{verb}: config is required")]
    NoConfig { verb: &'static str },
    #[error("{what} config: metadata is required")]
    NoMetadata { what: &'static str },
    #[error("container config: image is required")]
    NoImage,
    #[error("{verb}: image spec with a non-empty image is required")]
    NoImageSpec { verb: &'static str },
    #[error("metadata.name {0:?} must be 1 to {MAX_META_FIELD} characters without '/'")]
    ContainerName(String),
    #[error(
        "{field} {value:?} must be 1 to {MAX_META_FIELD} characters without '/', ';', '=' or control characters"
    )]
    PodMetadata { field: &'static str, value: String },
    #[error("{0}: more than {MAX_KV_ENTRIES} entries or {MAX_KV_BYTES} bytes")]
    KeyValues(&'static str),
    #[error("log_path {0:?} must be a clean path without ..")]
    LogPath(String),
    #[error("{0}: cmd is empty")]
    EmptyCommand(&'static str),
    #[error("{0}: one of stdin, stdout or stderr must be requested")]
    NoStream(&'static str),
    #[error("Exec: tty and stderr cannot both be true (a terminal has one output)")]
    TtyWithStderr,
    #[error("UpdateContainerResources: linux resources are required")]
    NoResources,
    #[error("PortForward: port {0} is not 1-65535")]
    Port(i32),
    #[error("pod CIDR {0:?} is not an address/prefix")]
    PodCidr(String),
}

/// At most `n` characters of a value quoted back in an error.
fn head(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// 1 to `MAX_META_FIELD` characters, none of them '/' or a control character.
fn good_name(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_META_FIELD && !v.chars().any(|c| c.is_control() || c == '/')
}

/// A pod's name, namespace or uid: a good name that also cannot split or override the
/// `KEY=value;KEY=value` list these reach as `CNI_ARGS` (Kubernetes names never hold either).
fn good_pod_field(v: &str) -> bool {
    good_name(v) && !v.contains([';', '='])
}

fn check_kv(what: &'static str, m: &HashMap<String, String>) -> Result<(), RequestError> {
    let bytes: usize = m.iter().map(|(k, v)| k.len() + v.len()).sum();
    if m.len() > MAX_KV_ENTRIES || bytes > MAX_KV_BYTES {
        return Err(RequestError::KeyValues(what));
    }
    Ok(())
}

pub fn run_pod_sandbox(req: cri::RunPodSandboxRequest) -> Result<RunRequest, RequestError> {
    let config = req.config.ok_or(RequestError::NoConfig {
        verb: "RunPodSandbox",
    })?;
    let meta = config.metadata.clone().ok_or(RequestError::NoMetadata {
        what: "pod sandbox",
    })?;
    for (field, v) in [
        ("metadata.name", &meta.name),
        ("metadata.namespace", &meta.namespace),
        ("metadata.uid", &meta.uid),
    ] {
        if !good_pod_field(v) {
            return Err(RequestError::PodMetadata {
                field,
                value: head(v, 80),
            });
        }
    }
    check_kv("labels", &config.labels)?;
    check_kv("annotations", &config.annotations)?;
    Ok(RunRequest {
        meta,
        config,
        handler: req.runtime_handler,
    })
}

pub fn create_container(req: cri::CreateContainerRequest) -> Result<CreateRequest, RequestError> {
    let config = req.config.ok_or(RequestError::NoConfig {
        verb: "CreateContainer",
    })?;
    let meta = config
        .metadata
        .clone()
        .ok_or(RequestError::NoMetadata { what: "container" })?;
    if !good_name(&meta.name) {
        return Err(RequestError::ContainerName(head(&meta.name, 80)));
    }
    let image = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    if image.is_empty() {
        return Err(RequestError::NoImage);
    }
    let rel = &config.log_path;
    // Relative to the pod's log directory, which the container service checks and joins.
    if !rel.is_empty()
        && (rel.starts_with('/')
            || rel.split('/').any(|c| c == ".." || c.is_empty())
            || rel.len() > MAX_LOG_PATH)
    {
        return Err(RequestError::LogPath(head(rel, 120)));
    }
    Ok(CreateRequest {
        pod_id: req.pod_sandbox_id,
        meta,
        image,
        config,
    })
}

pub fn exec(r: &cri::ExecRequest) -> Result<(), RequestError> {
    if r.cmd.is_empty() {
        return Err(RequestError::EmptyCommand("Exec"));
    }
    if !(r.stdin || r.stdout || r.stderr) {
        return Err(RequestError::NoStream("Exec"));
    }
    if r.tty && r.stderr {
        return Err(RequestError::TtyWithStderr);
    }
    Ok(())
}

pub fn attach(r: &cri::AttachRequest) -> Result<(), RequestError> {
    if !(r.stdin || r.stdout || r.stderr) {
        return Err(RequestError::NoStream("Attach"));
    }
    Ok(())
}

pub fn exec_sync(r: &cri::ExecSyncRequest) -> Result<(), RequestError> {
    if r.cmd.is_empty() {
        return Err(RequestError::EmptyCommand("ExecSync"));
    }
    Ok(())
}

pub fn update_container_resources(
    r: cri::UpdateContainerResourcesRequest,
) -> Result<(String, cri::LinuxContainerResources), RequestError> {
    let linux = r.linux.ok_or(RequestError::NoResources)?;
    Ok((r.container_id, linux))
}

pub fn port_forward(r: &cri::PortForwardRequest) -> Result<(), RequestError> {
    match r.port.iter().find(|p| !(1..=65535).contains(*p)) {
        Some(p) => Err(RequestError::Port(*p)),
        None => Ok(()),
    }
}

/// The image an ImageStatus, PullImage or RemoveImage request names, trimmed.
pub fn image_spec(
    spec: Option<&cri::ImageSpec>,
    verb: &'static str,
) -> Result<String, RequestError> {
    match spec.map(|s| s.image.trim()) {
        Some(s) if !s.is_empty() => Ok(s.to_owned()),
        _ => Err(RequestError::NoImageSpec { verb }),
    }
}

/// The pod CIDR of an UpdateRuntimeConfig (empty: none).
pub fn update_runtime_config(r: cri::UpdateRuntimeConfigRequest) -> Result<String, RequestError> {
    let cidr = r
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
        .unwrap_or_default();
    let ok = cidr.split_once('/').is_some_and(|(ip, len)| {
        ip.parse::<std::net::IpAddr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 128)
    });
    if !cidr.is_empty() && !ok {
        return Err(RequestError::PodCidr(head(&cidr, 64)));
    }
    Ok(cidr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, image: &str, log_path: &str) -> cri::CreateContainerRequest {
        cri::CreateContainerRequest {
            pod_sandbox_id: "p".into(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                log_path: log_path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn container_requests() {
        let ok = create_container(container("web", "busybox", "web/0.log")).unwrap();
        assert_eq!((ok.pod_id.as_str(), ok.image.as_str()), ("p", "busybox"));
        assert_eq!(ok.meta.name, "web");
        assert!(create_container(container("web", "busybox", "")).is_ok());
        for bad in ["/abs.log", "../x.log", "a//b.log", "a/../b"] {
            assert_eq!(
                create_container(container("web", "busybox", bad)).err(),
                Some(RequestError::LogPath(bad.into())),
                "{bad}"
            );
        }
        let long = "a".repeat(MAX_LOG_PATH + 1);
        assert!(matches!(
            create_container(container("web", "busybox", &long)),
            Err(RequestError::LogPath(_))
        ));
        for bad in ["", "a/b", "a\nb", &"n".repeat(254)] {
            assert!(matches!(
                create_container(container(bad, "busybox", "")),
                Err(RequestError::ContainerName(_))
            ));
        }
        assert_eq!(
            create_container(container("web", "", "")).err(),
            Some(RequestError::NoImage)
        );
        let mut r = container("web", "busybox", "");
        r.config.as_mut().unwrap().metadata = None;
        assert_eq!(
            create_container(r).err().unwrap().to_string(),
            "container config: metadata is required"
        );
        assert_eq!(
            create_container(cri::CreateContainerRequest::default())
                .err()
                .unwrap()
                .to_string(),
            "CreateContainer: config is required"
        );
    }

    #[test]
    fn pod_requests() {
        let meta = |name: &str| cri::PodSandboxMetadata {
            name: name.into(),
            namespace: "ns".into(),
            uid: "u".into(),
            attempt: 0,
        };
        let req = |m: cri::PodSandboxMetadata, labels: HashMap<String, String>| {
            cri::RunPodSandboxRequest {
                config: Some(cri::PodSandboxConfig {
                    metadata: Some(m),
                    labels,
                    ..Default::default()
                }),
                runtime_handler: "h".into(),
            }
        };
        let ok = run_pod_sandbox(req(meta("web"), HashMap::new())).unwrap();
        assert_eq!((ok.meta.name.as_str(), ok.handler.as_str()), ("web", "h"));
        assert_eq!(
            run_pod_sandbox(req(meta("a/b"), HashMap::new()))
                .err()
                .unwrap()
                .to_string(),
            "metadata.name \"a/b\" must be 1 to 253 characters without '/', ';', '=' or control characters"
        );
        // A value that would add or override a CNI argument.
        for bad in ["web;K8S_POD_NAMESPACE=kube-system", "a=b", "x;"] {
            assert!(
                matches!(
                    run_pod_sandbox(req(meta(bad), HashMap::new())),
                    Err(RequestError::PodMetadata {
                        field: "metadata.name",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        let mut m = meta("web");
        m.namespace = "ns;IgnoreUnknown=0".into();
        assert!(matches!(
            run_pod_sandbox(req(m, HashMap::new())),
            Err(RequestError::PodMetadata {
                field: "metadata.namespace",
                ..
            })
        ));
        let mut m = meta("web");
        m.uid.clear();
        assert!(matches!(
            run_pod_sandbox(req(m, HashMap::new())),
            Err(RequestError::PodMetadata {
                field: "metadata.uid",
                ..
            })
        ));
        let many = (0..=MAX_KV_ENTRIES)
            .map(|i| (i.to_string(), String::new()))
            .collect();
        assert_eq!(
            run_pod_sandbox(req(meta("web"), many)).err(),
            Some(RequestError::KeyValues("labels"))
        );
        let big = [("k".to_owned(), "v".repeat(MAX_KV_BYTES))].into();
        assert_eq!(
            run_pod_sandbox(req(meta("web"), big)).err(),
            Some(RequestError::KeyValues("labels"))
        );
    }

    #[test]
    fn stream_requests() {
        let exec_req = |cmd: &[&str], tty: bool, stderr: bool| cri::ExecRequest {
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdout: true,
            stderr,
            ..Default::default()
        };
        assert!(exec(&exec_req(&["sh"], false, true)).is_ok());
        assert_eq!(
            exec(&exec_req(&[], false, true)).err(),
            Some(RequestError::EmptyCommand("Exec"))
        );
        assert_eq!(
            exec(&exec_req(&["sh"], true, true)).err(),
            Some(RequestError::TtyWithStderr)
        );
        assert_eq!(
            attach(&cri::AttachRequest::default()).err(),
            Some(RequestError::NoStream("Attach"))
        );
        assert_eq!(
            exec_sync(&cri::ExecSyncRequest::default())
                .err()
                .unwrap()
                .to_string(),
            "ExecSync: cmd is empty"
        );
        let pf = |port: Vec<i32>| cri::PortForwardRequest {
            port,
            ..Default::default()
        };
        assert!(port_forward(&pf(vec![80, 65535])).is_ok());
        assert_eq!(
            port_forward(&pf(vec![80, 0])).err(),
            Some(RequestError::Port(0))
        );
    }

    #[test]
    fn pod_cidrs() {
        let req = |cidr: &str| cri::UpdateRuntimeConfigRequest {
            runtime_config: Some(cri::RuntimeConfig {
                network_config: Some(cri::NetworkConfig {
                    pod_cidr: cidr.into(),
                }),
            }),
        };
        assert_eq!(
            update_runtime_config(req("10.244.1.0/24")).unwrap(),
            "10.244.1.0/24"
        );
        assert_eq!(update_runtime_config(req("")).unwrap(), "");
        assert_eq!(
            update_runtime_config(cri::UpdateRuntimeConfigRequest::default()).unwrap(),
            ""
        );
        assert_eq!(
            update_runtime_config(req("10.0.0.1; rm")).err(),
            Some(RequestError::PodCidr("10.0.0.1; rm".into()))
        );
    }

    #[test]
    fn image_specs() {
        let spec = |s: &str| cri::ImageSpec {
            image: s.into(),
            ..Default::default()
        };
        assert_eq!(
            image_spec(Some(&spec(" busybox ")), "PullImage").unwrap(),
            "busybox"
        );
        assert_eq!(
            image_spec(Some(&spec("  ")), "PullImage").err(),
            Some(RequestError::NoImageSpec { verb: "PullImage" })
        );
        assert!(image_spec(None, "RemoveImage").is_err());
    }
}
