//! PullImage and friends against a real `docker-registry`: unpacked trees byte for byte, formats,
//! platforms, auth, TLS, mirrors, hostile content, failure cleanup.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{count, pull, spec};
use k8s_cri::v1 as cri;
use kelson_testkit::{Compression, Image, Layer, Pusher, RegistryOptions, TarBuilder, TestImages};
use tonic::Code;

/// Every entry of `layer` is in `dir` as the tar says: type, mode, owner, bytes, link target;
/// whiteouts as 0:0 char devices, opaque markers as the overlay xattr.
fn assert_snapshot_matches(dir: &Path, layer: &Layer) {
    let mut a = tar::Archive::new(&layer.tar[..]);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().into_owned();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let parent = dir.join(path.parent().unwrap());
        if name == ".wh..wh..opq" {
            assert_eq!(
                xattr::get(&parent, "trusted.overlay.opaque").unwrap(),
                Some(b"y".to_vec()),
                "{path:?}"
            );
            continue;
        }
        if let Some(target) = name.strip_prefix(".wh.") {
            let m = std::fs::symlink_metadata(parent.join(target)).unwrap();
            assert_eq!(
                (m.mode() & 0o170000, m.rdev()),
                (0o020000, 0),
                "whiteout {path:?}"
            );
            continue;
        }
        let p = dir.join(&path);
        let m = std::fs::symlink_metadata(&p).unwrap_or_else(|err| panic!("{p:?}: {err}"));
        let h = e.header().clone();
        match h.entry_type() {
            tar::EntryType::Regular => {
                let mut want = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut want).unwrap();
                assert_eq!(std::fs::read(&p).unwrap(), want, "content of {path:?}");
                assert_eq!(
                    m.mode() & 0o7777,
                    h.mode().unwrap() & 0o7777,
                    "mode of {path:?}"
                );
                assert_eq!(
                    (m.uid() as u64, m.gid() as u64),
                    (h.uid().unwrap(), h.gid().unwrap()),
                    "owner of {path:?}"
                );
            }
            tar::EntryType::Directory => {
                assert!(m.is_dir(), "{path:?}");
                assert_eq!(
                    m.mode() & 0o7777,
                    h.mode().unwrap() & 0o7777,
                    "mode of {path:?}"
                );
            }
            tar::EntryType::Symlink => {
                assert_eq!(
                    std::fs::read_link(&p).unwrap(),
                    e.link_name().unwrap().unwrap().into_owned(),
                    "{path:?}"
                );
            }
            tar::EntryType::Link => {
                let target = dir.join(e.link_name().unwrap().unwrap());
                assert_eq!(
                    m.ino(),
                    std::fs::symlink_metadata(target).unwrap().ino(),
                    "hard link {path:?}"
                );
            }
            tar::EntryType::Char => {
                assert_eq!(m.mode() & 0o170000, 0o020000, "{path:?}");
                let want = nix::sys::stat::makedev(
                    h.device_major().unwrap().unwrap().into(),
                    h.device_minor().unwrap().unwrap().into(),
                );
                assert_eq!(m.rdev(), want, "{path:?}");
            }
            tar::EntryType::Fifo => assert_eq!(m.mode() & 0o170000, 0o010000, "{path:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_and_unpacks_byte_for_byte() -> anyhow::Result<()> {
    let e = common::env_with(RegistryOptions::default(), "").await?;
    let img = TestImages::standard("amd64", false)?;
    Pusher::new(&e.registry)?
        .image("test/standard", "v1", &img)
        .await?;
    let r = format!("{}/test/standard:v1", e.registry.host);
    let id = pull(&e.daemon, &r).await?;
    assert_eq!(id, img.id());
    for l in &img.layers {
        assert_snapshot_matches(&e.daemon.snapshot_dir(&l.diff_id()), l);
    }
    let special = e.daemon.snapshot_dir(&img.layers[2].diff_id());
    assert_eq!(
        xattr::get(special.join("opt/attr"), "user.kelson")?,
        Some(b"yes".to_vec())
    );
    assert_eq!(
        std::fs::metadata(special.join("opt/owned"))?
            .permissions()
            .mode()
            & 0o7777,
        0o4755
    );

    let mut c = e.daemon.cri().await?;
    let st = c
        .image
        .image_status(cri::ImageStatusRequest {
            image: spec(&r),
            verbose: true,
        })
        .await?
        .into_inner();
    let image = st.image.unwrap();
    assert_eq!(image.repo_tags, vec![r.clone()]);
    assert_eq!(
        image.repo_digests,
        vec![format!(
            "{}/test/standard@{}",
            e.registry.host,
            img.manifest_digest()
        )]
    );
    assert_eq!(image.uid, Some(cri::Int64Value { value: 65534 }));
    let info: serde_json::Value = serde_json::from_str(&st.info["info"])?;
    assert_eq!(info["imageSpec"]["config"]["Cmd"][0], "/bin/sh");
    // The image's labels are data only: reported back, never acted on.
    assert_eq!(
        info["imageSpec"]["config"]["Labels"]["kelson.io/init"],
        "true"
    );
    // Nothing half-made is left around.
    assert_eq!(count(&e.daemon.root.join("snapshots/.tmp")), 0);
    assert_eq!(count(&e.daemon.root.join("content/tmp")), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_schema2_index_and_shared_layers() -> anyhow::Result<()> {
    let e = common::env_with(RegistryOptions::default(), "").await?;
    let p = Pusher::new(&e.registry)?;
    let docker = TestImages::standard("amd64", true)?;
    p.image("test/docker", "v1", &docker).await?;
    let amd = Image::new(
        vec![TestImages::etc_layer(), TestImages::data_layer(1000, 7)],
        "amd64",
        false,
        serde_json::json!({}),
    );
    let arm = Image::new(
        vec![TestImages::etc_layer(), TestImages::data_layer(1000, 8)],
        "arm64",
        false,
        serde_json::json!({}),
    );
    let idx = p
        .index("test/multi", "v1", &[(&arm, "arm64"), (&amd, "amd64")])
        .await?;

    assert_eq!(
        pull(&e.daemon, &format!("{}/test/docker:v1", e.registry.host)).await?,
        docker.id()
    );
    let multi = format!("{}/test/multi:v1", e.registry.host);
    assert_eq!(
        pull(&e.daemon, &multi).await?,
        amd.id(),
        "index resolved to linux/amd64"
    );
    assert!(
        !e.daemon.snapshot_dir(&arm.layers[1].diff_id()).exists(),
        "arm64 layer was fetched"
    );
    // The etc layer is shared by both images: one snapshot.
    let snaps = count(&e.daemon.root.join("snapshots")) - 1; // minus .tmp
    assert_eq!(snaps, docker.layers.len() + 1, "shared layer unpacked once");
    // Repo digest of an index pull is the index digest; pulling by digest works too.
    let mut c = e.daemon.cri().await?;
    let st = c
        .image
        .image_status(cri::ImageStatusRequest {
            image: spec(&multi),
            verbose: false,
        })
        .await?
        .into_inner();
    assert!(
        st.image
            .unwrap()
            .repo_digests
            .contains(&format!("{}/test/multi@{idx}", e.registry.host))
    );
    let by_digest = format!("{}/test/multi:ignored@{idx}", e.registry.host);
    assert_eq!(pull(&e.daemon, &by_digest).await?, amd.id());

    // Removing one image keeps the shared layer for the other; removing both frees everything.
    c.image
        .remove_image(cri::RemoveImageRequest {
            image: spec(&docker.id()),
        })
        .await?;
    assert!(e.daemon.snapshot_dir(&amd.layers[0].diff_id()).exists());
    assert!(!e.daemon.snapshot_dir(&docker.layers[0].diff_id()).exists());
    c.image
        .remove_image(cri::RemoveImageRequest {
            image: spec(&amd.id()),
        })
        .await?;
    assert_eq!(count(&e.daemon.root.join("snapshots")), 1, "only .tmp left");
    assert_eq!(count(&e.daemon.root.join("content/sha256")), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_by_tag_drops_only_that_tag() -> anyhow::Result<()> {
    let e = common::env().await?;
    let p = Pusher::new(&e.registry)?;
    let img = TestImages::standard("amd64", false)?;
    p.image("test/standard", "v2", &img).await?;
    let (a, b) = (
        format!("{}/test/standard:v1", e.registry.host),
        format!("{}/test/standard:v2", e.registry.host),
    );
    pull(&e.daemon, &a).await?;
    pull(&e.daemon, &b).await?;
    let mut c = e.daemon.cri().await?;
    c.image
        .remove_image(cri::RemoveImageRequest { image: spec(&a) })
        .await?;
    let st = c
        .image
        .image_status(cri::ImageStatusRequest {
            image: spec(&b),
            verbose: false,
        })
        .await?
        .into_inner();
    assert_eq!(st.image.unwrap().repo_tags, vec![b.clone()]);
    assert!(
        c.image
            .image_status(cri::ImageStatusRequest {
                image: spec(&a),
                verbose: false
            })
            .await?
            .into_inner()
            .image
            .is_none()
    );
    assert!(
        e.daemon.snapshot_dir(&img.layers[0].diff_id()).exists(),
        "layers still in use"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_share_work() -> anyhow::Result<()> {
    let e = common::env().await?;
    let r = format!("{}/test/standard:v1", e.registry.host);
    let pulls: Vec<_> = (0..4)
        .map(|_| {
            let d = &e.daemon;
            let r = r.clone();
            async move { pull(d, &r).await }
        })
        .collect();
    let ids = futures::future::join_all(pulls).await;
    let ids: Vec<String> = ids.into_iter().collect::<Result<_, _>>()?;
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(count(&e.daemon.root.join("snapshots")) - 1, 4);
    assert_eq!(count(&e.daemon.root.join("snapshots/.tmp")), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_and_tls_registry() -> anyhow::Result<()> {
    let opts = RegistryOptions {
        tls: true,
        auth: Some(("kelson".into(), "s3cret-pass".into())),
    };
    let e = common::env_with(opts, "").await?;
    Pusher::new(&e.registry)?
        .image("test/private", "v1", &TestImages::standard("amd64", false)?)
        .await?;
    let r = format!("{}/test/private:v1", e.registry.host);
    let err = pull(&e.daemon, &r).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let mut c = e.daemon.cri().await?;
    let wrong = cri::AuthConfig {
        username: "kelson".into(),
        password: "nope".into(),
        ..Default::default()
    };
    let err = c
        .image
        .pull_image(cri::PullImageRequest {
            image: spec(&r),
            auth: Some(wrong),
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // docker-config style `auth` = base64(user:pass)
    let auth = cri::AuthConfig {
        auth: "a2Vsc29uOnMzY3JldC1wYXNz".into(),
        ..Default::default()
    };
    c.image
        .pull_image(cri::PullImageRequest {
            image: spec(&r),
            auth: Some(auth),
            sandbox_config: None,
        })
        .await?;
    // Credentials never reach the log.
    assert!(!e.daemon.log().contains("s3cret-pass"));
    // Without the CA in hosts.toml, TLS verification fails with a clear Unavailable.
    e.daemon.hosts(
        &e.registry.host,
        &format!("server = \"https://{}\"\n", e.registry.host),
    )?;
    let good = cri::AuthConfig {
        username: "kelson".into(),
        password: "s3cret-pass".into(),
        ..Default::default()
    };
    let err = c
        .image
        .pull_image(cri::PullImageRequest {
            image: spec(&r),
            auth: Some(good),
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_serves_when_upstream_is_down() -> anyhow::Result<()> {
    let e = common::env().await?;
    // A registry name that does not exist anywhere; its mirror is the test registry.
    let dead = kelson_testkit::registry::free_port()?;
    e.daemon.hosts("mirror.kelson.test", &format!("server = \"http://127.0.0.1:{dead}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n", e.registry.host))?;
    let id = pull(&e.daemon, "mirror.kelson.test/test/standard:v1").await?;
    assert_eq!(id, TestImages::standard("amd64", false)?.id());
    Ok(())
}

/// A mirror that serves layers whose bytes do not match their digests. Alone, the pull fails
/// with DataLoss naming the layer's digest and nothing of the image is visible; with a good
/// upstream behind it, the very next pull falls through to the upstream for each refused blob and
/// gets the true bytes.
#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_blob_from_a_mirror_is_data_loss_and_a_good_source_serves_it()
-> anyhow::Result<()> {
    use kelson_testkit::fake_registry::{FakeRegistry, Hostile};
    let e = common::env().await?;
    let img = TestImages::standard("amd64", false)?;
    let mirror = FakeRegistry::start().await?;
    mirror.add("test/standard", "v1", &img);
    mirror.set_hostile(Hostile::TamperedLayers);
    let name = "tampered.kelson.test/test/standard:v1";
    let hosts = |server: &str| {
        format!(
            "server = \"http://{server}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            mirror.host
        )
    };
    let dead = kelson_testkit::registry::free_port()?;
    e.daemon
        .hosts("tampered.kelson.test", &hosts(&format!("127.0.0.1:{dead}")))?;
    let err = pull(&e.daemon, name).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(
        img.layers
            .iter()
            .any(|l| err.message().contains(&l.digest())),
        "no layer digest named: {}",
        err.message()
    );
    let mut c = e.daemon.cri().await?;
    assert!(
        c.image
            .list_images(cri::ListImagesRequest { filter: None })
            .await?
            .into_inner()
            .images
            .is_empty()
    );
    let status = c
        .image
        .image_status(cri::ImageStatusRequest {
            image: spec(name),
            verbose: false,
        })
        .await?
        .into_inner();
    assert!(status.image.is_none(), "{status:?}");
    for l in &img.layers {
        assert!(
            !e.daemon.snapshot_dir(&l.diff_id()).exists(),
            "snapshot of a tampered layer"
        );
    }
    assert_eq!(count(&e.daemon.root.join("snapshots/.tmp")), 0);
    assert_eq!(count(&e.daemon.root.join("content/tmp")), 0);

    e.daemon
        .hosts("tampered.kelson.test", &hosts(&e.registry.host))?;
    let gets_before = mirror.blob_gets.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(pull(&e.daemon, name).await?, img.id());
    assert!(
        mirror.blob_gets.load(std::sync::atomic::Ordering::SeqCst) > gets_before,
        "the mirror was not asked first"
    );
    for l in &img.layers {
        assert_snapshot_matches(&e.daemon.snapshot_dir(&l.diff_id()), l);
    }
    Ok(())
}

/// Push `repo:v1`, an image of `layers` with an empty runtime config.
async fn push_layers(p: &Pusher, repo: &str, layers: Vec<Layer>) -> anyhow::Result<()> {
    let image = Image::new(layers, "amd64", false, serde_json::json!({}));
    p.image(repo, "v1", &image).await?;
    Ok(())
}

/// PullImage of `repo:v1` from the test registry, which must fail: its status.
async fn pull_fails(e: &common::Env, repo: &str) -> anyhow::Result<tonic::Status> {
    match pull(&e.daemon, &format!("{}/{repo}:v1", e.registry.host)).await {
        Ok(id) => anyhow::bail!("{repo}: pulled as {id}"),
        Err(err) => Ok(err),
    }
}

/// Nothing listed, nothing half-made; leftovers of the failed pulls are collected on restart.
async fn nothing_left(e: common::Env) -> anyhow::Result<()> {
    let mut c = e.daemon.cri().await?;
    assert!(
        c.image
            .list_images(cri::ListImagesRequest { filter: None })
            .await?
            .into_inner()
            .images
            .is_empty()
    );
    assert_eq!(count(&e.daemon.root.join("snapshots/.tmp")), 0);
    let mut d = e.daemon;
    d.restart()?;
    assert_eq!(
        count(&d.root.join("snapshots")),
        1,
        "orphan snapshots collected at start-up"
    );
    Ok(())
}

/// A layer that writes through a symlink to the host, or names a path with `..`, is refused
/// while unpacking, and the host file stays as it was.
#[tokio::test(flavor = "multi_thread")]
async fn layers_escaping_the_rootfs_are_refused() -> anyhow::Result<()> {
    let e = common::env_with(RegistryOptions::default(), "").await?;
    let p = Pusher::new(&e.registry)?;
    let outside = tempfile::tempdir()?;
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "original")?;
    let escape = TarBuilder::new()
        .link(
            tar::EntryType::Symlink,
            "evil",
            outside.path().to_str().unwrap(),
        )
        .file("evil/victim", 0o644, b"pwned")
        .finish();
    let escape = Layer::new(escape, Compression::Gzip);
    push_layers(&p, "test/hostile", vec![TestImages::etc_layer(), escape]).await?;
    let err = pull_fails(&e, "test/hostile").await?;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("unpacking layer"),
        "{}",
        err.message()
    );
    assert_eq!(std::fs::read_to_string(&victim)?, "original");
    let dotdot = TarBuilder::new()
        .file("../../../escaped", 0o644, b"pwned")
        .finish();
    let dotdot = Layer::new(dotdot, Compression::Zstd);
    push_layers(&p, "test/dotdot", vec![dotdot]).await?;
    let err = pull_fails(&e, "test/dotdot").await?;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("escapes"), "{}", err.message());
    nothing_left(e).await
}

/// Image bombs, each crossing one cap of `[image]`: a GNU sparse entry of a 2 KiB layer that
/// declares 64 MiB (the tar stream stays far under `max_layer_bytes`; what it would write does
/// not), two layers that fit one by one but not together, and more entries than an image may
/// have. Each is refused naming its layer and the cap, and the failed pull leaves no staging
/// dir, no snapshot (the layer it had completed is collected) and no image.
#[tokio::test(flavor = "multi_thread")]
async fn image_bombs_are_refused_by_the_cap_they_cross() -> anyhow::Result<()> {
    // One layer at a time, so which layer crosses the image caps is known.
    let e = common::env_with(
        RegistryOptions::default(),
        "[image]\nmax_concurrent_downloads = 1\nmax_layer_bytes = 1000000\n\
         max_image_bytes = 1500000\nmax_image_entries = 1000\n",
    )
    .await?;
    let p = Pusher::new(&e.registry)?;
    let sparse = TarBuilder::new()
        .dir("d", 0o755)
        .gnu_sparse("d/zeros", 64 << 20, &[7u8; 512])
        .finish();
    let sparse = Layer::new(sparse, Compression::Gzip);
    assert!(sparse.tar.len() <= 4096 && sparse.blob.len() < 1024);
    push_layers(
        &p,
        "bomb/sparse",
        vec![TestImages::etc_layer(), sparse.clone()],
    )
    .await?;
    let (first, second) = (
        TestImages::data_layer(800_000, 1),
        TestImages::data_layer(800_000, 2),
    );
    push_layers(&p, "bomb/wide", vec![first, second.clone()]).await?;
    let mut t = TarBuilder::new().dir("many", 0o755);
    for i in 0..1000 {
        t = t.file(&format!("many/{i}"), 0o644, b"");
    }
    let many = Layer::new(t.finish(), Compression::Zstd);
    push_layers(&p, "bomb/many", vec![many.clone()]).await?;

    let mut c = e.daemon.cri().await?;
    for (repo, layer, cap) in [
        ("bomb/sparse", &sparse, "image.max_layer_bytes"),
        ("bomb/wide", &second, "image.max_image_bytes"),
        ("bomb/many", &many, "image.max_image_entries"),
    ] {
        let err = pull_fails(&e, repo).await?;
        assert_eq!(err.code(), Code::FailedPrecondition, "{repo}: {err:?}");
        let m = err.message();
        assert!(
            m.contains(cap) && m.contains(&layer.digest()),
            "{repo}: {m}"
        );
        let images = c
            .image
            .list_images(cri::ListImagesRequest { filter: None })
            .await?
            .into_inner()
            .images;
        assert!(images.is_empty(), "{repo}: {images:?}");
        assert_eq!(count(&e.daemon.root.join("snapshots/.tmp")), 0, "{repo}");
        assert_eq!(
            count(&e.daemon.root.join("snapshots")),
            1,
            "{repo}: only .tmp is left"
        );
    }
    Ok(())
}

/// Layer xattrs that would steer overlayfs (`trusted.overlay.*`) or the node's LSM and integrity
/// policy (`security.selinux`, `.ima`, `.evm`, `.apparmor`) are not applied; `user.*` and file
/// capabilities are.
#[tokio::test(flavor = "multi_thread")]
async fn layer_xattrs_steering_the_overlay_or_the_lsm_are_dropped() -> anyhow::Result<()> {
    let e = common::env_with(RegistryOptions::default(), "").await?;
    let p = Pusher::new(&e.registry)?;
    // cap_net_raw permitted and effective (a v2 vfs_cap_data).
    let mut cap = vec![0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00];
    cap.resize(20, 0);
    let attrs: [(&str, &[u8]); 9] = [
        ("trusted.overlay.opaque", b"y"),
        ("trusted.overlay.redirect", b"/etc"),
        ("trusted.overlay.metacopy", b""),
        ("security.selinux", b"system_u:object_r:shadow_t:s0"),
        ("security.ima", b"\x03\x02"),
        ("security.evm", b"\x05"),
        ("security.apparmor", b"unconfined"),
        ("security.capability", &cap),
        ("user.kept", b"yes"),
    ];
    let t = TarBuilder::new()
        .dir("bin", 0o755)
        .file_with_xattrs("bin/tool", 0o755, b"#!/bin/sh\n", &attrs)
        .finish();
    let layer = Layer::new(t, Compression::Gzip);
    push_layers(&p, "test/xattrs", vec![layer.clone()]).await?;
    pull(&e.daemon, &format!("{}/test/xattrs:v1", e.registry.host)).await?;
    let tool = e.daemon.snapshot_dir(&layer.diff_id()).join("bin/tool");
    let mut names: Vec<String> = xattr::list(&tool)?
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["security.capability", "user.kept"]);
    assert_eq!(xattr::get(&tool, "security.capability")?, Some(cap));
    assert_eq!(xattr::get(&tool, "user.kept")?, Some(b"yes".to_vec()));
    Ok(())
}

/// A config whose diff id does not match the layer: DataLoss, nothing visible.
#[tokio::test(flavor = "multi_thread")]
async fn a_layer_not_matching_its_diff_id_is_data_loss() -> anyhow::Result<()> {
    let e = common::env_with(RegistryOptions::default(), "").await?;
    let p = Pusher::new(&e.registry)?;
    let good = TestImages::data_layer(5000, 3);
    let cfg = serde_json::to_vec(
        &serde_json::json!({"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[format!("sha256:{}", "0".repeat(64))]}}),
    )?;
    p.image(
        "test/liar",
        "v1",
        &Image::with_config(vec![good.clone()], cfg, false),
    )
    .await?;
    let err = pull_fails(&e, "test/liar").await?;
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    nothing_left(e).await
}

/// An artifact that is not a runnable image (unsupported media type), a missing image and a
/// bad reference are refused, each with its own code.
#[tokio::test(flavor = "multi_thread")]
async fn artifacts_missing_images_and_bad_references_are_refused() -> anyhow::Result<()> {
    let e = common::env_with(RegistryOptions::default(), "").await?;
    let p = Pusher::new(&e.registry)?;
    let helm = serde_json::to_vec(
        &serde_json::json!({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":kelson_testkit::sha256(b"{}"),"size":2},"layers":[]}),
    )?;
    p.blob("test/helm", b"{}").await?;
    p.manifest(
        "test/helm",
        "v1",
        &helm,
        "application/vnd.oci.image.manifest.v1+json",
    )
    .await?;
    let err = pull_fails(&e, "test/helm").await?;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("helm"), "{}", err.message());

    // Missing image and bad references.
    let err = pull_fails(&e, "test/none").await?;
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = pull(&e.daemon, "bad//ref").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    nothing_left(e).await
}

#[tokio::test(flavor = "multi_thread")]
async fn images_survive_restart_and_crash() -> anyhow::Result<()> {
    let mut e = common::env().await?;
    let r = format!("{}/test/standard:v1", e.registry.host);
    let id = pull(&e.daemon, &r).await?;
    e.daemon.crash()?;
    e.daemon.restart()?;
    let mut c = e.daemon.cri().await?;
    let st = c
        .image
        .image_status(cri::ImageStatusRequest {
            image: spec(&r),
            verbose: false,
        })
        .await?
        .into_inner();
    assert_eq!(st.image.map(|i| i.id), Some(id));
    // A stale socket from the crash was replaced; a clean stop removes the socket.
    let status = e.daemon.stop()?;
    assert!(status.success(), "{status:?}");
    assert!(!e.daemon.socket.exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_images_are_reported() -> anyhow::Result<()> {
    let registry = kelson_testkit::Registry::start(RegistryOptions::default())?;
    Pusher::new(&registry)?
        .image(
            "test/standard",
            "v1",
            &TestImages::standard("amd64", false)?,
        )
        .await?;
    let r = format!("{}/test/standard:v1", registry.host);
    let d = kelson_testkit::Daemon::start(
        Path::new(common::KELSOND),
        &format!("[image]\npinned = [\"{r}\"]\n"),
    )?;
    d.hosts(&registry.host, &registry.hosts_toml())?;
    pull(&d, &r).await?;
    let mut c = d.cri().await?;
    let imgs = c
        .image
        .list_images(cri::ListImagesRequest { filter: None })
        .await?
        .into_inner()
        .images;
    assert!(imgs[0].pinned);
    Ok(())
}

/// kelson honours ListImages' filter (containerd 1.6 ignores it, so the runtime-agnostic suite
/// only checks that the image is listed): exactly the filtered image, by tag or by id.
#[tokio::test(flavor = "multi_thread")]
async fn list_images_filter_selects_exactly_one() -> anyhow::Result<()> {
    let e = common::env().await?;
    let other = Image::new(
        vec![TestImages::data_layer(64, 9)],
        "amd64",
        false,
        serde_json::json!({}),
    );
    Pusher::new(&e.registry)?
        .image("test/other", "v1", &other)
        .await?;
    let a = format!("{}/test/standard:v1", e.registry.host);
    let b = format!("{}/test/other:v1", e.registry.host);
    let id_a = pull(&e.daemon, &a).await?;
    let id_b = pull(&e.daemon, &b).await?;
    let mut c = e.daemon.cri().await?;
    for (filter, want) in [(&a, &id_a), (&b, &id_b), (&id_a, &id_a)] {
        let listed = c
            .image
            .list_images(cri::ListImagesRequest {
                filter: Some(cri::ImageFilter {
                    image: spec(filter),
                }),
            })
            .await?
            .into_inner()
            .images;
        let ids: Vec<&String> = listed.iter().map(|i| &i.id).collect();
        assert_eq!(ids, vec![want], "filter {filter}");
    }
    Ok(())
}

/// Two images whose ids share their first `shared` hex digits (found offline: the ids are the
/// configs' digests), pushed and pulled: (ids, references).
async fn twins(e: &common::Env, shared: usize) -> anyhow::Result<([String; 2], [String; 2])> {
    let layer = TestImages::data_layer(64, 11);
    let mut seen: std::collections::HashMap<String, Image> = std::collections::HashMap::new();
    let mut pair = None;
    for n in 0..200_000u32 {
        let img = Image::new(
            vec![layer.clone()],
            "amd64",
            false,
            serde_json::json!({"Labels": {"twin": n.to_string()}}),
        );
        let key = img.id()["sha256:".len()..][..shared].to_owned();
        if let Some(first) = seen.remove(&key) {
            pair = Some((first, img));
            break;
        }
        seen.insert(key, img);
    }
    let (a, b) = pair.expect("two ids sharing a prefix");
    let p = Pusher::new(&e.registry)?;
    let mut refs = Vec::new();
    for (repo, img) in [("test/twin-a", &a), ("test/twin-b", &b)] {
        p.image(repo, "v1", img).await?;
        let r = format!("{}/{repo}:v1", e.registry.host);
        assert_eq!(pull(&e.daemon, &r).await?, img.id());
        refs.push(r);
    }
    Ok(([a.id(), b.id()], [refs[0].clone(), refs[1].clone()]))
}

async fn image_status(
    c: &mut kelson_testkit::daemon::Cri,
    image: &str,
) -> Result<Option<cri::Image>, tonic::Status> {
    Ok(c.image
        .image_status(cri::ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await?
        .into_inner()
        .image)
}

/// ImageStatus and RemoveImage take a unique prefix of the image id, with or without `sha256:`,
/// as crictl users type them; an ambiguous prefix is refused by name and removes nothing; a
/// prefix of no image is an empty status and a removal that succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn status_and_remove_by_a_unique_id_prefix() -> anyhow::Result<()> {
    let e = common::env_with(RegistryOptions::default(), "").await?;
    let shared = 3;
    let ([id_a, id_b], [ref_a, ref_b]) = twins(&e, shared).await?;
    let (hex_a, hex_b) = (&id_a["sha256:".len()..], &id_b["sha256:".len()..]);
    let common_len = hex_a
        .bytes()
        .zip(hex_b.bytes())
        .take_while(|(x, y)| x == y)
        .count();
    assert!(common_len >= shared);
    let mut c = e.daemon.cri().await?;

    let ambiguous = &hex_a[..common_len];
    for spec_ in [ambiguous.to_owned(), format!("sha256:{ambiguous}")] {
        let err = image_status(&mut c, &spec_).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(&spec_) && err.message().contains("ambiguous"),
            "{err:?}"
        );
        let err = c
            .image
            .remove_image(cri::RemoveImageRequest {
                image: spec(&spec_),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(&spec_), "{err:?}");
    }
    for r in [&ref_a, &ref_b] {
        assert!(image_status(&mut c, r).await?.is_some(), "{r} kept");
    }

    // One digit more than they share: each is unique.
    let unique_a = &hex_a[..common_len + 1];
    let unique_b = &hex_b[..common_len + 1];
    for (s, want) in [
        (unique_a.to_owned(), &id_a),
        (format!("sha256:{unique_a}"), &id_a),
        (unique_b.to_owned(), &id_b),
        (hex_b[..20].to_owned(), &id_b),
    ] {
        let img = image_status(&mut c, &s).await?.expect("found by prefix");
        assert_eq!(&img.id, want, "{s}");
        assert_eq!(img.repo_tags.len(), 1, "{s}");
    }

    // A prefix of no image: the CRI's "not here" answers.
    let first = "0123456789abcdef"
        .chars()
        .find(|d| !hex_a.starts_with(*d) && !hex_b.starts_with(*d))
        .expect("a digit neither id starts with");
    let none = &format!("{first}{}", &hex_a[1..7]);
    assert!(!hex_a.starts_with(none) && !hex_b.starts_with(none));
    assert!(image_status(&mut c, none).await?.is_none());
    assert!(
        image_status(&mut c, &format!("sha256:{none}"))
            .await?
            .is_none()
    );
    c.image
        .remove_image(cri::RemoveImageRequest { image: spec(none) })
        .await?;

    // RemoveImage by a unique prefix removes that whole image and only it.
    c.image
        .remove_image(cri::RemoveImageRequest {
            image: spec(&format!("sha256:{unique_a}")),
        })
        .await?;
    assert!(image_status(&mut c, &ref_a).await?.is_none());
    assert!(image_status(&mut c, unique_a).await?.is_none());
    assert_eq!(
        image_status(&mut c, &ref_b).await?.map(|i| i.id),
        Some(id_b.clone())
    );
    // With one image left, the once-ambiguous prefix is unique.
    assert_eq!(
        image_status(&mut c, ambiguous).await?.map(|i| i.id),
        Some(id_b.clone())
    );
    c.image
        .remove_image(cri::RemoveImageRequest {
            image: spec(unique_b),
        })
        .await?;
    let left = c
        .image
        .list_images(cri::ListImagesRequest { filter: None })
        .await?
        .into_inner()
        .images;
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}

/// A short hex string is a name first and an id prefix second, as in containerd: `abc` is the
/// image `docker.io/library/abc:latest` when that is here, even when another image's id starts
/// with `abc`; `sha256:abc` is only ever a prefix.
#[tokio::test(flavor = "multi_thread")]
async fn a_name_wins_over_an_id_prefix() -> anyhow::Result<()> {
    let e = common::env().await?;
    // docker.io served by the test registry, so a bare name resolves and pulls.
    e.daemon.hosts(
        "docker.io",
        &format!("server = \"http://{}\"\n", e.registry.host),
    )?;
    let by_id = format!("{}/test/standard:v1", e.registry.host);
    let id = pull(&e.daemon, &by_id).await?;
    let hex = id["sha256:".len()..][..8].to_owned();
    let named = Image::new(
        vec![TestImages::data_layer(64, 12)],
        "amd64",
        false,
        serde_json::json!({}),
    );
    assert!(!named.id()["sha256:".len()..].starts_with(&hex));
    Pusher::new(&e.registry)?
        .image(&format!("library/{hex}"), "latest", &named)
        .await?;
    assert_eq!(pull(&e.daemon, &hex).await?, named.id());
    let mut c = e.daemon.cri().await?;

    let img = image_status(&mut c, &hex).await?.expect("the named image");
    assert_eq!(img.id, named.id());
    assert_eq!(
        img.repo_tags,
        vec![format!("docker.io/library/{hex}:latest")]
    );
    let img = image_status(&mut c, &format!("sha256:{hex}"))
        .await?
        .expect("the image by id prefix");
    assert_eq!(img.id, id);

    // Removing by the name removes the named image; then the same string is a prefix again.
    c.image
        .remove_image(cri::RemoveImageRequest { image: spec(&hex) })
        .await?;
    let img = image_status(&mut c, &hex)
        .await?
        .expect("now the id prefix");
    assert_eq!(img.id, id);
    assert!(
        image_status(&mut c, &named.id()).await?.is_none(),
        "the named image is gone"
    );
    // Names keep resolving as before: the full reference, the id with and without sha256:.
    for s in [by_id.as_str(), id.as_str(), &id["sha256:".len()..]] {
        assert_eq!(
            image_status(&mut c, s).await?.map(|i| i.id),
            Some(id.clone())
        );
    }
    Ok(())
}
