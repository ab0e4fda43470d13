//! RemoveContainer: stop first, then the engine's state, the rootfs and volume clones, the
//! container's dirs and its record. Removing a missing container succeeds.

use std::path::PathBuf;
use std::time::Duration;

use super::{ContainerError, ContainerService, idmap, io_err, rootfs};
use crate::shim_client;
use crate::store::ContainerRecord;

impl ContainerService {
    /// Remove: stop first, then the container's runtime state, cgroup, rootfs and record.
    pub async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let rec = match self.find(id) {
            Ok(r) => r,
            Err(ContainerError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop(&rec.id, Duration::ZERO).await?;
        // A created-but-never-started container has an init parked in the engine: SIGKILL above
        // ended it; the engine's delete removes its state and cgroup.
        shim_client::delete(&self.engine.path(), &rec.id, &self.engine_root()).await?;
        let root = PathBuf::from(&rec.root_dir);
        {
            let r = root.clone();
            tokio::task::spawn_blocking(move || {
                // Before anything under the dir is deleted: these are the pod's volumes.
                idmap::release(&idmap::volume_clones(&r));
                rootfs::unmount_rootfs(&r)
            })
            .await??;
        }
        for d in [&root, &PathBuf::from(&rec.state_dir)] {
            match std::fs::remove_dir_all(d) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(d)(e)),
                _ => {}
            }
        }
        self.store.remove::<ContainerRecord>(&rec.id)?;
        self.cpu_prev.forget(&rec.id);
        tracing::info!(container = %rec.id, "container removed");
        Ok(())
    }
}
