//! What CreateContainer does outside kelsond's own dirs and store, each behind a small trait
//! handed to `ContainerService` at construction: mounting the container's rootfs, and starting
//! its shim (which has the engine create the container) with the engine's delete as the undo.
//! The host's implementations only forward to `rootfs`, `idmap` and `shim`; unit tests pass
//! fakes to check every rollback. Nothing here decides what to make: that is `create`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use super::{idmap, rootfs};
use crate::shim_client::{self, ShimError};

/// The container's rootfs: an overlay over the image's layers, in the container's dir.
pub trait RootfsMounts: Send + Sync {
    /// Mount the overlay of `lowers` under `dir` (idmapped when given); returns the rootfs.
    fn mount(
        &self,
        lowers: &[PathBuf],
        dir: &Path,
        idmap: Option<rootfs::Idmapped>,
    ) -> Result<PathBuf, rootfs::RootfsError>;
    /// Release the idmapped volume clones under `dir` and unmount the rootfs; best effort.
    fn unmount(&self, dir: &Path);
}

/// A shim starting, until it reports the container's init pid.
pub type Spawning<'a> = Pin<Box<dyn Future<Output = Result<u32, ShimError>> + Send + 'a>>;

/// The container's shim and the engine state it leaves.
pub trait ShimLauncher: Send + Sync {
    /// Start a shim, which has the engine create the container.
    fn spawn<'a>(&'a self, s: shim_client::Spawn<'a>) -> Spawning<'a>;
    /// Delete what the engine at `engine` holds for `id` under `root`; best effort.
    fn delete(&self, engine: &Path, id: &str, root: &Path);
}

/// The node itself: overlay mounts here, `kelson-shim` processes, `kelson-shim-engine delete`.
pub struct Host;

impl RootfsMounts for Host {
    fn mount(
        &self,
        lowers: &[PathBuf],
        dir: &Path,
        idmap: Option<rootfs::Idmapped>,
    ) -> Result<PathBuf, rootfs::RootfsError> {
        rootfs::mount_rootfs(lowers, dir, idmap)
    }

    fn unmount(&self, dir: &Path) {
        idmap::release(&idmap::volume_clones(dir));
        let _ = rootfs::unmount_rootfs(dir);
    }
}

impl ShimLauncher for Host {
    fn spawn<'a>(&'a self, s: shim_client::Spawn<'a>) -> Spawning<'a> {
        Box::pin(shim_client::spawn(s))
    }

    fn delete(&self, engine: &Path, id: &str, root: &Path) {
        let _ = std::process::Command::new(engine)
            .args(["delete", "--id", id])
            .arg("--root")
            .arg(root)
            .output();
    }
}

/// The effects a `ContainerService` creates containers with.
#[derive(Clone)]
pub struct Effects {
    pub rootfs: Arc<dyn RootfsMounts>,
    pub shims: Arc<dyn ShimLauncher>,
}

impl Effects {
    pub fn host() -> Effects {
        Effects {
            rootfs: Arc::new(Host),
            shims: Arc::new(Host),
        }
    }
}
