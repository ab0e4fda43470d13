//! UpdateContainerResources (new limits on the live cgroup, kept in the record) and
//! ReopenContainerLog (the shim reopens the log file after kubelet rotated it).

use k8s_cri::v1 as cri;

use super::{ContainerError, ContainerService, RunState};
use crate::cgroups;
use crate::shim_client::{self, ShimError, msg};

impl ContainerService {
    pub async fn reopen_log(&self, id: &str) -> Result<(), ContainerError> {
        let rec = self.find(id)?;
        match self
            .client(&rec)
            .call(
                msg::request::Kind::ReopenLog(msg::Empty {}),
                shim_client::CALL_TIMEOUT,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(ShimError::Gone { .. }) => Err(ContainerError::WrongState {
                id: rec.id,
                state: "not running",
                op: "reopen its log",
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Apply new limits to the live cgroup and keep them in the record (reported by status).
    pub async fn update_resources(
        &self,
        id: &str,
        r: cri::LinuxContainerResources,
    ) -> Result<(), ContainerError> {
        let mut rec = self.find(id)?;
        let v = self.view(rec.clone()).await;
        if v.state == RunState::Exited {
            return Err(ContainerError::WrongState {
                id: rec.id,
                state: "exited",
                op: "update resources",
            });
        }
        let pod = self.pods.find(&rec.pod_id).map_err(ContainerError::Pod)?;
        cgroups::write::apply(
            self.pods.cgroups(),
            &format!("{}/{}", pod.cgroup, rec.id),
            &r,
        )?;
        let mut cfg: cri::ContainerConfig =
            serde_json::from_value(rec.config.clone()).unwrap_or_default();
        cfg.linux.get_or_insert_with(Default::default).resources = Some(r);
        rec.config = serde_json::to_value(&cfg).unwrap_or_default();
        self.store.update(&rec)?;
        Ok(())
    }
}
