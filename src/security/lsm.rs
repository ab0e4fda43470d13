//! Linux security modules: the AppArmor profile a process gets (and kelson's own default
//! profile, kept as data in `apparmor/kelson-default`) and the SELinux decision. Pure: the
//! caller says whether the host runs AppArmor or enforces SELinux, and loads the profile.

use k8s_cri::v1 as cri;

use super::SecurityError;

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
) -> Result<Option<String>, SecurityError> {
    use cri::security_profile::ProfileType;
    let requested: Option<(ProfileType, String)> = match &sc.apparmor {
        Some(p) => Some((
            ProfileType::try_from(p.profile_type)
                .map_err(|_| SecurityError::AppArmorProfileType(p.profile_type))?,
            p.localhost_ref.clone(),
        )),
        None => match sc.apparmor_profile.as_str() {
            "" => None,
            "unconfined" => Some((ProfileType::Unconfined, String::new())),
            "runtime/default" => Some((ProfileType::RuntimeDefault, String::new())),
            other => match other.strip_prefix("localhost/") {
                Some(name) => Some((ProfileType::Localhost, name.to_owned())),
                None => {
                    return Err(SecurityError::AppArmorProfile(
                        other.chars().take(120).collect(),
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
        return Err(SecurityError::AppArmorUnsupported);
    }
    match kind {
        ProfileType::Localhost => {
            if name.is_empty() || name.len() > 256 || name.chars().any(|c| c.is_control()) {
                return Err(SecurityError::AppArmorLocalhostName);
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
) -> Result<(), SecurityError> {
    let asked = sc.selinux_options.as_ref().is_some_and(|o| {
        !(o.user.is_empty() && o.role.is_empty() && o.r#type.is_empty() && o.level.is_empty())
    });
    if asked && host_has_selinux && !sc.privileged {
        return Err(SecurityError::SelinuxLabels);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
