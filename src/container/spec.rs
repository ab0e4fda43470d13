//! CRI `ContainerConfig` + image config + pod → OCI runtime spec, with kubelet's semantics.
//! Pure: no I/O (the caller resolves user names and reads its own oom_score_adj). The spec is
//! assembled as JSON and checked by deserialising into `oci_spec::runtime::Spec`.

use std::collections::HashMap;
use std::path::PathBuf;

use k8s_cri::v1 as cri;
use serde_json::{Value, json};

use super::in_root;
use crate::security::{self, SecurityError, seccomp};

/// Bounds on what a request may put into a spec.
pub const MAX_ARGS: usize = 4096;
pub const MAX_ENV: usize = 4096;
pub const MAX_MOUNTS: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no command: neither the request nor the image gives one")]
    NoCommand,
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The generated spec does not read back as an OCI runtime spec.
    #[error("spec: {0}")]
    Oci(serde_json::Error),
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The parts of the image config a container spec uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageRun {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

impl ImageRun {
    /// From the image config JSON (`config.Entrypoint`, …); absent fields are empty.
    pub fn from_config(v: &Value) -> ImageRun {
        let c = &v["config"];
        let list = |k: &str| {
            c[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        ImageRun {
            entrypoint: list("Entrypoint"),
            cmd: list("Cmd"),
            env: list("Env"),
            working_dir: c["WorkingDir"].as_str().unwrap_or("").to_owned(),
            user: c["User"].as_str().unwrap_or("").to_owned(),
        }
    }
}

/// What the pod provides to its containers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodContext {
    pub netns: String,
    pub ipcns: String,
    pub utsns: String,
    pub pidns: String,
    pub shm: String,
    pub dir: PathBuf,
    pub cgroup: String,
    /// The pod's systemd slice (systemd cgroup driver), else empty.
    pub slice: String,
    /// The pod's pinned user namespace (empty: the host's) and its mappings.
    pub userns: String,
    pub user_maps: Option<crate::pod::userns::UserNs>,
    /// The hostname the pod's containers see (the node's for a host-network pod).
    pub hostname: String,
}

pub struct Input<'a> {
    pub id: &'a str,
    pub config: &'a cri::ContainerConfig,
    pub image: &'a ImageRun,
    pub pod: &'a PodContext,
    pub rootfs: PathBuf,
    /// uid, gid and additional gids, already resolved.
    pub user: (u32, u32, Vec<u32>),
    /// kelsond's own oom_score_adj: lowering below it needs CAP_SYS_RESOURCE.
    pub own_oom_score_adj: i64,
    /// The static init binary to run as PID 1 in front of the process, when enabled.
    pub init: Option<PathBuf>,
    /// Host devices the request maps in, already looked up on the host (for a privileged
    /// container: every device node of the host).
    pub devices: Vec<Device>,
    /// The capabilities kelsond itself has (bit n = capability n): all a container can get.
    pub host_caps: u64,
    /// The host's cgroup v1 hierarchy dirs, made read-only paths in unprivileged containers
    /// (the container library mounts them writable).
    pub cgroup_v1_dirs: &'a [String],
    /// The Localhost seccomp profile the security context names, already read and checked.
    pub localhost_seccomp: Option<Value>,
    /// The host runs AppArmor.
    pub apparmor_host: bool,
    /// The host enforces SELinux.
    pub selinux_host: bool,
    /// The built-in init's binary, mounted read-only even when the container does not run
    /// under it (it applies seccomp to exec'd processes).
    pub init_mount: Option<PathBuf>,
    /// The pod's sysctls (PodSandboxConfig.linux.sysctls), applied in every container.
    pub sysctls: &'a HashMap<String, String>,
    /// The pod itself is privileged (a privileged container needs that).
    pub pod_privileged: bool,
    /// The kernel makes recursive read-only mounts (`mount_setattr`, Linux 5.12+).
    pub kernel_rro: bool,
    /// The pod's and container's annotations the pod's runtime handler lets through (the
    /// request's others never reach the runtime: runtimes act on some).
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// A host device node to create in the container (`CreateContainer`'s `devices`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub container_path: String,
    /// 'c' or 'b'.
    pub kind: char,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    /// cgroup access: a subset of "rwm".
    pub access: String,
}

/// The spec's `linux.cgroupsPath`: a path under the pod's cgroup (cgroupfs), or systemd's
/// `<pod slice>:kelson:<id>` (a transient scope `kelson-<id>.scope` in the pod's slice).
pub fn cgroups_path(pod_cgroup: &str, pod_slice: &str, id: &str) -> String {
    if pod_slice.is_empty() {
        format!("/{pod_cgroup}/{id}")
    } else {
        format!("{pod_slice}:{SCOPE_PREFIX}:{id}")
    }
}

/// systemd scopes of kelson's containers are `kelson-<id>.scope`.
pub const SCOPE_PREFIX: &str = "kelson";

/// Where the init binary appears inside the container.
pub const INIT_IN_CONTAINER: &str = "/.kelson/init";

/// kubelet's rule: the request's command replaces the image Entrypoint, and then the image Cmd
/// is used only when neither command nor args are given.
pub fn argv(config: &cri::ContainerConfig, image: &ImageRun) -> Result<Vec<String>, SpecError> {
    let mut argv = if config.command.is_empty() {
        image.entrypoint.clone()
    } else {
        config.command.clone()
    };
    if !config.args.is_empty() {
        argv.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        argv.extend(image.cmd.iter().cloned());
    }
    if argv.is_empty() {
        return Err(SpecError::NoCommand);
    }
    if argv.len() > MAX_ARGS || argv.iter().any(|a| a.contains('\0')) {
        return Err(invalid("command/args", "too many arguments or a NUL byte"));
    }
    Ok(argv)
}

/// Image env first, then the request's; a later key replaces an earlier one in place.
pub fn env(image: &[String], request: &[cri::KeyValue]) -> Result<Vec<String>, SpecError> {
    let mut out: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut put = |k: &str, kv: String| match index.get(k) {
        Some(i) => out[*i] = kv,
        None => {
            index.insert(k.to_owned(), out.len());
            out.push(kv);
        }
    };
    for e in image {
        let k = e.split('=').next().unwrap_or("");
        if !k.is_empty() {
            put(k, e.clone());
        }
    }
    for kv in request {
        if kv.key.is_empty()
            || kv.key.contains('=')
            || kv.key.contains('\0')
            || kv.value.contains('\0')
        {
            return Err(invalid(
                "envs",
                format!(
                    "bad variable name {:?}",
                    kv.key.chars().take(80).collect::<String>()
                ),
            ));
        }
        put(&kv.key, format!("{}={}", kv.key, kv.value));
    }
    if out.len() > MAX_ENV {
        return Err(invalid("envs", "too many variables"));
    }
    if !index.contains_key("PATH") {
        out.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    Ok(out)
}

fn abs_clean(field: &str, p: &str) -> Result<(), SpecError> {
    if !p.starts_with('/') || p.split('/').any(|c| c == "..") || p.contains('\0') || p.len() > 4096
    {
        return Err(invalid(
            field,
            format!(
                "{:?} must be an absolute path without ..",
                p.chars().take(120).collect::<String>()
            ),
        ));
    }
    Ok(())
}

/// A path through one of /proc's magic links (`/proc/self/fd/N`, `/proc/1/cwd`, …): as a working
/// directory it can resolve to a directory on the host through an fd the runtime still holds
/// (runc CVE-2024-21626).
fn through_proc_magic_link(p: &str) -> bool {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    match parts.as_slice() {
        ["proc", who, link, ..] => {
            let process = *who == "self"
                || *who == "thread-self"
                || (!who.is_empty() && who.bytes().all(|b| b.is_ascii_digit()));
            process
                && matches!(
                    *link,
                    "fd" | "cwd" | "root" | "exe" | "map_files" | "task" | "fdinfo"
                )
        }
        _ => false,
    }
}

fn propagation(p: i32) -> &'static str {
    match cri::MountPropagation::try_from(p).unwrap_or(cri::MountPropagation::PropagationPrivate) {
        cri::MountPropagation::PropagationPrivate => "rprivate",
        cri::MountPropagation::PropagationHostToContainer => "rslave",
        cri::MountPropagation::PropagationBidirectional => "rshared",
    }
}

/// The parts of the spec that security policy decides, checked in this order.
struct Security {
    capabilities: Value,
    masked_paths: Vec<String>,
    readonly_paths: Vec<String>,
    sysctls: std::collections::BTreeMap<String, String>,
    seccomp: Option<Value>,
}

pub fn generate(i: &Input) -> Result<(Value, Vec<String>), SpecError> {
    let c = i.config;
    let mut warnings = Vec::new();
    let (args, env, cwd) = command(i)?;
    let linux = c.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();
    let res = linux.resources.clone().unwrap_or_default();
    let sec = security_parts(i, &sc)?;
    let mounts = mounts(i, &sc)?;
    let namespaces = namespaces(i, &sc)?;
    let (devices, resources) = devices_and_resources(i, &sc, &res)?;
    let process = process(
        i,
        &sc,
        &res,
        (args, env, cwd),
        sec.capabilities,
        &mut warnings,
    )?;
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": i.rootfs, "readonly": sc.readonly_rootfs},
        "mounts": mounts,
        "annotations": i.annotations,
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": cgroups_path(&i.pod.cgroup, &i.pod.slice, i.id),
            "devices": devices,
            "resources": resources,
            "maskedPaths": sec.masked_paths,
            "readonlyPaths": sec.readonly_paths,
            "sysctl": sec.sysctls,
        },
    });
    let mut spec = spec;
    if let (false, Some(maps)) = (i.pod.userns.is_empty(), &i.pod.user_maps) {
        // Joined by path; the mappings say what the namespace holds (as containerd writes them).
        spec["linux"]["uidMappings"] = crate::pod::userns::oci(&maps.uids);
        spec["linux"]["gidMappings"] = crate::pod::userns::oci(&maps.gids);
    }
    if let Some(profile) = sec.seccomp {
        spec["linux"]["seccomp"] = profile;
    }
    // A Bidirectional volume: the container's root is shared (the container library takes
    // "shared", recursively), so a mount made under the volume reaches its host peer group.
    // Otherwise the library's default, a recursive slave, keeps host mounts flowing in only.
    if crate::container::propagation::needs_shared_root(&c.mounts) {
        spec["linux"]["rootfsPropagation"] = json!("shared");
    }
    serde_json::from_value::<oci_spec::runtime::Spec>(spec.clone()).map_err(SpecError::Oci)?;
    Ok((spec, warnings))
}

/// The process's argv (behind the init when it runs one), environment and working directory.
fn command(i: &Input) -> Result<(Vec<String>, Vec<String>, String), SpecError> {
    let c = i.config;
    let mut args = argv(c, i.image)?;
    if i.init.is_some() {
        args.splice(0..0, [INIT_IN_CONTAINER.to_owned(), "--".to_owned()]);
    }
    // HOSTNAME as containerd and Docker set it: before the image's and the request's
    // variables, which may replace it.
    let hostname = (!i.pod.hostname.is_empty()).then(|| format!("HOSTNAME={}", i.pod.hostname));
    let image_env: Vec<String> = hostname
        .into_iter()
        .chain(i.image.env.iter().cloned())
        .collect();
    let mut env = env(&image_env, &c.envs)?;
    // On a terminal, programs need to know what it is (as containerd and CRI-O set it).
    if c.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let cwd = if !c.working_dir.is_empty() {
        c.working_dir.clone()
    } else if !i.image.working_dir.is_empty() {
        i.image.working_dir.clone()
    } else {
        "/".into()
    };
    abs_clean("working_dir", &cwd)?;
    if through_proc_magic_link(&cwd) {
        return Err(invalid(
            "working_dir",
            format!("{cwd:?} goes through a /proc magic link"),
        ));
    }
    // The same judged where the image's symlinks lead (a WORKDIR `/app` → `/proc/self/fd/7`).
    let seen =
        in_root::resolve(&i.rootfs, &cwd).map_err(|e| invalid("working_dir", e.to_string()))?;
    if through_proc_magic_link(&seen) {
        return Err(invalid(
            "working_dir",
            format!("{cwd:?} leads to {seen:?} in the image, through a /proc magic link"),
        ));
    }
    Ok((args, env, cwd))
}

/// Privilege, capabilities, masked and read-only paths, sysctls and the seccomp profile.
fn security_parts(
    i: &Input,
    sc: &cri::LinuxContainerSecurityContext,
) -> Result<Security, SpecError> {
    if sc.privileged && !i.pod_privileged {
        return Err(invalid(
            "security_context.privileged",
            "a privileged container needs a privileged pod sandbox",
        ));
    }
    let capabilities =
        security::capabilities(sc.capabilities.as_ref(), sc.privileged, i.host_caps)?;
    let (masked_paths, mut readonly_paths) = security::masked_and_readonly(sc)?;
    if !sc.privileged && !i.cgroup_v1_dirs.is_empty() {
        readonly_paths.push("/sys/fs/cgroup".into());
        readonly_paths.extend(i.cgroup_v1_dirs.iter().cloned());
    }
    let sysctls = security::sysctls(
        i.sysctls,
        security::OwnNamespaces {
            net: !i.pod.netns.is_empty(),
            ipc: !i.pod.ipcns.is_empty(),
            uts: !i.pod.utsns.is_empty(),
        },
    )?;
    let seccomp = match seccomp::choose(sc)? {
        seccomp::Choice::Unconfined => None,
        seccomp::Choice::RuntimeDefault => {
            let bounding: Vec<String> =
                serde_json::from_value(capabilities["bounding"].clone()).unwrap_or_default();
            Some(seccomp::runtime_default(&bounding, std::env::consts::ARCH))
        }
        seccomp::Choice::Localhost(r) => {
            Some(i.localhost_seccomp.clone().ok_or_else(|| {
                invalid("seccomp", format!("Localhost profile {r:?} was not read"))
            })?)
        }
    };
    Ok(Security {
        capabilities,
        masked_paths,
        readonly_paths,
        sysctls,
        seccomp,
    })
}

/// The runtime's own filesystems, the pod's shm and files, the init binary, then the volumes.
fn mounts(i: &Input, sc: &cri::LinuxContainerSecurityContext) -> Result<Vec<Value>, SpecError> {
    let c = i.config;
    // Privileged: /sys and the cgroup tree writable, as the other runtimes mount them.
    let sys_mode = if sc.privileged { "rw" } else { "ro" };

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", sys_mode]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", sys_mode]}),
    ];
    if i.pod.shm.is_empty() {
        mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": "/dev/shm", "options": ["rbind", "rprivate", "rw"]}));
    } else {
        mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": i.pod.shm, "options": ["rbind", "rprivate", "rw"]}));
    }
    let ro = if sc.readonly_rootfs { "ro" } else { "rw" };
    let user_dests: Vec<&str> = c.mounts.iter().map(|m| m.container_path.as_str()).collect();
    for f in ["hosts", "resolv.conf", "hostname"] {
        let dest = format!("/etc/{f}");
        if !user_dests.contains(&dest.as_str()) {
            mounts.push(json!({"destination": dest, "type": "bind", "source": i.pod.dir.join(f), "options": ["rbind", "rprivate", ro]}));
        }
    }
    // Mounted in every container when installed: it is also what loads the container's
    // seccomp filter in front of exec'd processes.
    if let Some(init) = i.init.as_ref().or(i.init_mount.as_ref()) {
        // Read-only and separate from any runtime binary, so a container cannot rewrite it
        // (runc CVE-2019-5736's class).
        mounts.push(json!({"destination": INIT_IN_CONTAINER, "type": "bind", "source": init, "options": ["rbind", "rprivate", "ro", "nodev", "nosuid"]}));
    }
    if c.mounts.len() > MAX_MOUNTS {
        return Err(invalid("mounts", "too many"));
    }
    for m in &c.mounts {
        mounts.push(volume(i, m)?);
    }
    Ok(mounts)
}

/// One volume of the request, a bind mount.
fn volume(i: &Input, m: &cri::Mount) -> Result<Value, SpecError> {
    abs_clean("mounts.container_path", &m.container_path)?;
    abs_clean("mounts.host_path", &m.host_path)?;
    let mut opts = vec![
        "rbind",
        propagation(m.propagation),
        if m.readonly { "ro" } else { "rw" },
    ];
    if m.recursive_read_only {
        // KEP-3857, as containerd checks it: read-only every level down needs the mount
        // itself read-only, no propagation (a later submount would arrive writable), and
        // a kernel that can do it — never silently a plain read-only mount.
        let what = |reason: &str| {
            invalid(
                "mounts.recursive_read_only",
                format!("{}: {reason}", m.container_path),
            )
        };
        if !m.readonly {
            return Err(what("a recursive read-only mount must also be read-only"));
        }
        if propagation(m.propagation) != "rprivate" {
            return Err(what(
                "a recursive read-only mount needs private propagation",
            ));
        }
        if !i.kernel_rro {
            return Err(what(
                "the kernel cannot make recursive read-only mounts (mount_setattr, Linux 5.12+)",
            ));
        }
        opts.push("rro");
    }
    opts.dedup();
    Ok(
        json!({"destination": m.container_path, "type": "bind", "source": m.host_path, "options": opts}),
    )
}

/// A mount namespace of its own, the PID namespace its mode asks for, and the pod's others.
fn namespaces(i: &Input, sc: &cri::LinuxContainerSecurityContext) -> Result<Vec<Value>, SpecError> {
    let pid_mode = sc
        .namespace_options
        .as_ref()
        .map(|n| n.pid)
        .and_then(|m| cri::NamespaceMode::try_from(m).ok())
        .unwrap_or(cri::NamespaceMode::Container);
    let mut namespaces = vec![json!({"type": "mount"})];
    match pid_mode {
        cri::NamespaceMode::Node => {}
        cri::NamespaceMode::Pod if !i.pod.pidns.is_empty() => {
            namespaces.push(json!({"type": "pid", "path": i.pod.pidns}))
        }
        cri::NamespaceMode::Target => {
            return Err(invalid(
                "namespace_options.pid",
                "TARGET is not supported yet",
            ));
        }
        _ => namespaces.push(json!({"type": "pid"})),
    }
    for (kind, path) in [
        ("user", &i.pod.userns),
        ("network", &i.pod.netns),
        ("ipc", &i.pod.ipcns),
        ("uts", &i.pod.utsns),
    ] {
        if !path.is_empty() {
            namespaces.push(json!({"type": kind, "path": path}));
        }
    }
    Ok(namespaces)
}

/// The device nodes to create and `linux.resources`: the device cgroup rules and the limits.
fn devices_and_resources(
    i: &Input,
    sc: &cri::LinuxContainerSecurityContext,
    res: &cri::LinuxContainerResources,
) -> Result<(Vec<Value>, Value), SpecError> {
    let mut device_rules = vec![json!({"allow": sc.privileged, "access": "rwm"})];
    let mut devices = Vec::new();
    for d in &i.devices {
        abs_clean("devices.container_path", &d.container_path)?;
        if d.access.is_empty() || !d.access.chars().all(|c| "rwm".contains(c)) {
            return Err(invalid(
                "devices.permissions",
                format!("{:?} must be a subset of rwm", d.access),
            ));
        }
        devices.push(json!({"path": d.container_path, "type": d.kind.to_string(), "major": d.major, "minor": d.minor, "fileMode": d.mode, "uid": 0, "gid": 0}));
        device_rules.push(json!({"allow": true, "type": d.kind.to_string(), "major": d.major, "minor": d.minor, "access": d.access}));
    }
    Ok((devices, resources(res, device_rules)))
}

/// `linux.resources`: the device rules, then CPU, memory, hugepage and unified limits.
fn resources(res: &cri::LinuxContainerResources, device_rules: Vec<Value>) -> Value {
    let mut resources = json!({"devices": device_rules});
    let mut cpu = serde_json::Map::new();
    if res.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(res.cpu_shares));
    }
    if res.cpu_quota > 0 {
        cpu.insert("quota".into(), json!(res.cpu_quota));
    }
    if res.cpu_period > 0 {
        cpu.insert("period".into(), json!(res.cpu_period));
    }
    if !res.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(res.cpuset_cpus));
    }
    if !res.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(res.cpuset_mems));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if res.memory_limit_in_bytes > 0 {
        let mut mem = json!({"limit": res.memory_limit_in_bytes});
        if res.memory_swap_limit_in_bytes > 0 {
            mem["swap"] = json!(res.memory_swap_limit_in_bytes);
        }
        resources["memory"] = mem;
    }
    if !res.hugepage_limits.is_empty() {
        resources["hugepageLimits"] = Value::Array(
            res.hugepage_limits
                .iter()
                .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
                .collect(),
        );
    }
    if !res.unified.is_empty() {
        resources["unified"] = json!(res.unified);
    }
    resources
}

/// The spec's `process`: user, command, capabilities, the LSM profile and the OOM score.
fn process(
    i: &Input,
    sc: &cri::LinuxContainerSecurityContext,
    res: &cri::LinuxContainerResources,
    (args, env, cwd): (Vec<String>, Vec<String>, String),
    capabilities: Value,
    warnings: &mut Vec<String>,
) -> Result<Value, SpecError> {
    let mut process = json!({
        "terminal": i.config.tty,
        "user": {"uid": i.user.0, "gid": i.user.1, "additionalGids": i.user.2},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": capabilities,
    });
    security::selinux(sc, i.selinux_host)?;
    if let Some(profile) = security::apparmor(sc, i.apparmor_host)? {
        process["apparmorProfile"] = json!(profile);
    }
    // Only when set: libcontainer reads a present `false` as "set" and then loads the seccomp
    // filter after dropping capabilities, where the kernel refuses it (no CAP_SYS_ADMIN and
    // no no_new_privs).
    if sc.no_new_privs {
        process["noNewPrivileges"] = json!(true);
    }
    if res.oom_score_adj != 0 {
        if res.oom_score_adj < i.own_oom_score_adj {
            // Lowering needs CAP_SYS_RESOURCE, which some hosts withhold: keep kelsond's value.
            warnings.push(format!(
                "oom_score_adj {} is below kelsond's own {}; keeping {}",
                res.oom_score_adj, i.own_oom_score_adj, i.own_oom_score_adj
            ));
        } else {
            process["oomScoreAdj"] = json!(res.oom_score_adj);
        }
    }
    Ok(process)
}

#[cfg(test)]
mod tests;
