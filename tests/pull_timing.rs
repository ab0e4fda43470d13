//! Progress timeout, pull deadline, slow pulls, download sharing, interrupted pulls, hostile
//! bodies and the CRI verbs' responsiveness during slow pulls, against a registry whose delivery
//! the test controls.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{count, pull};
use k8s_cri::v1 as cri;
use kelson_testkit::fake_registry::{Delivery, FakeRegistry, Hostile};
use kelson_testkit::{Daemon, Image, TestImages};
use tonic::Code;

fn image() -> Image {
    Image::new(
        vec![
            TestImages::etc_layer(),
            TestImages::data_layer(64 * 1024, 11),
        ],
        "amd64",
        false,
        serde_json::json!({}),
    )
}

async fn setup(timeout: &str) -> anyhow::Result<(FakeRegistry, Daemon, String)> {
    setup_with(&format!("pull_progress_timeout = \"{timeout}\"\n")).await
}

/// A fake registry serving `image()` as `t/img:v1`, and kelsond with `image` keys.
async fn setup_with(image_keys: &str) -> anyhow::Result<(FakeRegistry, Daemon, String)> {
    let reg = FakeRegistry::start().await?;
    reg.add("t/img", "v1", &image());
    let d = Daemon::start(
        Path::new(common::KELSOND),
        &format!("[image]\n{image_keys}"),
    )?;
    let r = format!("{}/t/img:v1", reg.host);
    Ok((reg, d, r))
}

/// No image listed, no snapshot (committed or half-made) left.
async fn nothing_visible(d: &Daemon) -> anyhow::Result<()> {
    let mut c = d.cri().await?;
    let images = c
        .image
        .list_images(cri::ListImagesRequest { filter: None })
        .await?
        .into_inner()
        .images;
    assert!(images.is_empty(), "{images:?}");
    assert_eq!(
        count(&d.root.join("snapshots/.tmp")),
        0,
        "half-made snapshot"
    );
    let snapshots: Vec<_> = std::fs::read_dir(d.root.join("snapshots"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        snapshots.iter().all(|n| n == ".tmp"),
        "snapshots left: {snapshots:?}"
    );
    assert_eq!(count(&d.root.join("content/tmp")), 0, "staging file left");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_pull_fails_but_slow_pull_completes() -> anyhow::Result<()> {
    let (reg, d, r) = setup("2s").await?;
    reg.set_delivery(Delivery::Stall { after: 100 });
    let err = pull(&d, &r).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("no data received"),
        "{}",
        err.message()
    );
    assert_eq!(
        count(&d.root.join("snapshots/.tmp")),
        0,
        "half-unpacked layer left behind"
    );
    // A pull that keeps moving takes several times the timeout in total and still succeeds.
    reg.set_delivery(Delivery::Drip {
        chunk: 16 * 1024,
        every: Duration::from_millis(400),
    });
    let started = std::time::Instant::now();
    assert_eq!(pull(&d, &r).await?, image().id());
    assert!(
        started.elapsed() > Duration::from_secs(1),
        "the drip did not slow the pull"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_download_each_layer_once() -> anyhow::Result<()> {
    let (reg, d, r) = setup("30s").await?;
    reg.set_delivery(Delivery::Drip {
        chunk: 32 * 1024,
        every: Duration::from_millis(50),
    });
    let a = pull(&d, &r);
    let b = pull(&d, &r);
    let (a, b) = tokio::join!(a, b);
    assert_eq!(a?, b?);
    assert_eq!(
        reg.blob_gets.load(Ordering::SeqCst),
        2,
        "two layers, each fetched once"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_mid_pull_then_pull_again() -> anyhow::Result<()> {
    let (reg, mut d, r) = setup("30s").await?;
    reg.set_delivery(Delivery::Stall { after: 1000 });
    let r2 = r.clone();
    let cri = d.cri().await?;
    let inflight = tokio::spawn(async move {
        let mut c = cri;
        c.image
            .pull_image(k8s_cri::v1::PullImageRequest {
                image: common::spec(&r2),
                auth: None,
                sandbox_config: None,
            })
            .await
    });
    // Wait until layer bytes are flowing, then kill -9.
    for _ in 0..200 {
        if reg.blob_gets.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        reg.blob_gets.load(Ordering::SeqCst) > 0,
        "pull never started downloading"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    d.crash()?;
    assert!(inflight.await?.is_err());
    reg.set_delivery(Delivery::Fast);
    d.restart()?;
    assert_eq!(
        count(&d.root.join("snapshots/.tmp")),
        0,
        "start-up removed the interrupted unpack"
    );
    assert_eq!(
        count(&d.root.join("content/tmp")),
        0,
        "the interrupted download left a staging file"
    );
    assert_eq!(pull(&d, &r).await?, image().id());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_flows() -> anyhow::Result<()> {
    use kelson_testkit::fake_registry::TokenAuth;
    let (reg, d, r) = setup("30s").await?;
    reg.require_tokens(TokenAuth {
        refresh: "refresh-me".into(),
        access: "access-ok".into(),
        anonymous: false,
    });
    let mut c = d.cri().await?;
    let req = |auth: Option<k8s_cri::v1::AuthConfig>| k8s_cri::v1::PullImageRequest {
        image: common::spec(&r),
        auth,
        sandbox_config: None,
    };
    // No credentials and no anonymous tokens: Unauthenticated.
    let err = c.image.pull_image(req(None)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // identity_token: refresh-token grant at the realm, then Bearer.
    let bad = k8s_cri::v1::AuthConfig {
        identity_token: "wrong".into(),
        ..Default::default()
    };
    assert_eq!(
        c.image.pull_image(req(Some(bad))).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let good = k8s_cri::v1::AuthConfig {
        identity_token: "refresh-me".into(),
        ..Default::default()
    };
    assert_eq!(
        c.image
            .pull_image(req(Some(good)))
            .await?
            .into_inner()
            .image_ref,
        image().id()
    );
    // registry_token: used as the Bearer token directly.
    c.image
        .remove_image(k8s_cri::v1::RemoveImageRequest {
            image: common::spec(&r),
        })
        .await?;
    let rt = k8s_cri::v1::AuthConfig {
        registry_token: "access-ok".into(),
        ..Default::default()
    };
    assert_eq!(
        c.image
            .pull_image(req(Some(rt)))
            .await?
            .into_inner()
            .image_ref,
        image().id()
    );
    // Anonymous token flow (what Docker Hub does for public images).
    c.image
        .remove_image(k8s_cri::v1::RemoveImageRequest {
            image: common::spec(&r),
        })
        .await?;
    reg.require_tokens(TokenAuth {
        refresh: "refresh-me".into(),
        access: "anon".into(),
        anonymous: true,
    });
    assert_eq!(
        c.image.pull_image(req(None)).await?.into_inner().image_ref,
        image().id()
    );
    assert!(
        !d.log().contains("refresh-me") && !d.log().contains("access-ok"),
        "a secret reached the log"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn decompression_bomb_is_refused() -> anyhow::Result<()> {
    let reg = FakeRegistry::start().await?;
    // 8 MiB of zeros: a few KiB gzip-compressed, far over the configured cap once inflated.
    let zeros = kelson_testkit::TarBuilder::new()
        .file("zeros", 0o644, &vec![0u8; 8 << 20])
        .finish();
    let bomb = Image::new(
        vec![kelson_testkit::Layer::new(
            zeros,
            kelson_testkit::Compression::Gzip,
        )],
        "amd64",
        false,
        serde_json::json!({}),
    );
    assert!(bomb.layers[0].blob.len() < 100_000);
    reg.add("t/bomb", "v1", &bomb);
    let d = Daemon::start(
        Path::new(common::KELSOND),
        "[image]\nmax_layer_bytes = 1000000\n",
    )?;
    let err = pull(&d, &format!("{}/t/bomb:v1", reg.host))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("exceeds 1000000 bytes"),
        "{}",
        err.message()
    );
    assert_eq!(count(&d.root.join("snapshots/.tmp")), 0);
    assert_eq!(count(&d.root.join("snapshots")), 1);
    Ok(())
}

/// Manifest, error and token bodies that never end are cut off at their own caps while they
/// stream — each refused by name — and the server manages to send little more than the cap (the
/// socket buffers), not the gigabyte it offers: the body was never buffered whole.
#[tokio::test(flavor = "multi_thread")]
async fn endless_registry_bodies_are_cut_off_at_their_caps() -> anyhow::Result<()> {
    let (reg, d, r) = setup("30s").await?;
    let cases = [
        (
            Hostile::EndlessManifest,
            "manifest t/img:v1: larger than 4194304 bytes",
            4u64 << 20,
        ),
        (
            Hostile::EndlessError,
            "error response (400 Bad Request) to manifest t/img:v1: larger than 65536 bytes",
            64 << 10,
        ),
        (
            Hostile::EndlessToken,
            "token response: larger than 65536 bytes",
            64 << 10,
        ),
    ];
    for (hostile, message, cap) in cases {
        reg.sent.store(0, Ordering::SeqCst);
        reg.set_hostile(hostile);
        let err = pull(&d, &r).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{hostile:?}: {err:?}");
        assert!(
            err.message().contains(message),
            "{hostile:?}: {}",
            err.message()
        );
        // The server notices the closed connection at its next write.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent = reg.sent.load(Ordering::SeqCst);
        assert!(
            sent < cap + (32 << 20),
            "{hostile:?}: the server sent {sent} bytes before the pull gave up (cap {cap})"
        );
        nothing_visible(&d).await?;
    }
    reg.set_hostile(Hostile::No);
    assert_eq!(pull(&d, &r).await?, image().id());
    Ok(())
}

/// A registry that drip-feeds a layer, never pausing long enough for the stall timeout, is cut
/// off at `image.pull_deadline`: DeadlineExceeded naming the key, well before the drip ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_drip_fed_pull_ends_at_the_pull_deadline() -> anyhow::Result<()> {
    let (reg, d, r) =
        setup_with("pull_progress_timeout = \"3s\"\npull_deadline = \"5s\"\n").await?;
    // The 64 KiB data layer at 1 KiB a second: over a minute, never 3 s without a byte.
    reg.set_delivery(Delivery::Drip {
        chunk: 1024,
        every: Duration::from_secs(1),
    });
    let started = Instant::now();
    let err = pull(&d, &r).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("image.pull_deadline"),
        "{}",
        err.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the pull ran {:?}: the deadline did not end a drip of over a minute",
        started.elapsed()
    );
    nothing_visible(&d).await
}

/// Downloads hold no thread of the blocking pool, which the CRI verbs share: with 8 drip-fed
/// pulls (24 layer downloads, more than the pool's 16 threads) in progress, RunPodSandbox and
/// ListContainerStats answer promptly. With each download feeding an unpacker that blocked on
/// the network, they waited for the pulls (over a minute).
#[tokio::test(flavor = "multi_thread")]
async fn drip_fed_pulls_leave_the_cri_verbs_responsive() -> anyhow::Result<()> {
    let reg = FakeRegistry::start().await?;
    let mut refs = Vec::new();
    for i in 0..8u64 {
        let layers = (0..3).map(|k| TestImages::data_layer(1000, 100 + i * 3 + k));
        let img = Image::new(layers.collect(), "amd64", false, serde_json::json!({}));
        reg.add(&format!("t/slow{i}"), "v1", &img);
        refs.push(format!("{}/t/slow{i}:v1", reg.host));
    }
    // Each ~3 KiB layer at 40 bytes a second: more than a minute per pull.
    reg.set_delivery(Delivery::Drip {
        chunk: 40,
        every: Duration::from_secs(1),
    });
    let d = Daemon::start(
        Path::new(common::KELSOND),
        "[image]\npull_progress_timeout = \"30s\"\n",
    )?;
    let mut pulls = Vec::new();
    for r in refs {
        let c = d.cri().await?;
        pulls.push(tokio::spawn(async move {
            kelson_conformance::suite::pull(&c, &r).await
        }));
    }
    let started = Instant::now();
    while reg.blob_gets.load(Ordering::SeqCst) < 16 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reg.blob_gets.load(Ordering::SeqCst) >= 16,
        "the pulls did not get going"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut c = d.cri().await?;
    let logs = tempfile::tempdir()?;
    let cfg = common::pod_config("busy", "default", "", logs.path());
    let asked = Instant::now();
    let pod = tokio::time::timeout(Duration::from_secs(30), common::run_pod(&mut c, &cfg))
        .await
        .map_err(|_| {
            anyhow::anyhow!("RunPodSandbox did not answer within 30 s during the pulls")
        })??;
    let run_took = asked.elapsed();
    let asked = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(30),
        c.runtime
            .list_container_stats(cri::ListContainerStatsRequest { filter: None }),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!("ListContainerStats did not answer within 30 s during the pulls")
    })??;
    let stats_took = asked.elapsed();
    assert!(
        pulls.iter().all(|p| !p.is_finished()),
        "a pull ended early: the check did not run while the pulls held their downloads"
    );
    assert!(
        run_took < Duration::from_secs(10) && stats_took < Duration::from_secs(10),
        "RunPodSandbox took {run_took:?}, ListContainerStats {stats_took:?} while the pulls ran"
    );
    c.runtime
        .stop_pod_sandbox(kelson_testkit::cri::stop_pod(&pod))
        .await?;
    c.runtime
        .remove_pod_sandbox(kelson_testkit::cri::remove_pod(&pod))
        .await?;
    for p in pulls {
        p.abort();
    }
    Ok(())
}

/// A blob redirect to another host (a CDN) is followed without the caller's credentials: the
/// registry sees its Bearer token, the other host never an `Authorization` header.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_do_not_follow_a_redirect_to_another_host() -> anyhow::Result<()> {
    use kelson_testkit::fake_registry::TokenAuth;
    let (reg, d, r) = setup("30s").await?;
    reg.require_tokens(TokenAuth {
        refresh: "refresh-me".into(),
        access: "access-ok".into(),
        anonymous: false,
    });
    let cdn = FakeRegistry::start().await?;
    cdn.add("t/img", "v1", &image());
    reg.redirect_blobs(&cdn.host);
    let mut c = d.cri().await?;
    let id = c
        .image
        .pull_image(cri::PullImageRequest {
            image: common::spec(&r),
            auth: Some(cri::AuthConfig {
                registry_token: "access-ok".into(),
                ..Default::default()
            }),
            sandbox_config: None,
        })
        .await?
        .into_inner()
        .image_ref;
    assert_eq!(id, image().id());
    assert!(cdn.blob_gets.load(Ordering::SeqCst) > 0, "not redirected");
    let leaked: Vec<_> = cdn
        .authorizations()
        .into_iter()
        .filter(|(_, a)| a.is_some())
        .collect();
    assert!(
        leaked.is_empty(),
        "credentials sent to the other host: {leaked:?}"
    );
    assert!(
        reg.authorizations()
            .iter()
            .any(|(_, a)| a.as_deref() == Some("Bearer access-ok")),
        "the registry itself never got the token"
    );
    Ok(())
}

/// A mirror never sees the caller's credentials, which were issued for the upstream: with a
/// `registry_token`, manifests resolve at the upstream (which gets the token) and blobs come
/// from a pull-only mirror (which gets no `Authorization` at all).
#[tokio::test(flavor = "multi_thread")]
async fn credentials_go_to_the_upstream_only() -> anyhow::Result<()> {
    use kelson_testkit::fake_registry::TokenAuth;
    let (reg, d, r) = setup("30s").await?;
    reg.require_tokens(TokenAuth {
        refresh: "refresh-me".into(),
        access: "access-ok".into(),
        anonymous: false,
    });
    let mirror = FakeRegistry::start().await?;
    mirror.add("t/img", "v1", &image());
    d.hosts(
        &reg.host,
        &format!(
            "server = \"http://{}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\"]\n",
            reg.host, mirror.host
        ),
    )?;
    let mut c = d.cri().await?;
    let id = c
        .image
        .pull_image(cri::PullImageRequest {
            image: common::spec(&r),
            auth: Some(cri::AuthConfig {
                registry_token: "access-ok".into(),
                ..Default::default()
            }),
            sandbox_config: None,
        })
        .await?
        .into_inner()
        .image_ref;
    assert_eq!(id, image().id());
    assert!(
        mirror.blob_gets.load(Ordering::SeqCst) > 0,
        "mirror not used"
    );
    let leaked: Vec<_> = mirror
        .authorizations()
        .into_iter()
        .filter(|(_, a)| a.is_some())
        .collect();
    assert!(
        leaked.is_empty(),
        "credentials sent to the mirror: {leaked:?}"
    );
    assert!(
        reg.authorizations()
            .iter()
            .any(|(_, a)| a.as_deref() == Some("Bearer access-ok")),
        "the upstream never got the token"
    );
    Ok(())
}
