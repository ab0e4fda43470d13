//! Test harness shared by kelson's integration tests and benchmarks: a real registry (Debian's
//! `docker-registry`) on a free loopback port, with TLS and basic auth when asked; test images
//! built here from the host's busybox; and a `kelsond` under test with its own dirs and socket.

pub mod cgroups;
pub mod cri;
pub mod daemon;
pub mod fake_registry;
pub mod images;
pub mod measure;
pub mod netns;
pub mod registry;

pub use daemon::{Daemon, DaemonOptions};
pub use images::{Compression, Image, Layer, Pusher, TarBuilder, TestImages, sha256};
pub use netns::NetNs;
pub use registry::{Registry, RegistryOptions};

/// The namespace options kubelet sends for a pod with `hostUsers: false`: a user namespace
/// mapping 65536 ids from `host` (kubelet picks a multiple of 65536), PID per container.
pub fn pod_userns(host: u32) -> k8s_cri::v1::NamespaceOption {
    use k8s_cri::v1 as cri;
    let map = vec![cri::IdMapping {
        host_id: host,
        container_id: 0,
        length: 65536,
    }];
    cri::NamespaceOption {
        pid: cri::NamespaceMode::Container as i32,
        userns_options: Some(cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids: map.clone(),
            gids: map,
        }),
        ..Default::default()
    }
}
