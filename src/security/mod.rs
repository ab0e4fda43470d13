//! Security policy, pure: what a CRI security context (and a pod's sysctls) turn into —
//! capabilities, masked and read-only paths, sysctls, seccomp, AppArmor and SELinux — as
//! containerd decides it. No I/O: callers pass what they read from the host (kelsond's
//! capabilities, the pod's namespaces, whether an LSM runs) and do the reading and loading
//! themselves (a Localhost seccomp profile is read in `container::create`). Used by `pod/`
//! and `container/`; it never imports either.

pub mod capabilities;
pub mod lsm;
pub mod paths;
pub mod seccomp;
pub mod sysctls;

pub use capabilities::{ALL_CAPS, DEFAULT_CAPS, capabilities, caps_in};
pub use lsm::{APPARMOR_DEFAULT_NAME, APPARMOR_DEFAULT_PROFILE, apparmor, selinux};
pub use paths::{MASKED_PATHS, READONLY_PATHS, masked_and_readonly};
pub use sysctls::{OwnNamespaces, sysctls};

/// What a request asked for that the policy refuses, naming the request field first.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecurityError {
    #[error("{field}: unknown capability {name:?}")]
    UnknownCapability { field: &'static str, name: String },
    #[error("{field}: capability {name} is not available to the runtime on this host")]
    CapabilityUnavailable { field: &'static str, name: String },
    #[error("{field}: {path:?} is not a clean absolute path")]
    UncleanPath { field: &'static str, path: String },
    #[error("sysctls: {name:?} is not a sysctl name")]
    SysctlName { name: String },
    #[error("sysctls: the value of {name} holds a separator or control character")]
    SysctlValue { name: String },
    #[error("sysctls: {name} is not a namespaced sysctl; it would change the node")]
    SysctlNotNamespaced { name: String },
    #[error(
        "sysctls: {name} needs a {namespace} namespace of the pod's own, but the pod shares the host's"
    )]
    SysctlHostNamespace {
        name: String,
        namespace: &'static str,
    },
    #[error("apparmor: unknown profile type {0}")]
    AppArmorProfileType(i32),
    #[error("apparmor_profile: unknown profile {0:?}")]
    AppArmorProfile(String),
    #[error("apparmor: apparmor is not supported on this host")]
    AppArmorUnsupported,
    #[error("apparmor: a Localhost profile needs a profile name")]
    AppArmorLocalhostName,
    #[error(
        "selinux_options: kelson does not apply SELinux labels yet; this host enforces SELinux"
    )]
    SelinuxLabels,
    #[error("seccomp: a Localhost profile needs localhost_ref")]
    SeccompLocalhostRef,
    #[error("seccomp: unknown profile type {0}")]
    SeccompProfileType(i32),
    #[error("seccomp: unknown seccomp_profile_path {0:?}")]
    SeccompProfilePath(String),
    /// A Localhost profile reference that is refused, or a profile that could not be read.
    #[error("seccomp profile {reference:?}: {reason}")]
    SeccompLocalhost { reference: String, reason: String },
}

#[cfg(test)]
mod tests {
    use super::SecurityError as S;

    /// The messages kubelet and operators see, word for word as they were before the policy
    /// had its own error type (field first, then what was wrong).
    #[test]
    fn messages_name_the_field_and_what_was_wrong() {
        let cases = [
            (
                S::UnknownCapability {
                    field: "capabilities.add_capabilities",
                    name: "TAKE_OVER".into(),
                },
                "capabilities.add_capabilities: unknown capability \"TAKE_OVER\"",
            ),
            (
                S::CapabilityUnavailable {
                    field: "capabilities.drop_capabilities",
                    name: "CAP_SYS_RESOURCE".into(),
                },
                "capabilities.drop_capabilities: capability CAP_SYS_RESOURCE is not available to the runtime on this host",
            ),
            (
                S::UncleanPath {
                    field: "masked_paths",
                    path: "proc/kcore".into(),
                },
                "masked_paths: \"proc/kcore\" is not a clean absolute path",
            ),
            (
                S::SysctlName { name: "a=b".into() },
                "sysctls: \"a=b\" is not a sysctl name",
            ),
            (
                S::SysctlValue {
                    name: "kernel.sem".into(),
                },
                "sysctls: the value of kernel.sem holds a separator or control character",
            ),
            (
                S::SysctlNotNamespaced {
                    name: "vm.swappiness".into(),
                },
                "sysctls: vm.swappiness is not a namespaced sysctl; it would change the node",
            ),
            (
                S::SysctlHostNamespace {
                    name: "net.ipv4.ip_forward".into(),
                    namespace: "network",
                },
                "sysctls: net.ipv4.ip_forward needs a network namespace of the pod's own, but the pod shares the host's",
            ),
            (
                S::AppArmorProfileType(9),
                "apparmor: unknown profile type 9",
            ),
            (
                S::AppArmorProfile("x".into()),
                "apparmor_profile: unknown profile \"x\"",
            ),
            (
                S::AppArmorUnsupported,
                "apparmor: apparmor is not supported on this host",
            ),
            (
                S::AppArmorLocalhostName,
                "apparmor: a Localhost profile needs a profile name",
            ),
            (
                S::SelinuxLabels,
                "selinux_options: kelson does not apply SELinux labels yet; this host enforces SELinux",
            ),
            (
                S::SeccompLocalhostRef,
                "seccomp: a Localhost profile needs localhost_ref",
            ),
            (S::SeccompProfileType(9), "seccomp: unknown profile type 9"),
            (
                S::SeccompProfilePath("bogus".into()),
                "seccomp: unknown seccomp_profile_path \"bogus\"",
            ),
            (
                S::SeccompLocalhost {
                    reference: "p.json".into(),
                    reason: "is not a regular file".into(),
                },
                "seccomp profile \"p.json\": is not a regular file",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.to_string(), want);
        }
    }
}
