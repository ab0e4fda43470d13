//! The one mapping from errors to the gRPC status codes kubelet understands: every domain
//! error, every request refusal and the edge's own failures, each by an exhaustive match.
//! The one place a failed call is logged, too.

use tonic::{Code, Status};

use super::request::RequestError;
use crate::cgroups::CgroupError;
use crate::container::ContainerError;
use crate::container::idmap::IdmapError;
use crate::container::propagation::PropagationError;
use crate::container::rootfs::RootfsError;
use crate::container::spec::SpecError;
use crate::image::ImageError;
use crate::image::manifest::ManifestError;
use crate::image::registry::RegistryError;
use crate::network::NetworkError;
use crate::pod::PodError;
use crate::security::SecurityError;
use crate::shim_client::{RemoteKind, ShimError};
use crate::streaming::StreamingError;

/// Failures of the gRPC edge itself rather than of a domain service.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// A blocking task a handler ran that panicked or was cancelled.
    #[error("{what} task: {source}")]
    Task {
        what: &'static str,
        source: tokio::task::JoinError,
    },
    #[error("command timed out after {0}s")]
    ExecTimedOut(i64),
    #[error("PortForward: pod sandbox {0} is not ready")]
    PortForwardNotReady(String),
    /// The bundle lives in the state dir (tmpfs): gone after a reboot until recovery.
    #[error("container {id}: runtime spec {}: {source}", path.display())]
    RuntimeSpecUnreadable {
        id: String,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("container {id}: runtime spec {}: over {max} bytes", path.display())]
    RuntimeSpecTooLarge {
        id: String,
        path: std::path::PathBuf,
        max: u64,
    },
    #[error("container {id}: runtime spec {}: {source}", path.display())]
    RuntimeSpecMalformed {
        id: String,
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "container event subscriber fell {0} events behind; list containers and subscribe again"
    )]
    EventsLagged(u64),
}

impl EdgeError {
    pub fn task(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> EdgeError {
        move |source| EdgeError::Task { what, source }
    }
}

pub fn unimplemented(method: &str) -> Status {
    Status::unimplemented(format!(
        "{method} is not implemented by kelson {} yet",
        env!("CARGO_PKG_VERSION")
    ))
}

/// The status for `e` with `code`, logged inside the call's span (method, ids).
fn status(code: Code, e: &dyn std::fmt::Display) -> Status {
    log_error(code, e);
    Status::new(code, e.to_string())
}

/// The one place a failed call is logged, inside the call's span (method, ids).
pub fn log_error(code: Code, e: &dyn std::fmt::Display) {
    if code == Code::Internal {
        tracing::error!(code = ?code, "{e}");
    } else {
        tracing::warn!(code = ?code, "{e}");
    }
}

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Status {
        use RequestError as R;
        let code = match &e {
            R::NoConfig { .. }
            | R::NoMetadata { .. }
            | R::NoImage
            | R::NoImageSpec { .. }
            | R::ContainerName(_)
            | R::PodMetadata { .. }
            | R::KeyValues(_)
            | R::LogPath(_)
            | R::EmptyCommand(_)
            | R::NoStream(_)
            | R::TtyWithStderr
            | R::NoResources
            | R::Port(_)
            | R::PodCidr(_) => Code::InvalidArgument,
        };
        status(code, &e)
    }
}

impl From<EdgeError> for Status {
    fn from(e: EdgeError) -> Status {
        let code = match &e {
            EdgeError::Task { .. }
            | EdgeError::RuntimeSpecTooLarge { .. }
            | EdgeError::RuntimeSpecMalformed { .. } => Code::Internal,
            EdgeError::ExecTimedOut(_) => Code::DeadlineExceeded,
            EdgeError::PortForwardNotReady(_) | EdgeError::RuntimeSpecUnreadable { .. } => {
                Code::FailedPrecondition
            }
            EdgeError::EventsLagged(_) => Code::ResourceExhausted,
        };
        status(code, &e)
    }
}

impl From<StreamingError> for Status {
    fn from(e: StreamingError) -> Status {
        let code = match &e {
            StreamingError::Busy => Code::ResourceExhausted,
            StreamingError::Random(_) => Code::Internal,
        };
        status(code, &e)
    }
}

/// Every security refusal is about what the request asked for (a Localhost seccomp profile
/// that cannot be read included: kubelet named it).
fn security_code(e: &SecurityError) -> Code {
    use SecurityError as S;
    match e {
        S::UnknownCapability { .. }
        | S::CapabilityUnavailable { .. }
        | S::UncleanPath { .. }
        | S::SysctlName { .. }
        | S::SysctlValue { .. }
        | S::SysctlNotNamespaced { .. }
        | S::SysctlHostNamespace { .. }
        | S::AppArmorProfileType(_)
        | S::AppArmorProfile(_)
        | S::AppArmorUnsupported
        | S::AppArmorLocalhostName
        | S::SelinuxLabels
        | S::SeccompLocalhostRef
        | S::SeccompProfileType(_)
        | S::SeccompProfilePath(_)
        | S::SeccompLocalhost { .. } => Code::InvalidArgument,
    }
}

fn manifest_code(e: &ManifestError) -> Code {
    use ManifestError as M;
    match e {
        M::UnsupportedMediaType(_) | M::Schema1 => Code::InvalidArgument,
        M::NoMatchingPlatform(_) => Code::NotFound,
        M::Malformed { .. }
        | M::TooLarge { .. }
        | M::Digest { .. }
        | M::TooManyLayers(_)
        | M::LayerCountMismatch { .. } => Code::FailedPrecondition,
    }
}

fn registry_code(e: &RegistryError) -> Code {
    use RegistryError as R;
    match e {
        R::NotFound { .. } => Code::NotFound,
        R::Unauthorized { .. } => Code::Unauthenticated,
        R::Unavailable { .. } | R::NoEndpoint(..) => Code::Unavailable,
        R::Stalled { .. } | R::PullDeadline { .. } => Code::DeadlineExceeded,
        R::DigestMismatch { .. } => Code::DataLoss,
        R::TooLarge { .. } | R::Protocol { .. } | R::Tls { .. } => Code::FailedPrecondition,
    }
}

fn image_code(e: &ImageError) -> Code {
    use ImageError as I;
    if e.is_no_space() {
        return Code::ResourceExhausted;
    }
    match e {
        I::Reference(_) | I::Auth(_) | I::Ambiguous(_) => Code::InvalidArgument,
        I::Hosts(_) => Code::FailedPrecondition,
        I::Registry { source, .. } => registry_code(source),
        I::Manifest { source, .. } => manifest_code(source),
        I::Unpack { .. } | I::LayerTooLarge { .. } => Code::FailedPrecondition,
        I::DigestMismatch { .. } => Code::DataLoss,
        I::Content(_) | I::Snapshot(_) | I::Store(_) | I::Task(_) => Code::Internal,
    }
}

impl From<ImageError> for Status {
    fn from(e: ImageError) -> Status {
        let code = image_code(&e);
        if e.is_no_space() {
            return status(code, &format!("image filesystem is full: {e}"));
        }
        status(code, &e)
    }
}

fn network_code(e: &NetworkError) -> Code {
    match e {
        NetworkError::Conf(_) | NetworkError::PluginMissing { .. } => Code::FailedPrecondition,
        NetworkError::Plugin { .. } | NetworkError::Timeout { .. } => Code::Unavailable,
    }
}

fn pod_code(e: &PodError) -> Code {
    use PodError as P;
    match e {
        P::Id(_)
        | P::Files(_)
        | P::UnknownHandler(_)
        | P::Userns(_)
        | P::Ambiguous(_)
        | P::HostNetworkHostname { .. }
        | P::UsernsWithHostNamespace
        | P::UsernsPrivileged
        | P::NotASlice(_)
        | P::Cgroup(CgroupError::Invalid { .. }) => Code::InvalidArgument,
        P::UsernsUnsupported => Code::FailedPrecondition,
        P::Security(s) => security_code(s),
        P::NotFound(_) => Code::NotFound,
        P::Network(n) => network_code(n),
        P::NameTaken { .. } => Code::AlreadyExists,
        P::Cgroup(_) | P::Namespace(_) | P::Io { .. } | P::Store(_) => Code::Internal,
    }
}

impl From<PodError> for Status {
    fn from(e: PodError) -> Status {
        status(pod_code(&e), &e)
    }
}

fn shim_code(e: &ShimError) -> Code {
    match e {
        ShimError::Create(_) => Code::FailedPrecondition,
        ShimError::Remote { kind, .. } => match kind {
            RemoteKind::WrongState | RemoteKind::StartFailed | RemoteKind::Refused => {
                Code::FailedPrecondition
            }
            RemoteKind::BadRequest => Code::InvalidArgument,
            RemoteKind::Internal | RemoteKind::Unspecified => Code::Internal,
        },
        ShimError::Spawn { .. } | ShimError::Gone { .. } | ShimError::Call { .. } => Code::Internal,
    }
}

fn container_code(e: &ContainerError) -> Code {
    use ContainerError as E;
    match e {
        E::Security(s) | E::Spec(SpecError::Security(s)) => security_code(s),
        E::Pod(p) => pod_code(p),
        E::Image(i) => image_code(i),
        E::Shim(s) => shim_code(s),
        E::Id(_)
        | E::Ambiguous(_)
        | E::Spec(_)
        | E::User(_)
        | E::Volumes(_)
        | E::Userns(_)
        | E::UsernsNotInPod
        | E::UsernsDiffers
        | E::Unmapped { .. }
        | E::LogDirectory(_)
        | E::InitMissing(_)
        | E::Device { .. }
        | E::NotADevice(_)
        | E::HandlerGone(_)
        | E::Resources(CgroupError::BadUnifiedKey(_)) => Code::InvalidArgument,
        E::NotFound(_) | E::PodNotFound(_) | E::ImageNotFound(_) => Code::NotFound,
        E::NameTaken { .. } => Code::AlreadyExists,
        E::PodNotReady(_) | E::WrongState { .. } | E::StartFailed { .. } => {
            Code::FailedPrecondition
        }
        E::HandlerNotInstalled { .. } | E::AppArmorLoad { .. } | E::AppArmorParser { .. } => {
            Code::Unavailable
        }
        E::Rootfs(RootfsError::TooManyLayers(_)) => Code::FailedPrecondition,
        // A volume (or the image store) on a filesystem without idmapped mounts.
        E::Idmap(IdmapError::NotSupported { .. })
        | E::Rootfs(RootfsError::Idmap(IdmapError::NotSupported { .. })) => {
            Code::FailedPrecondition
        }
        E::Propagation(PropagationError::Read(_)) => Code::Internal,
        E::Propagation(_) => Code::FailedPrecondition,
        E::Rootfs(_)
        | E::Idmap(_)
        | E::Io { .. }
        | E::Store(_)
        | E::Resources(_)
        | E::LayerDigest(_)
        | E::Task(_)
        | E::Random(_)
        | E::EngineSpawn(_)
        | E::Terminal { .. }
        | E::TerminalEngineExited(_)
        | E::NoTerminal
        | E::Unkillable(_) => Code::Internal,
    }
}

impl From<ContainerError> for Status {
    fn from(e: ContainerError) -> Status {
        status(container_code(&e), &e)
    }
}
