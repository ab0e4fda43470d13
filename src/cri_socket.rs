//! Serving CRI on the unix socket: created atomically (bound under a temp name, chmod 0660,
//! renamed over any stale socket), one tracing span per call, graceful stop on a signal.

mod authority;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;

use crate::cri::Shared;
use crate::cri::image::ImageApi;
use crate::cri::runtime::RuntimeApi;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("socket {path}: {op}: {source}")]
    Socket {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("grpc server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Bind `path` so that clients never see a half-made socket: bind a temp name beside it, set
/// owner and mode, then rename over the final name (replacing a stale socket from a crash).
pub fn bind(path: &Path, gid: Option<u32>) -> Result<UnixListener, ServerError> {
    let err = |op, source| ServerError::Socket {
        path: path.to_owned(),
        op,
        source,
    };
    let parent = path.parent().unwrap_or(Path::new("/"));
    // Crossable by the socket's group (kubelet, crictl users), never listable; kelsond's
    // umask would make it root's alone.
    crate::owner_only::create_dir_all_mode(parent, crate::owner_only::TRAVERSE)
        .map_err(|e| err("create parent dir", e))?;
    let tmp = parent.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("sock"),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|e| err("bind", e))?;
    let setup = || -> std::io::Result<()> {
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = setup() {
        let _ = std::fs::remove_file(&tmp);
        return Err(err("install", e));
    }
    Ok(listener)
}

/// How long calls in flight may run on after a stop signal.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn serve(
    shared: Shared,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let max = shared.config.grpc.max_message_bytes;
    // At the signal: end the event streams (they never end by themselves), then let calls in
    // flight finish, but not for longer than DRAIN — a stalled client cannot hold a restart.
    let (signalled, mut on_signal) = tokio::sync::watch::channel(false);
    let events = shared.clone();
    let stopping = async move {
        shutdown.await;
        events.events.close();
        let _ = signalled.send(true);
    };
    // Answers may be larger than requests: an ExecSync answer carries both streams at their cap.
    let max_out = max.max(crate::cri::container::MAX_EXEC_SYNC_RESPONSE);
    let runtime = RuntimeServiceServer::new(RuntimeApi(shared.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max_out);
    let image = ImageServiceServer::new(ImageApi(shared.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max_out);
    let grpc = &shared.config.grpc;
    let serving = tonic::transport::Server::builder()
        // Per connection: a flood of calls on one connection waits its turn there (its
        // requests unread beyond the HTTP/2 window) and leaves the others their share.
        .concurrency_limit_per_connection(grpc.max_concurrent_calls_per_connection)
        .max_concurrent_streams(grpc.max_concurrent_streams)
        .trace_fn(|req| {
            let method = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
            tracing::info_span!(
                "cri",
                method = %method,
                image = tracing::field::Empty,
                pod = tracing::field::Empty,
                container = tracing::field::Empty
            )
        })
        .layer(crate::telemetry::layer::RpcMetricsLayer(
            shared.telemetry.clone(),
        ))
        .add_service(runtime)
        .add_service(image)
        // Every connection through the authority rewrite: C-core clients (grpcio, …) send an
        // :authority h2 refuses (see authority.rs).
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener).map(|c| c.map(authority::AnyAuthority::new)),
            stopping,
        );
    let drain_limit = async {
        let _ = on_signal.wait_for(|s| *s).await;
        tokio::time::sleep(DRAIN).await;
    };
    tokio::select! {
        served = serving => served?,
        _ = drain_limit => tracing::warn!(
            seconds = DRAIN.as_secs(),
            "calls still in flight after the drain period; stopping anyway"
        ),
    }
    Ok(())
}
