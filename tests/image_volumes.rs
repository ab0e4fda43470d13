//! Image `VOLUME`s as real images write them: paths from images built on Windows (`C:/dir`,
//! `:dir`) are rooted at `/` with the drive letter kept, as containerd does, and the container
//! can use them.

mod common;

use k8s_cri::v1 as cri;
use kelson_testkit::TarBuilder;
use kelson_testkit::cri as req;

#[tokio::test(flavor = "multi_thread")]
async fn windows_style_volume_paths_are_rooted_at_slash() -> anyhow::Result<()> {
    let e = common::env().await?;
    // What a Windows-built image ships: content under `C:/weird_test_dir` in the layer.
    let layer = TarBuilder::new()
        .dir("C:", 0o755)
        .dir("C:/weird_test_dir", 0o755)
        .file(
            "C:/weird_test_dir/weird_test_file",
            0o644,
            b"test_content\n",
        )
        .finish();
    let image = common::push_with_layer(
        &e,
        "test/volume-paths",
        "v1",
        layer,
        serde_json::json!({
            "Cmd": ["/bin/sleep", "3600"],
            "Env": ["PATH=/bin"],
            "Volumes": {"C:/weird_test_dir": {}, ":colon_prefixed": {}, "D:/made_here": {}},
        }),
    )
    .await?;
    let mut c = e.daemon.cri().await?;
    let top = format!("kelson-imgvol-{}", std::process::id());
    let logs = tempfile::tempdir()?;
    let cfg = common::pod_config("imgvol", "default", &format!("/{top}/v"), logs.path());
    let pod = common::run_pod(&mut c, &cfg).await?;
    let result = async {
        let mut ctr = common::container_config("c", &image, &["/bin/sleep", "3600"]);
        ctr.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                run_as_user: Some(cri::Int64Value { value: 4242 }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = common::create_start(&mut c, &pod, &cfg, ctr).await?;
        let run = |cmd: &'static str| {
            let id = id.clone();
            let mut c = c.clone();
            async move { common::exec_sync(&mut c, &id, &["/bin/sh", "-c", cmd]).await }
        };
        // The image's content is in the volume it declared.
        assert_eq!(
            run("cat /C:/weird_test_dir/weird_test_file").await?,
            (0, "test_content\n".into(), String::new())
        );
        // Volumes the image did not have are made, the container user's, and writable.
        for dir in ["/:colon_prefixed", "/D:/made_here"] {
            let (code, out, err) = common::exec_sync(
                &mut c,
                &id,
                &[
                    "/bin/sh",
                    "-c",
                    &format!(
                        "busybox stat -c '%u %a' '{dir}' && echo used > '{dir}/f' && cat '{dir}/f'"
                    ),
                ],
            )
            .await?;
            // 0755 as docker makes them, whatever kelsond's own umask (077).
            assert_eq!(
                (code, out.as_str()),
                (0, "4242 755\nused\n"),
                "{dir}: {err}"
            );
        }
        anyhow::Ok(())
    }
    .await;
    c.runtime.remove_pod_sandbox(req::remove_pod(&pod)).await?;
    assert_eq!(common::mounts_of(&e.daemon), 0);
    common::remove_cgroup_tree(&top);
    assert!(
        !std::path::Path::new("/D:").exists(),
        "a volume was made on the host"
    );
    result
}
