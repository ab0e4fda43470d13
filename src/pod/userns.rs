//! A pod's user namespace as CRI asks for it (`NamespaceOption.userns_options`): the id
//! mappings checked and turned into what the kernel and the container library take. Pure.
//!
//! kubelet gives each pod with `hostUsers: false` 65536 ids of its own on the host (container
//! 0..65535 → host N·65536…) and sends the same mappings for the sandbox and every container.

use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};

/// The kernel takes at most 340 lines per map (since Linux 4.15).
pub const MAX_MAP_LINES: usize = 340;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsernsError {
    #[error("userns_options.mode {0}: only POD (a pod user namespace) or NODE are supported")]
    Mode(String),
    #[error("userns_options.{0}: a pod user namespace needs at least one mapping")]
    Empty(&'static str),
    #[error("userns_options.{0}: more than {MAX_MAP_LINES} mappings")]
    TooMany(&'static str),
    #[error("userns_options.{which}: mapping {index} ({m}) {reason}")]
    Bad {
        which: &'static str,
        index: usize,
        m: String,
        reason: &'static str,
    },
}

/// One line of a map: `len` ids from `container` in the namespace are `host` … on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub container: u32,
    pub host: u32,
    pub len: u32,
}

impl std::fmt::Display for IdMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.container, self.host, self.len)
    }
}

/// A pod's user namespace mappings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNs {
    pub uids: Vec<IdMap>,
    pub gids: Vec<IdMap>,
}

impl UserNs {
    /// The host uid and gid of the namespace's root (the overflow id when unmapped).
    pub fn root_on_host(&self) -> (u32, u32) {
        (
            to_host(&self.uids, 0).unwrap_or(OVERFLOW_ID),
            to_host(&self.gids, 0).unwrap_or(OVERFLOW_ID),
        )
    }
}

/// The kernel's `overflowuid`: what an unmapped id reads as.
pub const OVERFLOW_ID: u32 = 65534;

fn maps(which: &'static str, list: &[cri::IdMapping]) -> Result<Vec<IdMap>, UsernsError> {
    if list.is_empty() {
        return Err(UsernsError::Empty(which));
    }
    if list.len() > MAX_MAP_LINES {
        return Err(UsernsError::TooMany(which));
    }
    let out: Vec<IdMap> = list
        .iter()
        .map(|m| IdMap {
            container: m.container_id,
            host: m.host_id,
            len: m.length,
        })
        .collect();
    for (index, m) in out.iter().enumerate() {
        let bad = |reason| UsernsError::Bad {
            which,
            index,
            m: m.to_string(),
            reason,
        };
        let end = |start: u32| u64::from(start) + u64::from(m.len);
        if m.len == 0 {
            return Err(bad("has length 0"));
        }
        // ids are 32-bit and 2^32-1 is (uid_t)-1, never a valid id.
        if end(m.container) > u64::from(u32::MAX) || end(m.host) > u64::from(u32::MAX) {
            return Err(bad("runs past the last id"));
        }
        // The point of the namespace is that nothing in the pod is root on the host.
        if m.host == 0 {
            return Err(bad("maps host id 0 (root) into the pod"));
        }
        for prev in &out[..index] {
            // [a, a+la) and [b, b+lb) overlap when each starts before the other ends.
            let overlap = |a: u32, la: u32, b: u32, lb: u32| {
                u64::from(a) < u64::from(b) + u64::from(lb)
                    && u64::from(b) < u64::from(a) + u64::from(la)
            };
            if overlap(prev.container, prev.len, m.container, m.len) {
                return Err(bad("overlaps another mapping in the container"));
            }
            if overlap(prev.host, prev.len, m.host, m.len) {
                return Err(bad("overlaps another mapping on the host"));
            }
        }
    }
    Ok(out)
}

/// The user namespace a sandbox or container asks for: None for the host's (NODE, or no
/// options at all).
pub fn from_cri(opt: Option<&cri::UserNamespace>) -> Result<Option<UserNs>, UsernsError> {
    let Some(o) = opt else { return Ok(None) };
    match cri::NamespaceMode::try_from(o.mode) {
        Ok(cri::NamespaceMode::Node) => Ok(None),
        Ok(cri::NamespaceMode::Pod) => Ok(Some(UserNs {
            uids: maps("uids", &o.uids)?,
            gids: maps("gids", &o.gids)?,
        })),
        Ok(m) => Err(UsernsError::Mode(m.as_str_name().to_owned())),
        Err(_) => Err(UsernsError::Mode(o.mode.to_string())),
    }
}

/// The host id of namespace id `id`, if the map covers it.
pub fn to_host(maps: &[IdMap], id: u32) -> Option<u32> {
    maps.iter().find_map(|m| {
        (id >= m.container && u64::from(id) < u64::from(m.container) + u64::from(m.len))
            .then(|| m.host + (id - m.container))
    })
}

/// `/proc/PID/uid_map` text.
pub fn map_file(maps: &[IdMap]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container, m.host, m.len))
        .collect()
}

/// Exactly three numbers, `container host length`, as one mapping.
fn id_map<'a>(mut fields: impl Iterator<Item = &'a str>) -> Option<IdMap> {
    let mut n = || fields.next()?.parse::<u32>().ok();
    let (container, host, len) = (n()?, n()?, n()?);
    fields.next().is_none().then_some(IdMap {
        container,
        host,
        len,
    })
}

/// `/proc/PID/uid_map` text read back (`container host length` per line, as the kernel
/// pads it); None when a line is not that.
pub fn parse_map_file(text: &str) -> Option<Vec<IdMap>> {
    text.lines()
        .map(|line| id_map(line.split_whitespace()))
        .take(MAX_MAP_LINES + 1)
        .collect::<Option<Vec<_>>>()
        .filter(|m| m.len() <= MAX_MAP_LINES)
}

/// The id a helper that lives in the namespace drops to: the overflow id ("nobody") when the
/// map covers it, else the highest id it covers but 0; 0 when root is all it maps (the helper
/// then still gives up every capability, and root there is no one on the host).
pub fn unprivileged_id(maps: &[IdMap]) -> u32 {
    if to_host(maps, OVERFLOW_ID).is_some() {
        return OVERFLOW_ID;
    }
    maps.iter()
        .filter(|m| m.len > 0)
        .map(|m| u64::from(m.container) + u64::from(m.len) - 1)
        .max()
        .and_then(|last| u32::try_from(last).ok())
        .unwrap_or(0)
}

/// The OCI spec's `uidMappings`/`gidMappings`.
pub fn oci(maps: &[IdMap]) -> serde_json::Value {
    serde_json::Value::Array(
        maps.iter()
            .map(|m| serde_json::json!({"containerID": m.container, "hostID": m.host, "size": m.len}))
            .collect(),
    )
}

/// Command-line form (`c:h:l,c:h:l`) for the namespace helper.
pub fn to_arg(maps: &[IdMap]) -> String {
    maps.iter()
        .map(IdMap::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

pub fn parse_arg(s: &str) -> Option<Vec<IdMap>> {
    s.split(',').map(|part| id_map(part.split(':'))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host: u32, container: u32, len: u32) -> cri::IdMapping {
        cri::IdMapping {
            host_id: host,
            container_id: container,
            length: len,
        }
    }

    fn opts(mode: cri::NamespaceMode, uids: Vec<cri::IdMapping>) -> cri::UserNamespace {
        cri::UserNamespace {
            mode: mode as i32,
            gids: uids.clone(),
            uids,
        }
    }

    #[test]
    fn kubelets_mappings_are_taken() {
        let o = opts(cri::NamespaceMode::Pod, vec![m(65536 * 3, 0, 65536)]);
        let u = from_cri(Some(&o)).unwrap().unwrap();
        assert_eq!(
            u.uids,
            [IdMap {
                container: 0,
                host: 196608,
                len: 65536
            }]
        );
        assert_eq!(map_file(&u.uids), "0 196608 65536\n");
        assert_eq!(to_host(&u.uids, 0), Some(196608));
        assert_eq!(to_host(&u.uids, 65535), Some(262143));
        assert_eq!(to_host(&u.uids, 65536), None);
        assert_eq!(parse_arg(&to_arg(&u.uids)).unwrap(), u.uids);
        assert_eq!(
            oci(&u.gids),
            serde_json::json!([{"containerID": 0, "hostID": 196608, "size": 65536}])
        );
        // NODE and no options: the host's namespace.
        assert_eq!(
            from_cri(Some(&opts(cri::NamespaceMode::Node, vec![]))),
            Ok(None)
        );
        assert_eq!(from_cri(None), Ok(None));
    }

    #[test]
    fn helpers_drop_to_nobody_or_the_highest_mapped_id() {
        // The host's own map, as /proc/1/uid_map shows it.
        let host = parse_map_file("         0          0 4294967295\n").unwrap();
        assert_eq!(unprivileged_id(&host), OVERFLOW_ID);
        let kubelet = parse_map_file("0 3080192 65536\n").unwrap();
        assert_eq!(unprivileged_id(&kubelet), 65534);
        let small = parse_map_file("0 100000 1000\n2000 200000 10\n").unwrap();
        assert_eq!(unprivileged_id(&small), 2009);
        let root_only = parse_map_file("0 100000 1\n").unwrap();
        assert_eq!(unprivileged_id(&root_only), 0);
        assert_eq!(unprivileged_id(&[]), 0);
        let too_many: String = (0..=MAX_MAP_LINES)
            .map(|i| format!("{i} {} 1\n", 100000 + i))
            .collect();
        assert_eq!(parse_map_file(&too_many), None);
    }

    #[test]
    fn hostile_mappings_are_refused() {
        let pod = |uids| from_cri(Some(&opts(cri::NamespaceMode::Pod, uids)));
        assert_eq!(pod(vec![]), Err(UsernsError::Empty("uids")));
        assert!(matches!(
            pod(vec![m(0, 0, 65536)]),
            Err(UsernsError::Bad { reason, .. }) if reason.contains("root")
        ));
        assert!(matches!(
            pod(vec![m(65536, 0, 0)]),
            Err(UsernsError::Bad { .. })
        ));
        assert!(matches!(
            pod(vec![m(u32::MAX - 10, 0, 65536)]),
            Err(UsernsError::Bad { .. })
        ));
        assert!(matches!(
            pod(vec![m(65536, 0, 1000), m(70000, 500, 10)]),
            Err(UsernsError::Bad { reason, .. }) if reason.contains("container")
        ));
        assert!(matches!(
            pod(vec![m(65536, 0, 1000), m(66000, 5000, 10)]),
            Err(UsernsError::Bad { reason, .. }) if reason.contains("host")
        ));
        assert!(pod(vec![m(65536, 0, 1000), m(70000, 1000, 10)]).is_ok());
        assert_eq!(
            pod((0..341).map(|i| m(65536 + i * 10, i * 10, 10)).collect()),
            Err(UsernsError::TooMany("uids"))
        );
        for mode in [cri::NamespaceMode::Container, cri::NamespaceMode::Target] {
            assert!(matches!(
                from_cri(Some(&opts(mode, vec![m(65536, 0, 10)]))),
                Err(UsernsError::Mode(_))
            ));
        }
        assert_eq!(parse_map_file("0 0 4294967295\n1 2\n"), None);
        assert_eq!(parse_map_file("0 x 1\n"), None);
        assert_eq!(parse_arg("1:2"), None);
        assert_eq!(parse_arg("1:2:3:4"), None);
        assert_eq!(parse_arg("a:2:3"), None);
    }
}
