//! PullImage: resolve the reference through the configured hosts, fetch manifest (choosing the
//! node's platform from an index) and config, then download the layers concurrently, each into
//! an anonymous staging file, and unpack each once its compressed digest checked out — so no
//! thread waits on the network, and unverified bytes are never unpacked. Nothing becomes visible
//! until every digest (compressed, uncompressed) has checked out; the image record is committed
//! last.

use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use reqwest::header::HeaderValue;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::store::{ImageRecord, LayerRecord};

use super::content::ContentError;
use super::digest::Digest;
use super::http::Bounds;
use super::manifest::{self, Descriptor, Document, Platform};
use super::reference::ImageRef;
use super::registry::{BlobError, BlobSink, Registry, RegistryError};
use super::snapshot;
use super::unpack::{self, UnpackError};
use super::{ImageError, ImageService};

/// Layers unpacked at once by the whole daemon. Unpacking runs on tokio's blocking pool, which
/// the CRI verbs share (main.rs caps it at 16 threads): half of it at most goes to unpacking.
/// Downloads take no thread at all.
const MAX_CONCURRENT_UNPACKS: usize = 8;
static UNPACK_SLOTS: Semaphore = Semaphore::const_new(MAX_CONCURRENT_UNPACKS);

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
        let header = |v: String, what: &str| {
            let mut h = HeaderValue::from_str(&v)
                .map_err(|_| ImageError::Auth(format!("{what} is not a valid header value")))?;
            h.set_sensitive(true);
            Ok::<_, ImageError>(h)
        };
        let basic = |u: &str, p: &str| {
            use base64::Engine as _;
            let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            header(format!("Basic {b}"), "username or password")
        };
        if !self.registry_token.is_empty() {
            return Ok(Auth::Bearer(header(
                format!("Bearer {}", self.registry_token),
                "registry_token",
            )?));
        }
        if !self.username.is_empty() || !self.password.is_empty() {
            return Ok(Auth::Basic(basic(&self.username, &self.password)?));
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
            return Ok(Auth::Basic(basic(u, p)?));
        }
        if !self.identity_token.is_empty() {
            return Ok(Auth::RefreshToken(self.identity_token.clone()));
        }
        Ok(Auth::Anonymous)
    }
}

/// How to authenticate to the upstream registry (and its token realm); never logged.
#[derive(Clone)]
pub enum Auth {
    Anonymous,
    /// `Basic base64(user:password)`: sent when the registry or its token realm asks for it.
    Basic(HeaderValue),
    /// `Bearer <registry_token>`: sent as is.
    Bearer(HeaderValue),
    /// An OAuth2 refresh token (docker's IdentityToken), exchanged for a Bearer token on first use.
    RefreshToken(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth(<redacted>)")
    }
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
        let bounds = Bounds::starting_now(
            self.config.image.pull_progress_timeout,
            self.config.image.pull_deadline,
        );
        let reg = Registry::new(endpoints, &auth, bounds).map_err(registry_error(&shown))?;

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
        let mut buf = Vec::new();
        reg.fetch_blob(r, desc, &mut buf)
            .await
            .map_err(|e| blob_error(e, shown, desc, &self.dirs.content_tmp()))?;
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
        // Download first, into a file no one else can see (O_TMPFILE: gone with the pull, even
        // after a crash); only verified bytes are unpacked.
        let staging_dir = self.dirs.content_tmp();
        let file = tempfile::tempfile_in(&staging_dir).map_err(|source| ContentError::Io {
            digest: desc.digest.to_string(),
            op: "create staging file in",
            path: staging_dir.clone(),
            source,
        })?;
        let mut staging = Staging {
            file: tokio::fs::File::from_std(file),
            pulled: &self.counters.pulled_bytes,
        };
        reg.fetch_blob(r, desc, &mut staging)
            .await
            .map_err(|e| blob_error(e, shown, desc, &staging_dir))?;
        let file = staging.finish().await.map_err(|source| ContentError::Io {
            digest: desc.digest.to_string(),
            op: "rewind staging file in",
            path: staging_dir.clone(),
            source,
        })?;

        let _slot = UNPACK_SLOTS
            .acquire()
            .await
            .map_err(|e| ImageError::Task(e.to_string()))?;
        let pending = self.snapshots.prepare()?;
        let max = self.config.image.max_layer_bytes;
        let budget = Arc::clone(budget);
        // The staging dir goes with the unpacker, so that it is removed only once nothing
        // writes to it any more, even when this pull is cancelled.
        let (pending, unpacked) = tokio::task::spawn_blocking(move || {
            let unpacked = unpack_stream(file, &pending.fs(), max, &budget);
            (pending, unpacked)
        })
        .await
        .map_err(|e| ImageError::Task(e.to_string()))?;
        let (diff, stats) = unpacked.map_err(|f| unpack_failure(f, shown, desc, max))?;
        if &diff != diff_id {
            return Err(ImageError::DigestMismatch {
                image: shown.into(),
                what: format!("uncompressed layer {} (diff id)", desc.digest),
                expected: diff_id.to_string(),
                actual: diff.to_string(),
            });
        }
        tracing::debug!(layer = %desc.digest, entries = stats.entries, bytes = stats.file_bytes, "unpacked layer");
        Ok(record(self.snapshots.commit(pending, diff_id)?))
    }
}

/// A layer's staging file, counting the bytes it receives.
struct Staging<'a> {
    file: tokio::fs::File,
    pulled: &'a AtomicU64,
}

impl BlobSink for Staging<'_> {
    async fn put(&mut self, chunk: Bytes) -> io::Result<()> {
        self.pulled.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        self.file.write_all(&chunk).await
    }

    async fn clear(&mut self) -> io::Result<()> {
        self.file.flush().await?;
        self.file.set_len(0).await?;
        self.file.rewind().await.map(|_| ())
    }
}

impl Staging<'_> {
    /// The complete file, positioned at its start for the unpacker.
    async fn finish(mut self) -> io::Result<std::fs::File> {
        self.file.flush().await?;
        let mut f = self.file.into_std().await;
        f.rewind()?;
        Ok(f)
    }
}

/// The pull's error for a failed blob download.
fn blob_error(e: BlobError, shown: &str, desc: &Descriptor, staging_dir: &Path) -> ImageError {
    match e {
        BlobError::Registry(source) => ImageError::Registry {
            image: shown.into(),
            source,
        },
        BlobError::Sink(source) => ImageError::Content(ContentError::Io {
            digest: desc.digest.to_string(),
            op: "write staging file in",
            path: PathBuf::from(staging_dir),
            source,
        }),
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

/// Why the unpacker stopped: the unpack error if it got that far, and the I/O error otherwise.
type UnpackFailure = (Option<UnpackError>, io::Error);

/// The blocking side of a layer pull: decompress the verified blob, hash the result (the diff
/// id) and unpack it into `fs`.
fn unpack_stream(
    blob: std::fs::File,
    fs: &Path,
    max: u64,
    budget: &unpack::Budget,
) -> Result<(Digest, unpack::UnpackStats), UnpackFailure> {
    let reader = io::BufReader::with_capacity(256 * 1024, blob);
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
