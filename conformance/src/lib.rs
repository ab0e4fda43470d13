//! Runtime-agnostic CRI conformance suite: connects to any CRI endpoint over its unix socket, as
//! kubelet and crictl do, and checks the behaviour kubelet relies on. No kelson dependency: it
//! must pass against containerd and CRI-O too.

pub mod contract;
pub mod stream;
pub mod suite;

use std::path::{Path, PathBuf};

use anyhow::Context;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// Clients for both CRI services over one connection.
#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub image: ImageServiceClient<Channel>,
}

/// Connect to a CRI socket (`/run/kelson/kelson.sock` or `unix:///…`).
pub async fn connect(path: &Path) -> anyhow::Result<Cri> {
    let p: PathBuf = path
        .to_str()
        .and_then(|s| s.strip_prefix("unix://"))
        .map(PathBuf::from)
        .unwrap_or_else(|| path.to_owned());
    // The URI is ignored by the connector; tonic needs a syntactically valid one.
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = p.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
        .with_context(|| format!("connecting to CRI socket {}", path.display()))?;
    let max = 16 * 1024 * 1024;
    Ok(Cri {
        runtime: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(max),
        image: ImageServiceClient::new(channel).max_decoding_message_size(max),
    })
}
