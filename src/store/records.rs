//! Plain data kept in the store. Serialized as JSON inside redb values so fields can be added
//! without a migration (`#[serde(default)]`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LayerRecord {
    /// Uncompressed digest; names the snapshot directory.
    pub diff_id: String,
    /// Bytes and inodes the snapshot uses on disk, measured when it was unpacked.
    pub bytes: u64,
    pub inodes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageRecord {
    /// Image id = config digest.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Digest of the platform manifest (the index digest is in `repo_digests`).
    pub manifest_digest: String,
    /// Digests of every document stored for this image (index, manifest, config).
    pub blobs: Vec<String>,
    pub layers: Vec<LayerRecord>,
    /// The image config's `User`.
    pub user: String,
    /// Unix seconds of the last pull.
    pub pulled_at: i64,
    /// Unix seconds a container was last created from it (0: never).
    pub last_used: i64,
}

impl ImageRecord {
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.bytes).sum()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    #[default]
    Ready,
    NotReady,
}

/// A pod sandbox as kelson keeps it: what kubelet asked for (kept verbatim as the CRI config,
/// JSON) and what kelson made for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodRecord {
    pub id: String,
    /// `name_namespace_uid_attempt`: at most one pod holds it.
    pub name_key: String,
    pub state: PodState,
    /// Unix nanoseconds.
    pub created_at: i64,
    pub runtime_handler: String,
    /// The CRI `PodSandboxConfig` as received (serde JSON of the k8s-cri type).
    pub config: serde_json::Value,
    /// Pinned namespace files (empty when the pod uses the host's).
    pub netns: String,
    pub ipcns: String,
    pub utsns: String,
    /// The shared PID namespace (empty unless the pod shares one); its holder is PID 1 there.
    pub pidns: String,
    /// The pod's pinned user namespace (empty: the host's); the others above belong to it.
    pub userns: String,
    /// The CNI network the pod was attached to (config as used, last ADD result, pod IPs);
    /// `network_released` once DEL has run.
    pub network: Option<serde_json::Value>,
    pub network_result: serde_json::Value,
    pub ips: Vec<String>,
    pub network_released: bool,
    /// The pod's /dev/shm tmpfs mount point (empty with host IPC).
    pub shm: String,
    /// The pod cgroup (relative to each hierarchy) and whether kelson created it.
    pub cgroup: String,
    pub cgroup_created: bool,
    /// With the systemd cgroup driver: the pod's slice (`kubepods-…-pod<uid>.slice`), which
    /// systemd owns; `cgroup` is its expanded path. Empty with cgroupfs.
    pub cgroup_slice: String,
}

/// A container as kelson keeps it. Its run state lives with its shim (socket, exit record);
/// the record holds what was asked and what was made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    /// `podid_name_attempt`: at most one container holds it.
    pub name_key: String,
    /// Unix nanoseconds.
    pub created_at: i64,
    /// The CRI `ContainerConfig` as received (JSON).
    pub config: serde_json::Value,
    /// The image as the request named it, and the image id it resolved to.
    pub image: String,
    pub image_id: String,
    pub log_path: String,
    /// Dirs: persistent (upper, work, rootfs mount) and runtime (bundle, shim socket, exit record).
    pub root_dir: String,
    pub state_dir: String,
    pub started_at: i64,
    /// Diff ids of the image layers the rootfs stacks (kept from collection while it exists).
    pub layers: Vec<String>,
    /// Set once the container's exit has been folded in from the shim.
    pub exit: Option<ExitInfo>,
    /// Why StartContainer could not start the command (the container is then exited).
    pub start_error: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub exit_code: i32,
    pub started_at: i64,
    pub finished_at: i64,
    pub oom_killed: bool,
}
