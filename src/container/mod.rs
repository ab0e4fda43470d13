//! Container lifecycle: create (overlay rootfs, OCI spec, a shim that creates the container),
//! start, stop (STOPSIGNAL or SIGTERM, then SIGKILL at the timeout), remove, status, list,
//! ExecSync and log reopening. Run state comes from the shim (or its exit record when the shim
//! is gone), never from a cached guess. Every multi-step create unwinds on failure.

pub mod exec;
pub mod idmap;
pub mod propagation;
pub mod resources;
pub mod rootfs;
pub mod seccomp;
pub mod security;
pub mod spec;
pub mod user;
pub mod volumes;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_cri::v1 as cri;

use crate::dirs::Dirs;
use crate::ids::{self, IdError};
use crate::image::ImageService;
use crate::image::digest::Digest;
use crate::pod::PodService;
use crate::pod::userns::UserNs;
use crate::rollback::Rollback;
use crate::shim::{self, Client, ShimError, msg};
use crate::store::{ContainerRecord, ExitInfo, PodRecord, PodState, Store, StoreError};

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
/// Longest log path kelson accepts from kubelet.
const MAX_LOG_PATH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("{0}")]
    Invalid(String),
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
    User(#[from] user::UserError),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Idmap(#[from] idmap::IdmapError),
    #[error(transparent)]
    Shim(#[from] ShimError),
    #[error(transparent)]
    Resources(#[from] resources::ResourceError),
    #[error(transparent)]
    Propagation(#[from] propagation::PropagationError),
    /// The container's command could not be started (kubelet backs off and retries).
    #[error("starting container {id}: {reason}")]
    StartFailed { id: String, reason: String },
    #[error("container files {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(StoreError),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
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
    /// The engine, run from a sealed copy (see `shim::engine`).
    engine: shim::engine::Engine,
    init_binary: PathBuf,
    /// kelsond's configuration (the `container` table, the RuntimeClass handlers).
    cfg: crate::config::Config,
    /// Last (time, cumulative CPU ns) per container, for the nano-cores rate.
    cpu_prev: crate::stats::Rates,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ContainerError {
    let path = path.to_owned();
    move |e| ContainerError::Io {
        path,
        reason: e.to_string(),
    }
}

/// A log path from kubelet: relative, no `..`, under the pod's log directory.
fn log_path(pod_log_dir: &str, rel: &str) -> Result<Option<PathBuf>, ContainerError> {
    if pod_log_dir.is_empty() || rel.is_empty() {
        return Ok(None);
    }
    let bad = |what: &str, p: &str| {
        ContainerError::Invalid(format!(
            "{what} {:?} must be a clean path without ..",
            p.chars().take(120).collect::<String>()
        ))
    };
    if !pod_log_dir.starts_with('/')
        || pod_log_dir.split('/').any(|c| c == "..")
        || pod_log_dir.len() > MAX_LOG_PATH
    {
        return Err(bad("log_directory", pod_log_dir));
    }
    if rel.starts_with('/')
        || rel.split('/').any(|c| c == ".." || c.is_empty())
        || rel.len() > MAX_LOG_PATH
    {
        return Err(bad("log_path", rel));
    }
    Ok(Some(Path::new(pod_log_dir).join(rel)))
}

/// Look up the host side of requested devices: each must be a character or block device.
fn host_devices(reqs: &[cri::Device]) -> Result<Vec<spec::Device>, ContainerError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    reqs.iter()
        .map(|d| {
            let m = std::fs::metadata(&d.host_path)
                .map_err(|e| ContainerError::Invalid(format!("device {:?}: {e}", d.host_path)))?;
            let ft = m.file_type();
            let kind = if ft.is_char_device() {
                'c'
            } else if ft.is_block_device() {
                'b'
            } else {
                return Err(ContainerError::Invalid(format!(
                    "device {:?} is not a device node",
                    d.host_path
                )));
            };
            let rdev = m.rdev();
            Ok(spec::Device {
                container_path: if d.container_path.is_empty() {
                    d.host_path.clone()
                } else {
                    d.container_path.clone()
                },
                kind,
                major: nix::sys::stat::major(rdev),
                minor: nix::sys::stat::minor(rdev),
                mode: m.mode() & 0o7777,
                access: if d.permissions.is_empty() {
                    "rwm".into()
                } else {
                    d.permissions.clone()
                },
            })
        })
        .collect()
}

/// The host's cgroup v1 hierarchies (`/sys/fs/cgroup/<name>`), read once. The container
/// library mounts a container's v1 hierarchies writable whatever the spec says (runc remounts
/// them read-only); kelson lists them as read-only paths so root in a container cannot lift
/// its own limits. Empty on a cgroup v2 host, where the spec's `ro` is honoured.
fn v1_cgroup_dirs() -> &'static [String] {
    static DIRS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    DIRS.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut dirs: Vec<String> = text
            .lines()
            .filter_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                let point = pre.split_whitespace().nth(4)?;
                (post.split_whitespace().next()? == "cgroup"
                    && point.starts_with("/sys/fs/cgroup/"))
                .then(|| point.to_owned())
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    })
}

/// Whether the host runs AppArmor (read once). SELinux labels are not applied: like containerd
/// on a host without SELinux, `selinux_options` are accepted and ignored.
fn apparmor_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|s| s.trim_start().starts_with('Y'))
    })
}

/// Whether the host enforces SELinux (read once).
fn selinux_enforcing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::fs::read_to_string("/sys/fs/selinux/enforce").is_ok_and(|s| s.trim() == "1")
    })
}

/// Load kelson's RuntimeDefault AppArmor profile into the kernel unless it is there already
/// (`apparmor_parser -Kr`, as containerd loads its own). Only on AppArmor hosts; a failure
/// refuses the container rather than running it unconfined. Not exercised by CI: the test
/// machine has no AppArmor.
fn ensure_apparmor_default() -> Result<(), ContainerError> {
    use std::io::Write;
    static LOADED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if *loaded {
        return Ok(());
    }
    let name = security::APPARMOR_DEFAULT_NAME;
    let listed = std::fs::read_to_string("/sys/kernel/security/apparmor/profiles")
        .is_ok_and(|p| p.lines().any(|l| l.starts_with(&format!("{name} ("))));
    if !listed {
        let fail = |why: String| {
            ContainerError::Unavailable(format!("apparmor: loading the {name} profile: {why}"))
        };
        let mut child = std::process::Command::new("apparmor_parser")
            .arg("-Kr")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("running apparmor_parser: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(security::APPARMOR_DEFAULT_PROFILE.as_bytes())
                .map_err(|e| fail(e.to_string()))?;
        }
        let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
        if !out.status.success() {
            return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
        }
        tracing::info!(profile = name, "loaded the default AppArmor profile");
    }
    *loaded = true;
    Ok(())
}

/// kelsond's own effective capabilities: all a container can be given (a host may withhold
/// some, e.g. CAP_SYS_RESOURCE; containerd takes its current set the same way).
fn own_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The host's device nodes under /dev (not the per-container ones: pts, shm, mqueue), for a
/// privileged container. Symlinks are not followed.
fn all_host_devices() -> Vec<spec::Device> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::from("/dev")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(m) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let ft = m.file_type();
            if ft.is_dir() {
                if !["/dev/pts", "/dev/shm", "/dev/mqueue"].contains(&path.to_str().unwrap_or(""))
                    && path.components().count() < 6
                {
                    dirs.push(path);
                }
                continue;
            }
            let kind = if ft.is_char_device() {
                'c'
            } else if ft.is_block_device() {
                'b'
            } else {
                continue;
            };
            // Every container gets its own of these (the runtime's default devices, its
            // terminal, its devpts).
            if matches!(
                path.to_str(),
                Some(
                    "/dev/null"
                        | "/dev/zero"
                        | "/dev/full"
                        | "/dev/random"
                        | "/dev/urandom"
                        | "/dev/tty"
                        | "/dev/ptmx"
                        | "/dev/console"
                )
            ) {
                continue;
            }
            out.push(spec::Device {
                container_path: path.display().to_string(),
                kind,
                major: nix::sys::stat::major(m.rdev()),
                minor: nix::sys::stat::minor(m.rdev()),
                mode: m.mode() & 0o7777,
                access: "rwm".into(),
            });
        }
    }
    out.sort_by(|a, b| a.container_path.cmp(&b.container_path));
    out
}

/// The user namespace a container runs in: its pod's (every container of a pod shares it).
/// A container asking for one its pod does not have, or for other mappings, is refused.
fn pod_user_ns(
    pod: &PodRecord,
    pod_linux: &cri::LinuxPodSandboxConfig,
    config: &cri::ContainerConfig,
) -> Result<Option<UserNs>, ContainerError> {
    let ns_of = |o: Option<&cri::NamespaceOption>| {
        crate::pod::userns::from_cri(o.and_then(|n| n.userns_options.as_ref()))
            .map_err(|e| ContainerError::Invalid(e.to_string()))
    };
    let pod_ns = if pod.userns.is_empty() {
        None
    } else {
        ns_of(
            pod_linux
                .security_context
                .as_ref()
                .and_then(|s| s.namespace_options.as_ref()),
        )?
    };
    let own = ns_of(
        config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref()),
    )?;
    match (&pod_ns, own) {
        (None, Some(_)) => Err(ContainerError::Invalid(
            "userns_options: the container asks for a user namespace its pod sandbox does not have"
                .into(),
        )),
        (Some(p), Some(c)) if *p != c => Err(ContainerError::Invalid(
            "userns_options: the container's mappings differ from its pod sandbox's".into(),
        )),
        _ => Ok(pod_ns),
    }
}

/// Every id the container starts with must exist in its user namespace.
fn check_mapped(u: &UserNs, ids: &(u32, u32, Vec<u32>)) -> Result<(), ContainerError> {
    use crate::pod::userns::to_host;
    let unmapped = |what: &str, id: u32| {
        ContainerError::Invalid(format!(
            "{what} {id} is not mapped in the pod's user namespace"
        ))
    };
    if to_host(&u.uids, ids.0).is_none() {
        return Err(unmapped("user id", ids.0));
    }
    for g in std::iter::once(&ids.1).chain(&ids.2) {
        if to_host(&u.gids, *g).is_none() {
            return Err(unmapped("group id", *g));
        }
    }
    Ok(())
}

/// The image's STOPSIGNAL ("SIGQUIT", "QUIT" or a number), SIGTERM when absent or unknown.
/// The most of a stop's timeout kept for SIGKILL and reaping.
const STOP_KILL_MARGIN: Duration = Duration::from_secs(1);

/// How long a stop waits after the stop signal before SIGKILL: the timeout less a margin
/// (a tenth of it, at most `STOP_KILL_MARGIN`), so that StopContainer returns within the
/// timeout it was given — callers such as critest wait exactly that long.
fn grace_before_kill(timeout: Duration) -> Duration {
    timeout.saturating_sub(STOP_KILL_MARGIN.min(timeout / 10))
}

/// The hostname RunPodSandbox wrote for the pod's containers (empty if unreadable).
fn pod_hostname(pod_dir: &Path) -> String {
    use std::io::Read;
    let mut s = String::new();
    let _ = std::fs::File::open(pod_dir.join("hostname")).and_then(|f| {
        f.take(crate::pod::files::MAX_HOSTNAME as u64 + 1)
            .read_to_string(&mut s)
    });
    s.trim().to_owned()
}

pub fn stop_signal(image_config: &serde_json::Value) -> i32 {
    let s = image_config["config"]["StopSignal"]
        .as_str()
        .unwrap_or("")
        .trim();
    if let Ok(n) = s.parse::<i32>() {
        if nix::sys::signal::Signal::try_from(n).is_ok() {
            return n;
        }
    }
    let name = if s.starts_with("SIG") {
        s.to_owned()
    } else {
        format!("SIG{s}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .unwrap_or(nix::libc::SIGTERM)
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
        let engine = shim::engine::Engine::new(shim_binary.with_file_name("kelson-shim-engine"));
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
        }
    }

    /// The config default, overridden by the pod's and then the container's annotation — only
    /// when the config allows that annotation (annotations are otherwise data).
    fn wants_init(
        &self,
        pod: &std::collections::HashMap<String, String>,
        ctr: &std::collections::HashMap<String, String>,
    ) -> bool {
        let key = crate::config::INIT_ANNOTATION;
        if !self
            .cfg
            .container
            .allowed_annotations
            .iter()
            .any(|a| a == key)
        {
            return self.cfg.container.init;
        }
        let parse = |m: &std::collections::HashMap<String, String>| {
            m.get(key).and_then(|v| v.parse::<bool>().ok())
        };
        parse(ctr).or(parse(pod)).unwrap_or(self.cfg.container.init)
    }

    fn root_dir(&self, id: &str) -> PathBuf {
        self.dirs.root.join("containers").join(id)
    }
    fn state_dir(&self, id: &str) -> PathBuf {
        self.dirs.state.join("containers").join(id)
    }
    /// The shim's control socket: short, because unix socket paths are limited to 108 bytes.
    fn socket(&self, id: &str) -> PathBuf {
        self.dirs
            .state
            .join("s")
            .join(format!("{}.sock", &id[..id.len().min(32)]))
    }

    /// libcontainer's state root, shared by all containers.
    fn engine_root(&self) -> PathBuf {
        self.dirs.state.join("engine")
    }

    pub fn find(&self, id: &str) -> Result<ContainerRecord, ContainerError> {
        let id = match ids::lookup(id) {
            ids::Lookup::Id(id) => id,
            ids::Lookup::Empty => return Err(IdError::Missing.into()),
            ids::Lookup::Foreign => return Err(ContainerError::NotFound(ids::shown(id))),
        };
        if id.len() == ids::ID_LEN {
            return self
                .store
                .get::<ContainerRecord>(id)?
                .ok_or_else(|| ContainerError::NotFound(id.to_owned()));
        }
        let mut hits = self
            .store
            .list::<ContainerRecord>()?
            .into_iter()
            .filter(|c| c.id.starts_with(id));
        match (hits.next(), hits.next()) {
            (Some(c), None) => Ok(c),
            (None, _) => Err(ContainerError::NotFound(id.to_owned())),
            _ => Err(ContainerError::Ambiguous(id.to_owned())),
        }
    }

    pub async fn create(
        &self,
        pod_id: &str,
        config: cri::ContainerConfig,
    ) -> Result<String, ContainerError> {
        let began = std::time::Instant::now();
        let pod: PodRecord = self.pods.find(pod_id).map_err(|e| match e {
            crate::pod::PodError::NotFound(id) => ContainerError::PodNotFound(id),
            other => ContainerError::Invalid(other.to_string()),
        })?;
        if pod.state != PodState::Ready {
            return Err(ContainerError::PodNotReady(pod.id));
        }
        let meta = config.metadata.clone().ok_or_else(|| {
            ContainerError::Invalid("container config: metadata is required".into())
        })?;
        if meta.name.is_empty()
            || meta.name.len() > 253
            || meta.name.chars().any(|c| c.is_control() || c == '/')
        {
            return Err(ContainerError::Invalid(format!(
                "metadata.name {:?} must be 1 to 253 characters without '/'",
                meta.name.chars().take(80).collect::<String>()
            )));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image_name.is_empty() {
            return Err(ContainerError::Invalid(
                "container config: image is required".into(),
            ));
        }
        let (image, _) = self
            .images
            .resolve(&image_name)
            .map_err(|e| ContainerError::Invalid(e.to_string()))?
            .ok_or_else(|| ContainerError::ImageNotFound(image_name.clone()))?;
        let image_config = self.images.config_json(&image).unwrap_or_default();
        let pod_cfg: cri::PodSandboxConfig =
            serde_json::from_value(pod.config.clone()).unwrap_or_default();
        let log = log_path(&pod_cfg.log_directory, &config.log_path)?;

        let id = ids::generate()?;
        let root_dir = self.root_dir(&id);
        let state_dir = self.state_dir(&id);
        let rec = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            name_key: format!("{}_{}_{}", pod.id, meta.name, meta.attempt),
            created_at: now_ns(),
            config: serde_json::to_value(&config).unwrap_or_default(),
            image: image_name,
            image_id: image.id.clone(),
            log_path: log
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            root_dir: root_dir.display().to_string(),
            state_dir: state_dir.display().to_string(),
            layers: image.layers.iter().map(|l| l.diff_id.clone()).collect(),
            ..Default::default()
        };
        self.store.create(&rec)?;
        // For the image GC policy's least-recently-used order; a failure only costs accuracy.
        if let Err(e) = self.store.touch_image(&image.id, now_ns() / 1_000_000_000) {
            tracing::warn!(image = %image.id, error = %e, "recording image use");
        }
        let mut undo = Rollback::default();
        {
            let (store, id) = (self.store.clone(), id.clone());
            undo.push(move || {
                let _ = store.remove::<ContainerRecord>(&id);
            });
        }
        for d in [
            &root_dir,
            &state_dir.join("bundle"),
            &state_dir.join("shim"),
        ] {
            std::fs::create_dir_all(d).map_err(io_err(d))?;
        }
        {
            let (a, b) = (root_dir.clone(), state_dir.clone());
            undo.push(move || {
                let _ = std::fs::remove_dir_all(&a);
                let _ = std::fs::remove_dir_all(&b);
            });
        }
        let lowers: Vec<PathBuf> = image
            .layers
            .iter()
            .map(|l| {
                Digest::parse(&l.diff_id)
                    .map(|d| self.images.snapshots().path(&d))
                    .map_err(|e| ContainerError::Internal(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let pod_cfg_linux = pod_cfg.linux.clone().unwrap_or_default();
        let user_ns = pod_user_ns(&pod, &pod_cfg_linux, &config)?;
        let userns_file = match &user_ns {
            Some(_) => Some(idmap::open_userns(Path::new(&pod.userns))?),
            None => None,
        };
        let rootfs = {
            let (lowers, dir) = (lowers.clone(), root_dir.clone());
            let userns = userns_file
                .as_ref()
                .map(|f| f.try_clone().map_err(io_err(Path::new(&pod.userns))))
                .transpose()?;
            let root = user_ns.as_ref().map(|u| u.root_on_host());
            tokio::task::spawn_blocking(move || {
                let idmap = userns
                    .as_ref()
                    .zip(root)
                    .map(|(userns, root)| rootfs::Idmapped { userns, root });
                rootfs::mount_rootfs(&lowers, &dir, idmap)
            })
            .await
            .map_err(|e| ContainerError::Internal(e.to_string()))??
        };
        {
            let dir = root_dir.clone();
            undo.push(move || {
                idmap::release(&idmap::volume_clones(&dir));
                let _ = rootfs::unmount_rootfs(&dir);
            });
        }

        let linux = config.linux.clone().unwrap_or_default();
        let sc = linux.security_context.clone().unwrap_or_default();
        let passwd = user::read_in_root(&rootfs, "/etc/passwd");
        let group = user::read_in_root(&rootfs, "/etc/group");
        let uid_gid = user::resolve(
            passwd.as_deref(),
            group.as_deref(),
            &image.user,
            sc.run_as_user.map(|v| v.value),
            &sc.run_as_username,
            sc.run_as_group.map(|v| v.value),
            user::Supplemental {
                groups: &sc.supplemental_groups,
                strict: sc.supplemental_groups_policy
                    == cri::SupplementalGroupsPolicy::Strict as i32,
            },
        )?;
        if let Some(u) = &user_ns {
            check_mapped(u, &uid_gid)?;
        }
        // The image's VOLUMEs kubelet does not mount over: directories in the rootfs.
        let image_volumes = volumes::from_config(&image_config)
            .map_err(|e| ContainerError::Invalid(e.to_string()))?;
        let owner = match &user_ns {
            Some(u) => (
                crate::pod::userns::to_host(&u.uids, uid_gid.0).unwrap_or(uid_gid.0),
                crate::pod::userns::to_host(&u.gids, uid_gid.1).unwrap_or(uid_gid.1),
            ),
            None => (uid_gid.0, uid_gid.1),
        };
        for v in image_volumes
            .iter()
            .filter(|v| !config.mounts.iter().any(|m| m.container_path == **v))
        {
            volumes::make(&rootfs, v, owner);
        }
        let own_oom = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let pod_dir = self.dirs.state.join("pods").join(&pod.id);
        let hostname = pod_hostname(&pod_dir);
        let ctx = spec::PodContext {
            netns: pod.netns.clone(),
            ipcns: pod.ipcns.clone(),
            utsns: pod.utsns.clone(),
            pidns: pod.pidns.clone(),
            shm: pod.shm.clone(),
            dir: pod_dir,
            cgroup: pod.cgroup.clone(),
            slice: pod.cgroup_slice.clone(),
            userns: pod.userns.clone(),
            user_maps: user_ns.clone(),
            hostname,
        };
        let run = spec::ImageRun::from_config(&image_config);
        let init = self
            .wants_init(&pod_cfg.annotations, &config.annotations)
            .then(|| self.init_binary.clone());
        if let Some(p) = &init
            && !p.is_file()
        {
            return Err(ContainerError::Invalid(format!(
                "the built-in init was requested but {} is missing",
                p.display()
            )));
        }
        let pod_linux = pod_cfg_linux;
        let privileged = linux
            .security_context
            .as_ref()
            .is_some_and(|s| s.privileged);
        let mut devices = host_devices(&config.devices)?;
        if privileged {
            // Every device node of the host, as containerd gives a privileged container.
            for d in all_host_devices() {
                if !devices.iter().any(|r| r.container_path == d.container_path) {
                    devices.push(d);
                }
            }
        }
        // A Localhost seccomp profile is read here (I/O); the rest is decided in the spec.
        let localhost_seccomp = match linux
            .security_context
            .as_ref()
            .map(seccomp::choose)
            .transpose()
            .map_err(|e| ContainerError::Invalid(e.to_string()))?
        {
            Some(seccomp::Choice::Localhost(r)) => Some(
                seccomp::read_localhost(&r, self.cfg.container.seccomp_root())
                    .map_err(|e| ContainerError::Invalid(e.to_string()))?,
            ),
            _ => None,
        };
        // Missing bind sources are created as directories, as containerd does.
        for m in &config.mounts {
            if std::fs::symlink_metadata(&m.host_path).is_err() {
                std::fs::create_dir_all(&m.host_path).map_err(io_err(Path::new(&m.host_path)))?;
            }
        }
        // Propagating volumes need a source mount that propagates.
        let propagating: Vec<&cri::Mount> = config
            .mounts
            .iter()
            .filter(|m| m.propagation != cri::MountPropagation::PropagationPrivate as i32)
            .collect();
        if !propagating.is_empty() {
            let info = propagation::read_mountinfo()?;
            for m in propagating {
                let resolved =
                    std::fs::canonicalize(&m.host_path).map_err(io_err(Path::new(&m.host_path)))?;
                propagation::check(m, &info, &resolved)?;
            }
        }
        // In a user-namespaced pod every volume is an idmapped clone, mounted under the
        // container's dir; the spec binds the clone.
        let mut spec_config = config.clone();
        if let Some(userns) = &userns_file {
            let clones = idmap::volume_clones(&root_dir);
            for (i, m) in spec_config.mounts.iter_mut().enumerate() {
                let target = clones.join(i.to_string());
                idmap::clone_idmapped(Path::new(&m.host_path), &target, userns, true)?;
                m.host_path = target.display().to_string();
            }
        }
        let input = spec::Input {
            id: &id,
            config: &spec_config,
            image: &run,
            pod: &ctx,
            rootfs: rootfs.clone(),
            user: uid_gid,
            own_oom_score_adj: own_oom,
            init,
            devices,
            host_caps: own_caps(),
            cgroup_v1_dirs: v1_cgroup_dirs(),
            localhost_seccomp,
            apparmor_host: apparmor_enabled(),
            selinux_host: selinux_enforcing(),
            init_mount: self.init_binary.is_file().then(|| self.init_binary.clone()),
            sysctls: &pod_linux.sysctls,
            pod_privileged: pod_linux
                .security_context
                .as_ref()
                .is_some_and(|s| s.privileged),
            kernel_rro: crate::sys::mount_setattr_supported(),
        };
        let (spec, warnings) = spec::generate(&input)?;
        if spec["process"]["apparmorProfile"] == security::APPARMOR_DEFAULT_NAME {
            tokio::task::spawn_blocking(ensure_apparmor_default)
                .await
                .map_err(|e| ContainerError::Internal(e.to_string()))??;
        }
        for w in warnings {
            tracing::warn!(container = %id, "{w}");
        }
        let bundle = state_dir.join("bundle");
        let cfg_path = bundle.join("config.json");
        std::fs::write(
            &cfg_path,
            serde_json::to_vec_pretty(&spec).unwrap_or_default(),
        )
        .map_err(io_err(&cfg_path))?;
        let log_file = log.unwrap_or_else(|| state_dir.join("shim").join("discarded.log"));
        std::fs::create_dir_all(self.engine_root()).map_err(io_err(&self.engine_root()))?;
        let socket = self.socket(&id);
        if let Some(d) = socket.parent() {
            std::fs::create_dir_all(d).map_err(io_err(d))?;
        }
        {
            // If anything after this fails, the engine may hold a created container: delete it.
            let (engine, id, root) = (self.engine.path(), id.clone(), self.engine_root());
            undo.push(move || {
                let _ = std::process::Command::new(engine)
                    .args(["delete", "--id", &id])
                    .arg("--root")
                    .arg(root)
                    .output();
            });
        }
        self.record_runtime(&pod, &id, &bundle)?;
        let prepared = began.elapsed();
        let pid = shim::spawn(shim::Spawn {
            binary: &self.shim_binary,
            id: &id,
            root: &self.engine_root(),
            bundle: &bundle,
            dir: &state_dir.join("shim"),
            socket: &socket,
            log: &log_file,
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            tty: config.tty,
            engine: &self.engine.for_shim(),
        })
        .await?;
        // Where the time went (rootfs, spec and store vs the shim and engine), for operators and
        // for the benchmarks' profiling.
        tracing::info!(
            container = %id,
            pod = %pod.id,
            pid,
            prepare_ms = prepared.as_secs_f64() * 1e3,
            shim_ms = (began.elapsed() - prepared).as_secs_f64() * 1e3,
            "container created"
        );
        undo.disarm();
        Ok(id)
    }

    /// A pod of an OCI-runtime handler: tell the engine which runtime drives this container
    /// (read by every engine call, so neither the shim nor any caller needs to know). Written
    /// atomically; the engine's delete removes it.
    fn record_runtime(
        &self,
        pod: &PodRecord,
        id: &str,
        bundle: &Path,
    ) -> Result<(), ContainerError> {
        let name = &pod.runtime_handler;
        let handler = self.cfg.handler(name).ok_or_else(|| {
            ContainerError::Invalid(format!(
                "the pod's runtime handler {name:?} is no longer configured"
            ))
        })?;
        if handler.runtime_type == crate::config::RuntimeType::Native {
            return Ok(());
        }
        if !handler.path.is_file() {
            return Err(ContainerError::Unavailable(format!(
                "runtime handler {name:?}: {} is not installed",
                handler.path.display()
            )));
        }
        let record = serde_json::json!({
            "binary": handler.path,
            // runc and crun read systemd's slice:prefix:name only when told.
            "systemd_cgroup": !pod.cgroup_slice.is_empty(),
            "root": self.cfg.handler_root(name, &handler),
            "args": handler.args,
            "bundle": bundle,
        });
        let path = self.engine_root().join(format!("{id}.runtime.json"));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, record.to_string()).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    fn client(&self, rec: &ContainerRecord) -> Client {
        Client::new(&rec.id, &self.socket(&rec.id))
    }

    /// Live state: the shim's answer, else its exit record, else "exited, unknown".
    pub async fn view(&self, rec: ContainerRecord) -> View {
        let mut v = View {
            rec,
            state: RunState::Created,
            pid: 0,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
        };
        let client = self.client(&v.rec);
        let mut answer = client.state().await;
        // A shim that answers with an error is alive: ask again before concluding anything
        // from it (an unreachable or silent shim is not asked twice).
        for _ in 0..2 {
            match &answer {
                Err(e @ ShimError::Remote(_)) => {
                    tracing::debug!(container = %v.rec.id, error = %e, "shim state: asking again");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    answer = client.state().await;
                }
                _ => break,
            }
        }
        match answer {
            Ok(s) => {
                v.pid = s.pid;
                v.started_at = s.started_at;
                v.state = match msg::Status::try_from(s.status) {
                    Ok(msg::Status::Running) => RunState::Running,
                    Ok(msg::Status::Exited) => RunState::Exited,
                    _ => RunState::Created,
                };
                if v.state == RunState::Exited {
                    self.fill_exit(
                        &mut v,
                        ExitInfo {
                            exit_code: s.exit_code,
                            started_at: s.started_at,
                            finished_at: s.finished_at,
                            oom_killed: s.oom_killed,
                        },
                    );
                }
            }
            Err(err) => {
                let exit = v.rec.exit.or_else(|| {
                    shim::read_exit(&Path::new(&v.rec.state_dir).join("shim")).map(|e| ExitInfo {
                        exit_code: e.exit_code,
                        started_at: e.started_at,
                        finished_at: e.finished_at,
                        oom_killed: e.oom_killed,
                    })
                });
                match exit {
                    Some(e) => self.fill_exit(&mut v, e),
                    None if shim_alive(&v.rec) => {
                        // Alive but not answering in time (a loaded node): the last known
                        // state stands. Concluding "exited" here would make kubelet restart a
                        // healthy container, and killing it would be worse.
                        tracing::warn!(container = %v.rec.id, error = %err, "shim alive but not answering; reporting the last known state");
                        if v.rec.started_at > 0 {
                            v.state = RunState::Running;
                            v.started_at = v.rec.started_at;
                        }
                    }
                    None => {
                        // The shim died without recording an exit: nobody watches the
                        // container's processes any more, so they are killed (the whole
                        // cgroup) rather than left running unobserved beside a container
                        // reported exited.
                        self.kill_cgroup(&v.rec);
                        v.state = RunState::Exited;
                        v.exit_code = EXIT_UNKNOWN;
                        v.started_at = v.rec.started_at;
                        v.reason = REASON_SHIM_GONE.into();
                        v.message = "the container's shim was killed or crashed without recording an exit status; kelsond killed the container's remaining processes".into();
                    }
                }
            }
        }
        v
    }

    fn fill_exit(&self, v: &mut View, e: ExitInfo) {
        if !v.rec.start_error.is_empty() {
            let recorded = v.rec.exit.unwrap_or(e);
            v.state = RunState::Exited;
            v.exit_code = START_ERROR_EXIT;
            v.started_at = 0;
            v.finished_at = recorded.finished_at;
            v.reason = REASON_START_ERROR.into();
            v.message = v.rec.start_error.clone();
            return;
        }
        v.state = RunState::Exited;
        v.exit_code = e.exit_code;
        v.started_at = if e.started_at > 0 {
            e.started_at
        } else {
            v.rec.started_at
        };
        v.finished_at = e.finished_at;
        v.reason = if e.oom_killed {
            "OOMKilled"
        } else if e.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
        .into();
        if v.rec.exit.is_none() {
            let mut rec = v.rec.clone();
            rec.exit = Some(e);
            if self.store.update(&rec).is_ok() {
                v.rec = rec;
            }
        }
    }

    pub async fn start(&self, id: &str) -> Result<(), ContainerError> {
        let began = std::time::Instant::now();
        let mut rec = self.find(id)?;
        let v = self.view(rec.clone()).await;
        if v.state != RunState::Created {
            return Err(ContainerError::WrongState {
                id: rec.id,
                state: v.state.as_str(),
                op: "start",
            });
        }
        let r = match self
            .client(&rec)
            .call(msg::request::Kind::Start(msg::Empty {}), shim::CALL_TIMEOUT)
            .await
        {
            Ok(r) => r,
            Err(ShimError::Remote(reason)) => {
                // The command could not be started (missing, not executable, …): the init
                // gave up. Whatever is left of the container goes, and it is recorded as
                // exited with the reason, as kubelet expects of a start failure.
                let _ = self.signal(&rec, nix::libc::SIGKILL, true).await;
                let _ = self.wait_exit(&rec, KILL_GRACE).await;
                rec.start_error = reason.clone();
                rec.exit = Some(ExitInfo {
                    exit_code: START_ERROR_EXIT,
                    started_at: 0,
                    finished_at: now_ns(),
                    oom_killed: false,
                });
                self.store.update(&rec)?;
                tracing::info!(container = %rec.id, reason = %reason, "container failed to start");
                return Err(ContainerError::StartFailed { id: rec.id, reason });
            }
            Err(e) => return Err(e.into()),
        };
        let shim_ms = began.elapsed().as_secs_f64() * 1e3;
        rec.started_at = r.state.map(|s| s.started_at).unwrap_or_else(now_ns);
        self.store.update(&rec)?;
        tracing::info!(
            container = %rec.id,
            shim_ms,
            total_ms = began.elapsed().as_secs_f64() * 1e3,
            "container started"
        );
        Ok(())
    }

    async fn signal(
        &self,
        rec: &ContainerRecord,
        signal: i32,
        all: bool,
    ) -> Result<(), ContainerError> {
        match self
            .client(rec)
            .call(
                msg::request::Kind::Signal(msg::Signal { signal, all }),
                shim::CALL_TIMEOUT,
            )
            .await
        {
            Ok(_) | Err(ShimError::Gone { .. }) => Ok(()),
            // The shim exits once the container has exited and its output is drained; a
            // call that raced with that (connection reset or closed) finds the exit recorded.
            Err(ShimError::Call { .. })
                if shim::read_exit(&Path::new(&rec.state_dir).join("shim")).is_some() =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Wait for the exit: the shim answers a Wait request when the init exits (no polling);
    /// a vanished shim means the exit record (or its absence) decides.
    async fn wait_exit(&self, rec: &ContainerRecord, within: Duration) -> bool {
        let waited = self
            .client(rec)
            .call(msg::request::Kind::Wait(msg::Empty {}), within)
            .await;
        match waited {
            Ok(r) => r
                .state
                .is_some_and(|s| s.status == msg::Status::Exited as i32),
            Err(_) => self.view(rec.clone()).await.state == RunState::Exited,
        }
    }

    /// Block until the container has exited (true), or is gone from the store (false). Holds
    /// one Wait request on the shim, which answers at the exit; a shim that vanishes counts as
    /// an exit (the status then says why).
    pub async fn wait_until_exited(&self, id: &str) -> bool {
        loop {
            let Ok(rec) = self.find(id) else {
                return false;
            };
            if self.wait_exit(&rec, Duration::from_secs(3600)).await {
                return true;
            }
            if self.find(id).is_err() {
                return false;
            }
            // The shim answered without an exit (or was unreachable for a moment): ask again,
            // without spinning.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Stop: STOPSIGNAL (or SIGTERM), SIGKILL to every process after `timeout` (0: at once).
    /// Stopping a stopped or missing container succeeds.
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<(), ContainerError> {
        let rec = match self.find(id) {
            Ok(r) => r,
            Err(ContainerError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let v = self.view(rec.clone()).await;
        if v.state == RunState::Exited {
            // (A shim that died without recording an exit had its cgroup killed by `view`.)
            return Ok(());
        }
        if v.state == RunState::Running && !timeout.is_zero() {
            let img = self
                .images
                .resolve(&rec.image_id)
                .ok()
                .flatten()
                .and_then(|(i, _)| self.images.config_json(&i))
                .unwrap_or_default();
            self.signal(&rec, stop_signal(&img), false).await?;
            if self.wait_exit(&rec, grace_before_kill(timeout)).await {
                return Ok(());
            }
        }
        self.signal(&rec, nix::libc::SIGKILL, true).await?;
        if !self.wait_exit(&rec, KILL_GRACE).await {
            return Err(ContainerError::Internal(format!(
                "container {} did not exit after SIGKILL",
                rec.id
            )));
        }
        tracing::info!(container = %rec.id, "container stopped");
        Ok(())
    }

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
        shim::delete(&self.engine.path(), &rec.id, &self.engine_root()).await?;
        let root = PathBuf::from(&rec.root_dir);
        {
            let r = root.clone();
            tokio::task::spawn_blocking(move || {
                // Before anything under the dir is deleted: these are the pod's volumes.
                idmap::release(&idmap::volume_clones(&r));
                rootfs::unmount_rootfs(&r)
            })
            .await
            .map_err(|e| ContainerError::Internal(e.to_string()))??;
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

    pub fn list(&self) -> Result<Vec<ContainerRecord>, ContainerError> {
        Ok(self.store.list::<ContainerRecord>()?)
    }

    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
        max_output: u64,
    ) -> Result<msg::ExecResult, ContainerError> {
        let rec = self.find(id)?;
        if cmd.is_empty() {
            return Err(ContainerError::Invalid("ExecSync: cmd is empty".into()));
        }
        let wait = if timeout.is_zero() {
            shim::CALL_TIMEOUT * 10
        } else {
            timeout + Duration::from_secs(10)
        };
        let r = self
            .client(&rec)
            .call(
                msg::request::Kind::Exec(msg::Exec {
                    args: cmd,
                    timeout_ms: timeout.as_millis() as u64,
                    max_output,
                }),
                wait,
            )
            .await
            .map_err(|e| match e {
                ShimError::Gone { .. } => ContainerError::WrongState {
                    id: rec.id.clone(),
                    state: "exited",
                    op: "exec",
                },
                ShimError::Remote(m) if m.contains("not running") => ContainerError::WrongState {
                    id: rec.id.clone(),
                    state: "not running",
                    op: "exec",
                },
                e => e.into(),
            })?;
        r.exec
            .ok_or_else(|| ContainerError::Internal("shim answered exec without a result".into()))
    }

    pub async fn reopen_log(&self, id: &str) -> Result<(), ContainerError> {
        let rec = self.find(id)?;
        match self
            .client(&rec)
            .call(
                msg::request::Kind::ReopenLog(msg::Empty {}),
                shim::CALL_TIMEOUT,
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
        let pod = self
            .pods
            .find(&rec.pod_id)
            .map_err(|e| ContainerError::Invalid(e.to_string()))?;
        resources::apply(
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

    /// A stats sample of a running container (None once it exited) and the bytes and inodes
    /// its writable layer uses.
    /// Also the CPU rate in nano-cores since the previous call for this container (None on the
    /// first call), as kubelet's summary API expects.
    pub fn stats(&self, rec: &ContainerRecord) -> (Option<StatsSample>, (u64, u64)) {
        let now = now_ns();
        let sample = self.pods.find(&rec.pod_id).ok().and_then(|pod| {
            crate::stats::cgroup::read(self.pods.cgroups(), &self.cgroup_of(&pod, rec))
        });
        let sample = sample.map(|s| (s, self.cpu_prev.update(&rec.id, now, s.cpu_ns)));
        let upper = crate::image::snapshot::disk_usage(&Path::new(&rec.root_dir).join("upper"));
        (sample, upper)
    }

    /// A container's cgroup, relative to each hierarchy (its directory under either driver).
    pub fn cgroup_of(&self, pod: &PodRecord, rec: &ContainerRecord) -> String {
        let path = spec::cgroups_path(&pod.cgroup, &pod.cgroup_slice, &rec.id);
        kelson_proto::cgroups::dir_of(&path).unwrap_or(path)
    }

    /// SIGKILL every process in the container's cgroup (used when its shim is gone).
    /// SIGKILL every process left in the container's cgroup (no-op once it is empty).
    fn kill_cgroup(&self, rec: &ContainerRecord) {
        let Ok(pod) = self.pods.find(&rec.pod_id) else {
            return;
        };
        let mut killed = 0;
        for dir in self.pods.cgroups().dirs(&self.cgroup_of(&pod, rec)) {
            let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
                continue;
            };
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                if nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .is_ok()
                {
                    killed += 1;
                }
            }
        }
        if killed > 0 {
            tracing::warn!(container = %rec.id, killed, "shim gone: killed the container's remaining processes");
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_keeps_time_to_kill_within_its_timeout() {
        let g = grace_before_kill;
        assert_eq!(g(Duration::from_secs(60)), Duration::from_secs(59));
        assert_eq!(g(Duration::from_secs(2)), Duration::from_millis(1800));
        assert_eq!(g(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn log_paths() {
        assert_eq!(
            log_path("/var/log/pods/x", "c/0.log").unwrap(),
            Some(PathBuf::from("/var/log/pods/x/c/0.log"))
        );
        assert_eq!(log_path("", "c/0.log").unwrap(), None);
        assert!(log_path("/var/log/pods/x", "../../etc/passwd").is_err());
        assert!(log_path("/var/log/pods/x", "/etc/passwd").is_err());
        assert!(log_path("relative", "a.log").is_err());
    }

    #[test]
    fn stop_signals() {
        let cfg = |s: &str| serde_json::json!({"config": {"StopSignal": s}});
        assert_eq!(stop_signal(&cfg("SIGQUIT")), nix::libc::SIGQUIT);
        assert_eq!(stop_signal(&cfg("QUIT")), nix::libc::SIGQUIT);
        assert_eq!(stop_signal(&cfg("9")), 9);
        assert_eq!(stop_signal(&cfg("bogus")), nix::libc::SIGTERM);
        assert_eq!(stop_signal(&serde_json::json!({})), nix::libc::SIGTERM);
    }
}
