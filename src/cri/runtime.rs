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

impl RuntimeApi {
    /// Runtime readiness: the store answers and the root dir is writable.
    fn runtime_condition(&self) -> cri::RuntimeCondition {
        let probe = self
            .0
            .images
            .list(None)
            .map(|_| ())
            .map_err(|e| e.to_string())
            .and_then(|_| {
                let p = self.0.config.root.join(".ready-probe");
                std::fs::write(&p, b"")
                    .and_then(|_| std::fs::remove_file(&p))
                    .map_err(|e| {
                        format!(
                            "root dir {} not writable: {e}",
                            self.0.config.root.display()
                        )
                    })
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
    fn network_condition(&self) -> cri::RuntimeCondition {
        match self.0.pods.network().config() {
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
}

#[tonic::async_trait]
impl cri::runtime_service_server::RuntimeService for RuntimeApi {
    type GetContainerEventsStream = super::events::EventStream;

    async fn version(
        &self,
        _req: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: KUBE_API_VERSION.into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: RUNTIME_VERSION.into(),
            runtime_api_version: CRI_API_VERSION.into(),
        }))
    }

    async fn status(
        &self,
        req: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let verbose = req.into_inner().verbose;
        let mut info = HashMap::new();
        if verbose {
            let cfg = serde_json::to_string(&self.0.config).unwrap_or_default();
            info.insert("config".to_owned(), cfg);
        }
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![self.runtime_condition(), self.network_condition()],
            }),
            info,
            runtime_handlers: runtime_handlers(&self.0.config),
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: true,
            }),
        }))
    }

    async fn runtime_config(
        &self,
        _req: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        let driver = match self.0.config.cgroup_driver {
            CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
            CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
        };
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: driver as i32,
            }),
        }))
    }

    async fn get_container_events(
        &self,
        _req: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Ok(Response::new(self.0.events.subscribe()))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        pod::run(&self.0, req.into_inner()).await.map(Response::new)
    }
    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        pod::stop(&self.0, req.into_inner().pod_sandbox_id)
            .await
            .map(Response::new)
    }
    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        pod::remove(&self.0, req.into_inner().pod_sandbox_id)
            .await
            .map(Response::new)
    }
    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        pod::status(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }
    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        pod::list(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }
    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        container::create(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }
    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        container::start(&self.0, req.into_inner().container_id)
            .await
            .map(Response::new)
    }
    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        container::stop(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }
    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        container::remove(&self.0, req.into_inner().container_id)
            .await
            .map(Response::new)
    }
    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        container::list(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }
    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        container::status(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }
    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        container::update_resources(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }
    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        container::reopen_log(&self.0, req.into_inner().container_id)
            .await
            .map(Response::new)
    }
    async fn exec_sync(
        &self,
        req: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        container::exec_sync(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }
    async fn exec(
        &self,
        req: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        container::exec(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }
    async fn attach(
        &self,
        req: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        container::attach(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }
    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        pod::port_forward(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }
    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        stats::container(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }
    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        stats::list_containers(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }
    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        stats::pod(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }
    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        stats::list_pods(&self.0, req.into_inner())
            .await
            .map(Response::new)
    }
    async fn update_runtime_config(
        &self,
        req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        let cidr = super::request::update_runtime_config(req.into_inner())?;
        self.0.pods.network().set_pod_cidr(&cidr);
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }
    async fn checkpoint_container(
        &self,
        _req: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        Err(unimplemented("CheckpointContainer"))
    }
    async fn list_metric_descriptors(
        &self,
        _req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: crate::stats::metrics::descriptors(),
        }))
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        stats::pod_metrics(&self.0).await.map(Response::new)
    }
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
