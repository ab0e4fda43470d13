//! Capabilities as containerd derives them from CRI: add/drop by name, `ALL`, ambient;
//! privileged = every capability kelsond has. Pure: the caller passes kelsond's own set.

use k8s_cri::v1 as cri;
use serde_json::{Value, json};

use super::SecurityError;

/// containerd's default capability set for CRI containers.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

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
fn cap_name(field: &'static str, raw: &str, available: &[&str]) -> Result<String, SecurityError> {
    let up = raw.trim().to_ascii_uppercase();
    let name = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if available.contains(&name.as_str()) {
        Ok(name)
    } else if ALL_CAPS.contains(&name.as_str()) {
        Err(SecurityError::CapabilityUnavailable { field, name })
    } else {
        Err(SecurityError::UnknownCapability {
            field,
            name: raw.chars().take(64).collect(),
        })
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
) -> Result<Value, SecurityError> {
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
}
