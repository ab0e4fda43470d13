//! kelson-cgroups: where a container's cgroup is, from the spec's `linux.cgroupsPath` — shared
//! by kelsond (stats, clean-up) and the shim (kill, OOM), which must agree. Two forms, as the OCI
//! runtime spec has them: a path (`/kelson/<pod>/<id>`, the cgroupfs driver) or systemd's
//! `<slice>:<prefix>:<name>` (the systemd driver: a transient scope `<prefix>-<name>.scope` in
//! the slice, whose directory is the slice's expanded path). Pure.

/// Longest slice name accepted (systemd's unit name limit).
pub const MAX_UNIT_NAME: usize = 255;

/// systemd's directory for a slice: `a-b-c.slice` → `a.slice/a-b.slice/a-b-c.slice` (relative
/// to each hierarchy root); `-.slice` is the root. None for a name systemd would refuse.
pub fn expand_slice(slice: &str) -> Option<String> {
    let name = slice.strip_suffix(".slice")?;
    if slice.len() > MAX_UNIT_NAME || slice.contains('/') || name.is_empty() {
        return None;
    }
    if name == "-" {
        return Some(String::new());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
    {
        return None;
    }
    let mut path = Vec::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if part.is_empty() {
            return None;
        }
        path.push(format!("{prefix}{part}.slice"));
        prefix = format!("{prefix}{part}-");
    }
    Some(path.join("/"))
}

/// The systemd form's transient unit: `<prefix>-<name>.scope`.
pub fn scope_name(prefix: &str, name: &str) -> String {
    format!("{prefix}-{name}.scope")
}

/// Whether `cgroups_path` is systemd's `slice:prefix:name` form.
pub fn is_systemd(cgroups_path: &str) -> bool {
    !cgroups_path.starts_with('/') && cgroups_path.split(':').count() == 3
}

/// The cgroup directory (relative to each hierarchy root) of `cgroups_path`, either form.
pub fn dir_of(cgroups_path: &str) -> Option<String> {
    if !is_systemd(cgroups_path) {
        return Some(cgroups_path.trim_start_matches('/').to_owned());
    }
    let mut it = cgroups_path.split(':');
    let (slice, prefix, name) = (it.next()?, it.next()?, it.next()?);
    let slice = if slice.is_empty() { "-.slice" } else { slice };
    let base = expand_slice(slice)?;
    let scope = scope_name(prefix, name);
    Some(if base.is_empty() {
        scope
    } else {
        format!("{base}/{scope}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_expand_as_systemd_does() {
        assert_eq!(
            expand_slice("kubepods-burstable-pod0a1b_2c3d.slice").unwrap(),
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b_2c3d.slice"
        );
        assert_eq!(expand_slice("kubepods.slice").unwrap(), "kubepods.slice");
        assert_eq!(expand_slice("-.slice").unwrap(), "");
        for bad in [
            "",
            ".slice",
            "a--b.slice",
            "-a.slice",
            "a-.slice",
            "a/b.slice",
            "a.scope",
            "a b.slice",
        ] {
            assert_eq!(expand_slice(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn either_form_gives_the_directory() {
        assert_eq!(dir_of("/kelson/p1/c1").unwrap(), "kelson/p1/c1");
        assert_eq!(
            dir_of("kubepods-besteffort-podX.slice:kelson:c1").unwrap(),
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podX.slice/kelson-c1.scope"
        );
        assert_eq!(dir_of(":kelson:c1").unwrap(), "kelson-c1.scope");
        assert!(is_systemd("kelson.slice:kelson:c1"));
        assert!(!is_systemd("/kelson.slice/c1"));
        assert_eq!(dir_of("bad--slice.slice:kelson:c1"), None);
    }
}
