//! Test images built here, byte for byte known: layers as tars (gzip, zstd or plain), configs,
//! manifests (OCI or Docker schema 2) and indexes, pushed to a `Registry` over its HTTP API.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::registry::Registry;

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone)]
pub struct Layer {
    /// Uncompressed tar: its digest is the diff id.
    pub tar: Vec<u8>,
    /// What the registry serves.
    pub blob: Vec<u8>,
    pub media_type: String,
}

impl Layer {
    pub fn new(tar: Vec<u8>, c: Compression) -> Layer {
        let (blob, media_type) = match c {
            Compression::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&tar).expect("gzip to memory");
                (
                    e.finish().expect("gzip to memory"),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                )
            }
            Compression::Zstd => (
                zstd::encode_all(&tar[..], 3).expect("zstd to memory"),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        Layer {
            tar,
            blob,
            media_type: media_type.into(),
        }
    }

    pub fn diff_id(&self) -> String {
        sha256(&self.tar)
    }

    pub fn digest(&self) -> String {
        sha256(&self.blob)
    }
}

#[derive(Debug, Clone)]
pub struct Image {
    pub layers: Vec<Layer>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub manifest_media_type: String,
}

impl Image {
    /// An image of `layers` for `arch`; `docker` selects Docker schema 2 media types.
    pub fn new(layers: Vec<Layer>, arch: &str, docker: bool, run: serde_json::Value) -> Image {
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id()).collect();
        let config = serde_json::to_vec(&json!({
            "architecture": arch, "os": "linux", "config": run,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [],
        }))
        .expect("json");
        Image::with_config(layers, config, docker)
    }

    pub fn with_config(mut layers: Vec<Layer>, config: Vec<u8>, docker: bool) -> Image {
        let (mt, cmt) = if docker {
            (
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.container.image.v1+json",
            )
        } else {
            (
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.config.v1+json",
            )
        };
        if docker {
            for l in &mut layers {
                if l.media_type.ends_with("+gzip") {
                    l.media_type = "application/vnd.docker.image.rootfs.diff.tar.gzip".into();
                }
            }
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": mt,
            "config": {"mediaType": cmt, "digest": sha256(&config), "size": config.len()},
            "layers": layers.iter().map(|l| json!({"mediaType": l.media_type, "digest": l.digest(), "size": l.blob.len()})).collect::<Vec<_>>(),
        }))
        .expect("json");
        Image {
            layers,
            config,
            manifest,
            manifest_media_type: mt.into(),
        }
    }

    pub fn id(&self) -> String {
        sha256(&self.config)
    }

    pub fn manifest_digest(&self) -> String {
        sha256(&self.manifest)
    }
}

/// A tar builder that writes raw names (so tests can be hostile) and fixed metadata.
pub struct TarBuilder {
    b: tar::Builder<Vec<u8>>,
}

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TarBuilder {
    pub fn new() -> TarBuilder {
        TarBuilder {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        let bytes = path.as_bytes();
        assert!(bytes.len() < 100, "test paths are short");
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = Self::header(path, tar::EntryType::Directory, mode, 0);
        h.set_cksum();
        self.b.append(&h, &[][..]).expect("tar");
        self
    }

    pub fn file(self, path: &str, mode: u32, data: &[u8]) -> Self {
        self.file_owned(path, mode, data, 0, 0)
    }

    pub fn file_owned(mut self, path: &str, mode: u32, data: &[u8], uid: u64, gid: u64) -> Self {
        let mut h = Self::header(path, tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_cksum();
        self.b.append(&h, data).expect("tar");
        self
    }

    pub fn file_with_xattr(
        mut self,
        path: &str,
        mode: u32,
        data: &[u8],
        key: &str,
        value: &str,
    ) -> Self {
        self.b
            .append_pax_extensions([(format!("SCHILY.xattr.{key}").as_str(), value.as_bytes())])
            .expect("tar");
        let mut h = Self::header(path, tar::EntryType::Regular, mode, data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).expect("tar");
        self
    }

    /// A regular file carrying the xattrs `attrs` (pax `SCHILY.xattr.*` records).
    pub fn file_with_xattrs(
        mut self,
        path: &str,
        mode: u32,
        data: &[u8],
        attrs: &[(&str, &[u8])],
    ) -> Self {
        let records: Vec<(String, &[u8])> = attrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        self.b
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
            .expect("tar");
        let mut h = Self::header(path, tar::EntryType::Regular, mode, data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).expect("tar");
        self
    }

    /// A GNU sparse file of `real_size` bytes: a hole, then the 512 bytes `tail` at its end. The
    /// archive holds one header and one block whatever `real_size` says.
    pub fn gnu_sparse(mut self, path: &str, real_size: u64, tail: &[u8; 512]) -> Self {
        let mut h = Self::header(path, tar::EntryType::GNUSparse, 0o644, 512);
        let gnu = h.as_gnu_mut().expect("gnu header");
        gnu.set_real_size(real_size);
        gnu.sparse[0].set_offset(real_size - 512);
        gnu.sparse[0].set_length(512);
        h.set_cksum();
        self.b.append(&h, &tail[..]).expect("tar");
        self
    }

    pub fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Self {
        let mut h = Self::header(path, kind, 0o777, 0);
        let t = target.as_bytes();
        h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
        h.set_cksum();
        self.b.append(&h, &[][..]).expect("tar");
        self
    }

    pub fn device(mut self, path: &str, kind: tar::EntryType, major: u32, minor: u32) -> Self {
        let mut h = Self::header(path, kind, 0o666, 0);
        h.set_device_major(major).expect("tar");
        h.set_device_minor(minor).expect("tar");
        h.set_cksum();
        self.b.append(&h, &[][..]).expect("tar");
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().expect("tar")
    }
}

/// Builds the standard test images from the host's busybox.
pub struct TestImages;

impl TestImages {
    /// busybox and the shared libraries it needs, at their host paths. Built once per process:
    /// compressing it takes seconds in a debug build, and every test's standard image has it.
    pub fn busybox_layer() -> anyhow::Result<Layer> {
        static LAYER: std::sync::Mutex<Option<Layer>> = std::sync::Mutex::new(None);
        let mut built = LAYER
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if built.is_none() {
            *built = Some(Self::build_busybox_layer()?);
        }
        Ok(built.clone().expect("built above"))
    }

    fn build_busybox_layer() -> anyhow::Result<Layer> {
        let mut t = TarBuilder::new().dir("bin", 0o755);
        let bb = std::fs::read("/bin/busybox")
            .context("reading /bin/busybox (install Debian's busybox)")?;
        t = t.file("bin/busybox", 0o755, &bb);
        for applet in [
            "sh", "ls", "cat", "echo", "sleep", "true", "false", "id", "nc", "wc", "md5sum",
            "head", "printf", "env", "kill", "ps",
        ] {
            t = t.link(tar::EntryType::Symlink, &format!("bin/{applet}"), "busybox");
        }
        let mut dirs_done = std::collections::HashSet::new();
        for lib in shared_libs(Path::new("/bin/busybox"))? {
            let rel = lib.trim_start_matches('/');
            let parent = Path::new(rel)
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut acc = String::new();
            for c in parent.split('/').filter(|c| !c.is_empty()) {
                acc = if acc.is_empty() {
                    c.to_owned()
                } else {
                    format!("{acc}/{c}")
                };
                if dirs_done.insert(acc.clone()) {
                    t = t.dir(&acc, 0o755);
                }
            }
            let data = std::fs::read(std::fs::canonicalize(&lib)?)?;
            t = t.file(rel, 0o755, &data);
        }
        Ok(Layer::new(t.finish(), Compression::Gzip))
    }

    /// Config, a file later whited out, a directory later made opaque.
    pub fn etc_layer() -> Layer {
        let t = TarBuilder::new()
            .dir("etc", 0o755)
            .file(
                "etc/passwd",
                0o644,
                b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
            )
            .file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")
            .file("etc/old.conf", 0o600, b"to be whited out\n")
            .dir("var", 0o755)
            .dir("var/cache", 0o755)
            .file("var/cache/stale", 0o644, b"stale\n")
            .dir("tmp", 0o1777);
        Layer::new(t.finish(), Compression::Gzip)
    }

    /// Whiteout, opaque dir, hard link, set-uid, xattr, fifo, device node, absolute symlink.
    pub fn special_layer() -> Layer {
        let t = TarBuilder::new()
            .dir("etc", 0o755)
            .file("etc/.wh.old.conf", 0o644, b"")
            .dir("var", 0o755)
            .dir("var/cache", 0o700)
            .file("var/cache/.wh..wh..opq", 0o644, b"")
            .file("var/cache/fresh", 0o640, b"fresh\n")
            .dir("opt", 0o755)
            .file_owned("opt/owned", 0o4755, b"#!/bin/sh\n", 1000, 1001)
            .link(tar::EntryType::Link, "opt/hard", "opt/owned")
            .file_with_xattr("opt/attr", 0o644, b"x", "user.kelson", "yes")
            .link(tar::EntryType::Symlink, "opt/abs", "/etc/passwd")
            .device("opt/fifo", tar::EntryType::Fifo, 0, 0)
            .device("opt/null", tar::EntryType::Char, 1, 3);
        Layer::new(t.finish(), Compression::Zstd)
    }

    pub fn data_layer(bytes: usize, seed: u64) -> Layer {
        let t = TarBuilder::new().dir("data", 0o755).file(
            &format!("data/blob-{seed}"),
            0o644,
            &pseudo_random(bytes, seed),
        );
        Layer::new(t.finish(), Compression::None)
    }

    /// A layer of `bytes` spread over many files, half incompressible and half text-like: closer
    /// to real layers than either extreme.
    pub fn bulk_layer(bytes: usize, seed: u64, c: Compression) -> Layer {
        let mut t = TarBuilder::new().dir(&format!("data{seed}"), 0o755);
        let random = pseudo_random(bytes / 2, seed);
        let text: Vec<u8> = (0..bytes / 2)
            .map(|i| b"kelson layer text "[(i * 7 + seed as usize) % 18])
            .collect();
        for (i, chunk) in random.chunks(256 * 1024).enumerate() {
            t = t.file(&format!("data{seed}/r{i}"), 0o644, chunk);
        }
        for (i, chunk) in text.chunks(64 * 1024).enumerate() {
            t = t.file(&format!("data{seed}/t{i}"), 0o644, chunk);
        }
        Layer::new(t.finish(), c)
    }

    /// The pull benchmark's image: busybox plus three 50 MiB layers (gzip, zstd, gzip), about
    /// 160 MB unpacked.
    pub fn big() -> anyhow::Result<Image> {
        const LAYER_BYTES: usize = 50 << 20;
        Ok(Image::new(
            vec![
                Self::busybox_layer()?,
                Self::bulk_layer(LAYER_BYTES, 1, Compression::Gzip),
                Self::bulk_layer(LAYER_BYTES, 2, Compression::Zstd),
                Self::bulk_layer(LAYER_BYTES, 3, Compression::Gzip),
            ],
            "amd64",
            false,
            json!({"Cmd": ["/bin/sh"]}),
        ))
    }

    /// A sandbox ("pause") image for runtimes that need one: the static `kelson-init` as
    /// `/pause`, run as `/pause --pause`.
    pub fn pause(kelson_init: &Path) -> anyhow::Result<Image> {
        let bin = std::fs::read(kelson_init)
            .with_context(|| format!("reading {}", kelson_init.display()))?;
        let t = TarBuilder::new().file("pause", 0o755, &bin);
        Ok(Image::new(
            vec![Layer::new(t.finish(), Compression::Gzip)],
            "amd64",
            false,
            json!({"Entrypoint": ["/pause", "--pause"], "User": "65535:65535"}),
        ))
    }

    /// The standard 4-layer test image.
    pub fn standard(arch: &str, docker: bool) -> anyhow::Result<Image> {
        Ok(Image::new(
            vec![
                Self::busybox_layer()?,
                Self::etc_layer(),
                Self::special_layer(),
                Self::data_layer(4096, 1),
            ],
            arch,
            docker,
            json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "User": "65534", "Labels": {"kelson.io/init": "true"}}),
        ))
    }
}

/// Incompressible, reproducible bytes (xorshift).
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Absolute paths of the shared libraries `bin` loads (from `ldd`).
fn shared_libs(bin: &Path) -> anyhow::Result<Vec<String>> {
    let out = std::process::Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(str::to_owned)
        })
        .collect())
}

/// Pushes images and indexes to a test registry over the distribution API (monolithic blob
/// uploads, Basic auth when the registry has it).
pub struct Pusher {
    client: reqwest::Client,
    auth: Option<(String, String)>,
    base: String,
}

impl Pusher {
    pub fn new(reg: &Registry) -> anyhow::Result<Pusher> {
        let mut b = reqwest::Client::builder();
        if let Some(ca) = &reg.ca_pem {
            b = b.tls_certs_merge(reqwest::Certificate::from_pem_bundle(&std::fs::read(ca)?)?);
        }
        let scheme = if reg.options.tls { "https" } else { "http" };
        Ok(Pusher {
            client: b.build()?,
            auth: reg.options.auth.clone(),
            base: format!("{scheme}://{}", reg.host),
        })
    }

    fn req(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, url);
        match &self.auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    pub async fn blob(&self, repo: &str, data: &[u8]) -> anyhow::Result<()> {
        let d = sha256(data);
        let head = self
            .req(
                reqwest::Method::HEAD,
                &format!("{}/v2/{repo}/blobs/{d}", self.base),
            )
            .send()
            .await?;
        if head.status().is_success() {
            return Ok(());
        }
        let start = self
            .req(
                reqwest::Method::POST,
                &format!("{}/v2/{repo}/blobs/uploads/", self.base),
            )
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("starting the upload of blob {d}"))?;
        let location = start
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .context("upload without a Location")?;
        let mut url = reqwest::Url::parse(&self.base)?.join(location)?;
        url.query_pairs_mut().append_pair("digest", &d);
        self.req(reqwest::Method::PUT, url.as_str())
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("pushing blob {d}"))?;
        Ok(())
    }

    pub async fn manifest(
        &self,
        repo: &str,
        tag: &str,
        body: &[u8],
        media_type: &str,
    ) -> anyhow::Result<()> {
        self.req(
            reqwest::Method::PUT,
            &format!("{}/v2/{repo}/manifests/{tag}", self.base),
        )
        .header(reqwest::header::CONTENT_TYPE, media_type)
        .body(body.to_vec())
        .send()
        .await?
        .error_for_status()
        .with_context(|| format!("pushing manifest {repo}:{tag}"))?;
        Ok(())
    }

    /// Push `img` as `repo:tag`; returns the manifest digest.
    pub async fn image(&self, repo: &str, tag: &str, img: &Image) -> anyhow::Result<String> {
        for l in &img.layers {
            self.blob(repo, &l.blob).await?;
        }
        self.blob(repo, &img.config).await?;
        self.manifest(repo, tag, &img.manifest, &img.manifest_media_type)
            .await?;
        Ok(img.manifest_digest())
    }

    /// Push every image by digest and an OCI index over them as `repo:tag`; returns its digest.
    pub async fn index(
        &self,
        repo: &str,
        tag: &str,
        imgs: &[(&Image, &str)],
    ) -> anyhow::Result<String> {
        let mut manifests = Vec::new();
        for (img, arch) in imgs {
            self.image(repo, &img.manifest_digest(), img).await?;
            manifests.push(json!({
                "mediaType": img.manifest_media_type, "digest": img.manifest_digest(), "size": img.manifest.len(),
                "platform": {"os": "linux", "architecture": arch},
            }));
        }
        let index = serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}),
        )?;
        self.manifest(repo, tag, &index, "application/vnd.oci.image.index.v1+json")
            .await?;
        Ok(sha256(&index))
    }
}
