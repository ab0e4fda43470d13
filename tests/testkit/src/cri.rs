//! CRI request builders for tests: the literals every test would otherwise spell out (pod and
//! container configs, security contexts, exec, status, stop and remove requests). Pure values,
//! no calls to a runtime.

use std::collections::HashMap;
use std::path::Path;

use k8s_cri::v1 as cri;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// An image by reference (tag, digest or id).
pub fn image(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

/// A pod `name` (uid `uid-<name>`, hostname `name`) in `namespace`, its cgroup at
/// `cgroup_parent`, its logs in `log_directory`.
pub fn pod(
    name: &str,
    namespace: &str,
    cgroup_parent: &str,
    log_directory: &Path,
) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: namespace.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_directory.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container `name` running `cmd` (the image's entrypoint when empty) from `image`, logging
/// to `log_path` (relative to the pod's log directory).
pub fn container(
    name: &str,
    image_ref: &str,
    cmd: &[&str],
    log_path: &str,
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: image(image_ref),
        command: strings(cmd),
        log_path: log_path.into(),
        ..Default::default()
    }
}

/// `container` labelled `app=<name>`.
pub fn labelled(mut c: cri::ContainerConfig) -> cri::ContainerConfig {
    let name = c
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    c.labels = HashMap::from([("app".to_owned(), name)]);
    c
}

/// The container's Linux security context, made if missing.
pub fn security(c: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    c.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The container's Linux resources, made if missing.
pub fn resources(c: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerResources {
    c.linux
        .get_or_insert_with(Default::default)
        .resources
        .get_or_insert_with(Default::default)
}

/// The security context with the container running as root (uid 0).
pub fn as_root(c: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    let sc = security(c);
    sc.run_as_user = Some(cri::Int64Value { value: 0 });
    sc
}

/// Capabilities to add and drop.
pub fn capabilities(add: &[&str], drop: &[&str]) -> Option<cri::Capability> {
    Some(cri::Capability {
        add_capabilities: strings(add),
        drop_capabilities: strings(drop),
        add_ambient_capabilities: vec![],
    })
}

/// A read-write bind mount of `host` at `container`, private propagation.
pub fn bind(container: &str, host: &Path) -> cri::Mount {
    cri::Mount {
        container_path: container.into(),
        host_path: host.display().to_string(),
        ..Default::default()
    }
}

/// ExecSync of `cmd` with a timeout in seconds.
pub fn exec(id: &str, cmd: &[&str], timeout: i64) -> cri::ExecSyncRequest {
    cri::ExecSyncRequest {
        container_id: id.into(),
        cmd: strings(cmd),
        timeout,
    }
}

/// ExecSync of `/bin/sh -c script`.
pub fn sh(id: &str, script: &str, timeout: i64) -> cri::ExecSyncRequest {
    exec(id, &["/bin/sh", "-c", script], timeout)
}

pub fn start(id: &str) -> cri::StartContainerRequest {
    cri::StartContainerRequest {
        container_id: id.into(),
    }
}

pub fn stop(id: &str, timeout: i64) -> cri::StopContainerRequest {
    cri::StopContainerRequest {
        container_id: id.into(),
        timeout,
    }
}

pub fn remove(id: &str) -> cri::RemoveContainerRequest {
    cri::RemoveContainerRequest {
        container_id: id.into(),
    }
}

/// ContainerStatus, not verbose.
pub fn status(id: &str) -> cri::ContainerStatusRequest {
    cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    }
}

pub fn stop_pod(id: &str) -> cri::StopPodSandboxRequest {
    cri::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    }
}

pub fn remove_pod(id: &str) -> cri::RemovePodSandboxRequest {
    cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    }
}

/// PodSandboxStatus, not verbose.
pub fn pod_status(id: &str) -> cri::PodSandboxStatusRequest {
    cri::PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: false,
    }
}

/// RemoveImage by reference or id.
pub fn remove_image(image_ref: &str) -> cri::RemoveImageRequest {
    cri::RemoveImageRequest {
        image: image(image_ref),
    }
}

/// The runtime's Status, not verbose.
pub fn runtime_status() -> cri::StatusRequest {
    cri::StatusRequest { verbose: false }
}
