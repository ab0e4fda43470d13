//! Seccomp for a container, as containerd decides it from CRI: `RuntimeDefault` (kelson's
//! profile, kept as data in `seccomp/runtime-default.json`: an allow-list with EPERM for the
//! rest, widened by the container's capabilities), `Localhost` (an OCI seccomp JSON at the
//! absolute path kubelet sends, or confined to a configured profile root), `Unconfined`
//! (also what no profile at all means, as in containerd), and nothing for privileged
//! containers. The deprecated `seccomp_profile_path` is still read
//! (`runtime/default`, `docker/default`, `unconfined`, `localhost/<path>`). Pure: this file
//! decides where a Localhost profile is and checks its bytes; `container::create` reads it.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;

use k8s_cri::v1 as cri;
use serde::Deserialize;
use serde_json::{Value, json};

use super::SecurityError;

/// What the request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Unconfined,
    RuntimeDefault,
    Localhost(String),
}

/// The choice from the security context (the structured field first, then the deprecated path,
/// which kubelets before 1.19's field still send).
#[allow(deprecated)]
pub fn choose(sc: &cri::LinuxContainerSecurityContext) -> Result<Choice, SecurityError> {
    if sc.privileged {
        return Ok(Choice::Unconfined);
    }
    if let Some(p) = &sc.seccomp {
        return Ok(
            match cri::security_profile::ProfileType::try_from(p.profile_type) {
                Ok(cri::security_profile::ProfileType::RuntimeDefault) => Choice::RuntimeDefault,
                Ok(cri::security_profile::ProfileType::Unconfined) => Choice::Unconfined,
                Ok(cri::security_profile::ProfileType::Localhost) => {
                    if p.localhost_ref.is_empty() {
                        return Err(SecurityError::SeccompLocalhostRef);
                    }
                    Choice::Localhost(p.localhost_ref.clone())
                }
                Err(_) => {
                    return Err(SecurityError::SeccompProfileType(p.profile_type));
                }
            },
        );
    }
    Ok(match sc.seccomp_profile_path.as_str() {
        "" | "unconfined" => Choice::Unconfined,
        "runtime/default" | "docker/default" => Choice::RuntimeDefault,
        p => match p.strip_prefix("localhost/") {
            Some(rest) if !rest.is_empty() => Choice::Localhost(rest.to_owned()),
            _ => {
                return Err(SecurityError::SeccompProfilePath(
                    p.chars().take(120).collect(),
                ));
            }
        },
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DefaultData {
    default_errno: u32,
    architectures: BTreeMap<String, Vec<String>>,
    allow: Vec<String>,
    allow_by_arch: BTreeMap<String, Vec<String>>,
    allow_by_capability: BTreeMap<String, Vec<String>>,
    personality: Vec<u64>,
    clone_namespace_flags: u64,
    clone3_without_sys_admin_errno: u32,
}

static DEFAULT: LazyLock<DefaultData> = LazyLock::new(|| {
    serde_json::from_str(include_str!("seccomp/runtime-default.json"))
        .expect("seccomp/runtime-default.json is valid (checked by a unit test)")
});

/// The RuntimeDefault profile (OCI `linux.seccomp`) for a process with capabilities `caps`
/// (its bounding set) on `arch` (`std::env::consts::ARCH`).
pub fn runtime_default(caps: &[String], arch: &str) -> Value {
    let d = &*DEFAULT;
    let mut allow: Vec<String> = d.allow.clone();
    allow.extend(d.allow_by_arch.get(arch).cloned().unwrap_or_default());
    for (cap, names) in &d.allow_by_capability {
        if caps.iter().any(|c| c == cap) {
            allow.extend(names.iter().cloned());
        }
    }
    allow.sort();
    allow.dedup();
    let mut syscalls = vec![json!({"names": allow, "action": "SCMP_ACT_ALLOW"})];
    for p in &d.personality {
        syscalls.push(json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": p, "op": "SCMP_CMP_EQ"}]}));
    }
    if !caps.iter().any(|c| c == "CAP_SYS_ADMIN") {
        // Plain clone() only without namespace flags; clone3 (whose flags live in memory a
        // filter cannot read) says ENOSYS so libcs fall back to clone.
        syscalls.push(json!({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": d.clone_namespace_flags, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}));
        syscalls.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO",
            "errnoRet": d.clone3_without_sys_admin_errno}));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": d.default_errno,
        "architectures": d.architectures.get(arch).cloned().unwrap_or_default(),
        "syscalls": syscalls,
    })
}

/// Where a Localhost profile is. kubelet resolves the profile under its own root dir (which an
/// operator can move) and sends the absolute path, so an absolute path is taken as it is, as
/// containerd and CRI-O take it. With a confinement `root` configured, a relative reference is
/// taken under it and every reference must stay inside it (no `..`, no absolute path elsewhere).
pub fn localhost_path(reference: &str, root: Option<&Path>) -> Result<PathBuf, SecurityError> {
    let err = |why: &str| SecurityError::SeccompLocalhost {
        reference: reference.to_owned(),
        reason: why.to_owned(),
    };
    if reference.contains('\0') {
        return Err(err("contains NUL"));
    }
    let p = Path::new(reference);
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(err("must not contain .."));
    }
    let Some(root) = root else {
        if !p.is_absolute() {
            return Err(err(
                "must be an absolute path (no container.seccomp_profile_root is configured)",
            ));
        }
        return Ok(p.to_owned());
    };
    let full = if p.is_absolute() {
        p.to_owned()
    } else {
        root.join(p)
    };
    if !full.starts_with(root) {
        return Err(err(&format!(
            "is outside the seccomp profile root {}",
            root.display()
        )));
    }
    Ok(full)
}

/// An OCI seccomp object (`defaultAction`, `syscalls`, …), checked by the spec's own types.
pub fn parse_profile(bytes: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    serde_json::from_value::<oci_spec::runtime::LinuxSeccomp>(v.clone())
        .map_err(|e| format!("not a seccomp profile: {e}"))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &Value) -> Vec<String> {
        v["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["action"] == "SCMP_ACT_ALLOW" && s.get("args").is_none())
            .flat_map(|s| s["names"].as_array().unwrap().iter())
            .map(|n| n.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn runtime_default_is_a_valid_allow_list_widened_by_capabilities() {
        let caps: Vec<String> = crate::security::DEFAULT_CAPS
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = runtime_default(&caps, "x86_64");
        serde_json::from_value::<oci_spec::runtime::LinuxSeccomp>(p.clone()).unwrap();
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        let allowed = names(&p);
        for n in [
            "read",
            "write",
            "execve",
            "openat",
            "arch_prctl",
            "socket",
            "chroot",
        ] {
            assert!(allowed.contains(&n.to_string()), "{n} not allowed");
        }
        for n in [
            "mount",
            "unshare",
            "setns",
            "keyctl",
            "add_key",
            "ptrace",
            "bpf",
            "reboot",
            "init_module",
            "kexec_load",
            "open_by_handle_at",
            "userfaultfd",
        ] {
            assert!(!allowed.contains(&n.to_string()), "{n} allowed by default");
        }
        // clone only without namespace flags; clone3 → ENOSYS.
        let s = p["syscalls"].as_array().unwrap();
        assert!(s.iter().any(|r| r["names"][0] == "clone"
            && r["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"
            && r["args"][0]["value"] == 0x7E02_0000u64));
        assert!(
            s.iter()
                .any(|r| r["names"][0] == "clone3" && r["errnoRet"] == 38)
        );
        // CAP_SYS_ADMIN brings mount, unshare and unrestricted clone.
        let mut admin = caps.clone();
        admin.push("CAP_SYS_ADMIN".into());
        let p = runtime_default(&admin, "x86_64");
        let allowed = names(&p);
        assert!(allowed.contains(&"mount".to_string()) && allowed.contains(&"clone".to_string()));
        assert!(
            !p["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["names"][0] == "clone3" && r["action"] == "SCMP_ACT_ERRNO")
        );
        // Architectures follow the machine.
        assert_eq!(
            runtime_default(&caps, "aarch64")["architectures"][0],
            "SCMP_ARCH_AARCH64"
        );
    }

    #[test]
    #[allow(deprecated)]
    fn choice_follows_containerd() {
        let mut sc = cri::LinuxContainerSecurityContext::default();
        assert_eq!(
            choose(&sc).unwrap(),
            Choice::Unconfined,
            "no profile: unconfined"
        );
        sc.seccomp_profile_path = "runtime/default".into();
        assert_eq!(choose(&sc).unwrap(), Choice::RuntimeDefault);
        sc.seccomp_profile_path = "localhost/my.json".into();
        assert_eq!(choose(&sc).unwrap(), Choice::Localhost("my.json".into()));
        sc.seccomp_profile_path = "bogus".into();
        assert!(choose(&sc).is_err());
        sc.seccomp = Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        });
        assert_eq!(
            choose(&sc).unwrap(),
            Choice::RuntimeDefault,
            "the field wins"
        );
        sc.seccomp = Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Localhost as i32,
            localhost_ref: String::new(),
        });
        assert!(choose(&sc).is_err());
        sc.privileged = true;
        assert_eq!(choose(&sc).unwrap(), Choice::Unconfined);
    }
}
