//! Progress timeout, slow pulls, download sharing and interrupted pulls, against a registry
//! whose delivery the test controls.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{count, pull};
use kelson_testkit::fake_registry::{Delivery, FakeRegistry};
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
    let reg = FakeRegistry::start().await?;
    reg.add("t/img", "v1", &image());
    let d = Daemon::start(
        Path::new(common::KELSOND),
        &format!("[image]\npull_progress_timeout = \"{timeout}\"\n"),
    )?;
    let r = format!("{}/t/img:v1", reg.host);
    Ok((reg, d, r))
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
    // Wait until the unpack has started, then kill -9.
    for _ in 0..200 {
        if count(&d.root.join("snapshots/.tmp")) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        count(&d.root.join("snapshots/.tmp")) > 0,
        "pull never started unpacking"
    );
    d.crash()?;
    assert!(inflight.await?.is_err());
    reg.set_delivery(Delivery::Fast);
    d.restart()?;
    assert_eq!(
        count(&d.root.join("snapshots/.tmp")),
        0,
        "start-up removed the interrupted unpack"
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
