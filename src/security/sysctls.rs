//! Pod sysctls: only namespaced ones, only for a namespace the pod does not share with the
//! host, and never a value that could smuggle another setting. Pure.

use std::collections::BTreeMap;

use super::SecurityError;

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
) -> Result<BTreeMap<String, String>, SecurityError> {
    let mut out = BTreeMap::new();
    for (raw, value) in requested {
        let name = raw.replace('/', ".");
        let clean = !name.is_empty()
            && name.len() <= 256
            && name.split('.').all(|w| {
                !w.is_empty()
                    && w.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        if !clean {
            return Err(SecurityError::SysctlName {
                name: raw.chars().take(80).collect(),
            });
        }
        if value.len() > 4096
            || value
                .chars()
                .any(|c| c.is_control() || matches!(c, '+' | '=' | ',' | ';'))
        {
            return Err(SecurityError::SysctlValue { name });
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
                return Err(SecurityError::SysctlNotNamespaced { name });
            }
            Some((kind, false)) => {
                return Err(SecurityError::SysctlHostNamespace {
                    name,
                    namespace: kind,
                });
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
