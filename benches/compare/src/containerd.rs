//! containerd (Debian's package, CRI plugin built in, runc) started for the comparison with its
//! own root, state, socket, registry hosts dir and CNI config, so it shares nothing with the
//! machine's own containerd, if any.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const CONTAINERD_BIN: &str = "/usr/bin/containerd";

pub struct Containerd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub certs_d: PathBuf,
    config: PathBuf,
}

/// The config: CRI plugin with runc v2 shims, cgroupfs (as kelson in this run), overlayfs,
/// the project's pause image, and containerd's defaults otherwise.
pub fn config(dir: &Path, socket: &Path, pause_image: &str, runc: &str) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # This machine withholds CAP_SYS_RESOURCE, so lowering oom_score_adj (containerd gives pause
  # -998) is refused and runc fails; the knob containerd offers for such hosts clamps it.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{net_d}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs_d}"
"#,
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        socket = socket.display(),
        net_d = dir.join("net.d").display(),
        certs_d = dir.join("certs.d").display(),
    )
}

impl Containerd {
    pub fn start(pause_image: &str, conflist: &str) -> anyhow::Result<Containerd> {
        if !Path::new(CONTAINERD_BIN).exists() {
            bail!(
                "{CONTAINERD_BIN} is missing: run benches/compare.sh, which installs containerd and runc"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("kelson-bench-containerd-")
            .tempdir()?;
        let socket = dir.path().join("containerd.sock");
        let certs_d = dir.path().join("certs.d");
        let net_d = dir.path().join("net.d");
        std::fs::create_dir_all(&certs_d)?;
        std::fs::create_dir_all(&net_d)?;
        std::fs::write(net_d.join("10-bench.conflist"), conflist)?;
        let cfg = dir.path().join("config.toml");
        std::fs::write(
            &cfg,
            config(dir.path(), &socket, pause_image, "/usr/sbin/runc"),
        )?;
        let mut c = Containerd {
            child: None,
            dir,
            socket,
            certs_d,
            config: cfg,
        };
        c.spawn()?;
        Ok(c)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("containerd.log"))?;
        let child = Command::new(CONTAINERD_BIN)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket.exists()
            || std::os::unix::net::UnixStream::connect(&self.socket).is_err()
        {
            if Instant::now() > deadline {
                bail!("containerd did not come up: {}", self.log());
            }
            if let Some(s) = self
                .child
                .as_mut()
                .and_then(|ch| ch.try_wait().ok().flatten())
            {
                self.child = None;
                bail!("containerd exited with {s}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// SIGTERM, wait, start again (its shims and containers keep running).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
            child.wait()?;
        }
        Ok(())
    }

    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.spawn()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// A plain-HTTP registry at `host` (containerd 1.6 wants the `[host]` table spelled out).
    pub fn plain_http_registry(&self, host: &str) -> anyhow::Result<()> {
        let d = self.certs_d.join(host);
        std::fs::create_dir_all(&d)?;
        std::fs::write(
            d.join("hosts.toml"),
            format!(
                "server = \"http://{host}\"\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )?;
        Ok(())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_points_every_path_into_its_own_dir() {
        let c = config(
            Path::new("/tmp/x"),
            Path::new("/tmp/x/c.sock"),
            "127.0.0.1:5000/bench/pause:v1",
            "/usr/sbin/runc",
        );
        assert!(c.contains("root = \"/tmp/x/root\""));
        assert!(c.contains("address = \"/tmp/x/c.sock\""));
        assert!(c.contains("sandbox_image = \"127.0.0.1:5000/bench/pause:v1\""));
        assert!(c.contains("conf_dir = \"/tmp/x/net.d\""));
        assert!(c.contains("config_path = \"/tmp/x/certs.d\""));
        // Valid TOML with the CRI plugin table where containerd 1.6 looks for it.
        let v: toml::Value = c.parse().unwrap();
        assert!(v["plugins"]["io.containerd.grpc.v1.cri"]["containerd"].is_table());
    }
}
