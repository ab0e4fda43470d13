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

#[allow(unused_imports)] // not every test file uses it
pub use kelson_conformance::suite::spec;

pub async fn pull(d: &Daemon, image: &str) -> Result<String, tonic::Status> {
    let c = d
        .cri()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    kelson_conformance::suite::pull(&c, image).await
}

/// Directory entries under `dir` (0 when missing).
pub fn count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

/// Remove a test's cgroup tree (shared with the benchmarks).
pub fn remove_cgroup_tree(top: &str) {
    kelson_testkit::cgroups::remove_tree(top);
}
