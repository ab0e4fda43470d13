//! What RunPodSandbox does outside kelsond's own files, cgroup dirs and store, each behind a
//! small trait handed to `PodService` at construction: pinning the pod's namespaces (a helper
//! process), mounting its /dev/shm, and its network through CNI. The host's implementations
//! only forward to `namespaces` and `network`; unit tests pass fakes to check every rollback.
//! Nothing here decides what to make: that is `run`.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

use super::namespaces::{self, NsError, PinRequest};
use crate::network::{ConfError, Network, NetworkError, NetworkList, PodNet};
use crate::sealed_binary::SealedBinary;

/// The pod's pinned namespaces.
pub trait NamespacePins: Send + Sync {
    /// Pin what `req` names; on failure nothing it names stays pinned.
    fn pin(&self, req: &PinRequest) -> Result<(), NsError>;
    /// Release all `req` names, skipping what was never pinned.
    fn unpin_all(&self, req: &PinRequest);
}

/// The pod's /dev/shm, a tmpfs mounted in its state dir.
pub trait ShmMount: Send + Sync {
    /// Mount a tmpfs of `bytes` at `path`, owned by `owner` (host uid, gid) when given.
    fn mount(&self, path: &Path, bytes: u64, owner: Option<(u32, u32)>) -> Result<(), NsError>;
    /// Unmount `path`; a path with nothing mounted is not an error.
    fn unmount(&self, path: &Path) -> Result<(), NsError>;
}

/// The pod's network through CNI.
pub trait PodCni: Send + Sync {
    /// The network list in force.
    fn config(&self) -> Result<NetworkList, ConfError>;
    /// ADD through every plugin; on failure what was added is deleted again.
    fn add(&self, list: &NetworkList, pod: &PodNet) -> Result<Value, NetworkError>;
    /// DEL through every plugin, in reverse, with the last ADD result.
    fn del(&self, list: &NetworkList, pod: &PodNet, result: &Value) -> Result<(), NetworkError>;
}

/// The node's namespaces, pinned by the `kelsond pin-ns` helper. A helper that starts a PID
/// namespace's holder, which lives on in the pod as its PID 1, runs from a sealed copy of
/// kelsond (the holder is started from the helper's own binary), made at the first such pod.
#[derive(Default)]
pub struct HostPins {
    kelsond: OnceLock<SealedBinary>,
}

impl NamespacePins for HostPins {
    fn pin(&self, req: &PinRequest) -> Result<(), NsError> {
        let disk = std::env::current_exe()
            .map_err(|e| NsError::Helper(format!("locating kelsond: {e}")))?;
        let exe = match req.pid {
            Some(_) => self
                .kelsond
                .get_or_init(|| SealedBinary::new(disk, &["--version"]))
                .path(),
            None => disk,
        };
        namespaces::pin(req, &exe)
    }

    fn unpin_all(&self, req: &PinRequest) {
        namespaces::unpin_all(req)
    }
}

/// The node's pod /dev/shm mounts, made here.
pub struct Host;

impl ShmMount for Host {
    fn mount(&self, path: &Path, bytes: u64, owner: Option<(u32, u32)>) -> Result<(), NsError> {
        namespaces::mount_shm(path, bytes, owner)
    }

    fn unmount(&self, path: &Path) -> Result<(), NsError> {
        namespaces::unmount_dir(path)
    }
}

impl PodCni for Network {
    fn config(&self) -> Result<NetworkList, ConfError> {
        Network::config(self)
    }

    fn add(&self, list: &NetworkList, pod: &PodNet) -> Result<Value, NetworkError> {
        self.add_with(list, pod)
    }

    fn del(&self, list: &NetworkList, pod: &PodNet, result: &Value) -> Result<(), NetworkError> {
        Network::del(self, list, pod, result)
    }
}

/// The effects a `PodService` runs pods with.
#[derive(Clone)]
pub struct Effects {
    pub pins: Arc<dyn NamespacePins>,
    pub shm: Arc<dyn ShmMount>,
    pub cni: Arc<dyn PodCni>,
}

impl Effects {
    /// The node's, with `network` for CNI.
    pub fn host(network: Arc<Network>) -> Effects {
        Effects {
            pins: Arc::new(HostPins::default()),
            shm: Arc::new(Host),
            cni: network,
        }
    }
}
