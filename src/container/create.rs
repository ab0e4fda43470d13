//! CreateContainer as a sequence of steps, each registering its undo on one rollback stack:
//! resolve the pod and image → record → dirs → rootfs → user → image volumes → spec → shim.
//! The engine creates the container under the shim; a failure at any step leaves nothing.

use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;

use super::{
    ContainerError, ContainerService, host, idmap, io_err, now_ns, propagation, rootfs, spec, user,
    volumes,
};
use crate::ids;
use crate::image::digest::Digest;
use crate::owner_only;
use crate::pod::userns::UserNs;
use crate::rollback::Rollback;
use crate::security::{self, SecurityError, seccomp};
use crate::shim_client;
use crate::store::{ContainerRecord, ImageRecord, PodRecord, PodState};

/// Longest log path (and pod log directory) kelson accepts from kubelet.
pub const MAX_LOG_PATH: usize = 4096;
/// Largest Localhost seccomp profile read.
pub const MAX_PROFILE: u64 = 1 << 20;
/// A missing bind source made as a directory: containerd's mode.
const BIND_SOURCE_MODE: u32 = 0o755;

/// A CreateContainer request as the CRI edge checked it (`cri::request`): metadata present and
/// named, an image named, the log path relative and clean.
pub struct CreateRequest {
    pub pod_id: String,
    pub meta: cri::ContainerMetadata,
    pub image: String,
    pub config: cri::ContainerConfig,
}

/// What a create request resolves to before anything is made.
struct Resolved {
    pod: PodRecord,
    pod_cfg: cri::PodSandboxConfig,
    meta: cri::ContainerMetadata,
    image_name: String,
    image: ImageRecord,
    image_config: serde_json::Value,
    log: Option<LogAt>,
}

/// A container's log file: the pod's log directory and the file's path below it, kept apart
/// so that the shim can open the directory and walk down from it without following symlinks.
#[derive(Debug, PartialEq, Eq)]
struct LogAt {
    dir: PathBuf,
    rel: PathBuf,
}

/// The mounted rootfs and the user namespace it is mapped for.
struct Rootfs {
    path: PathBuf,
    user_ns: Option<UserNs>,
    userns_file: Option<std::fs::File>,
}

impl ContainerService {
    pub async fn create(&self, req: CreateRequest) -> Result<String, ContainerError> {
        let began = std::time::Instant::now();
        let config = req.config;
        let r = self.resolve(&req.pod_id, req.meta, req.image, &config)?;
        let mut undo = Rollback::default();
        let id = self.record(&r, &config, &mut undo)?;
        let (root_dir, state_dir) = (self.root_dir(&id), self.state_dir(&id));
        make_dirs(&root_dir, &state_dir, &mut undo)?;
        let rootfs = self.mount_rootfs(&r, &config, &root_dir, &mut undo).await?;
        let uid_gid = resolve_user(&rootfs, &r.image, &config)?;
        make_image_volumes(&rootfs, &r.image_config, &config, &uid_gid)?;
        let bundle = self.write_spec(&id, &r, &config, &rootfs, uid_gid).await?;
        let prepared = began.elapsed();
        let pid = self
            .spawn_shim(&id, &r, &config, &bundle, &mut undo)
            .await?;
        // Where the time went (rootfs, spec and store vs the shim and engine), for operators and
        // for the benchmarks' profiling.
        tracing::info!(
            container = %id,
            pod = %r.pod.id,
            pid,
            prepare_ms = prepared.as_secs_f64() * 1e3,
            shim_ms = (began.elapsed() - prepared).as_secs_f64() * 1e3,
            "container created"
        );
        undo.disarm();
        Ok(id)
    }

    /// The pod (ready), the image (pulled) and the log path, all checked.
    fn resolve(
        &self,
        pod_id: &str,
        meta: cri::ContainerMetadata,
        image_name: String,
        config: &cri::ContainerConfig,
    ) -> Result<Resolved, ContainerError> {
        let pod: PodRecord = self.pods.find(pod_id).map_err(|e| match e {
            crate::pod::PodError::NotFound(id) => ContainerError::PodNotFound(id),
            other => ContainerError::Pod(other),
        })?;
        if pod.state != PodState::Ready {
            return Err(ContainerError::PodNotReady(pod.id));
        }
        let (image, _) = self
            .images
            .resolve(&image_name)
            .map_err(ContainerError::Image)?
            .ok_or_else(|| ContainerError::ImageNotFound(image_name.clone()))?;
        let image_config = self.images.config_json(&image).unwrap_or_default();
        let pod_cfg: cri::PodSandboxConfig =
            serde_json::from_value(pod.config.clone()).unwrap_or_default();
        let log = log_path(&pod_cfg.log_directory, &config.log_path)?;
        Ok(Resolved {
            pod,
            pod_cfg,
            meta,
            image_name,
            image,
            image_config,
            log,
        })
    }

    /// The container's record, which reserves its name; undone by removing it.
    fn record(
        &self,
        r: &Resolved,
        config: &cri::ContainerConfig,
        undo: &mut Rollback,
    ) -> Result<String, ContainerError> {
        let (pod, meta, image) = (&r.pod, &r.meta, &r.image);
        let id = ids::generate()?;
        let rec = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            name_key: format!("{}_{}_{}", pod.id, meta.name, meta.attempt),
            created_at: now_ns(),
            config: serde_json::to_value(config).unwrap_or_default(),
            image: r.image_name.clone(),
            image_id: image.id.clone(),
            log_path: r
                .log
                .as_ref()
                .map(|l| l.dir.join(&l.rel).display().to_string())
                .unwrap_or_default(),
            root_dir: self.root_dir(&id).display().to_string(),
            state_dir: self.state_dir(&id).display().to_string(),
            layers: image.layers.iter().map(|l| l.diff_id.clone()).collect(),
            ..Default::default()
        };
        self.store.create(&rec)?;
        // For the image GC policy's least-recently-used order; a failure only costs accuracy.
        if let Err(e) = self.store.touch_image(&image.id, now_ns() / 1_000_000_000) {
            tracing::warn!(image = %image.id, error = %e, "recording image use");
        }
        let (store, rid) = (self.store.clone(), id.clone());
        undo.push(move || {
            let _ = store.remove::<ContainerRecord>(&rid);
        });
        Ok(id)
    }

    /// The overlay rootfs over the image's layers (idmapped in a user-namespaced pod);
    /// undone by unmounting it and releasing the volume clones made under its dir.
    async fn mount_rootfs(
        &self,
        r: &Resolved,
        config: &cri::ContainerConfig,
        root_dir: &Path,
        undo: &mut Rollback,
    ) -> Result<Rootfs, ContainerError> {
        let (pod, image) = (&r.pod, &r.image);
        let lowers: Vec<PathBuf> = image
            .layers
            .iter()
            .map(|l| {
                Digest::parse(&l.diff_id)
                    .map(|d| self.images.snapshots().path(&d))
                    .map_err(ContainerError::from)
            })
            .collect::<Result<_, _>>()?;
        let pod_cfg_linux = r.pod_cfg.linux.clone().unwrap_or_default();
        let user_ns = pod_user_ns(pod, &pod_cfg_linux, config)?;
        let userns_file = match &user_ns {
            Some(_) => Some(idmap::open_userns(Path::new(&pod.userns))?),
            None => None,
        };
        let rootfs = {
            let (lowers, dir) = (lowers.clone(), root_dir.to_owned());
            let userns = userns_file
                .as_ref()
                .map(|f| f.try_clone().map_err(io_err(Path::new(&pod.userns))))
                .transpose()?;
            let root = user_ns.as_ref().map(|u| u.root_on_host());
            let mounts = self.effects.rootfs.clone();
            tokio::task::spawn_blocking(move || {
                let idmap = userns
                    .as_ref()
                    .zip(root)
                    .map(|(userns, root)| rootfs::Idmapped { userns, root });
                mounts.mount(&lowers, &dir, idmap)
            })
            .await??
        };
        {
            let (mounts, dir) = (self.effects.rootfs.clone(), root_dir.to_owned());
            undo.push(move || mounts.unmount(&dir));
        }
        Ok(Rootfs {
            path: rootfs,
            user_ns,
            userns_file,
        })
    }

    /// The spec (`bundle/config.json`), after the host facts it needs are read and the volumes
    /// are prepared; loads the default AppArmor profile when the spec names it.
    async fn write_spec(
        &self,
        id: &str,
        r: &Resolved,
        config: &cri::ContainerConfig,
        rootfs: &Rootfs,
        uid_gid: (u32, u32, Vec<u32>),
    ) -> Result<PathBuf, ContainerError> {
        let (pod, pod_cfg) = (&r.pod, &r.pod_cfg);
        let own_oom = host::own_oom_score_adj();
        let ctx = self.pod_context(pod, rootfs.user_ns.clone());
        let run = spec::ImageRun::from_config(&r.image_config);
        let init = self
            .wants_init(&pod_cfg.annotations, &config.annotations)
            .then(|| self.init_binary.clone());
        if let Some(p) = &init
            && !p.is_file()
        {
            return Err(ContainerError::InitMissing(p.clone()));
        }
        let pod_linux = pod_cfg.linux.clone().unwrap_or_default();
        // What the pod's handler lets through (a handler no longer configured passes nothing;
        // the step that records the runtime refuses it by name).
        let annotations = self
            .cfg
            .handler(&pod.runtime_handler)
            .map(|h| h.passed_annotations(&pod_cfg.annotations, &config.annotations))
            .unwrap_or_default();
        let linux = config.linux.clone().unwrap_or_default();
        let devices = requested_devices(config, &linux)?;
        let localhost_seccomp = self.localhost_seccomp(&linux)?;
        let spec_config = prepare_volumes(config, &self.root_dir(id), rootfs)?;
        let facts = host::facts();
        let input = spec::Input {
            id,
            config: &spec_config,
            image: &run,
            pod: &ctx,
            rootfs: rootfs.path.clone(),
            user: uid_gid,
            own_oom_score_adj: own_oom,
            init,
            devices,
            host_caps: facts.caps,
            cgroup_v1_dirs: &facts.cgroup_v1_dirs,
            localhost_seccomp,
            apparmor_host: facts.apparmor,
            selinux_host: facts.selinux,
            init_mount: self.init_binary.is_file().then(|| self.init_binary.clone()),
            sysctls: &pod_linux.sysctls,
            pod_privileged: pod_linux
                .security_context
                .as_ref()
                .is_some_and(|s| s.privileged),
            kernel_rro: facts.kernel_rro,
            annotations,
        };
        let (spec, warnings) = spec::generate(&input)?;
        if spec["process"]["apparmorProfile"] == security::APPARMOR_DEFAULT_NAME {
            tokio::task::spawn_blocking(host::ensure_apparmor_default).await??;
        }
        for w in warnings {
            tracing::warn!(container = %id, "{w}");
        }
        let bundle = self.state_dir(id).join("bundle");
        let cfg_path = bundle.join("config.json");
        // The process's env is in here: owner-only.
        owner_only::write(
            &cfg_path,
            &serde_json::to_vec_pretty(&spec).unwrap_or_default(),
        )
        .map_err(io_err(&cfg_path))?;
        Ok(bundle)
    }

    /// What the pod gives its containers: namespaces, shm, files, cgroup and hostname.
    fn pod_context(&self, pod: &PodRecord, user_maps: Option<UserNs>) -> spec::PodContext {
        let pod_dir = self.dirs.pods().join(&pod.id);
        let hostname = pod_hostname(&pod_dir);
        spec::PodContext {
            netns: pod.netns.clone(),
            ipcns: pod.ipcns.clone(),
            utsns: pod.utsns.clone(),
            pidns: pod.pidns.clone(),
            shm: pod.shm.clone(),
            dir: pod_dir,
            cgroup: pod.cgroup.clone(),
            slice: pod.cgroup_slice.clone(),
            userns: pod.userns.clone(),
            user_maps,
            hostname,
        }
    }

    /// A Localhost seccomp profile is read here (I/O); the rest is decided in the spec.
    fn localhost_seccomp(
        &self,
        linux: &cri::LinuxContainerConfig,
    ) -> Result<Option<serde_json::Value>, ContainerError> {
        Ok(
            match linux
                .security_context
                .as_ref()
                .map(seccomp::choose)
                .transpose()?
            {
                Some(seccomp::Choice::Localhost(r)) => {
                    Some(read_localhost(&r, self.cfg.container.seccomp_root())?)
                }
                _ => None,
            },
        )
    }

    /// The shim, which has the engine create the container; before it, the engine's dirs and
    /// the runtime record. From here an undo deletes whatever the engine holds.
    async fn spawn_shim(
        &self,
        id: &str,
        r: &Resolved,
        config: &cri::ContainerConfig,
        bundle: &Path,
        undo: &mut Rollback,
    ) -> Result<u32, ContainerError> {
        let state_dir = self.state_dir(id);
        let (log_dir, log_file) = match &r.log {
            Some(l) => (l.dir.clone(), l.rel.clone()),
            None => (state_dir.join("shim"), PathBuf::from("discarded.log")),
        };
        owner_only::create_dir_all(&self.engine_root()).map_err(io_err(&self.engine_root()))?;
        let socket = self.socket(id);
        if let Some(d) = socket.parent() {
            owner_only::create_dir_all(d).map_err(io_err(d))?;
        }
        {
            // If anything after this fails, the engine may hold a created container: delete it.
            let (shims, engine) = (self.effects.shims.clone(), self.engine.path());
            let (id, root) = (id.to_owned(), self.engine_root());
            undo.push(move || shims.delete(&engine, &id, &root));
        }
        self.record_runtime(&r.pod, id, bundle)?;
        let spawn = shim_client::Spawn {
            binary: &self.shim_binary,
            id,
            root: &self.engine_root(),
            bundle,
            dir: &state_dir.join("shim"),
            socket: &socket,
            log_dir: &log_dir,
            log: &log_file,
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            tty: config.tty,
            engine: &self.engine.for_shim(),
        };
        Ok(self.effects.shims.spawn(spawn).await?)
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
        let handler = self
            .cfg
            .handler(name)
            .ok_or_else(|| ContainerError::HandlerGone(name.clone()))?;
        if handler.runtime_type == crate::config::RuntimeType::Native {
            return Ok(());
        }
        if !handler.path.is_file() {
            return Err(ContainerError::HandlerNotInstalled {
                name: name.clone(),
                path: handler.path.clone(),
            });
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
        owner_only::write_atomic(&path, record.to_string().as_bytes()).map_err(io_err(&path))
    }
}

/// The container's root and state dirs; undone by deleting both.
fn make_dirs(root_dir: &Path, state_dir: &Path, undo: &mut Rollback) -> Result<(), ContainerError> {
    for d in [
        &root_dir.to_owned(),
        &state_dir.join("bundle"),
        &state_dir.join("shim"),
    ] {
        owner_only::create_dir_all(d).map_err(io_err(d))?;
    }
    let (a, b) = (root_dir.to_owned(), state_dir.to_owned());
    undo.push(move || {
        let _ = std::fs::remove_dir_all(&a);
        let _ = std::fs::remove_dir_all(&b);
    });
    Ok(())
}

/// uid, gid and groups from the image's passwd and group (read in the rootfs) and the security
/// context; in a user-namespaced pod each must be mapped.
fn resolve_user(
    rootfs: &Rootfs,
    image: &ImageRecord,
    config: &cri::ContainerConfig,
) -> Result<(u32, u32, Vec<u32>), ContainerError> {
    let linux = config.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();
    let passwd = user::read_in_root(&rootfs.path, "/etc/passwd");
    let group = user::read_in_root(&rootfs.path, "/etc/group");
    let uid_gid = user::resolve(
        passwd.as_deref(),
        group.as_deref(),
        &image.user,
        sc.run_as_user.map(|v| v.value),
        &sc.run_as_username,
        sc.run_as_group.map(|v| v.value),
        user::Supplemental {
            groups: &sc.supplemental_groups,
            strict: sc.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32,
        },
    )?;
    if let Some(u) = &rootfs.user_ns {
        check_mapped(u, &uid_gid)?;
    }
    Ok(uid_gid)
}

/// The image's VOLUMEs kubelet does not mount over: directories in the rootfs, owned by the
/// container's user (on the host's side of a user namespace).
fn make_image_volumes(
    rootfs: &Rootfs,
    image_config: &serde_json::Value,
    config: &cri::ContainerConfig,
    uid_gid: &(u32, u32, Vec<u32>),
) -> Result<(), ContainerError> {
    let image_volumes = volumes::from_config(image_config)?;
    let owner = match &rootfs.user_ns {
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
        volumes::make(&rootfs.path, v, owner);
    }
    Ok(())
}

/// The requested devices, looked up on the host; a privileged container gets every device
/// node of the host besides.
fn requested_devices(
    config: &cri::ContainerConfig,
    linux: &cri::LinuxContainerConfig,
) -> Result<Vec<spec::Device>, ContainerError> {
    let privileged = linux
        .security_context
        .as_ref()
        .is_some_and(|s| s.privileged);
    let mut devices = host::host_devices(&config.devices)?;
    if privileged {
        // Every device node of the host, as containerd gives a privileged container.
        for d in host::all_host_devices() {
            if !devices.iter().any(|r| r.container_path == d.container_path) {
                devices.push(d);
            }
        }
    }
    Ok(devices)
}

/// Bind sources made and checked, and in a user-namespaced pod every volume replaced by an
/// idmapped clone under the container's dir (the rootfs undo releases the clones).
fn prepare_volumes(
    config: &cri::ContainerConfig,
    root_dir: &Path,
    rootfs: &Rootfs,
) -> Result<cri::ContainerConfig, ContainerError> {
    // Missing bind sources are created as directories, as containerd does (0755: they are the
    // container's, not kelsond's, and kelsond's umask must not narrow them).
    for m in &config.mounts {
        if std::fs::symlink_metadata(&m.host_path).is_err() {
            owner_only::create_dir_all_mode(Path::new(&m.host_path), BIND_SOURCE_MODE)
                .map_err(io_err(Path::new(&m.host_path)))?;
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
    if let Some(userns) = &rootfs.userns_file {
        let clones = idmap::volume_clones(root_dir);
        for (i, m) in spec_config.mounts.iter_mut().enumerate() {
            let target = clones.join(i.to_string());
            idmap::clone_idmapped(Path::new(&m.host_path), &target, userns, true)?;
            m.host_path = target.display().to_string();
        }
    }
    Ok(spec_config)
}

/// The container's log file: its log path (relative and clean, as the CRI edge checked it)
/// under the pod's log directory, which must be absolute and without `..`.
fn log_path(pod_log_dir: &str, rel: &str) -> Result<Option<LogAt>, ContainerError> {
    if pod_log_dir.is_empty() || rel.is_empty() {
        return Ok(None);
    }
    if !pod_log_dir.starts_with('/')
        || pod_log_dir.split('/').any(|c| c == "..")
        || pod_log_dir.len() > MAX_LOG_PATH
    {
        return Err(ContainerError::LogDirectory(
            pod_log_dir.chars().take(120).collect(),
        ));
    }
    Ok(Some(LogAt {
        dir: PathBuf::from(pod_log_dir),
        rel: PathBuf::from(rel),
    }))
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
            .map_err(ContainerError::from)
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
        (None, Some(_)) => Err(ContainerError::UsernsNotInPod),
        (Some(p), Some(c)) if *p != c => Err(ContainerError::UsernsDiffers),
        _ => Ok(pod_ns),
    }
}

/// Every id the container starts with must exist in its user namespace.
fn check_mapped(u: &UserNs, ids: &(u32, u32, Vec<u32>)) -> Result<(), ContainerError> {
    use crate::pod::userns::to_host;
    let unmapped = |what, id| ContainerError::Unmapped { what, id };
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

/// Read and check a Localhost profile: a regular file, at most `MAX_PROFILE` bytes, an OCI
/// seccomp object. With a confinement root, symlinks are not followed out of it: the resolved
/// path must still be inside it.
pub fn read_localhost(
    reference: &str,
    root: Option<&Path>,
) -> Result<serde_json::Value, SecurityError> {
    use std::io::Read;
    let err = |why: String| SecurityError::SeccompLocalhost {
        reference: reference.to_owned(),
        reason: why,
    };
    let path = seccomp::localhost_path(reference, root)?;
    let real = std::fs::canonicalize(&path).map_err(|e| err(e.to_string()))?;
    if let Some(root) = root {
        let real_root =
            std::fs::canonicalize(root).map_err(|e| err(format!("profile root: {e}")))?;
        if !real.starts_with(&real_root) {
            return Err(err("resolves outside the seccomp profile root".into()));
        }
    }
    // Non-blocking: a FIFO planted at the path must not hang the call (it is refused below,
    // once the opened file is known not to be a regular one).
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&real)
            .map_err(|e| err(e.to_string()))?
    };
    let meta = file.metadata().map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("is not a regular file".into()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_PROFILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > MAX_PROFILE {
        return Err(err(format!("is larger than {MAX_PROFILE} bytes")));
    }
    seccomp::parse_profile(&bytes).map_err(err)
}

#[cfg(test)]
mod tests;
