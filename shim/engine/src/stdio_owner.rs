//! The container's stdio pipes handed to the user its process runs as, before the process is
//! made. A pipe belongs to whoever created it (host root here) with mode 0600, and a process
//! that reopens its stdio — `echo hi > /dev/stdout` opens /proc/self/fd/1 afresh — is checked
//! against that owner: a non-root user, or the root of a user-namespaced pod (an unprivileged
//! host id), gets EACCES. Only pipes are given away, never a file or a device (/dev/null), and
//! the mode stays 0600: the owner becomes the container's own user, no other host user gains
//! anything.

use std::os::fd::AsFd;

/// An OCI `linux.uidMappings` / `gidMappings` list, applied to `id`: the host id, or None when
/// the namespace does not map it. No mappings: the host's own ids.
fn to_host(maps: &serde_json::Value, id: u32) -> Option<u32> {
    let Some(maps) = maps.as_array() else {
        return Some(id);
    };
    if maps.is_empty() {
        return Some(id);
    }
    maps.iter().find_map(|m| {
        let inside = u32::try_from(m["containerID"].as_u64()?).ok()?;
        let host = u32::try_from(m["hostID"].as_u64()?).ok()?;
        let size = u32::try_from(m["size"].as_u64()?).ok()?;
        let off = id.checked_sub(inside).filter(|o| *o < size)?;
        host.checked_add(off)
    })
}

/// The host uid and gid of the spec's process user (None: not mapped by the spec's user
/// namespace, which kelsond refuses before it writes a spec).
pub fn host_user(spec: &serde_json::Value) -> Option<(u32, u32)> {
    let user = &spec["process"]["user"];
    let uid = u32::try_from(user["uid"].as_u64().unwrap_or(0)).ok()?;
    let gid = u32::try_from(user["gid"].as_u64().unwrap_or(0)).ok()?;
    Some((
        to_host(&spec["linux"]["uidMappings"], uid)?,
        to_host(&spec["linux"]["gidMappings"], gid)?,
    ))
}

/// Make this process's stdin, stdout and stderr — the container's, or an exec'd command's —
/// belong to `owner` (host ids) where they are pipes owned by someone else. Run while this
/// process is still host root in the host's user namespace (a pipe of host root's is not
/// mapped in the pod's, where no capability could change it).
pub fn give(owner: (u32, u32)) -> Result<(), String> {
    use nix::sys::stat::{SFlag, fstat};
    let fds = [
        ("stdin", std::io::stdin().as_fd().try_clone_to_owned()),
        ("stdout", std::io::stdout().as_fd().try_clone_to_owned()),
        ("stderr", std::io::stderr().as_fd().try_clone_to_owned()),
    ];
    for (name, fd) in fds {
        let fd = fd.map_err(|e| format!("dup {name}: {e}"))?;
        let st = fstat(&fd).map_err(|e| format!("stat {name}: {e}"))?;
        let fifo = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFIFO;
        if !fifo || (st.st_uid, st.st_gid) == owner {
            continue;
        }
        std::os::unix::fs::fchown(&fd, Some(owner.0), Some(owner.1))
            .map_err(|e| format!("giving {name} to {}:{}: {e}", owner.0, owner.1))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_process_user_is_mapped_to_the_host() {
        let maps = json!([{"containerID": 0, "hostID": 196608, "size": 65536}]);
        let spec = |uid: u64, gid: u64, mapped: bool| {
            let mut s = json!({"process": {"user": {"uid": uid, "gid": gid}}, "linux": {}});
            if mapped {
                s["linux"]["uidMappings"] = maps.clone();
                s["linux"]["gidMappings"] = maps.clone();
            }
            s
        };
        assert_eq!(host_user(&spec(0, 0, true)), Some((196608, 196608)));
        assert_eq!(host_user(&spec(1000, 2000, true)), Some((197608, 198608)));
        assert_eq!(host_user(&spec(65535, 0, true)), Some((262143, 196608)));
        // Outside the mapping: nothing to give it to.
        assert_eq!(host_user(&spec(65536, 0, true)), None);
        // No user namespace: the ids as they are.
        assert_eq!(host_user(&spec(1000, 1000, false)), Some((1000, 1000)));
        assert_eq!(host_user(&json!({})), Some((0, 0)));
        // Several ranges, and values that do not fit.
        let split = json!([
            {"containerID": 0, "hostID": 100000, "size": 10},
            {"containerID": 10, "hostID": 500000, "size": 10}
        ]);
        assert_eq!(to_host(&split, 12), Some(500002));
        assert_eq!(to_host(&split, 20), None);
        let huge = json!([{"containerID": 0, "hostID": u32::MAX, "size": 10}]);
        assert_eq!(to_host(&huge, 1), None);
        assert_eq!(to_host(&json!([{"containerID": -1}]), 0), None);
    }
}
