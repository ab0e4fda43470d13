//! The gRPC edge: CRI v1 RuntimeService and ImageService on tonic. Validates requests, calls the
//! domain services, converts results; the only place errors become `tonic::Status`.

pub mod container;
pub mod events;
pub mod image;
pub mod pod;
pub mod request;
pub mod runtime;
pub mod stats;
pub mod status;

use std::sync::Arc;

use crate::config::Config;
use crate::container::ContainerService;
use crate::image::ImageService;
use crate::pod::PodService;

/// Name and versions reported by `Version`.
pub const RUNTIME_NAME: &str = "kelson";
pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");
/// CRI API version (the `k8s-cri` bindings follow Kubernetes 1.31's API file).
pub const CRI_API_VERSION: &str = "v1";
/// kubelet sends "0.1.0" as the version it speaks.
pub const KUBE_API_VERSION: &str = "0.1.0";

/// Everything a CRI handler needs, handed over at start-up by kelsond's composition root
/// (`daemon.rs`, in the binary); streaming and telemetry get narrower handles of their own.
pub struct Runtime {
    pub config: Config,
    pub images: Arc<ImageService>,
    pub pods: Arc<PodService>,
    pub containers: Arc<ContainerService>,
    pub events: events::EventBus,
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    pub streaming: Arc<crate::streaming::Streaming>,
}

pub type Shared = Arc<Runtime>;

/// A list filter's label selector: every key it names, with the same value.
pub(crate) fn selected(
    selector: &std::collections::HashMap<String, String>,
    labels: &std::collections::HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
