//! Container lifecycle: the service, its errors and what every verb shares (finding a
//! container, its dirs and shim client). Each CRI verb has its own file (`create.rs`,
//! `start.rs`, `stop.rs`, `remove.rs`, `status.rs`, `exec_sync.rs`, `update.rs`; `exec.rs` for
//! streaming sessions) and the host facts theirs (`host.rs`). Run state comes from the shim (or
//! its exit record when the shim is gone), never from a cached guess. Every multi-step create
//! unwinds on failure.

mod create;
pub mod effects;
pub mod exec;
mod exec_sync;
mod host;
pub mod idmap;
mod in_root;
pub mod propagation;
mod remove;
pub mod rootfs;
pub mod spec;
mod start;
mod status;
mod stop;
mod update;
pub mod user;
pub mod volumes;

pub use create::{CreateRequest, MAX_LOG_PATH};
pub use stop::stop_signal;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::dirs::Dirs;
use crate::ids::IdError;
use crate::image::ImageService;
use crate::pod::PodService;
use crate::shim_client::{Client, ShimError};
use crate::store::{ContainerRecord, Found, PodRecord, Store, StoreError};

/// A cgroup stats sample and the CPU rate (nano-cores) since the previous one, if any.
pub type StatsSample = (crate::stats::Sample, Option<u64>);

/// Status reason when a container's shim vanished without recording an exit.
pub const REASON_SHIM_GONE: &str = "ShimGone";
/// Exit code reported when a container's shim vanished without recording an exit.
pub const EXIT_UNKNOWN: i32 = 255;
/// A container whose command could not be started: exit code and reason, as containerd
/// reports them (kubelet shows the reason and backs off).
pub const START_ERROR_EXIT: i32 = 128;
pub const REASON_START_ERROR: &str = "StartError";
/// Grace after SIGKILL before a stop reports failure.
const KILL_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Id(#[from] IdError),
    #[error("container {0} not found")]
    NotFound(String),
    #[error("container id prefix {0} is ambiguous")]
    Ambiguous(String),
    #[error("pod sandbox {0} not found")]
    PodNotFound(String),
    #[error("pod sandbox {0} is not ready")]
    PodNotReady(String),
    #[error("image {0:?} not found: pull it first")]
    ImageNotFound(String),
    #[error("a container named {name} already exists ({owner})")]
    NameTaken { name: String, owner: String },
    #[error("container {id} is {state}, cannot {op}")]
    WrongState {
        id: String,
        state: &'static str,
        op: &'static str,
    },
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
    #[error(transparent)]
    User(#[from] user::UserError),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Idmap(#[from] idmap::IdmapError),
    #[error(transparent)]
    Shim(#[from] ShimError),
    #[error(transparent)]
    Resources(#[from] crate::cgroups::CgroupError),
    #[error(transparent)]
    Propagation(#[from] propagation::PropagationError),
    /// The container's command could not be started (kubelet backs off and retries).
    #[error("starting container {id}: {reason}")]
    StartFailed { id: String, reason: String },
    #[error("container files {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(StoreError),
    /// Looking up the container's pod failed for another reason than its absence.
    #[error(transparent)]
    Pod(crate::pod::PodError),
    /// Looking up the container's image in the image store failed.
    #[error(transparent)]
    Image(crate::image::ImageError),
    /// A stored layer digest that does not parse (the store is damaged).
    #[error(transparent)]
    LayerDigest(#[from] crate::digest::DigestError),
    #[error(transparent)]
    Volumes(#[from] volumes::VolumeError),
    #[error(transparent)]
    Userns(#[from] crate::pod::userns::UsernsError),
    #[error(
        "userns_options: the container asks for a user namespace its pod sandbox does not have"
    )]
    UsernsNotInPod,
    #[error("userns_options: the container's mappings differ from its pod sandbox's")]
    UsernsDiffers,
    #[error("{what} {id} is not mapped in the pod's user namespace")]
    Unmapped { what: &'static str, id: u32 },
    #[error("log_directory {0:?} must be a clean path without ..")]
    LogDirectory(String),
    #[error("the built-in init was requested but {} is missing", .0.display())]
    InitMissing(PathBuf),
    #[error("device {path:?}: {source}")]
    Device {
        path: String,
        source: std::io::Error,
    },
    #[error("device {0:?} is not a device node")]
    NotADevice(String),
    #[error("the pod's runtime handler {0:?} is no longer configured")]
    HandlerGone(String),
    #[error("runtime handler {name:?}: {} is not installed", path.display())]
    HandlerNotInstalled { name: String, path: PathBuf },
    /// apparmor_parser refused the profile (what it said).
    #[error("apparmor: loading the {profile} profile: {why}")]
    AppArmorLoad { profile: &'static str, why: String },
    #[error("apparmor: loading the {profile} profile: {step}: {source}")]
    AppArmorParser {
        profile: &'static str,
        step: &'static str,
        source: std::io::Error,
    },
    /// A blocking step (mount, unmount, profile load) that panicked or was cancelled.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    #[error("exec: random: {0}")]
    Random(getrandom::Error),
    #[error("exec: starting the engine: {0}")]
    EngineSpawn(std::io::Error),
    #[error("exec with a terminal: {step}: {source}")]
    Terminal {
        step: &'static str,
        source: std::io::Error,
    },
    #[error("exec with a terminal: the engine exited: {0}")]
    TerminalEngineExited(String),
    #[error("exec with a terminal: console: no terminal within 30 s")]
    NoTerminal,
    #[error("container {0} did not exit after SIGKILL")]
    Unkillable(String),
}

impl From<StoreError> for ContainerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken { name, owner } => ContainerError::NameTaken { name, owner },
            e => ContainerError::Store(e),
        }
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Created,
    Running,
    Exited,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Created => "created",
            RunState::Running => "running",
            RunState::Exited => "exited",
        }
    }
}

/// A container with its live state.
#[derive(Debug, Clone)]
pub struct View {
    pub rec: ContainerRecord,
    pub state: RunState,
    pub pid: u32,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
}

pub struct ContainerService {
    store: Arc<Store>,
    images: Arc<ImageService>,
    pods: Arc<PodService>,
    dirs: Dirs,
    shim_binary: PathBuf,
    /// The engine, run from a sealed copy (see `sealed_binary`).
    engine: crate::sealed_binary::SealedBinary,
    init_binary: PathBuf,
    /// kelsond's configuration (the `container` table, the RuntimeClass handlers).
    cfg: crate::config::Config,
    /// Last (time, cumulative CPU ns) per container, for the nano-cores rate.
    cpu_prev: crate::stats::Rates,
    /// What CreateContainer does to the node: the host's, or a unit test's fakes.
    effects: effects::Effects,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ContainerError {
    let path = path.to_owned();
    move |e| ContainerError::Io {
        path,
        reason: e.to_string(),
    }
}

impl ContainerService {
    pub fn new(
        store: Arc<Store>,
        images: Arc<ImageService>,
        pods: Arc<PodService>,
        dirs: Dirs,
        shim_binary: PathBuf,
        cfg: crate::config::Config,
    ) -> ContainerService {
        let init_binary = if cfg.container.init_path.is_empty() {
            shim_binary.with_file_name("kelson-init")
        } else {
            PathBuf::from(&cfg.container.init_path)
        };
        let engine = crate::sealed_binary::SealedBinary::new(
            shim_binary.with_file_name("kelson-shim-engine"),
            &["--probe"],
        );
        ContainerService {
            store,
            images,
            pods,
            dirs,
            engine,
            shim_binary,
            init_binary,
            cfg,
            cpu_prev: Default::default(),
            effects: effects::Effects::host(),
        }
    }

    /// Keep CPU readings only for the containers in `live` (every container there is; called
    /// after a full listing).
    pub fn prune_rates(&self, live: &std::collections::HashSet<&str>) {
        self.cpu_prev.retain(live);
    }

    /// Containers with a CPU reading kept (for the soak tests' leak checks).
    pub fn rates_kept(&self) -> usize {
        self.cpu_prev.len()
    }

    /// The same service creating containers with `effects` instead of the node's.
    pub fn with_effects(self, effects: effects::Effects) -> ContainerService {
        ContainerService { effects, ..self }
    }

    fn root_dir(&self, id: &str) -> PathBuf {
        self.dirs.container_roots().join(id)
    }
    fn state_dir(&self, id: &str) -> PathBuf {
        self.dirs.container_states().join(id)
    }
    /// The shim's control socket: short, because unix socket paths are limited to 108 bytes.
    fn socket(&self, id: &str) -> PathBuf {
        self.dirs
            .sockets()
            .join(format!("{}.sock", &id[..id.len().min(32)]))
    }

    /// libcontainer's state root, shared by all containers.
    fn engine_root(&self) -> PathBuf {
        self.dirs.engine()
    }

    pub fn find(&self, id: &str) -> Result<ContainerRecord, ContainerError> {
        match self.store.find::<ContainerRecord>(id)? {
            Found::One(c) => Ok(c),
            Found::None(id) => Err(ContainerError::NotFound(id)),
            Found::Many(id) => Err(ContainerError::Ambiguous(id)),
            Found::Empty => Err(IdError::Missing.into()),
        }
    }

    fn client(&self, rec: &ContainerRecord) -> Client {
        Client::new(&rec.id, &self.socket(&rec.id))
    }

    pub fn list(&self) -> Result<Vec<ContainerRecord>, ContainerError> {
        Ok(self.store.list::<ContainerRecord>()?)
    }

    /// A container's cgroup, relative to each hierarchy (its directory under either driver).
    pub fn cgroup_of(&self, pod: &PodRecord, rec: &ContainerRecord) -> String {
        let path = spec::cgroups_path(&pod.cgroup, &pod.cgroup_slice, &rec.id);
        crate::cgroups::systemd::dir_of(&path).unwrap_or(path)
    }

    /// Shim processes alive now: each container's recorded shim pid that still runs kelson-shim.
    pub fn live_shims(&self) -> usize {
        self.list()
            .unwrap_or_default()
            .iter()
            .filter(|rec| shim_alive(rec))
            .count()
    }

    /// Containers of a pod (for stop/remove of the pod).
    pub fn of_pod(&self, pod_id: &str) -> Result<Vec<ContainerRecord>, ContainerError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|c| c.pod_id == pod_id)
            .collect())
    }
}

/// The container's shim process runs: its recorded pid is a kelson-shim serving this id (a
/// reused pid running something else does not count).
fn shim_alive(rec: &ContainerRecord) -> bool {
    let pid_file = Path::new(&rec.state_dir).join("shim").join("shim.pid");
    let Some(cmd) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .and_then(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
    else {
        return false;
    };
    let mut args = cmd.split(|b| *b == 0);
    args.next()
        .is_some_and(|exe| exe.windows(11).any(|w| w == b"kelson-shim"))
        && args.any(|a| a == rec.id.as_bytes())
}
