//! Benchmark (not a test): pull + unpack of a ~150 MB, 4-layer image from a local
//! `docker-registry`, through kelsond's CRI socket. Prints median/min/max over runs, and
//! kelsond's resident memory afterwards. `cargo bench --bench pull [-- RUNS]`.

use std::path::Path;
use std::time::Instant;

use k8s_cri::v1 as cri;
use kelson_testkit::measure::rss_kib;
use kelson_testkit::{Daemon, Pusher, Registry, RegistryOptions, TestImages};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let registry = Registry::start(RegistryOptions::default())?;
    let img = TestImages::big()?;
    let compressed: usize = img.layers.iter().map(|l| l.blob.len()).sum();
    let uncompressed: usize = img.layers.iter().map(|l| l.tar.len()).sum();
    Pusher::new(&registry)?
        .image("bench/big", "v1", &img)
        .await?;
    let daemon = Daemon::start(
        Path::new(env!("CARGO_BIN_EXE_kelsond")),
        "[image]\nmax_concurrent_downloads = 3\n",
    )?;
    daemon.hosts(&registry.host, &registry.hosts_toml())?;
    let mut c = daemon.cri().await?;
    let r = format!("{}/bench/big:v1", registry.host);
    let spec = || {
        Some(cri::ImageSpec {
            image: r.clone(),
            ..Default::default()
        })
    };
    let idle = daemon.pid().map(rss_kib).unwrap_or(0);
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let id = c
            .image
            .pull_image(cri::PullImageRequest {
                image: spec(),
                auth: None,
                sandbox_config: None,
            })
            .await?
            .into_inner()
            .image_ref;
        times.push(t.elapsed().as_secs_f64());
        // By id: the whole image goes and its snapshots are collected, so every run is cold.
        let by_id = Some(cri::ImageSpec {
            image: id,
            ..Default::default()
        });
        c.image
            .remove_image(cri::RemoveImageRequest { image: by_id })
            .await?;
        anyhow::ensure!(
            std::fs::read_dir(daemon.root.join("snapshots"))?.count() == 1,
            "snapshots left after removal"
        );
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "pull+unpack {} layers, {:.0} MB compressed / {:.0} MB uncompressed: median {:.3} s, min {:.3} s, max {:.3} s over {runs} runs ({:.0} MB/s uncompressed)",
        img.layers.len(),
        compressed as f64 / 1e6,
        uncompressed as f64 / 1e6,
        median,
        times[0],
        times[times.len() - 1],
        uncompressed as f64 / 1e6 / median
    );
    if let Some(pid) = daemon.pid() {
        println!(
            "kelsond RSS: idle {idle} KiB, after pulls {} KiB",
            rss_kib(pid)
        );
    }
    Ok(())
}
