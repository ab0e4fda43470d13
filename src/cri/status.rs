//! The one mapping from domain errors to gRPC status codes kubelet understands.

use tonic::{Code, Status};

use crate::image::ImageError;
use crate::image::manifest::ManifestError;
use crate::image::registry::RegistryError;

pub fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

pub fn unimplemented(method: &str) -> Status {
    Status::unimplemented(format!(
        "{method} is not implemented by kelson {} yet",
        env!("CARGO_PKG_VERSION")
    ))
}

impl From<ImageError> for Status {
    fn from(e: ImageError) -> Status {
        if e.is_no_space() {
            let code = Code::ResourceExhausted;
            log_error(code, &e);
            return Status::new(code, format!("image filesystem is full: {e}"));
        }
        let code = match &e {
            ImageError::Reference(_) | ImageError::Auth(_) | ImageError::Ambiguous(_) => {
                Code::InvalidArgument
            }
            ImageError::Hosts(_) => Code::FailedPrecondition,
            ImageError::Registry { source, .. } => match source {
                RegistryError::NotFound { .. } => Code::NotFound,
                RegistryError::Unauthorized { .. } => Code::Unauthenticated,
                RegistryError::Unavailable { .. } | RegistryError::NoEndpoint(..) => {
                    Code::Unavailable
                }
                RegistryError::Stalled { .. } => Code::DeadlineExceeded,
                RegistryError::DigestMismatch { .. } => Code::DataLoss,
                RegistryError::TooLarge { .. } | RegistryError::Protocol { .. } => {
                    Code::FailedPrecondition
                }
            },
            ImageError::Manifest { source, .. } => match source {
                ManifestError::UnsupportedMediaType(_) | ManifestError::Schema1 => {
                    Code::InvalidArgument
                }
                ManifestError::NoMatchingPlatform(_) => Code::NotFound,
                _ => Code::FailedPrecondition,
            },
            ImageError::Unpack { .. } | ImageError::LayerTooLarge { .. } => {
                Code::FailedPrecondition
            }
            ImageError::DigestMismatch { .. } => Code::DataLoss,
            ImageError::Content(_) | ImageError::Snapshot(_) | ImageError::Store(_) => {
                Code::Internal
            }
            ImageError::Task(_) => Code::Internal,
        };
        log_error(code, &e);
        Status::new(code, e.to_string())
    }
}

/// The one place a failed call is logged, inside the call's span (method, ids).
pub fn log_error(code: Code, e: &dyn std::fmt::Display) {
    if code == Code::Internal {
        tracing::error!(code = ?code, "{e}");
    } else {
        tracing::warn!(code = ?code, "{e}");
    }
}
