//! Pod sandboxes without a pause container: pinned namespaces, the pod cgroup, the files and the
//! /dev/shm its containers will share, and the sandbox's lifecycle and state. Speaks in domain
//! types; the CRI edge converts. Every multi-step create unwinds what it did on failure.

pub mod effects;
pub mod files;
pub mod holder;
pub mod namespaces;
mod run;
pub mod userns;
pub use run::RunRequest;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_cri::v1 as cri;

use crate::cgroups::{CgroupError, Hierarchy};
use crate::ids::IdError;
use crate::network::{Network, NetworkList, PodNet};
use crate::store::{Found, PodRecord, PodState, Store, StoreError};
use effects::Effects;
use files::FilesError;
use namespaces::NsError;

/// Whether pods can have user namespaces here: the kernel allows them and has idmapped mounts
/// (for the image layers and volumes). Read once.
pub fn userns_supported() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        max > 0 && crate::sys::mount_setattr_supported()
    })
}

/// The slice of pods that name none, with the systemd cgroup driver.
pub const DEFAULT_SLICE: &str = "kelson.slice";
/// Size of a pod's /dev/shm, as docker and containerd default it.
pub const DEFAULT_SHM_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    Id(#[from] IdError),
    #[error("pod sandbox {0} not found")]
    NotFound(String),
    #[error("pod sandbox id prefix {0} is ambiguous")]
    Ambiguous(String),
    #[error("a pod sandbox named {name} already exists ({owner})")]
    NameTaken { name: String, owner: String },
    #[error("unknown runtime handler {0:?}")]
    UnknownHandler(String),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Namespace(#[from] NsError),
    #[error("pod files {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error(transparent)]
    Userns(#[from] userns::UsernsError),
    #[error(
        "hostname {hostname:?}: a pod on the host's network has the node's hostname ({node:?}); leave it empty"
    )]
    HostNetworkHostname { hostname: String, node: String },
    #[error(
        "a pod with its own user namespace cannot use the host's network, IPC or PID namespace"
    )]
    UsernsWithHostNamespace,
    #[error("a pod with its own user namespace cannot be privileged")]
    UsernsPrivileged,
    #[error(
        "user namespaces need idmapped mounts (mount_setattr, Linux 5.12+) and user namespaces enabled on the node"
    )]
    UsernsUnsupported,
    #[error("cgroup_parent {0:?} is not a systemd slice name (the systemd cgroup driver is on)")]
    NotASlice(String),
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
}

impl From<StoreError> for PodError {
    fn from(e: StoreError) -> PodError {
        match e {
            StoreError::NameTaken { name, owner } => PodError::NameTaken { name, owner },
            e => PodError::Store(e),
        }
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Namespace mode kubelet asks for (CRI NamespaceMode): POD, CONTAINER, NODE, TARGET.
fn mode(m: i32) -> cri::NamespaceMode {
    cri::NamespaceMode::try_from(m).unwrap_or(cri::NamespaceMode::Pod)
}

pub struct PodService {
    store: Arc<Store>,
    state_dir: PathBuf,
    cgroups: Hierarchy,
    network: Arc<Network>,
    /// RuntimeClass handlers configured besides the native default ("").
    handlers: Vec<String>,
    /// The systemd cgroup driver: pod cgroups are slices systemd (and kubelet) own.
    systemd: bool,
    /// What RunPodSandbox does to the node: the host's, or a unit test's fakes.
    effects: Effects,
    /// The previous CPU reading of each pod's cgroup (stats' nano-cores), dropped with the pod.
    cpu_prev: crate::stats::Rates,
}

impl PodService {
    pub fn new(
        store: Arc<Store>,
        state_dir: PathBuf,
        cgroups: Hierarchy,
        network: Arc<Network>,
        handlers: Vec<String>,
        systemd: bool,
    ) -> PodService {
        PodService {
            store,
            state_dir,
            cgroups,
            effects: Effects::host(network.clone()),
            network,
            handlers,
            systemd,
            cpu_prev: Default::default(),
        }
    }

    /// Record pod `id`'s cumulative CPU time read at `now_ns`: nano-cores since the previous
    /// reading (None on the first).
    pub fn cpu_rate(&self, id: &str, now_ns: i64, cpu_ns: u64) -> Option<u64> {
        self.cpu_prev.update(id, now_ns, cpu_ns)
    }

    /// Keep CPU readings only for the pods in `live` (every pod there is; called after a full
    /// listing).
    pub fn prune_rates(&self, live: &std::collections::HashSet<&str>) {
        self.cpu_prev.retain(live);
    }

    /// Pods with a CPU reading kept (for the soak tests' leak checks).
    pub fn rates_kept(&self) -> usize {
        self.cpu_prev.len()
    }

    /// The same service running pods with `effects` instead of the node's.
    pub fn with_effects(self, effects: Effects) -> PodService {
        PodService { effects, ..self }
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    fn pod_net(rec: &PodRecord, cfg: &cri::PodSandboxConfig) -> PodNet {
        let meta = cfg.metadata.clone().unwrap_or_default();
        let dns = cfg.dns_config.as_ref().map(|d| serde_json::json!({"nameservers": d.servers, "searches": d.searches, "options": d.options}));
        PodNet {
            id: rec.id.clone(),
            name: meta.name,
            namespace: meta.namespace,
            uid: meta.uid,
            netns: rec.netns.clone(),
            cgroup_path: format!("/{}", rec.cgroup),
            port_mappings: cfg
                .port_mappings
                .iter()
                .filter(|m| m.host_port > 0)
                .map(|m| {
                    let proto =
                        match cri::Protocol::try_from(m.protocol).unwrap_or(cri::Protocol::Tcp) {
                            cri::Protocol::Tcp => "tcp",
                            cri::Protocol::Udp => "udp",
                            cri::Protocol::Sctp => "sctp",
                        };
                    (
                        m.container_port,
                        m.host_port,
                        proto.to_owned(),
                        m.host_ip.clone(),
                    )
                })
                .collect(),
            dns,
            bandwidth: crate::network::bandwidth(&cfg.annotations),
        }
    }

    /// CNI DEL for the pod, once; a failure leaves it to be retried by the next stop/remove.
    fn release_network(&self, rec: &mut PodRecord) -> Result<(), PodError> {
        if rec.network_released {
            return Ok(());
        }
        if let Some(list) = rec.network.as_ref().and_then(NetworkList::from_value) {
            let cfg: cri::PodSandboxConfig =
                serde_json::from_value(rec.config.clone()).unwrap_or_default();
            let mut pod = Self::pod_net(rec, &cfg);
            // A namespace that is gone is passed as "" (as containerd does): plugins then release
            // what they hold outside it (IPs, host rules) without entering it.
            if !namespaces::is_pinned(Path::new(&pod.netns)) {
                pod.netns.clear();
            }
            self.network.del(&list, &pod, &rec.network_result)?;
        }
        rec.network_released = true;
        self.store.update(rec)?;
        Ok(())
    }

    pub fn cgroups(&self) -> &Hierarchy {
        &self.cgroups
    }

    fn pod_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("pods").join(id)
    }

    /// Find a pod by id or unique id prefix.
    pub fn find(&self, id: &str) -> Result<PodRecord, PodError> {
        match self.store.find::<PodRecord>(id)? {
            Found::One(p) => Ok(p),
            Found::None(id) => Err(PodError::NotFound(id)),
            Found::Many(id) => Err(PodError::Ambiguous(id)),
            Found::Empty => Err(IdError::Missing.into()),
        }
    }

    pub fn list(&self) -> Result<Vec<PodRecord>, PodError> {
        Ok(self.store.list::<PodRecord>()?)
    }

    /// Release the pod's namespaces and shm; idempotent, and a missing pod is not an error.
    pub fn stop(&self, id: &str) -> Result<(), PodError> {
        let mut rec = match self.find(id) {
            Ok(r) => r,
            Err(PodError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        // Network first: CNI DEL needs the netns.
        self.release_network(&mut rec)?;
        if !rec.pidns.is_empty() {
            namespaces::stop_holder(&PathBuf::from(&rec.pidns));
        }
        for p in [&rec.netns, &rec.ipcns, &rec.utsns, &rec.pidns, &rec.userns] {
            if !p.is_empty() {
                namespaces::unpin(&PathBuf::from(p))?;
            }
        }
        if !rec.shm.is_empty() {
            namespaces::unmount_dir(&PathBuf::from(&rec.shm))?;
        }
        if rec.state != PodState::NotReady {
            rec.state = PodState::NotReady;
            self.store.update(&rec)?;
            tracing::info!(pod = %rec.id, "pod sandbox stopped");
        }
        Ok(())
    }

    /// Stop if needed, then remove every trace; idempotent.
    pub fn remove(&self, id: &str) -> Result<(), PodError> {
        let rec = match self.find(id) {
            Ok(r) => r,
            Err(PodError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop(&rec.id)?;
        if rec.cgroup_created {
            self.cgroups.remove(&rec.cgroup)?;
        }
        let dir = self.pod_dir(&rec.id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(PodError::Io {
                    path: dir,
                    source: e,
                });
            }
            _ => {}
        }
        self.store.remove::<PodRecord>(&rec.id)?;
        self.cpu_prev.forget(&rec.id);
        tracing::info!(pod = %rec.id, "pod sandbox removed");
        Ok(())
    }

    /// Start-up: a Ready pod whose namespaces are gone (reboot, someone unmounted them) is
    /// reported NotReady rather than trusted.
    pub fn recover(&self) -> Result<(), PodError> {
        let pinned = namespaces::pinned_namespaces();
        for mut rec in self.store.list::<PodRecord>()? {
            let alive = [&rec.netns, &rec.ipcns, &rec.utsns, &rec.pidns, &rec.userns]
                .iter()
                .filter(|p| !p.is_empty())
                .all(|p| pinned.contains(p.as_str()))
                && (rec.pidns.is_empty()
                    || namespaces::holder_pid(&PathBuf::from(&rec.pidns)).is_some());
            if rec.state == PodState::Ready && !alive {
                tracing::warn!(pod = %rec.id, "pod namespaces are gone; marking the sandbox not ready");
                rec.state = PodState::NotReady;
                self.store.update(&rec)?;
            }
        }
        Ok(())
    }
}
