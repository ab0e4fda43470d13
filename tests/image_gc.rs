//! The image GC policy (`[image.gc]`) on a real, small filesystem: kelsond's root is a 64 MiB
//! tmpfs, images of 6 MiB each are pulled from a real registry one after another, and the
//! policy must bring disk use back under the low watermark by removing the least recently used
//! images — never the one a container uses, never a pinned one.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use kelson_testkit::cri as req;
use kelson_testkit::{Daemon, DaemonOptions, Image, Pusher, Registry, TestImages};

const LAYER: usize = 6 << 20;

fn data_image(seed: u64) -> Image {
    Image::new(
        vec![TestImages::data_layer(LAYER, seed)],
        "amd64",
        false,
        serde_json::json!({"Cmd": ["/data"]}),
    )
}

fn used_percent(root: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(root).unwrap();
    let cap = s.blocks() as u64;
    (cap - s.blocks_free() as u64) * 100 / cap
}

async fn present(c: &mut kelson_testkit::daemon::Cri, image: &str) -> anyhow::Result<bool> {
    Ok(c.image
        .image_status(cri::ImageStatusRequest {
            image: common::spec(image),
            verbose: false,
        })
        .await?
        .into_inner()
        .image
        .is_some())
}

/// A registry with the standard image, `gc/pinned:v1` and `gc/i1..=6:v1` (6 MiB each).
async fn gc_registry() -> anyhow::Result<Registry> {
    let registry = Registry::start(Default::default())?;
    let p = Pusher::new(&registry)?;
    p.image(
        "test/standard",
        "v1",
        &TestImages::standard("amd64", false)?,
    )
    .await?;
    p.image("gc/pinned", "v1", &data_image(100)).await?;
    for i in 1..=6 {
        p.image(&format!("gc/i{i}"), "v1", &data_image(i)).await?;
    }
    Ok(registry)
}

/// kelsond on a 64 MiB tmpfs, GC between 50% and 30% with no minimum age, `pinned` pinned, its
/// metrics on `port`.
fn gc_daemon(registry: &Registry, pinned: &str, port: u16) -> anyhow::Result<Daemon> {
    let extra = format!(
        "[image]\npinned = [\"{pinned}\"]\n[image.gc]\nenabled = true\nhigh_threshold_percent = 50\nlow_threshold_percent = 30\nmin_age = \"0s\"\ninterval = \"1h\"\n[metrics]\naddress = \"127.0.0.1:{port}\"\n"
    );
    let d = Daemon::start_opts(
        Path::new(common::KELSOND),
        &extra,
        DaemonOptions {
            root_tmpfs_mib: Some(64),
            ..Default::default()
        },
    )?;
    d.hosts(&registry.host, &registry.hosts_toml())?;
    Ok(d)
}

/// Wait (up to 20 s) for the policy, which runs in the background after each pull, to bring
/// disk use under the high watermark: the use then, in percent.
async fn settled_use(root: &Path) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    while used_percent(root) >= 50 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    used_percent(root)
}

/// One scenario (the order of pulls is what the policy acts on), each check labelled.
#[tokio::test(flavor = "multi_thread")]
async fn policy_removes_least_recently_used_images_under_disk_pressure() -> anyhow::Result<()> {
    let registry = gc_registry().await?;
    let host = &registry.host;
    let standard = format!("{host}/test/standard:v1");
    let pinned = format!("{host}/gc/pinned:v1");
    let port = common::free_port();
    let d = gc_daemon(&registry, &pinned, port)?;
    let mut c = d.cri().await?;

    // The image a container uses, and a pinned one.
    common::pull(&d, &standard).await?;
    let (top, _logs, cfg, pod) = common::pod_in(&mut c, "kelson-gctest", "gc").await?;
    let user = common::container_config("user", &standard, &["/bin/true"]);
    let ctr = common::create(&mut c, &pod, &cfg, user).await?;
    common::pull(&d, &pinned).await?;

    // Pulled a second apart (last use is kept in whole seconds), oldest first.
    for i in 1..=6 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        common::pull(&d, &format!("{host}/gc/i{i}:v1")).await?;
    }
    let used = settled_use(&d.root).await;
    assert!(
        used < 50,
        "disk use {used}% still at or above the high watermark"
    );

    assert!(present(&mut c, &standard).await?, "in use by a container");
    assert!(present(&mut c, &pinned).await?, "pinned");
    let mut kept = Vec::new();
    for i in 1..=6 {
        kept.push(present(&mut c, &format!("{host}/gc/i{i}:v1")).await?);
    }
    assert!(
        !kept[0],
        "the least recently used image goes first: {kept:?}"
    );
    assert!(kept[5], "the newest image stays: {kept:?}");
    let removed = kept.iter().filter(|k| !**k).count();
    assert!(
        kept.iter().skip(removed).all(|k| *k),
        "removed in least-recently-used order: {kept:?}"
    );
    // Counted where operators look.
    let (_, body) = common::http_get(port, "/metrics")?;
    assert_eq!(
        common::sample(&body, "kelson_image_gc_removed_total{kind=\"image\"}"),
        Some(removed as f64),
        "the removals counted in the metrics: {body}"
    );

    c.runtime.remove_container(req::remove(&ctr)).await?;
    common::remove_pod(&mut c, &pod, &top).await
}

/// Every regular file under `dir`, relative paths (for "nothing left behind" checks).
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// The image filesystem fills up during a pull: the pull fails with an error that says so,
/// the store stays intact (earlier images listed and usable, no partial blob, snapshot or
/// temp file left, the space given back), and the same pull succeeds once there is room.
#[tokio::test(flavor = "multi_thread")]
async fn pull_on_a_full_disk_fails_cleanly_and_recovers() -> anyhow::Result<()> {
    let registry = Registry::start(Default::default())?;
    let p = Pusher::new(&registry)?;
    p.image(
        "test/standard",
        "v1",
        &TestImages::standard("amd64", false)?,
    )
    .await?;
    let big = Image::new(
        vec![
            TestImages::data_layer(8 << 20, 1),
            TestImages::data_layer(20 << 20, 2),
        ],
        "amd64",
        false,
        serde_json::json!({"Cmd": ["/data"]}),
    );
    p.image("full/big", "v1", &big).await?;
    let host = &registry.host;
    let standard = format!("{host}/test/standard:v1");
    let d = Daemon::start_opts(
        Path::new(common::KELSOND),
        "",
        DaemonOptions {
            root_tmpfs_mib: Some(24),
            ..Default::default()
        },
    )?;
    d.hosts(host, &registry.hosts_toml())?;
    let mut c = d.cri().await?;
    let standard_id = common::pull(&d, &standard).await?;
    let before = files(&d.root);
    let used = |root: &Path| {
        let s = nix::sys::statvfs::statvfs(root).unwrap();
        (s.blocks() - s.blocks_free()) as u64 * s.fragment_size() as u64
    };
    let used_before = used(&d.root);

    // 28 MiB of layers cannot fit in 24 MiB, however the store keeps them.
    let err = common::pull(&d, &format!("{host}/full/big:v1"))
        .await
        .expect_err("the pull cannot fit");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("image filesystem is full"),
        "the error says why: {}",
        err.message()
    );
    // Intact: the earlier image is there and usable, the failed one is not, and nothing of
    // the failed pull stays on disk.
    assert_eq!(common::pull(&d, &standard).await?, standard_id);
    assert!(present(&mut c, &standard).await?);
    assert!(!present(&mut c, &format!("{host}/full/big:v1")).await?);
    assert_eq!(files(&d.root), before, "files left by the failed pull");
    assert!(
        used(&d.root) <= used_before + (64 << 10),
        "space given back: {} then {}",
        used_before,
        used(&d.root)
    );
    c.image
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .expect("ImageFsInfo still answers");

    // Room again: the same pull completes.
    nix::mount::mount(
        None::<&str>,
        &d.root,
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT,
        Some("size=96m"),
    )?;
    common::pull(&d, &format!("{host}/full/big:v1")).await?;
    assert!(present(&mut c, &format!("{host}/full/big:v1")).await?);
    Ok(())
}
