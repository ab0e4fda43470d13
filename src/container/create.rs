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
use crate::pod::userns::UserNs;
use crate::rollback::Rollback;
use crate::security::{self, SecurityError, seccomp};
use crate::shim_client;
use crate::store::{ContainerRecord, ImageRecord, PodRecord, PodState};

/// Longest log path (and pod log directory) kelson accepts from kubelet.
pub const MAX_LOG_PATH: usize = 4096;
/// Largest Localhost seccomp profile read.
pub const MAX_PROFILE: u64 = 1 << 20;

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
    log: Option<PathBuf>,
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
                .map(|p| p.display().to_string())
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
        std::fs::write(
            &cfg_path,
            serde_json::to_vec_pretty(&spec).unwrap_or_default(),
        )
        .map_err(io_err(&cfg_path))?;
        Ok(bundle)
    }

    /// What the pod gives its containers: namespaces, shm, files, cgroup and hostname.
    fn pod_context(&self, pod: &PodRecord, user_maps: Option<UserNs>) -> spec::PodContext {
        let pod_dir = self.dirs.state.join("pods").join(&pod.id);
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
        let log_file = r
            .log
            .clone()
            .unwrap_or_else(|| state_dir.join("shim").join("discarded.log"));
        std::fs::create_dir_all(self.engine_root()).map_err(io_err(&self.engine_root()))?;
        let socket = self.socket(id);
        if let Some(d) = socket.parent() {
            std::fs::create_dir_all(d).map_err(io_err(d))?;
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
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, record.to_string()).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }
}

/// The container's root and state dirs; undone by deleting both.
fn make_dirs(root_dir: &Path, state_dir: &Path, undo: &mut Rollback) -> Result<(), ContainerError> {
    for d in [
        &root_dir.to_owned(),
        &state_dir.join("bundle"),
        &state_dir.join("shim"),
    ] {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
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
fn log_path(pod_log_dir: &str, rel: &str) -> Result<Option<PathBuf>, ContainerError> {
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
    Ok(Some(Path::new(pod_log_dir).join(rel)))
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
mod tests {
    use super::*;

    #[test]
    fn log_paths() {
        assert_eq!(
            log_path("/var/log/pods/x", "c/0.log").unwrap(),
            Some(PathBuf::from("/var/log/pods/x/c/0.log"))
        );
        assert_eq!(log_path("", "c/0.log").unwrap(), None);
        // The log path itself is checked at the edge (cri::request).
        assert!(log_path("relative", "a.log").is_err());
        assert!(log_path("/var/log/../../etc", "a.log").is_err());
    }

    #[test]
    fn localhost_profiles_by_absolute_path_without_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let good = br#"{"defaultAction":"SCMP_ACT_ALLOW"}"#;
        let p = dir.path().join("kubelet-root/seccomp/p.json");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, good).unwrap();
        assert!(read_localhost(&p.display().to_string(), None).is_ok());
        // Relative references need a root to be relative to; `..` is refused either way.
        let e = read_localhost("p.json", None).unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
        let dotdot = format!("{}/../seccomp/p.json", p.parent().unwrap().display());
        assert!(read_localhost(&dotdot, None).is_err());
        // A FIFO is refused, not waited on.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_localhost(&fifo.display().to_string(), None).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn localhost_profiles_stay_in_their_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("seccomp");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        let good = br#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#;
        std::fs::write(root.join("sub/p.json"), good).unwrap();
        assert!(read_localhost("sub/p.json", Some(&root)).is_ok());
        let abs = root.join("sub/p.json").display().to_string();
        assert!(read_localhost(&abs, Some(&root)).is_ok());
        // Outside the root, by .., by absolute path or by a symlink.
        std::fs::write(dir.path().join("outside.json"), good).unwrap();
        for r in ["../outside.json", "/etc/passwd", "sub/../../outside.json"] {
            let e = read_localhost(r, Some(&root)).unwrap_err();
            assert!(e.to_string().contains(r), "{e}");
        }
        std::os::unix::fs::symlink(dir.path().join("outside.json"), root.join("link.json"))
            .unwrap();
        let e = read_localhost("link.json", Some(&root)).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        // Not a profile, not a file, missing, too big.
        std::fs::write(root.join("bad.json"), b"{\"defaultAction\": 7}").unwrap();
        assert!(
            read_localhost("bad.json", Some(&root))
                .unwrap_err()
                .to_string()
                .contains("not a seccomp profile")
        );
        assert!(read_localhost("sub", Some(&root)).is_err());
        assert!(read_localhost("missing.json", Some(&root)).is_err());
        std::fs::write(root.join("big.json"), vec![b' '; MAX_PROFILE as usize + 1]).unwrap();
        assert!(
            read_localhost("big.json", Some(&root))
                .unwrap_err()
                .to_string()
                .contains("larger")
        );
    }
}

#[cfg(test)]
mod rollback_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::cgroups::Hierarchy;
    use crate::container::effects::{Effects, RootfsMounts, ShimLauncher, Spawning};
    use crate::dirs::Dirs;
    use crate::image::ImageService;
    use crate::network::{Network, NetworkConfig};
    use crate::pod::PodService;
    use crate::rollback::Journal;
    use crate::shim_client::ShimError;
    use crate::store::Store;

    const POD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    /// A pod whose RuntimeClass handler is no longer configured.
    const ORPHAN_POD: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    const IMAGE: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    /// Every fake effect, writing to one journal.
    struct Fake(Arc<Journal>);

    impl RootfsMounts for Fake {
        fn mount(
            &self,
            _: &[PathBuf],
            dir: &Path,
            _: Option<rootfs::Idmapped>,
        ) -> Result<PathBuf, rootfs::RootfsError> {
            let rootfs = dir.join("rootfs");
            if self.0.call("mount rootfs") {
                return Err(rootfs::RootfsError::Fs {
                    path: rootfs,
                    op: "mount overlay",
                    reason: "no space left on device".into(),
                });
            }
            std::fs::create_dir_all(&rootfs).unwrap();
            Ok(rootfs)
        }

        fn unmount(&self, _: &Path) {
            self.0.call("unmount rootfs");
        }
    }

    impl ShimLauncher for Fake {
        fn spawn<'a>(&'a self, _: shim_client::Spawn<'a>) -> Spawning<'a> {
            let fails = self.0.call("spawn shim");
            Box::pin(async move {
                if fails {
                    return Err(ShimError::Create("exec: no such file".into()));
                }
                Ok(4242)
            })
        }

        fn delete(&self, _: &Path, _: &str, _: &Path) {
            self.0.call("delete engine state");
        }
    }

    /// A container service on temp dirs and a temp store, with a ready pod, an image and fakes
    /// for the rootfs mount and the shim.
    struct Containers {
        svc: ContainerService,
        journal: Arc<Journal>,
        dir: tempfile::TempDir,
    }

    fn containers() -> Containers {
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(&dir.path().join("root"), &dir.path().join("state"));
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let mut cfg = crate::config::Config::default();
        cfg.container.init = false;
        let images = Arc::new(ImageService::new(dirs.clone(), store.clone(), cfg.clone()));
        let network = Arc::new(Network::new(NetworkConfig {
            conf_dir: dir.path().join("cni"),
            bin_dirs: Vec::new(),
            timeout: Duration::from_secs(1),
        }));
        let pods = Arc::new(PodService::new(
            store.clone(),
            dirs.state.clone(),
            Hierarchy::V2(dir.path().join("cgroup")),
            network,
            Vec::new(),
            false,
        ));
        for (id, handler) in [(POD, ""), (ORPHAN_POD, "gone")] {
            store
                .create(&PodRecord {
                    id: id.into(),
                    name_key: format!("{id}_default_u1_0"),
                    state: PodState::Ready,
                    runtime_handler: handler.into(),
                    cgroup: format!("kelson/{id}"),
                    ..Default::default()
                })
                .unwrap();
        }
        store
            .put_image(&ImageRecord {
                id: format!("sha256:{IMAGE}"),
                ..Default::default()
            })
            .unwrap();
        let journal = Arc::new(Journal::default());
        let fake = Arc::new(Fake(journal.clone()));
        let svc = ContainerService::new(
            store,
            images,
            pods,
            dirs,
            dir.path().join("bin/kelson-shim"),
            cfg,
        )
        .with_effects(Effects {
            rootfs: fake.clone(),
            shims: fake,
        });
        Containers { svc, journal, dir }
    }

    fn config() -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            command: vec!["/bin/true".into()],
            ..Default::default()
        }
    }

    /// Entries left in `dir` (absent: none).
    fn entries(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    }

    impl Containers {
        fn create(
            &self,
            pod: &str,
            config: cri::ContainerConfig,
        ) -> Result<String, ContainerError> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(self.svc.create(CreateRequest {
                    pod_id: pod.to_owned(),
                    meta: config.metadata.clone().unwrap_or_default(),
                    image: config.image.clone().unwrap_or_default().image,
                    config,
                }))
        }

        /// Create with `call` failing (None: one of kelsond's own steps fails), expect an
        /// error and nothing left: no record, no container dirs, and the name free for the
        /// next attempt. Returns the error and the calls made, undo included.
        fn fail(
            &self,
            pod: &str,
            call: Option<&'static str>,
            config: cri::ContainerConfig,
        ) -> (ContainerError, Vec<&'static str>) {
            self.journal.fail_at(call);
            let e = self.create(pod, config).expect_err("create fails");
            let asked = self.journal.take();
            assert_eq!(self.svc.list().unwrap().len(), 0, "a record is left");
            for d in ["root/containers", "state/containers"] {
                assert_eq!(entries(&self.dir.path().join(d)), Vec::<PathBuf>::new());
            }
            self.journal.fail_at(None);
            if pod == POD {
                self.create(pod, self::config())
                    .expect("the name is free again");
                self.journal.take();
            }
            (e, asked)
        }
    }

    #[test]
    fn a_container_is_recorded_with_its_bundle_once_its_shim_runs() {
        let c = containers();
        let id = c.create(POD, config()).unwrap();
        assert_eq!(c.journal.take(), ["mount rootfs", "spawn shim"]);
        let rec = c.svc.find(&id).unwrap();
        assert_eq!(rec.pod_id, POD);
        assert_eq!(rec.name_key, format!("{POD}_app_0"));
        let bundle = c
            .dir
            .path()
            .join("state/containers")
            .join(&id)
            .join("bundle");
        assert!(bundle.join("config.json").is_file());
    }

    #[test]
    fn a_taken_name_is_refused_before_anything_is_made() {
        let c = containers();
        let first = c.create(POD, config()).unwrap();
        c.journal.take();
        let e = c.create(POD, config()).unwrap_err();
        assert!(matches!(e, ContainerError::NameTaken { .. }), "{e}");
        assert_eq!(c.journal.take(), Vec::<&str>::new());
        assert_eq!(c.svc.list().unwrap().len(), 1);
        let made = entries(&c.dir.path().join("root/containers"));
        assert_eq!(made, [c.dir.path().join("root/containers").join(first)]);
    }

    #[test]
    fn a_failure_making_the_dirs_removes_the_record() {
        let c = containers();
        // A file where the containers' dirs should be.
        std::fs::create_dir_all(c.dir.path().join("root")).unwrap();
        std::fs::write(c.dir.path().join("root/containers"), "").unwrap();
        let e = c.create(POD, config()).unwrap_err();
        assert!(matches!(e, ContainerError::Io { .. }), "{e}");
        assert_eq!(c.journal.take(), Vec::<&str>::new());
        assert_eq!(c.svc.list().unwrap().len(), 0);
        assert_eq!(
            entries(&c.dir.path().join("state/containers")),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn a_failed_rootfs_mount_removes_the_dirs_and_the_record() {
        let c = containers();
        let (e, asked) = c.fail(POD, Some("mount rootfs"), config());
        assert!(matches!(e, ContainerError::Rootfs(_)), "{e}");
        assert_eq!(asked, ["mount rootfs"]);
    }

    #[test]
    fn an_unknown_user_unmounts_the_rootfs() {
        let c = containers();
        let mut config = config();
        config.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                run_as_username: "nobody".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let (e, asked) = c.fail(POD, None, config);
        assert!(matches!(e, ContainerError::User(_)), "{e}");
        assert_eq!(asked, ["mount rootfs", "unmount rootfs"]);
    }

    #[test]
    fn a_spec_that_cannot_be_made_unmounts_the_rootfs() {
        let c = containers();
        let mut config = config();
        config.devices = vec![cri::Device {
            host_path: "/dev/no-such-device".into(),
            ..Default::default()
        }];
        let (e, asked) = c.fail(POD, None, config);
        assert!(e.to_string().contains("/dev/no-such-device"), "{e}");
        assert_eq!(asked, ["mount rootfs", "unmount rootfs"]);
    }

    #[test]
    fn a_handler_gone_deletes_the_engine_state_then_unmounts() {
        let c = containers();
        let (e, asked) = c.fail(ORPHAN_POD, None, config());
        assert!(e.to_string().contains("no longer configured"), "{e}");
        assert_eq!(
            asked,
            ["mount rootfs", "delete engine state", "unmount rootfs"]
        );
    }

    #[test]
    fn a_failed_shim_deletes_the_engine_state_then_unmounts() {
        let c = containers();
        let (e, asked) = c.fail(POD, Some("spawn shim"), config());
        assert!(matches!(e, ContainerError::Shim(_)), "{e}");
        assert_eq!(
            asked,
            [
                "mount rootfs",
                "spawn shim",
                "delete engine state",
                "unmount rootfs"
            ]
        );
    }
}
