// Shared by the integration tests: start a registry, push the standard images, start kelsond.
#![allow(dead_code)]

use kelson_testkit::{Daemon, Pusher, Registry, RegistryOptions, TestImages};

pub const KELSOND: &str = env!("CARGO_BIN_EXE_kelsond");

pub struct Env {
    pub registry: Registry,
    pub daemon: Daemon,
}

pub async fn env_with(opts: RegistryOptions, extra_config: &str) -> anyhow::Result<Env> {
    let registry = Registry::start(opts)?;
    let daemon = Daemon::start(std::path::Path::new(KELSOND), extra_config)?;
    daemon.hosts(&registry.host, &registry.hosts_toml())?;
    Ok(Env { registry, daemon })
}

pub async fn env() -> anyhow::Result<Env> {
    let e = env_with(RegistryOptions::default(), "").await?;
    let p = Pusher::new(&e.registry)?;
    p.image(
        "test/standard",
        "v1",
        &TestImages::standard("amd64", false)?,
    )
    .await?;
    Ok(e)
}

pub fn spec(image: &str) -> Option<k8s_cri::v1::ImageSpec> {
    Some(k8s_cri::v1::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

pub async fn pull(d: &Daemon, image: &str) -> Result<String, tonic::Status> {
    let mut c = d
        .cri()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    Ok(c.image
        .pull_image(k8s_cri::v1::PullImageRequest {
            image: spec(image),
            auth: None,
            sandbox_config: None,
        })
        .await?
        .into_inner()
        .image_ref)
}

/// Directory entries under `dir` (0 when missing).
pub fn count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}
