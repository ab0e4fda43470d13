//! Everything kelsond does with cgroups, v1 and v2: which hierarchies it manages and where a
//! cgroup is in them (`hierarchy`), making and removing cgroupfs pod directories (`dirs`),
//! reading samples and pids (`read`), writing UpdateContainerResources limits (`write`), and
//! the systemd driver's checks and slice naming (`systemd`, over the `kelson_cgroups` crate the
//! shim shares). Other modules call in here and touch no cgroup file themselves.

pub mod dirs;
pub mod hierarchy;
pub mod read;
pub mod systemd;
pub mod write;

use std::path::PathBuf;

pub use hierarchy::{Hierarchy, detect, validate};
pub use read::Sample;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup path {path:?}: {reason}")]
    Invalid { path: String, reason: &'static str },
    #[error("no cgroup hierarchy is mounted")]
    NoHierarchy,
    #[error("cgroup {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("unified key {0:?} is not a cgroup v2 interface file name")]
    BadUnifiedKey(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}
