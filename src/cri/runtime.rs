//! CRI RuntimeService on tonic: each RPC handed to its verb in `pod.rs`, `container.rs`,
//! `stats.rs` or `events.rs`; `Version`, `Status` (runtime and network conditions, handlers,
//! features) and `UpdateRuntimeConfig` answered here. `CheckpointContainer` answers
//! `Unimplemented`, saying so (checkpointing is a later issue).

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use tonic::{Request, Response, Status};

use super::status::unimplemented;
use super::{CRI_API_VERSION, KUBE_API_VERSION, RUNTIME_NAME, RUNTIME_VERSION, Shared};
use super::{container, pod, stats};
use crate::config::CgroupDriver;

pub struct RuntimeApi(pub Shared);

/// Condition types kubelet reads.
pub const RUNTIME_READY: &str = "RuntimeReady";
pub const NETWORK_READY: &str = "NetworkReady";

/// Runtime readiness: the store answers and the root dir is writable.
fn runtime_condition(rt: &Shared) -> cri::RuntimeCondition {
    let probe = rt
        .images
        .list(None)
        .map(|_| ())
        .map_err(|e| e.to_string())
        .and_then(|_| {
            let p = rt.config.root.join(".ready-probe");
            crate::owner_only::write(&p, b"")
                .and_then(|_| std::fs::remove_file(&p))
                .map_err(|e| format!("root dir {} not writable: {e}", rt.config.root.display()))
        });
    match probe {
        Ok(()) => cri::RuntimeCondition {
            r#type: RUNTIME_READY.into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        },
        Err(message) => cri::RuntimeCondition {
            r#type: RUNTIME_READY.into(),
            status: false,
            reason: "RuntimeStoreUnavailable".into(),
            message,
        },
    }
}

/// Ready while the CNI conf dir holds a valid network config (read on every call, so a
/// config that appears or breaks later is reflected), with the reason when not.
fn network_condition(rt: &Shared) -> cri::RuntimeCondition {
    match rt.pods.network().config() {
        Ok(_) => cri::RuntimeCondition {
            r#type: NETWORK_READY.into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        },
        Err(e) => cri::RuntimeCondition {
            r#type: NETWORK_READY.into(),
            status: false,
            reason: "NetworkPluginNotReady".into(),
            message: format!("cni config uninitialized: {e}"),
        },
    }
}

/// The RuntimeService impl as a table: each RPC, its request and response types, and the
/// call that answers it (`|runtime, request| future`). Written once here instead of thirty
/// hand-written forwarding methods; `#[tonic::async_trait]` applies to the generated impl.
macro_rules! runtime_service {
    (
        $( $rpc:ident: $req:ident -> $resp:ident => |$rt:ident, $r:ident| $call:expr; )*
    ) => {
        #[tonic::async_trait]
        impl cri::runtime_service_server::RuntimeService for RuntimeApi {
            type GetContainerEventsStream = super::events::EventStream;

            async fn get_container_events(
                &self,
                _req: Request<cri::GetEventsRequest>,
            ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
                Ok(Response::new(self.0.events.subscribe()))
            }

            $(
                async fn $rpc(
                    &self,
                    req: Request<cri::$req>,
                ) -> Result<Response<cri::$resp>, Status> {
                    let ($rt, $r) = (&self.0, req.into_inner());
                    $call.await.map(Response::new)
                }
            )*
        }
    };
}

runtime_service! {
    version: VersionRequest -> VersionResponse => |_rt, _r| version();
    status: StatusRequest -> StatusResponse => |rt, r| status(rt, r);
    runtime_config: RuntimeConfigRequest -> RuntimeConfigResponse => |rt, _r| runtime_config(rt);
    update_runtime_config: UpdateRuntimeConfigRequest -> UpdateRuntimeConfigResponse
        => |rt, r| update_runtime_config(rt, r);
    run_pod_sandbox: RunPodSandboxRequest -> RunPodSandboxResponse => |rt, r| pod::run(rt, r);
    stop_pod_sandbox: StopPodSandboxRequest -> StopPodSandboxResponse
        => |rt, r| pod::stop(rt, r.pod_sandbox_id);
    remove_pod_sandbox: RemovePodSandboxRequest -> RemovePodSandboxResponse
        => |rt, r| pod::remove(rt, r.pod_sandbox_id);
    pod_sandbox_status: PodSandboxStatusRequest -> PodSandboxStatusResponse
        => |rt, r| pod::status(rt, r);
    list_pod_sandbox: ListPodSandboxRequest -> ListPodSandboxResponse => |rt, r| pod::list(rt, r);
    port_forward: PortForwardRequest -> PortForwardResponse => |rt, r| pod::port_forward(rt, r);
    create_container: CreateContainerRequest -> CreateContainerResponse
        => |rt, r| container::create(rt, r);
    start_container: StartContainerRequest -> StartContainerResponse
        => |rt, r| container::start(rt, r.container_id);
    stop_container: StopContainerRequest -> StopContainerResponse
        => |rt, r| container::stop(rt, r);
    remove_container: RemoveContainerRequest -> RemoveContainerResponse
        => |rt, r| container::remove(rt, r.container_id);
    list_containers: ListContainersRequest -> ListContainersResponse
        => |rt, r| container::list(rt, r);
    container_status: ContainerStatusRequest -> ContainerStatusResponse
        => |rt, r| container::status(rt, r);
    update_container_resources: UpdateContainerResourcesRequest
        -> UpdateContainerResourcesResponse => |rt, r| container::update_resources(rt, r);
    reopen_container_log: ReopenContainerLogRequest -> ReopenContainerLogResponse
        => |rt, r| container::reopen_log(rt, r.container_id);
    exec_sync: ExecSyncRequest -> ExecSyncResponse => |rt, r| container::exec_sync(rt, r);
    exec: ExecRequest -> ExecResponse => |rt, r| container::exec(rt, r);
    attach: AttachRequest -> AttachResponse => |rt, r| container::attach(rt, r);
    checkpoint_container: CheckpointContainerRequest -> CheckpointContainerResponse
        => |_rt, _r| not_yet("CheckpointContainer");
    container_stats: ContainerStatsRequest -> ContainerStatsResponse
        => |rt, r| stats::container(rt, r);
    list_container_stats: ListContainerStatsRequest -> ListContainerStatsResponse
        => |rt, r| stats::list_containers(rt, r);
    pod_sandbox_stats: PodSandboxStatsRequest -> PodSandboxStatsResponse
        => |rt, r| stats::pod(rt, r);
    list_pod_sandbox_stats: ListPodSandboxStatsRequest -> ListPodSandboxStatsResponse
        => |rt, r| stats::list_pods(rt, r);
    list_metric_descriptors: ListMetricDescriptorsRequest -> ListMetricDescriptorsResponse
        => |_rt, _r| metric_descriptors();
    list_pod_sandbox_metrics: ListPodSandboxMetricsRequest -> ListPodSandboxMetricsResponse
        => |rt, _r| stats::pod_metrics(rt);
}

async fn version() -> Result<cri::VersionResponse, Status> {
    Ok(cri::VersionResponse {
        version: KUBE_API_VERSION.into(),
        runtime_name: RUNTIME_NAME.into(),
        runtime_version: RUNTIME_VERSION.into(),
        runtime_api_version: CRI_API_VERSION.into(),
    })
}

async fn status(rt: &Shared, req: cri::StatusRequest) -> Result<cri::StatusResponse, Status> {
    let mut info = HashMap::new();
    if req.verbose {
        let cfg = serde_json::to_string(&rt.config).unwrap_or_default();
        info.insert("config".to_owned(), cfg);
    }
    Ok(cri::StatusResponse {
        status: Some(cri::RuntimeStatus {
            conditions: vec![runtime_condition(rt), network_condition(rt)],
        }),
        info,
        runtime_handlers: runtime_handlers(&rt.config),
        features: Some(cri::RuntimeFeatures {
            supplemental_groups_policy: true,
        }),
    })
}

async fn runtime_config(rt: &Shared) -> Result<cri::RuntimeConfigResponse, Status> {
    let driver = match rt.config.cgroup_driver {
        CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
        CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
    };
    Ok(cri::RuntimeConfigResponse {
        linux: Some(cri::LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    })
}

async fn update_runtime_config(
    rt: &Shared,
    req: cri::UpdateRuntimeConfigRequest,
) -> Result<cri::UpdateRuntimeConfigResponse, Status> {
    let cidr = super::request::update_runtime_config(req)?;
    rt.pods.network().set_pod_cidr(&cidr);
    Ok(cri::UpdateRuntimeConfigResponse {})
}

async fn metric_descriptors() -> Result<cri::ListMetricDescriptorsResponse, Status> {
    Ok(cri::ListMetricDescriptorsResponse {
        descriptors: crate::stats::metrics::descriptors(),
    })
}

async fn not_yet<T>(rpc: &str) -> Result<T, Status> {
    Err(unimplemented(rpc))
}

/// Every RuntimeClass handler with what it supports, as kubelet reads them (it sends user
/// namespaces or recursive read-only mounts only to a handler that reports them). The native
/// default comes first, under the empty name.
fn runtime_handlers(cfg: &crate::config::Config) -> Vec<cri::RuntimeHandler> {
    let rro = crate::sys::mount_setattr_supported();
    let userns = crate::pod::userns_supported();
    std::iter::once((String::new(), crate::config::RuntimeType::Native))
        .chain(
            cfg.runtimes
                .iter()
                .map(|(n, h)| (n.clone(), h.runtime_type)),
        )
        .map(|(name, _kind)| cri::RuntimeHandler {
            name,
            features: Some(cri::RuntimeHandlerFeatures {
                // "rro" is in the spec kelson writes; runc (1.1+) and crun apply it.
                recursive_read_only_mounts: rro,
                // kelson makes the pod's user namespace and the idmapped layers and volumes for
                // every handler; an OCI runtime only joins the namespace by path (runc: tested).
                user_namespaces: userns,
            }),
        })
        .collect()
}
