//! A `kelsond` under test: its own root, state, socket, hosts dir and config file, so tests run
//! in parallel without sharing anything. Stopped with SIGTERM (or killed) by PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub use kelson_conformance::Cri;

pub struct Daemon {
    child: Option<Child>,
    bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub certs_d: PathBuf,
    /// The CNI conf dir this daemon reads.
    pub net_d: PathBuf,
    pub config: PathBuf,
    /// Run in a network namespace of its own (`unshare --net`): nothing it does to networking
    /// touches the machine's.
    netns: bool,
    /// Run inside this (persistent) network namespace: it outlives kelsond, as a host's does.
    netns_path: Option<PathBuf>,
}

/// A CNI config that only brings up the pods' loopback interface.
pub const LOOPBACK_CONFLIST: &str =
    r#"{"cniVersion":"1.0.0","name":"test-lo","plugins":[{"type":"loopback"}]}"#;

#[derive(Debug, Default, Clone)]
pub struct DaemonOptions {
    pub netns: bool,
    /// The conflist to install (None: loopback only; empty: none).
    pub conflist: Option<String>,
    pub extra_bin_dirs: Vec<PathBuf>,
    pub plugin_timeout: Option<String>,
    /// `log_level` for kelsond (default: debug for kelson's own modules).
    pub log_level: Option<String>,
    /// Put the daemon's root (images, snapshots) on a tmpfs of this many MiB: a small
    /// filesystem of its own, for disk-pressure tests. Unmounted with the daemon.
    pub root_tmpfs_mib: Option<u64>,
}

impl Daemon {
    /// Start `bin` with the test dirs plus `extra` TOML appended to the config, and a CNI
    /// config of just the loopback plugin (touches nothing outside the pods' namespaces).
    pub fn start(bin: &Path, extra: &str) -> anyhow::Result<Daemon> {
        Daemon::start_opts(bin, extra, DaemonOptions::default())
    }

    pub fn start_opts(bin: &Path, extra: &str, opts: DaemonOptions) -> anyhow::Result<Daemon> {
        let dir = tempfile::Builder::new().prefix("kelson-test-").tempdir()?;
        // As /run and /var/lib are on a node: the pods' own root (user namespaces) must be
        // able to traverse down to kelsond's dirs.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
        }
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let socket = state.join("kelson.sock");
        if let Some(mib) = opts.root_tmpfs_mib {
            std::fs::create_dir_all(&root)?;
            nix::mount::mount(
                Some("tmpfs"),
                &root,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some(format!("size={mib}m,mode=0711").as_str()),
            )
            .context("mounting a tmpfs root")?;
        }
        let certs_d = dir.path().join("certs.d");
        let net_d = dir.path().join("net.d");
        std::fs::create_dir_all(&certs_d)?;
        std::fs::create_dir_all(&net_d)?;
        let conflist = opts
            .conflist
            .clone()
            .unwrap_or_else(|| LOOPBACK_CONFLIST.to_owned());
        if !conflist.is_empty() {
            std::fs::write(net_d.join("10-test.conflist"), conflist)?;
        }
        let mut bin_dirs: Vec<String> = opts
            .extra_bin_dirs
            .iter()
            .map(|p| format!("\"{}\"", p.display()))
            .collect();
        bin_dirs.extend(["\"/usr/lib/cni\"".to_owned(), "\"/opt/cni/bin\"".to_owned()]);
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "root = \"{}\"\nstate = \"{}\"\nlog_level = \"{}\"\n{extra}\n[registry]\nconfig_path = \"{}\"\n[network]\nconf_dir = \"{}\"\nbin_dirs = [{}]\nplugin_timeout = \"{}\"\n",
                root.display(),
                state.display(),
                opts.log_level.as_deref().unwrap_or("kelson=debug,info"),
                certs_d.display(),
                net_d.display(),
                bin_dirs.join(", "),
                opts.plugin_timeout.as_deref().unwrap_or("60s"),
            ),
        )?;
        let mut d = Daemon {
            child: None,
            bin: bin.to_owned(),
            dir,
            root,
            state,
            socket,
            certs_d,
            net_d,
            config,
            netns: opts.netns,
            netns_path: None,
        };
        d.spawn()?;
        Ok(d)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let shim = self.bin.with_file_name("kelson-shim");
        if !shim.exists() {
            bail!(
                "{} is missing: run `cargo build --workspace --bins` first",
                shim.display()
            );
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("kelsond.log"))?;
        let mut cmd = if let Some(ns) = &self.netns_path {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display()))
                .arg("--")
                .arg(&self.bin);
            c
        } else if self.netns {
            let mut c = Command::new("unshare");
            c.args(["--net", "--"]).arg(&self.bin);
            c
        } else {
            Command::new(&self.bin)
        };
        let child = cmd
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .map(|c| c.try_wait())
                .transpose()?
                .flatten()
            {
                self.child = None;
                bail!("kelsond exited with {status}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "kelsond socket {} did not appear: {}",
            self.socket.display(),
            self.log()
        )
    }

    /// Run in a network namespace of its own from the next (re)start on.
    pub fn set_netns(&mut self, on: bool) {
        self.netns = on;
    }

    /// Run inside the network namespace at `path` from the next (re)start on (None: the
    /// machine's).
    pub fn set_netns_path(&mut self, path: Option<PathBuf>) {
        self.netns_path = path;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kelsond.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("not running")?;
        kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM)?;
        Ok(c.wait()?)
    }

    /// SIGKILL, as a crash would.
    pub fn crash(&mut self) -> anyhow::Result<()> {
        let mut c = self.child.take().context("not running")?;
        c.kill()?;
        c.wait()?;
        Ok(())
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.stop()?;
        }
        self.spawn()
    }

    pub async fn cri(&self) -> anyhow::Result<Cri> {
        kelson_conformance::connect(&self.socket).await
    }

    /// Write `certs.d/<registry>/hosts.toml`.
    pub fn hosts(&self, registry: &str, toml: &str) -> anyhow::Result<()> {
        let d = self.certs_d.join(registry);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("hosts.toml"), toml)?;
        Ok(())
    }

    pub fn snapshot_dir(&self, diff_id: &str) -> PathBuf {
        self.root
            .join("snapshots")
            .join(diff_id.trim_start_matches("sha256:"))
            .join("fs")
    }
}

impl Daemon {
    /// Test hygiene after a failed test: kill the shims and containers this daemon started (by
    /// the pids they recorded under its own dirs) and unmount what it mounted there.
    fn reap_leftovers(&self) {
        if let Ok(rd) = std::fs::read_dir(self.state.join("containers")) {
            for e in rd.flatten() {
                for f in ["shim/shim.pid", "shim/init.pid"] {
                    if let Some(pid) = std::fs::read_to_string(e.path().join(f))
                        .ok()
                        .and_then(|s| s.trim().parse::<i32>().ok())
                    {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.state.join("pods")) {
            for e in rd.flatten() {
                if let Some(pid) = std::fs::read_to_string(e.path().join("pidns.holder"))
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        let dir = self.dir.path().display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.reap_leftovers();
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
