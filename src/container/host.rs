//! What kelsond learns from the host for its containers: its own capabilities, the cgroup v1
//! hierarchies, whether AppArmor runs and SELinux enforces, device nodes, its OOM score, and
//! loading the default AppArmor profile. Facts that cannot change while kelsond runs are
//! probed once; device nodes and the OOM score are read at each create.

use std::path::PathBuf;

use k8s_cri::v1 as cri;

use super::{ContainerError, spec};
use crate::security;

/// The host facts every container's spec takes, probed on first use.
pub(super) struct Facts {
    /// kelsond's own effective capabilities.
    pub caps: u64,
    pub cgroup_v1_dirs: Vec<String>,
    pub apparmor: bool,
    pub selinux: bool,
    /// The kernel makes recursive read-only mounts.
    pub kernel_rro: bool,
}

pub(super) fn facts() -> &'static Facts {
    static FACTS: std::sync::OnceLock<Facts> = std::sync::OnceLock::new();
    FACTS.get_or_init(|| Facts {
        caps: own_caps(),
        cgroup_v1_dirs: v1_cgroup_dirs(),
        apparmor: apparmor_enabled(),
        selinux: selinux_enforcing(),
        kernel_rro: crate::sys::mount_setattr_supported(),
    })
}

/// kelsond's own oom_score_adj (read at each create: an operator may change it).
pub(super) fn own_oom_score_adj() -> i64 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Look up the host side of requested devices: each must be a character or block device.
pub(super) fn host_devices(reqs: &[cri::Device]) -> Result<Vec<spec::Device>, ContainerError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    reqs.iter()
        .map(|d| {
            let m = std::fs::metadata(&d.host_path).map_err(|source| ContainerError::Device {
                path: d.host_path.clone(),
                source,
            })?;
            let ft = m.file_type();
            let kind = if ft.is_char_device() {
                'c'
            } else if ft.is_block_device() {
                'b'
            } else {
                return Err(ContainerError::NotADevice(d.host_path.clone()));
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

/// The host's cgroup v1 hierarchies (`/sys/fs/cgroup/<name>`). The container
/// library mounts a container's v1 hierarchies writable whatever the spec says (runc remounts
/// them read-only); kelson lists them as read-only paths so root in a container cannot lift
/// its own limits. Empty on a cgroup v2 host, where the spec's `ro` is honoured.
fn v1_cgroup_dirs() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut dirs: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let point = pre.split_whitespace().nth(4)?;
            (post.split_whitespace().next()? == "cgroup" && point.starts_with("/sys/fs/cgroup/"))
                .then(|| point.to_owned())
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Whether the host runs AppArmor. SELinux labels are not applied: like containerd
/// on a host without SELinux, `selinux_options` are accepted and ignored.
fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim_start().starts_with('Y'))
}

/// Whether the host enforces SELinux.
fn selinux_enforcing() -> bool {
    std::fs::read_to_string("/sys/fs/selinux/enforce").is_ok_and(|s| s.trim() == "1")
}

/// Load kelson's RuntimeDefault AppArmor profile into the kernel unless it is there already
/// (`apparmor_parser -Kr`, as containerd loads its own). Only on AppArmor hosts; a failure
/// refuses the container rather than running it unconfined. Not exercised by CI: the test
/// machine has no AppArmor.
pub(super) fn ensure_apparmor_default() -> Result<(), ContainerError> {
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
        let fail = |step, source| ContainerError::AppArmorParser {
            profile: name,
            step,
            source,
        };
        let mut child = std::process::Command::new("apparmor_parser")
            .arg("-Kr")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| fail("running apparmor_parser", e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(security::APPARMOR_DEFAULT_PROFILE.as_bytes())
                .map_err(|e| fail("writing the profile", e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| fail("waiting for apparmor_parser", e))?;
        if !out.status.success() {
            return Err(ContainerError::AppArmorLoad {
                profile: name,
                why: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
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
pub(super) fn all_host_devices() -> Vec<spec::Device> {
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
