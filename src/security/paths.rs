//! Masked and read-only paths: the runtime defaults (as containerd and runc have them), the
//! request's own when it names any, none for a privileged container. Pure.

use k8s_cri::v1 as cri;

use super::SecurityError;

/// Paths masked and made read-only, as containerd/runc default them.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Masked and read-only paths: none when privileged; the request's when it names any (kubelet
/// sends the defaults for the Default proc mount); else the runtime defaults.
pub fn masked_and_readonly(
    sc: &cri::LinuxContainerSecurityContext,
) -> Result<(Vec<String>, Vec<String>), SecurityError> {
    if sc.privileged {
        return Ok((vec![], vec![]));
    }
    let pick = |field: &'static str, given: &[String], default: &[&str]| {
        if given.is_empty() {
            return Ok(default.iter().map(|s| s.to_string()).collect());
        }
        given
            .iter()
            .map(|p| {
                if !p.starts_with('/') || p.contains('\0') || p.split('/').any(|c| c == "..") {
                    Err(SecurityError::UncleanPath {
                        field,
                        path: p.clone(),
                    })
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
