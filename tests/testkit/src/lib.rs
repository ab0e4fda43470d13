//! Test harness shared by kelson's integration tests and benchmarks: a real registry (Debian's
//! `docker-registry`) on a free loopback port, with TLS and basic auth when asked; test images
//! built here from the host's busybox; and a `kelsond` under test with its own dirs and socket.

pub mod cgroups;
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
