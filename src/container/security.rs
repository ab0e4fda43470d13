//! The security-context parts of a container's spec, as containerd derives them from CRI:
//! capabilities (add/drop, `ALL`, ambient; privileged = every capability the kernel knows),
//! masked and read-only paths, and sysctls (namespaced ones only). Pure: the caller passes
//! what it read from the host (kelsond's own capabilities, the pod's namespaces).

use std::collections::BTreeMap;

use k8s_cri::v1 as cri;
use serde_json::{Value, json};

use super::spec::{DEFAULT_CAPS, MASKED_PATHS, READONLY_PATHS, SpecError};

/// Every capability by number (capability.h), up to CAP_CHECKPOINT_RESTORE (40).
pub const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

fn invalid(field: &str, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The capabilities in `mask` (bit n = capability n), by name.
pub fn caps_in(mask: u64) -> Vec<&'static str> {
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(n, _)| mask & (1u64 << n) != 0)
        .map(|(_, c)| *c)
        .collect()
}

/// `chown` / `CAP_CHOWN` / `cap_chown` → `CAP_CHOWN`, if it is one kelsond can give.
fn cap_name(field: &str, raw: &str, available: &[&str]) -> Result<String, SpecError> {
    let up = raw.trim().to_ascii_uppercase();
    let name = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if available.contains(&name.as_str()) {
        Ok(name)
    } else if ALL_CAPS.contains(&name.as_str()) {
        Err(invalid(
            field,
            format!("capability {name} is not available to the runtime on this host"),
        ))
    } else {
        Err(invalid(
            field,
            format!(
                "unknown capability {:?}",
                raw.chars().take(64).collect::<String>()
            ),
        ))
    }
}

/// The process's capability sets. Privileged: every capability kelsond has (`host_caps`;
/// add/drop ignored, as containerd does). Otherwise containerd's default set, then `ALL` in add or drop, then the
/// named ones (so `add: [ALL], drop: [CHOWN]` is everything but CHOWN). Inheritable stays
/// empty (CVE-2022-24769); ambient capabilities are also made inheritable, as they must be.
pub fn capabilities(
    caps: Option<&cri::Capability>,
    privileged: bool,
    host_caps: u64,
) -> Result<Value, SpecError> {
    let known = caps_in(host_caps);
    let known = known.as_slice();
    let mut set: Vec<String> = if privileged {
        known.iter().map(|s| s.to_string()).collect()
    } else {
        // The default set, less what this host withholds from kelsond.
        DEFAULT_CAPS
            .iter()
            .filter(|c| known.contains(c))
            .map(|s| s.to_string())
            .collect()
    };
    let mut ambient: Vec<String> = Vec::new();
    if let (Some(c), false) = (caps, privileged) {
        let is_all = |s: &String| s.trim().eq_ignore_ascii_case("ALL");
        if c.add_capabilities.iter().any(is_all) {
            set = known.iter().map(|s| s.to_string()).collect();
        }
        if c.drop_capabilities.iter().any(is_all) {
            set.clear();
        }
        for a in c.add_capabilities.iter().filter(|s| !is_all(s)) {
            let n = cap_name("capabilities.add_capabilities", a, known)?;
            if !set.contains(&n) {
                set.push(n);
            }
        }
        for d in c.drop_capabilities.iter().filter(|s| !is_all(s)) {
            let n = cap_name("capabilities.drop_capabilities", d, known)?;
            set.retain(|s| *s != n);
        }
        for a in &c.add_ambient_capabilities {
            let n = cap_name("capabilities.add_ambient_capabilities", a, known)?;
            if !set.contains(&n) {
                set.push(n.clone());
            }
            if !ambient.contains(&n) {
                ambient.push(n);
            }
        }
    }
    let mut v = json!({"bounding": set, "effective": set, "permitted": set});
    if !ambient.is_empty() {
        v["ambient"] = json!(ambient);
        v["inheritable"] = json!(ambient);
    }
    Ok(v)
}

/// Masked and read-only paths: none when privileged; the request's when it names any (kubelet
/// sends the defaults for the Default proc mount); else the runtime defaults.
pub fn masked_and_readonly(
    sc: &cri::LinuxContainerSecurityContext,
) -> Result<(Vec<String>, Vec<String>), SpecError> {
    if sc.privileged {
        return Ok((vec![], vec![]));
    }
    let pick = |field: &str, given: &[String], default: &[&str]| {
        if given.is_empty() {
            return Ok(default.iter().map(|s| s.to_string()).collect());
        }
        given
            .iter()
            .map(|p| {
                if !p.starts_with('/') || p.contains('\0') || p.split('/').any(|c| c == "..") {
                    Err(invalid(
                        field,
                        format!("{p:?} is not a clean absolute path"),
                    ))
                } else {
                    Ok(p.clone())
                }
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok((
        pick("masked_paths", &sc.masked_paths, MASKED_PATHS)?,
        pick("readonly_paths", &sc.readonly_paths, READONLY_PATHS)?,
    ))
}

/// kelson's RuntimeDefault AppArmor profile (policy data, like the seccomp default).
pub const APPARMOR_DEFAULT_NAME: &str = "kelson-default";
pub const APPARMOR_DEFAULT_PROFILE: &str = include_str!("apparmor/kelson-default");

/// The AppArmor profile for the process (`process.apparmorProfile`), as containerd decides
/// it. On a host without AppArmor (like this project's CI machine) containerd refuses any
/// profile but Unconfined ("apparmor is not supported") and so does kelson. With AppArmor:
/// RuntimeDefault — and no request at all, for an unprivileged container — is kelson's own
/// default profile (`APPARMOR_DEFAULT_NAME`, which the caller loads), a Localhost profile
/// (which the node's admin loads) is applied by name, privileged containers and Unconfined
/// run unconfined.
#[allow(deprecated)] // `apparmor_profile`: what kubelets before the field send
pub fn apparmor(
    sc: &cri::LinuxContainerSecurityContext,
    host_has_apparmor: bool,
) -> Result<Option<String>, SpecError> {
    use cri::security_profile::ProfileType;
    let field = "apparmor";
    let requested: Option<(ProfileType, String)> = match &sc.apparmor {
        Some(p) => Some((
            ProfileType::try_from(p.profile_type)
                .map_err(|_| invalid(field, format!("unknown profile type {}", p.profile_type)))?,
            p.localhost_ref.clone(),
        )),
        None => match sc.apparmor_profile.as_str() {
            "" => None,
            "unconfined" => Some((ProfileType::Unconfined, String::new())),
            "runtime/default" => Some((ProfileType::RuntimeDefault, String::new())),
            other => match other.strip_prefix("localhost/") {
                Some(name) => Some((ProfileType::Localhost, name.to_owned())),
                None => {
                    return Err(invalid(
                        "apparmor_profile",
                        format!(
                            "unknown profile {:?}",
                            other.chars().take(120).collect::<String>()
                        ),
                    ));
                }
            },
        },
    };
    let (kind, name) = match requested {
        Some(r) => r,
        // Nothing asked: the runtime's default where there is AppArmor, as containerd does.
        None if host_has_apparmor && !sc.privileged => (ProfileType::RuntimeDefault, String::new()),
        None => return Ok(None),
    };
    if kind == ProfileType::Unconfined || sc.privileged {
        return Ok(None);
    }
    if !host_has_apparmor {
        return Err(invalid(field, "apparmor is not supported on this host"));
    }
    match kind {
        ProfileType::Localhost => {
            if name.is_empty() || name.len() > 256 || name.chars().any(|c| c.is_control()) {
                return Err(invalid(field, "a Localhost profile needs a profile name"));
            }
            Ok(Some(name))
        }
        _ => Ok(Some(APPARMOR_DEFAULT_NAME.to_owned())),
    }
}

/// SELinux: on a host without it, `selinux_options` are accepted and ignored, as containerd
/// does. kelson does not label processes or mounts yet (the container library does not
/// either), so on an SELinux host a request for a label is refused instead of running the
/// container with another label than the one asked for.
pub fn selinux(
    sc: &cri::LinuxContainerSecurityContext,
    host_has_selinux: bool,
) -> Result<(), SpecError> {
    let asked = sc.selinux_options.as_ref().is_some_and(|o| {
        !(o.user.is_empty() && o.role.is_empty() && o.r#type.is_empty() && o.level.is_empty())
    });
    if asked && host_has_selinux && !sc.privileged {
        return Err(invalid(
            "selinux_options",
            "kelson does not apply SELinux labels yet; this host enforces SELinux",
        ));
    }
    Ok(())
}

/// The namespaces a pod does not share with the host (sysctls may only touch those).
#[derive(Debug, Clone, Copy, Default)]
pub struct OwnNamespaces {
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
}

/// Validate pod sysctls: only namespaced ones (IPC: `kernel.shm*`, `kernel.msg*`,
/// `kernel.sem`, `fs.mqueue.*`; network: `net.*`; UTS: `kernel.hostname`,
/// `kernel.domainname`) and only for a namespace the pod does not share with the host. Names
/// are dotted or slashed words; values may not carry separators that could smuggle another
/// setting (CRI-O's CVE-2022-0811 took `+` and `=` in values) or control characters.
pub fn sysctls(
    requested: &std::collections::HashMap<String, String>,
    own: OwnNamespaces,
) -> Result<BTreeMap<String, String>, SpecError> {
    let mut out = BTreeMap::new();
    for (raw, value) in requested {
        let name = raw.replace('/', ".");
        let field = "sysctls";
        let clean = !name.is_empty()
            && name.len() <= 256
            && name.split('.').all(|w| {
                !w.is_empty()
                    && w.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        if !clean {
            return Err(invalid(
                field,
                format!(
                    "{:?} is not a sysctl name",
                    raw.chars().take(80).collect::<String>()
                ),
            ));
        }
        if value.len() > 4096
            || value
                .chars()
                .any(|c| c.is_control() || matches!(c, '+' | '=' | ',' | ';'))
        {
            return Err(invalid(
                field,
                format!("the value of {name} holds a separator or control character"),
            ));
        }
        let ns = if name.starts_with("net.") {
            Some(("network", own.net))
        } else if name == "kernel.sem"
            || name.starts_with("kernel.shm")
            || name.starts_with("kernel.msg")
            || name.starts_with("fs.mqueue.")
        {
            Some(("IPC", own.ipc))
        } else if name == "kernel.hostname" || name == "kernel.domainname" {
            Some(("UTS", own.uts))
        } else {
            None
        };
        match ns {
            None => {
                return Err(invalid(
                    field,
                    format!("{name} is not a namespaced sysctl; it would change the node"),
                ));
            }
            Some((kind, false)) => {
                return Err(invalid(
                    field,
                    format!(
                        "{name} needs a {kind} namespace of the pod's own, but the pod shares the host's"
                    ),
                ));
            }
            Some(_) => {}
        }
        out.insert(name, value.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(add: &[&str], drop: &[&str]) -> cri::Capability {
        cri::Capability {
            add_capabilities: add.iter().map(|s| s.to_string()).collect(),
            drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
            add_ambient_capabilities: vec![],
        }
    }

    fn bounding(v: &Value) -> Vec<String> {
        serde_json::from_value(v["bounding"].clone()).unwrap()
    }

    #[test]
    fn capability_sets_follow_containerd() {
        let last = (1u64 << 41) - 1;
        let d = capabilities(None, false, last).unwrap();
        assert_eq!(bounding(&d), DEFAULT_CAPS);
        assert!(d.get("inheritable").is_none(), "no inheritable by default");
        let v = capabilities(
            Some(&caps(&["NET_ADMIN", "cap_sys_time"], &["chown"])),
            false,
            last,
        )
        .unwrap();
        let b = bounding(&v);
        assert!(b.contains(&"CAP_NET_ADMIN".into()) && b.contains(&"CAP_SYS_TIME".into()));
        assert!(!b.contains(&"CAP_CHOWN".into()));
        assert_eq!(v["effective"], v["bounding"]);
        assert_eq!(v["permitted"], v["bounding"]);
        let all_but = capabilities(Some(&caps(&["ALL"], &["CHOWN"])), false, last).unwrap();
        assert_eq!(bounding(&all_but).len(), ALL_CAPS.len() - 1);
        let only = capabilities(Some(&caps(&["NET_BIND_SERVICE"], &["ALL"])), false, last).unwrap();
        assert_eq!(bounding(&only), ["CAP_NET_BIND_SERVICE"]);
        let none = capabilities(Some(&caps(&[], &["all"])), false, last).unwrap();
        assert!(bounding(&none).is_empty());
        // Privileged: everything kelsond has (here: all but CAP_SYS_RESOURCE, 24), whatever
        // was asked.
        let host = last & !(1 << 24);
        let p = capabilities(Some(&caps(&[], &["ALL"])), true, host).unwrap();
        assert_eq!(bounding(&p).len(), 40);
        assert!(!bounding(&p).contains(&"CAP_SYS_RESOURCE".into()));
        // Withheld from kelsond, or unknown to anyone: refused by name.
        let e = capabilities(Some(&caps(&["SYS_RESOURCE"], &[])), false, host).unwrap_err();
        assert!(
            e.to_string().contains("CAP_SYS_RESOURCE is not available"),
            "{e}"
        );
        let e = capabilities(Some(&caps(&["TAKE_OVER"], &[])), false, host).unwrap_err();
        assert!(e.to_string().contains("\"TAKE_OVER\""), "{e}");
        let e = capabilities(Some(&caps(&[], &["EVERYTHING"])), false, last).unwrap_err();
        assert!(e.to_string().contains("drop_capabilities"), "{e}");
        // Ambient: also inheritable, and in the other sets.
        let mut c = caps(&[], &["ALL"]);
        c.add_ambient_capabilities = vec!["NET_BIND_SERVICE".into()];
        let a = capabilities(Some(&c), false, last).unwrap();
        assert_eq!(a["ambient"], json!(["CAP_NET_BIND_SERVICE"]));
        assert_eq!(a["inheritable"], json!(["CAP_NET_BIND_SERVICE"]));
        assert_eq!(bounding(&a), ["CAP_NET_BIND_SERVICE"]);
    }

    #[test]
    #[allow(deprecated)]
    fn apparmor_follows_containerd() {
        use cri::security_profile::ProfileType;
        let with = |t: ProfileType, r: &str| cri::LinuxContainerSecurityContext {
            apparmor: Some(cri::SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            }),
            ..Default::default()
        };
        let none = cri::LinuxContainerSecurityContext::default();
        // No AppArmor on the host: nothing asked or Unconfined is fine, anything else refused.
        assert_eq!(apparmor(&none, false).unwrap(), None);
        assert_eq!(
            apparmor(&with(ProfileType::Unconfined, ""), false).unwrap(),
            None
        );
        let e = apparmor(&with(ProfileType::RuntimeDefault, ""), false).unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
        assert!(apparmor(&with(ProfileType::Localhost, "p"), false).is_err());
        let legacy = cri::LinuxContainerSecurityContext {
            apparmor_profile: "runtime/default".into(),
            ..Default::default()
        };
        assert!(apparmor(&legacy, false).is_err());
        // With AppArmor: the runtime's default for RuntimeDefault and for nothing asked, a
        // Localhost profile by name; privileged runs unconfined.
        for sc in [
            with(ProfileType::RuntimeDefault, ""),
            legacy.clone(),
            none.clone(),
        ] {
            assert_eq!(
                apparmor(&sc, true).unwrap().as_deref(),
                Some(APPARMOR_DEFAULT_NAME)
            );
        }
        assert_eq!(
            apparmor(&with(ProfileType::Unconfined, ""), true).unwrap(),
            None
        );
        let privileged = cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        };
        assert_eq!(apparmor(&privileged, true).unwrap(), None);
        assert!(APPARMOR_DEFAULT_PROFILE.contains("profile kelson-default "));
        assert_eq!(
            apparmor(&with(ProfileType::Localhost, "my-profile"), true).unwrap(),
            Some("my-profile".into())
        );
        let mut p = with(ProfileType::Localhost, "my-profile");
        p.privileged = true;
        assert_eq!(apparmor(&p, true).unwrap(), None);
        assert!(apparmor(&with(ProfileType::Localhost, ""), true).is_err());
    }

    #[test]
    fn selinux_follows_containerd_without_it_and_refuses_labels_with_it() {
        let labelled = cri::LinuxContainerSecurityContext {
            selinux_options: Some(cri::SeLinuxOption {
                level: "s0:c1,c2".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(selinux(&labelled, false).is_ok());
        assert!(selinux(&cri::LinuxContainerSecurityContext::default(), true).is_ok());
        let e = selinux(&labelled, true).unwrap_err();
        assert!(e.to_string().contains("SELinux"), "{e}");
    }

    #[test]
    fn masked_paths_default_override_and_privileged() {
        let mut sc = cri::LinuxContainerSecurityContext::default();
        let (m, r) = masked_and_readonly(&sc).unwrap();
        assert_eq!(m, MASKED_PATHS);
        assert_eq!(r, READONLY_PATHS);
        sc.masked_paths = vec!["/proc/kcore".into()];
        assert_eq!(masked_and_readonly(&sc).unwrap().0, ["/proc/kcore"]);
        sc.readonly_paths = vec!["proc/sys".into()];
        assert!(masked_and_readonly(&sc).is_err());
        sc.readonly_paths = vec!["/proc/../etc".into()];
        assert!(masked_and_readonly(&sc).is_err());
        sc.privileged = true;
        assert_eq!(masked_and_readonly(&sc).unwrap(), (vec![], vec![]));
    }

    #[test]
    fn sysctls_only_namespaced_and_never_injected() {
        let own = OwnNamespaces {
            net: true,
            ipc: true,
            uts: true,
        };
        let req = |k: &str, v: &str| {
            let mut m = std::collections::HashMap::new();
            m.insert(k.to_string(), v.to_string());
            m
        };
        let ok = sysctls(&req("net/ipv4/ip_unprivileged_port_start", "0"), own).unwrap();
        assert_eq!(ok["net.ipv4.ip_unprivileged_port_start"], "0");
        assert!(sysctls(&req("kernel.shm_rmid_forced", "1"), own).is_ok());
        assert!(sysctls(&req("kernel.msgmax", "8192"), own).is_ok());
        assert!(sysctls(&req("fs.mqueue.msg_max", "10"), own).is_ok());
        // Node-wide settings are refused by name.
        let e = sysctls(&req("kernel.core_pattern", "|/tmp/x"), own).unwrap_err();
        assert!(e.to_string().contains("not a namespaced sysctl"), "{e}");
        assert!(sysctls(&req("vm.overcommit_memory", "1"), own).is_err());
        // CVE-2022-0811: a value smuggling a second setting.
        let e = sysctls(
            &req("kernel.shm_rmid_forced", "1+kernel.core_pattern=|/evil"),
            own,
        )
        .unwrap_err();
        assert!(e.to_string().contains("separator"), "{e}");
        assert!(sysctls(&req("net.ipv4.ip_forward", "1\nkernel.x=1"), own).is_err());
        assert!(sysctls(&req("net.ipv4..x", "1"), own).is_err());
        assert!(sysctls(&req("net.ipv4.ip_forward=1", "1"), own).is_err());
        assert!(sysctls(&req("../../kernel/core_pattern", "1"), own).is_err());
        // A namespace shared with the host cannot be tuned from a pod.
        let host_net = OwnNamespaces { net: false, ..own };
        let e = sysctls(&req("net.ipv4.ip_forward", "1"), host_net).unwrap_err();
        assert!(e.to_string().contains("network namespace"), "{e}");
        let host_ipc = OwnNamespaces { ipc: false, ..own };
        assert!(sysctls(&req("kernel.sem", "1 2 3 4"), host_ipc).is_err());
    }
}
