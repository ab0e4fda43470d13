//! The CRI socket serves every mainstream gRPC stack: tonic (Rust) and gRPC's C-core (PyPI's
//! grpcio, which sends the percent-encoded socket path as :authority), and a verbose
//! ContainerStatus carries the OCI runtime spec as containerd and CRI-O report it.

mod common;

use std::path::{Path, PathBuf};

use anyhow::Context;
use k8s_cri::v1 as cri;
use kelson_testkit::cri as req;
use tonic::Code;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The venv tests/grpc/setup.sh makes. tests/run.sh runs it and sets KELSON_REQUIRE_PY, so in
/// CI a missing venv fails; a developer's plain `cargo test` skips the Python client (and says
/// so).
fn grpc_venv_python() -> Option<PathBuf> {
    let python = repo("target/grpc-venv/bin/python3");
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var_os("KELSON_REQUIRE_PY").is_none(),
        "no {}: run tests/grpc/setup.sh",
        python.display()
    );
    println!("skipped: no target/grpc-venv (tests/grpc/setup.sh makes it)");
    None
}

/// The CRI proto the k8s-cri crate in Cargo.lock was generated from: the same messages the
/// daemon serves, wherever cargo keeps its sources. (This host's platform only: offline,
/// cargo cannot resolve the dependencies of the others, which it never downloaded.)
fn cri_proto() -> anyhow::Result<PathBuf> {
    let platform = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &platform])
        .arg("--manifest-path")
        .arg(repo("Cargo.toml"))
        .output()
        .context("cargo metadata")?;
    anyhow::ensure!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let manifest = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "k8s-cri"))
        .and_then(|p| p["manifest_path"].as_str())
        .context("k8s-cri is not in cargo metadata")?;
    let proto = Path::new(manifest).with_file_name("proto/v1.proto");
    anyhow::ensure!(proto.exists(), "{} is missing", proto.display());
    Ok(proto)
}

/// The `info` JSON of a verbose ContainerStatus.
async fn verbose_info(
    c: &mut kelson_testkit::daemon::Cri,
    id: &str,
) -> Result<serde_json::Value, tonic::Status> {
    let r = c
        .runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await?
        .into_inner();
    let info = r.info.get("info").cloned().unwrap_or_default();
    serde_json::from_str(&info).map_err(|e| tonic::Status::internal(format!("{e}: {info}")))
}

/// The runtime spec's mount at `destination`, if any.
fn spec_mount<'a>(info: &'a serde_json::Value, destination: &str) -> Option<&'a serde_json::Value> {
    info["runtimeSpec"]["mounts"]
        .as_array()?
        .iter()
        .find(|m| m["destination"] == destination)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_grpcio_client_runs_a_pod_over_the_socket() -> anyhow::Result<()> {
    let Some(python) = grpc_venv_python() else {
        return Ok(());
    };
    let proto = cri_proto()?;
    let (e, image) = common::env_standard().await?;
    let top = format!("kelson-grpcpy-{}", std::process::id());
    let logs = tempfile::tempdir()?;
    let volume = tempfile::tempdir()?;
    let out = tokio::process::Command::new(&python)
        .arg(repo("tests/grpc/cri_client.py"))
        .arg(&e.daemon.socket)
        .arg(&proto)
        .arg(&image)
        .arg(format!("/{top}/py"))
        .arg(logs.path())
        .arg(volume.path())
        .output()
        .await
        .context("running tests/grpc/cri_client.py")?;
    common::remove_cgroup_tree(&top);
    anyhow::ensure!(
        out.status.success(),
        "the grpcio client failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("report: {}", String::from_utf8_lossy(&out.stdout)))?;

    assert_eq!(report["version"]["runtime_name"], "kelson", "{report}");
    assert_eq!(report["version"]["runtime_api_version"], "v1");
    let tags = report["images"].as_array().context("images")?;
    assert!(tags.iter().any(|t| t == image.as_str()), "{tags:?}");
    assert_eq!(report["image_fs"].as_array().map(|a| a.len()), Some(1));
    let pod = report["pod"].as_str().context("pod id")?;
    assert!(
        report["pods_running"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p == pod)),
        "{report}"
    );
    assert!(
        !report["pods_after"]
            .as_array()
            .context("pods after")?
            .iter()
            .any(|p| p == pod)
    );
    let ctr = &report["container"];
    assert_eq!(ctr["state"], "CONTAINER_RUNNING");
    assert_eq!(ctr["info"]["sandboxID"], pod);
    let m = spec_mount(&ctr["info"], "/data").context("no /data in the runtime spec")?;
    assert_eq!(m["source"], volume.path().display().to_string());
    // An id kelson never made names nothing: a clean NotFound status, not a reset stream.
    assert_eq!(report["bad_id"], "NOT_FOUND");
    // The calls reached the handlers: kelsond's rewrite dropped the refused authority.
    assert!(
        common::pull(&e.daemon, &image).await.is_ok(),
        "the daemon still serves the Rust client"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn verbose_container_status_carries_the_runtime_spec() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let top = format!("kelson-grpcspec-{}", std::process::id());
    let logs = tempfile::tempdir()?;
    let volume = tempfile::tempdir()?;
    let cfg = common::pod_config("spec", "default", &format!("/{top}/spec"), logs.path());
    let pod = common::run_pod(&mut c, &cfg).await?;

    let mut ctr = common::container_config("main", &image, &["/bin/sleep", "3600"]);
    ctr.mounts = vec![cri::Mount {
        readonly: true,
        ..common::bind("/data", volume.path())
    }];
    // Created, not started (critest inspects containers in that state), then running.
    let id = common::create(&mut c, &pod, &cfg, ctr).await?;
    for start in [false, true] {
        if start {
            c.runtime.start_container(req::start(&id)).await?;
        }
        let info = verbose_info(&mut c, &id).await?;
        assert_eq!(info["sandboxID"], pod.as_str());
        assert_eq!(
            info["runtimeSpec"]["process"]["args"],
            serde_json::json!(["/bin/sleep", "3600"])
        );
        assert!(info["runtimeSpec"]["ociVersion"].is_string(), "{info}");
        let m = spec_mount(&info, "/data").context("no /data in the runtime spec")?;
        assert_eq!(m["source"], volume.path().display().to_string());
        let options = m["options"].as_array().context("mount options")?;
        assert!(options.iter().any(|o| o == "ro"), "{m}");
        // Created already has its process (waiting to be started), as under runc.
        assert!(info["pid"].as_u64().is_some_and(|p| p > 0), "{info}");
    }
    // A plain status names no info.
    let plain = c
        .runtime
        .container_status(req::status(&id))
        .await?
        .into_inner();
    assert!(plain.info.is_empty());

    // A bundle without its spec: a clear error naming it, not an empty answer.
    let info = verbose_info(&mut c, &id).await?;
    let state_dir = info["stateDir"].as_str().context("stateDir")?;
    let spec = Path::new(state_dir).join("bundle/config.json");
    let kept = std::fs::read(&spec)?;
    std::fs::remove_file(&spec)?;
    let err = verbose_info(&mut c, &id)
        .await
        .expect_err("no spec, no info");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("runtime spec"), "{err:?}");
    std::fs::write(&spec, kept)?;

    common::remove_pod(&mut c, &pod, &top).await?;
    Ok(())
}
