//! Packaging: the systemd unit (checked by systemd itself), kelsond's readiness notification,
//! the Debian package (contents, control data, and its binaries running a real container), and
//! the node-image recipe agreeing with kelson's own configuration.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use kelson_testkit::{Daemon, Pusher, Registry, RegistryOptions, TestImages};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `systemd-analyze verify` on `unit` with its ExecStart pointed at `kelsond`.
fn verify_unit(unit: &str, kelsond: &Path) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let text: String = unit
        .lines()
        .map(|l| match l.strip_prefix("ExecStart=") {
            Some(_) => format!("ExecStart={}\n", kelsond.display()),
            None => format!("{l}\n"),
        })
        .collect();
    let path = dir.path().join("kelson.service");
    std::fs::write(&path, text)?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .context("systemd-analyze (packaging/setup.sh installs systemd)")?;
    let said = String::from_utf8_lossy(&out.stderr);
    // Only what concerns this unit: on a machine where systemd is not PID 1 it also
    // comments on units of its own.
    let ours: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("kelson.service"))
        .collect();
    anyhow::ensure!(ours.is_empty(), "systemd-analyze: {}", ours.join("\n"));
    Ok(())
}

#[test]
fn the_unit_is_what_systemd_and_kubelet_need() -> anyhow::Result<()> {
    let unit = std::fs::read_to_string(repo("packaging/systemd/kelson.service"))?;
    for line in [
        "Type=notify",
        // Shims and containers survive a restart of kelsond.
        "KillMode=process",
        "Delegate=yes",
        "Restart=always",
        "Before=kubelet.service",
        "ExecStart=/usr/bin/kelsond",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
    verify_unit(&unit, Path::new(common::KELSOND))
}

#[test]
fn kelsond_tells_systemd_when_it_serves() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let notify = dir.path().join("notify");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify)?;
    listener.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let socket = dir.path().join("state/kelson.sock");
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "")?;
    let mut child = Command::new(common::KELSOND)
        .arg("--config")
        .arg(&cfg)
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .env("NOTIFY_SOCKET", &notify)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut buf = [0u8; 128];
    let got = listener.recv(&mut buf);
    // Ready means serving: the socket is there when the message arrives.
    let serving = socket.exists();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let n = got.context("no READY=1 from kelsond")?;
    assert_eq!(&buf[..n], b"READY=1\n");
    assert!(serving, "READY=1 before the CRI socket existed");
    Ok(())
}

/// The package built by packaging/build-deb.sh (tests/run.sh builds it first). A missing
/// package is a failure unless the run says it does not want these checks with
/// KELSON_SKIP_DEB=1 (refused together with KELSON_REQUIRE_DEB, which CI sets); the skip is
/// written straight to stderr so the test harness does not swallow it.
fn built_deb() -> Option<PathBuf> {
    let found = std::fs::read_dir(repo("target/debian"))
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("kelson_") && n.ends_with(".deb"))
        });
    if found.is_none() {
        let skip = std::env::var_os("KELSON_SKIP_DEB").is_some_and(|v| v == "1")
            && std::env::var_os("KELSON_REQUIRE_DEB").is_none();
        assert!(
            skip,
            "no target/debian/kelson_*.deb: run packaging/build-deb.sh \
             (or set KELSON_SKIP_DEB=1 to skip the package checks)"
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP the_debian_package_installs_a_working_runtime: KELSON_SKIP_DEB=1 and no \
             target/debian/kelson_*.deb (packaging/build-deb.sh builds it)"
        );
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn the_debian_package_installs_a_working_runtime() -> anyhow::Result<()> {
    let Some(deb) = built_deb() else {
        return Ok(());
    };
    let contents = run(Command::new("dpkg-deb").arg("-c").arg(&deb))?;
    for path in [
        "./usr/bin/kelsond",
        "./usr/bin/kelson-shim",
        "./usr/bin/kelson-shim-engine",
        "./usr/bin/kelson-init",
        "./etc/kelson/config.toml",
        "/kelson.service",
        "./usr/share/doc/kelson/config.md",
    ] {
        assert!(
            contents.contains(path),
            "{path} not in the package:\n{contents}"
        );
    }
    let control = run(Command::new("dpkg-deb").arg("-I").arg(&deb))?;
    for field in [
        "Package: kelson",
        "libseccomp2",
        "Recommends: containernetworking-plugins",
    ] {
        assert!(control.contains(field), "{field}:\n{control}");
    }
    let conffiles = run(Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .arg("conffiles"))?;
    assert!(conffiles.contains("/etc/kelson/config.toml"), "{conffiles}");
    let postinst = run(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("postinst"))?;
    assert!(
        postinst.contains("kelson.service"),
        "the unit is not enabled: {postinst}"
    );

    // Unpacked, the package is a runtime: its unit verifies against its own kelsond, its
    // default config loads, kelson-init is static, and its binaries run a container.
    let x = tempfile::tempdir()?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(x.path()))?;
    let bin = x.path().join("usr/bin");
    let unit = [
        "lib/systemd/system/kelson.service",
        "usr/lib/systemd/system/kelson.service",
    ]
    .iter()
    .map(|p| x.path().join(p))
    .find(|p| p.exists())
    .context("no unit in the package")?;
    verify_unit(&std::fs::read_to_string(unit)?, &bin.join("kelsond"))?;
    run(Command::new(bin.join("kelsond"))
        .arg("--config")
        .arg(x.path().join("etc/kelson/config.toml"))
        .arg("config"))?;
    let ldd = Command::new("ldd").arg(bin.join("kelson-init")).output()?;
    assert!(
        !ldd.status.success() || String::from_utf8_lossy(&ldd.stdout).contains("statically"),
        "kelson-init is dynamic: {}",
        String::from_utf8_lossy(&ldd.stdout)
    );
    let registry = Registry::start(RegistryOptions::default())?;
    Pusher::new(&registry)?
        .image(
            "test/standard",
            "v1",
            &TestImages::standard("amd64", false)?,
        )
        .await?;
    let daemon = Daemon::start(&bin.join("kelsond"), "")?;
    daemon.hosts(&registry.host, &registry.hosts_toml())?;
    let image = format!("{}/test/standard:v1", registry.host);
    common::pull(&daemon, &image).await?;
    let mut c = daemon.cri().await?;
    let logs = tempfile::tempdir()?;
    let top = format!("kelson-deb-{}", std::process::id());
    let cfg = common::pod_config("deb", "default", &format!("/{top}/d"), logs.path());
    let pod = common::run_pod(&mut c, &cfg).await?;
    let id = common::create_start(
        &mut c,
        &pod,
        &cfg,
        common::container_config("c", &image, &["/bin/sleep", "3600"]),
    )
    .await?;
    let (code, out, _) =
        common::exec_sync(&mut c, &id, &["/bin/busybox", "echo", "packaged"]).await?;
    assert_eq!((code, out.trim()), (0, "packaged"));
    common::remove_pod(&mut c, &pod, &top).await?;
    Ok(())
}

#[test]
fn the_node_image_recipe_agrees_with_kelson() -> anyhow::Result<()> {
    run(Command::new("bash")
        .arg("-n")
        .arg(repo("packaging/node-image/setup-node.sh")))?;
    let kubelet = std::fs::read_to_string(repo("packaging/node-image/kubelet-config.yaml"))?;
    let field = |name: &str| -> String {
        kubelet
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("kubelet-config.yaml has no {name}"))
            .trim()
            .to_owned()
    };
    // kelson's effective config from the recipe's file, as kelsond reads it.
    let effective = run(Command::new(common::KELSOND)
        .arg("--config")
        .arg(repo("packaging/node-image/kelson-config.toml"))
        .arg("config"))?;
    let key = |name: &str| -> String {
        effective
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = ")))
            .unwrap_or_else(|| panic!("no {name} in kelsond's config:\n{effective}"))
            .trim_matches('"')
            .to_owned()
    };
    assert_eq!(field("cgroupDriver"), key("cgroup_driver"));
    assert_eq!(
        field("containerRuntimeEndpoint"),
        format!("unix://{}", key("address"))
    );
    // kubelet's image GC first, kelson's as the backstop above it.
    let kubelet_high: u32 = field("imageGCHighThresholdPercent").parse()?;
    let kelson_low: u32 = key("low_threshold_percent").parse()?;
    assert!(
        kubelet_high < kelson_low + 1,
        "{kubelet_high} vs {kelson_low}"
    );
    assert_eq!(key("enabled"), "true");
    Ok(())
}
