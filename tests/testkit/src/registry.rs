//! A `docker-registry` process on 127.0.0.1, killed (by PID) when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

#[derive(Debug, Default, Clone)]
pub struct RegistryOptions {
    pub tls: bool,
    /// Basic auth (htpasswd) with this user and password.
    pub auth: Option<(String, String)>,
}

pub struct Registry {
    child: Child,
    pub port: u16,
    /// `127.0.0.1:PORT`
    pub host: String,
    pub dir: tempfile::TempDir,
    /// PEM of the CA that signed the registry's certificate, when TLS is on.
    pub ca_pem: Option<PathBuf>,
    pub options: RegistryOptions,
}

pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A throwaway CA and a leaf certificate for 127.0.0.1 signed by it (rustls refuses a CA
/// certificate used as the server's own).
/// Returns (CA PEM, certificate PEM, key PEM) paths in `dir`.
pub fn self_signed(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let ca = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let csr = dir.join("cert.csr");
    let ext = dir.join("ext.cnf");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n",
    )?;
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("running openssl")?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=kelson test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "cert.csr",
    ])?;
    run(&[
        "x509",
        "-req",
        "-in",
        "cert.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ])?;
    let _ = (ca_key, csr);
    Ok((ca, cert, key))
}

impl Registry {
    pub fn start(options: RegistryOptions) -> anyhow::Result<Registry> {
        if !Path::new(REGISTRY_BIN).exists() {
            bail!(
                "{REGISTRY_BIN} is missing: run packaging/setup.sh (installs Debian's docker-registry)"
            );
        }
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        let mut ca_pem = None;
        if options.tls {
            let (ca, cert, key) = self_signed(dir.path())?;
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
            ca_pem = Some(ca);
        }
        if let Some((user, pass)) = &options.auth {
            let hash = bcrypt::hash(pass, 5)?;
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n"))?;
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kelson-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry")?;
        let reg = Registry {
            child,
            port,
            host: format!("127.0.0.1:{port}"),
            dir,
            ca_pem,
            options,
        };
        reg.wait_ready()?;
        Ok(reg)
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                if self.options.tls {
                    return Ok(());
                }
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: x\r\n\r\n");
                let mut buf = [0u8; 64];
                if matches!(s.read(&mut buf), Ok(n) if n > 0) {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
        bail!(
            "docker-registry did not come up on port {}: {log}",
            self.port
        )
    }

    /// The hosts.toml directory entry that makes kelson trust this registry.
    pub fn hosts_toml(&self) -> String {
        let scheme = if self.options.tls { "https" } else { "http" };
        let mut s = format!("server = \"{scheme}://{}\"\n", self.host);
        if let Some(ca) = &self.ca_pem {
            s.push_str(&format!("ca = \"{}\"\n", ca.display()));
        }
        s
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
