//! PullImage: resolve the reference through the configured hosts, fetch manifest (choosing the
//! node's platform from an index) and config, then download every layer concurrently while it
//! is decompressed and unpacked as it streams in. Nothing becomes visible until every digest
//! (compressed, uncompressed) has checked out; the image record is committed last.

use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use oci_client::secrets::RegistryAuth;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::store::{ImageRecord, LayerRecord};

use super::digest::Digest;
use super::manifest::{self, Descriptor, Document, Platform};
use super::reference::ImageRef;
use super::registry::{Registry, RegistryError};
use super::snapshot;
use super::unpack::{self, UnpackError};
use super::{ImageError, ImageService};

/// Chunks buffered between the download and the unpacker of one layer.
const UNPACK_QUEUE_CHUNKS: usize = 32;

/// Credentials from a PullImage request; never logged.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// base64("user:password"), docker config style.
    pub auth: String,
    pub identity_token: String,
    pub registry_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

impl Credentials {
    pub fn to_registry_auth(&self) -> Result<Auth, ImageError> {
        if !self.registry_token.is_empty() {
            return Ok(Auth::Direct(RegistryAuth::Bearer(
                self.registry_token.clone(),
            )));
        }
        if !self.username.is_empty() || !self.password.is_empty() {
            return Ok(Auth::Direct(RegistryAuth::Basic(
                self.username.clone(),
                self.password.clone(),
            )));
        }
        if !self.auth.is_empty() {
            use base64_decode::decode;
            let raw = decode(self.auth.trim())
                .ok_or_else(|| ImageError::Auth("auth is not valid base64".into()))?;
            let s =
                String::from_utf8(raw).map_err(|_| ImageError::Auth("auth is not UTF-8".into()))?;
            let (u, p) = s
                .split_once(':')
                .ok_or_else(|| ImageError::Auth("auth is not base64(user:password)".into()))?;
            return Ok(Auth::Direct(RegistryAuth::Basic(
                u.to_owned(),
                p.to_owned(),
            )));
        }
        if !self.identity_token.is_empty() {
            return Ok(Auth::RefreshToken(self.identity_token.clone()));
        }
        Ok(Auth::Direct(RegistryAuth::Anonymous))
    }
}

/// How to authenticate to the upstream registry.
#[derive(Clone)]
pub enum Auth {
    Direct(RegistryAuth),
    /// An OAuth2 refresh token (docker's IdentityToken), exchanged for a Bearer token on first use.
    RefreshToken(String),
}

/// Standard base64 decoding for the `auth` field (hand-written: 20 lines do not justify a crate).
mod base64_decode {
    pub fn decode(s: &str) -> Option<Vec<u8>> {
        let val = |c: u8| -> Option<u32> {
            Some(match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return None,
            } as u32)
        };
        let s = s.trim_end_matches('=').as_bytes();
        let mut out = Vec::with_capacity(s.len() * 3 / 4);
        for chunk in s.chunks(4) {
            if chunk.len() == 1 {
                return None;
            }
            let mut n = 0u32;
            for (i, c) in chunk.iter().enumerate() {
                n |= val(*c)? << (18 - 6 * i);
            }
            out.push((n >> 16) as u8);
            if chunk.len() > 2 {
                out.push((n >> 8) as u8);
            }
            if chunk.len() > 3 {
                out.push(n as u8);
            }
        }
        Some(out)
    }

    #[cfg(test)]
    #[test]
    fn decodes() {
        assert_eq!(decode("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(decode("YQ==").unwrap(), b"a");
        assert_eq!(decode("YWI=").unwrap(), b"ab");
        assert!(decode("a").is_none());
        assert!(decode("!!!!").is_none());
    }
}

/// Reads the chunks a download task sends; an `Err` chunk (download failed) becomes an I/O error
/// so a truncated stream can never look like a complete archive.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, ()>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(())) => return Err(io::Error::other("layer download failed")),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// Hashes the uncompressed stream (the diff id) and stops a decompression bomb.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    n: u64,
    max: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        if self.n > self.max {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "layer exceeds max_layer_bytes",
            ));
        }
        self.hasher.update(&buf[..k]);
        Ok(k)
    }
}

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl ImageService {
    /// Pull `image` and return its id (the config digest).
    pub async fn pull(
        self: &Arc<Self>,
        image: &str,
        creds: &Credentials,
    ) -> Result<String, ImageError> {
        let result = self.pull_inner(image, creds).await;
        if result.is_err() {
            // A failed pull keeps nothing (as containerd's pull lease does on failure): the
            // layers it completed are collected, which also gives the space back after a
            // full disk. Layers another pull still holds stay (leases).
            let this = Arc::clone(self);
            let gc = tokio::task::spawn_blocking(move || this.collect_garbage()).await;
            if let Ok(Err(e)) = gc {
                tracing::warn!(error = %e, "collecting after a failed pull");
            }
        }
        result
    }

    async fn pull_inner(
        self: &Arc<Self>,
        image: &str,
        creds: &Credentials,
    ) -> Result<String, ImageError> {
        let r = ImageRef::parse(image)?;
        let shown = r.to_string();
        let auth = creds.to_registry_auth()?;
        let endpoints = super::hosts::resolve(&self.config.registry.config_path, &r.registry)?;
        let reg = Registry::new(endpoints, auth, self.config.image.pull_progress_timeout);

        let Resolved {
            manifest,
            top_digest,
            docs,
        } = resolve_manifest(&reg, &r, &shown).await?;
        let manifest_digest = docs
            .last()
            .map(|(d, _)| d.clone())
            .unwrap_or(top_digest.clone());
        let config = self
            .fetch_small(
                &reg,
                &r,
                &manifest.config,
                manifest::MAX_CONFIG_BYTES,
                &shown,
            )
            .await?;
        let summary = manifest::parse_config(&config, manifest.layers.len())
            .map_err(manifest_error(&shown))?;

        let mut leased: Vec<Digest> = summary.diff_ids.clone();
        leased.extend(docs.iter().map(|(d, _)| d.clone()));
        leased.push(manifest.config.digest.clone());
        let _lease = self.lease(leased);

        let budget = Arc::new(unpack::Budget::new(unpack::Limits {
            layer_bytes: self.config.image.max_layer_bytes,
            image_bytes: self.config.image.max_image_bytes,
            image_entries: self.config.image.max_image_entries,
        }));
        let layers = self
            .ensure_layers(
                &reg,
                &r,
                &manifest.layers,
                &summary.diff_ids,
                &budget,
                &shown,
            )
            .await?;

        for (d, b) in &docs {
            self.content.put(d, b)?;
        }
        self.content.put(&manifest.config.digest, &config)?;

        let mut rec = ImageRecord {
            id: manifest.config.digest.to_string(),
            repo_tags: r
                .tag
                .as_ref()
                .map(|_| vec![r.to_string()])
                .unwrap_or_default(),
            repo_digests: vec![r.repo_digest(&top_digest)],
            manifest_digest: manifest_digest.to_string(),
            blobs: docs.iter().map(|(d, _)| d.to_string()).collect(),
            layers,
            user: summary.user,
            pulled_at: now(),
            last_used: 0,
        };
        rec.blobs.sort();
        rec.blobs.dedup();
        let rec = self.store.put_image(&rec)?;
        tracing::info!(image = %shown, id = %rec.id, layers = rec.layers.len(), "pulled image");
        Ok(rec.id)
    }

    /// Every layer (with its diff id), `max_concurrent_downloads` at a time, in order.
    async fn ensure_layers(
        &self,
        reg: &Registry,
        r: &ImageRef,
        layers: &[Descriptor],
        diff_ids: &[Digest],
        budget: &Arc<unpack::Budget>,
        shown: &str,
    ) -> Result<Vec<LayerRecord>, ImageError> {
        let work: Vec<(Descriptor, Digest)> = layers
            .iter()
            .cloned()
            .zip(diff_ids.iter().cloned())
            .collect();
        futures::stream::iter(work)
            .map(|(desc, diff_id)| async move {
                self.ensure_layer(reg, r, &desc, &diff_id, budget, shown)
                    .await
            })
            .buffered(self.config.image.max_concurrent_downloads)
            .try_collect()
            .await
    }

    /// A small blob (the config) fully into memory, bounded and digest-checked.
    async fn fetch_small(
        &self,
        reg: &Registry,
        r: &ImageRef,
        desc: &Descriptor,
        max: u64,
        shown: &str,
    ) -> Result<Vec<u8>, ImageError> {
        if let Ok(b) = self.content.get(&desc.digest) {
            if Digest::of(&b) == desc.digest {
                return Ok(b);
            }
        }
        if desc.size > max {
            return Err(ImageError::Manifest {
                image: shown.into(),
                source: manifest::ManifestError::TooLarge {
                    what: "image config",
                    max,
                },
            });
        }
        let mut s = reg.blob(r, desc).await.map_err(registry_error(shown))?;
        let mut buf = Vec::new();
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(registry_error(shown))?;
            if (buf.len() + chunk.len()) as u64 > desc.size {
                return Err(ImageError::Registry {
                    image: shown.into(),
                    source: RegistryError::TooLarge {
                        what: format!("blob {}", desc.digest),
                        max: desc.size,
                    },
                });
            }
            buf.extend_from_slice(&chunk);
        }
        let actual = Digest::of(&buf);
        if actual != desc.digest || buf.len() as u64 != desc.size {
            return Err(ImageError::DigestMismatch {
                image: shown.into(),
                what: format!("blob {}", desc.digest),
                expected: desc.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(buf)
    }

    fn layer_lock(&self, diff_id: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.layer_locks.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, l| Arc::strong_count(l) > 1);
        m.entry(diff_id.clone()).or_default().clone()
    }

    /// Make sure the snapshot for `diff_id` exists: two pulls of the same layer share one
    /// download (the second waits on the lock, then finds the snapshot).
    async fn ensure_layer(
        &self,
        reg: &Registry,
        r: &ImageRef,
        desc: &Descriptor,
        diff_id: &Digest,
        budget: &Arc<unpack::Budget>,
        shown: &str,
    ) -> Result<LayerRecord, ImageError> {
        let lock = self.layer_lock(diff_id);
        let _g = lock.lock().await;
        let record = |(bytes, inodes): (u64, u64)| LayerRecord {
            diff_id: diff_id.to_string(),
            bytes,
            inodes,
        };
        if self.snapshots.exists(diff_id) {
            return Ok(record(snapshot::read_usage(&self.dirs.snapshot(diff_id))));
        }
        let pending = self.snapshots.prepare()?;
        let (tx, rx) = mpsc::channel::<Result<Bytes, ()>>(UNPACK_QUEUE_CHUNKS);
        let max = self.config.image.max_layer_bytes;
        let budget = Arc::clone(budget);
        // The staging dir goes with the unpacker, so that it is removed only once nothing
        // writes to it any more, even when this pull is cancelled.
        let unpacker = tokio::task::spawn_blocking(move || {
            let unpacked = unpack_stream(rx, &pending.fs(), max, &budget);
            (pending, unpacked)
        });

        let what = format!("layer {}", desc.digest);
        let dl = self.download(reg, r, desc, shown, &what, &tx).await;
        let complete = dl.err.is_none() && dl.bytes == desc.size && dl.digest == desc.digest;
        let _ = tx
            .send(if complete { Ok(Bytes::new()) } else { Err(()) })
            .await;
        drop(tx);
        let (pending, unpacked) = unpacker
            .await
            .map_err(|e| ImageError::Task(e.to_string()))?;
        if let Some(e) = dl.err {
            return Err(e);
        }
        let mismatch = || ImageError::DigestMismatch {
            image: shown.into(),
            what: what.clone(),
            expected: desc.digest.to_string(),
            actual: format!("{} ({} of {} bytes)", dl.digest, dl.bytes, desc.size),
        };
        // A short download is the reason unless the unpacker stopped first with its own error.
        let unpacker_failed_first = dl.unpacker_stopped && unpacked.is_err();
        if !complete && !unpacker_failed_first {
            return Err(mismatch());
        }
        let (diff, stats) = unpacked.map_err(|f| unpack_failure(f, shown, desc, max))?;
        if !complete {
            return Err(mismatch());
        }
        if &diff != diff_id {
            return Err(ImageError::DigestMismatch {
                image: shown.into(),
                what: format!("uncompressed {what} (diff id)"),
                expected: diff_id.to_string(),
                actual: diff.to_string(),
            });
        }
        tracing::debug!(layer = %desc.digest, entries = stats.entries, bytes = stats.file_bytes, "unpacked layer");
        Ok(record(self.snapshots.commit(pending, diff_id)?))
    }

    /// Stream the compressed layer `desc` into `tx`, hashing and counting it on the way; stops
    /// at the first registry error, at more bytes than the descriptor says, or when the
    /// unpacker stops taking them.
    async fn download(
        &self,
        reg: &Registry,
        r: &ImageRef,
        desc: &Descriptor,
        shown: &str,
        what: &str,
        tx: &mpsc::Sender<Result<Bytes, ()>>,
    ) -> Download {
        let reg_err = registry_error(shown);
        let mut err: Option<ImageError> = None;
        let mut unpacker_stopped = false;
        let mut hasher = Sha256::new();
        let mut n = 0u64;
        match reg.blob(r, desc).await {
            Err(source) => err = Some(reg_err(source)),
            Ok(mut s) => {
                while let Some(chunk) = s.next().await {
                    let b = match chunk {
                        Ok(b) => b,
                        Err(source) => {
                            err = Some(reg_err(source));
                            break;
                        }
                    };
                    n += b.len() as u64;
                    self.counters
                        .pulled_bytes
                        .fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    if n > desc.size {
                        err = Some(reg_err(RegistryError::TooLarge {
                            what: what.to_owned(),
                            max: desc.size,
                        }));
                        break;
                    }
                    hasher.update(&b);
                    if tx.send(Ok(b)).await.is_err() {
                        // The unpacker stopped (full disk, bad entry): its error, not the
                        // short download, is the reason.
                        unpacker_stopped = true;
                        break;
                    }
                }
            }
        }
        Download {
            err,
            unpacker_stopped,
            digest: Digest::from_hasher(hasher),
            bytes: n,
        }
    }
}

/// The image manifest a reference resolved to.
struct Resolved {
    manifest: manifest::Manifest,
    /// The digest the reference resolved to (an index's, for a multi-platform image).
    top_digest: Digest,
    /// Each manifest document fetched on the way, the top one first.
    docs: Vec<(Digest, Bytes)>,
}

/// The manifest `r` names; from an index, the one for the node's platform.
async fn resolve_manifest(
    reg: &Registry,
    r: &ImageRef,
    shown: &str,
) -> Result<Resolved, ImageError> {
    let (reg_err, man_err) = (registry_error(shown), manifest_error(shown));
    let (top, top_digest) = reg.manifest(r, r.digest.as_ref()).await.map_err(&reg_err)?;
    let mut docs = vec![(top_digest.clone(), top.clone())];
    let manifest = match manifest::parse_document(&top).map_err(&man_err)? {
        Document::Manifest(m) => m,
        Document::Index(entries) => {
            let d = manifest::select_platform(&entries, &Platform::host()).map_err(&man_err)?;
            let (b, d) = reg.manifest(r, Some(&d)).await.map_err(&reg_err)?;
            docs.push((d, b.clone()));
            match manifest::parse_document(&b).map_err(&man_err)? {
                Document::Manifest(m) => m,
                Document::Index(_) => {
                    return Err(man_err(manifest::ManifestError::Malformed {
                        what: "index",
                        reason: "an index entry is itself an index".into(),
                    }));
                }
            }
        }
    };
    Ok(Resolved {
        manifest,
        top_digest,
        docs,
    })
}

fn registry_error(shown: &str) -> impl Fn(RegistryError) -> ImageError + '_ {
    move |source| ImageError::Registry {
        image: shown.into(),
        source,
    }
}

fn manifest_error(shown: &str) -> impl Fn(manifest::ManifestError) -> ImageError + '_ {
    move |source| ImageError::Manifest {
        image: shown.into(),
        source,
    }
}

/// How the download of one layer ended.
struct Download {
    /// A registry error, or more bytes than the descriptor says.
    err: Option<ImageError>,
    /// The unpacker stopped taking chunks before the end.
    unpacker_stopped: bool,
    /// Of the bytes received.
    digest: Digest,
    bytes: u64,
}

/// Why the unpacker stopped: the unpack error if it got that far, and the I/O error otherwise.
type UnpackFailure = (Option<UnpackError>, io::Error);

/// The blocking side of a layer pull: decompress the chunks `rx` receives, hash the result (the
/// diff id) and unpack it into `fs`.
fn unpack_stream(
    rx: mpsc::Receiver<Result<Bytes, ()>>,
    fs: &Path,
    max: u64,
    budget: &unpack::Budget,
) -> Result<(Digest, unpack::UnpackStats), UnpackFailure> {
    let reader = io::BufReader::with_capacity(
        256 * 1024,
        ChannelReader {
            rx,
            cur: Bytes::new(),
        },
    );
    let dec = unpack::decompressor(reader).map_err(|e| (None, e))?;
    let mut h = HashingReader {
        inner: dec,
        hasher: Sha256::new(),
        n: 0,
        max,
    };
    let stats =
        unpack::unpack(&mut h, fs, budget).map_err(|e| (Some(e), io::Error::other("unpack")))?;
    // Read to the true end (tar's trailing blocks) so the diff id covers every byte.
    io::copy(&mut h, &mut io::sink()).map_err(|e| (None, e))?;
    Ok((Digest::from_hasher(h.hasher), stats))
}

/// The pull's error for an unpacker failure: a layer over `max` bytes is named as such.
fn unpack_failure(
    (ue, ioe): UnpackFailure,
    shown: &str,
    desc: &Descriptor,
    max: u64,
) -> ImageError {
    let too_large = |e: &io::Error| e.kind() == io::ErrorKind::FileTooLarge;
    match ue {
        Some(UnpackError::Archive(e)) if too_large(&e) => ImageError::LayerTooLarge {
            image: shown.into(),
            layer: desc.digest.to_string(),
            max,
        },
        Some(source) => ImageError::Unpack {
            image: shown.into(),
            layer: desc.digest.to_string(),
            source,
        },
        None if too_large(&ioe) => ImageError::LayerTooLarge {
            image: shown.into(),
            layer: desc.digest.to_string(),
            max,
        },
        None => ImageError::Unpack {
            image: shown.into(),
            layer: desc.digest.to_string(),
            source: UnpackError::Archive(ioe),
        },
    }
}
