//! The composition root of `kelsond serve` (a module of the binary, not of the library): builds
//! the services in start-up order, recovers their state, hands each server only the handles it
//! uses, and serves until a signal. Nothing in the library can reach back into it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use kelson::cgroups::Hierarchy;
use kelson::config::{CgroupDriver, Config};
use kelson::container::ContainerService;
use kelson::cri::{Runtime, Shared};
use kelson::dirs::Dirs;
use kelson::image::ImageService;
use kelson::network::{Network, NetworkConfig};
use kelson::pod::PodService;
use kelson::store::Store;
use kelson::streaming::{Backend, Handle, Streaming};
use kelson::telemetry::{Sources, Telemetry};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Milliseconds since `began`.
fn ms_since(began: Instant) -> f64 {
    began.elapsed().as_secs_f64() * 1e3
}

/// Serve CRI with `cfg` until SIGTERM or SIGINT. Call on a tokio runtime, logging set up.
pub async fn start(cfg: Config) -> anyhow::Result<()> {
    let began = Instant::now();
    let (cgroups, systemd) = cgroups_for(&cfg)?;
    let dirs = Dirs::new(&cfg.root, &cfg.state);
    dirs.create().with_context(|| {
        format!(
            "creating {} and {}",
            cfg.root.display(),
            cfg.state.display()
        )
    })?;
    let store = Arc::new(Store::open(&dirs.database())?);
    let images = recover_images(&dirs, &store, &cfg).await?;
    let images_ms = ms_since(began);
    let listener = kelson::cri_socket::bind(&cfg.grpc.address, cfg.grpc.gid)?;
    tracing::info!(
        address = %cfg.grpc.address.display(),
        root = %cfg.root.display(),
        state = %cfg.state.display(),
        version = env!("CARGO_PKG_VERSION"),
        "kelsond serving CRI"
    );
    let pods = recover_pods(&cfg, &store, cgroups, systemd).await?;
    let shim = kelson::shim_client::locate(&cfg.shim_path);
    let containers = Arc::new(ContainerService::new(
        store.clone(),
        images.clone(),
        pods.clone(),
        dirs.clone(),
        shim,
        cfg.clone(),
    ));
    let endpoint = bind_streaming(&cfg).await?;
    let streaming = Arc::new(Streaming::new(
        endpoint.base.clone(),
        cfg.streaming.token_ttl,
    ));
    let telemetry = Arc::new(Telemetry::default());
    let shared: Shared = Arc::new(Runtime {
        config: cfg.clone(),
        images: images.clone(),
        pods: pods.clone(),
        containers: containers.clone(),
        events: Default::default(),
        telemetry: telemetry.clone(),
        streaming: streaming.clone(),
    });
    let backend = Arc::new(Backend {
        urls: streaming,
        containers: containers.clone(),
        pods: pods.clone(),
    });
    endpoint.serve(backend, cfg.streaming.max_sessions);
    let pods_ms = ms_since(began) - images_ms;
    kelson::cri::events::rearm(&shared).await;
    let containers_ms = ms_since(began) - images_ms - pods_ms;
    tracing::info!(images_ms, pods_ms, containers_ms, "state recovered");
    if cfg.image.gc.enabled {
        tokio::spawn(image_gc(images.clone(), cfg.image.gc.interval));
    }
    if !cfg.metrics.address.is_empty() {
        let sources = Sources {
            images,
            pods,
            containers,
        };
        serve_metrics(&cfg.metrics.address, telemetry, sources).await?;
    }
    // The socket is bound and state recovered: calls are answered from here on.
    kelson::notify::ready();
    kelson::cri_socket::serve(shared, listener, shutdown_signal()).await?;
    let _ = std::fs::remove_file(&cfg.grpc.address);
    tracing::info!("kelsond stopped");
    Ok(())
}

/// The cgroup hierarchy, and whether the systemd driver is configured. Runs before anything is
/// made: a node set up for a cgroup driver it cannot honour stops here.
fn cgroups_for(cfg: &Config) -> anyhow::Result<(Hierarchy, bool)> {
    let cgroups = kelson::cgroups::detect()?;
    let systemd = cfg.cgroup_driver == CgroupDriver::Systemd;
    if systemd {
        let booted = Path::new("/run/systemd/system").is_dir();
        kelson::cgroups::systemd::systemd_driver_usable(&cgroups, booted)
            .map_err(anyhow::Error::msg)?;
    }
    Ok((cgroups, systemd))
}

async fn recover_images(
    dirs: &Dirs,
    store: &Arc<Store>,
    cfg: &Config,
) -> anyhow::Result<Arc<ImageService>> {
    let images = Arc::new(ImageService::new(dirs.clone(), store.clone(), cfg.clone()));
    {
        let images = images.clone();
        tokio::task::spawn_blocking(move || images.recover()).await??;
    }
    Ok(images)
}

async fn recover_pods(
    cfg: &Config,
    store: &Arc<Store>,
    cgroups: Hierarchy,
    systemd: bool,
) -> anyhow::Result<Arc<PodService>> {
    let network = Arc::new(Network::new(NetworkConfig {
        conf_dir: cfg.network.conf_dir.clone(),
        bin_dirs: cfg.network.bin_dirs.clone(),
        timeout: cfg.network.plugin_timeout,
    }));
    let handlers = cfg.runtimes.keys().cloned().collect();
    let pods = Arc::new(PodService::new(
        store.clone(),
        cfg.state.clone(),
        cgroups,
        network,
        handlers,
        systemd,
    ));
    {
        let pods = pods.clone();
        tokio::task::spawn_blocking(move || pods.recover()).await??;
    }
    Ok(pods)
}

/// The streaming server's socket and TLS, and the base of the URLs it hands out.
struct StreamingEndpoint {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    base: String,
}

async fn bind_streaming(cfg: &Config) -> anyhow::Result<StreamingEndpoint> {
    let listener = kelson::streaming::listener::bind(&cfg.streaming.address)
        .await
        .with_context(|| format!("streaming server on {}", cfg.streaming.address))?;
    let addr = listener.local_addr()?;
    let tls = if cfg.streaming.tls_cert_file.as_os_str().is_empty() {
        None
    } else {
        let (cert, key) = (&cfg.streaming.tls_cert_file, &cfg.streaming.tls_key_file);
        let tls = kelson::streaming::listener::tls_acceptor(cert, key)
            .map_err(|e| anyhow::anyhow!("streaming TLS: {e}"))?;
        Some(tls)
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    Ok(StreamingEndpoint {
        listener,
        addr,
        tls,
        base: format!("{scheme}://{addr}"),
    })
}

impl StreamingEndpoint {
    fn serve(self, backend: Handle, max_sessions: usize) {
        tracing::info!(address = %self.addr, "streaming server listening");
        tokio::spawn(kelson::streaming::listener::serve(
            backend,
            self.listener,
            max_sessions,
            self.tls,
        ));
    }
}

/// kelsond's own `/metrics` endpoint on `address`, for the daemon's life.
async fn serve_metrics(
    address: &str,
    telemetry: Arc<Telemetry>,
    sources: Sources,
) -> anyhow::Result<()> {
    let listener = kelson::telemetry::http::bind(address)
        .await
        .with_context(|| format!("metrics endpoint on {address}"))?;
    tracing::info!(address = %address, "serving metrics on /metrics");
    tokio::spawn(kelson::telemetry::http::serve(
        telemetry,
        Arc::new(sources),
        listener,
    ));
    Ok(())
}

/// Enforce the image GC policy every `every`, for the daemon's life.
async fn image_gc(images: Arc<ImageService>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let images = images.clone();
        match tokio::task::spawn_blocking(move || images.enforce_policy()).await {
            Ok(Err(e)) => tracing::warn!(error = %e, "image GC policy"),
            Err(e) => tracing::warn!(error = %e, "image GC policy task"),
            Ok(Ok(_)) => {}
        }
    }
}

/// Resolves at SIGTERM or SIGINT (never, if the handlers cannot be installed).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("signal received, shutting down");
}
