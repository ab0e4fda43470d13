//! The image service: pull (registry → content store → snapshots), list, status, remove, usage and
//! collection of unreferenced content. Speaks in domain types; gRPC lives in `cri/`.

pub mod content;
pub mod gc;
pub mod hosts;
pub mod http;
pub mod manifest;
mod pull;
pub mod registry;
pub mod snapshot;
pub mod token;
pub mod unpack;
// Below image/ so that config and dirs can use them without importing the image service.
pub use crate::{digest, reference};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::dirs::Dirs;
use crate::store::{ImageRecord, Store, StoreError};

use content::{ContentError, ContentStore};
use digest::Digest;
use reference::{ImageRef, ReferenceError};
use snapshot::{SnapshotError, Snapshots};

pub use pull::{Auth, Credentials};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Hosts(#[from] hosts::HostsError),
    #[error("pulling {image}: {source}")]
    Registry {
        image: String,
        source: registry::RegistryError,
    },
    #[error("pulling {image}: {source}")]
    Manifest {
        image: String,
        source: manifest::ManifestError,
    },
    #[error("pulling {image}: unpacking layer {layer}: {source}")]
    Unpack {
        image: String,
        layer: String,
        source: unpack::UnpackError,
    },
    #[error("pulling {image}: layer {layer}: uncompressed content exceeds {max} bytes")]
    LayerTooLarge {
        image: String,
        layer: String,
        max: u64,
    },
    #[error("pulling {image}: {what}: content hashes to {actual}, expected {expected}")]
    DigestMismatch {
        image: String,
        what: String,
        expected: String,
        actual: String,
    },
    #[error("auth config: {0}")]
    Auth(String),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unpack task failed: {0}")]
    Task(String),
    #[error("image id prefix {0} is ambiguous")]
    Ambiguous(String),
}

impl ImageError {
    /// The image filesystem (or its quota) is full: the caller can act on that (free space,
    /// let image GC run) rather than on a broken image.
    pub fn is_no_space(&self) -> bool {
        fn io_full(e: &std::io::Error) -> bool {
            matches!(
                e.raw_os_error(),
                Some(nix::libc::ENOSPC | nix::libc::EDQUOT)
            )
        }
        match self {
            ImageError::Unpack { source, .. } => match source {
                unpack::UnpackError::Archive(e) => io_full(e),
                unpack::UnpackError::Fs { errno, .. } => {
                    matches!(errno, nix::errno::Errno::ENOSPC | nix::errno::Errno::EDQUOT)
                }
                _ => false,
            },
            ImageError::Content(ContentError::Io { source, .. })
            | ImageError::Snapshot(SnapshotError::Io { source, .. }) => io_full(source),
            ImageError::Store(StoreError::Db { message, .. }) => {
                message.contains("No space left") || message.contains("Disk quota exceeded")
            }
            _ => false,
        }
    }
}

/// An image as the CRI edge reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    pub record: ImageRecord,
    pub pinned: bool,
}

/// Digests that in-flight pulls hold: collection never removes them.
#[derive(Default)]
struct Leases {
    held: HashMap<Digest, usize>,
}

pub struct ImageService {
    dirs: Dirs,
    store: Arc<Store>,
    content: ContentStore,
    snapshots: Snapshots,
    config: Config,
    pinned: HashSet<String>,
    leases: Arc<Mutex<Leases>>,
    layer_locks: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Running totals for the metrics endpoint.
    pub counters: Counters,
    /// Held while the GC policy runs: a second trigger meanwhile is skipped, not queued.
    policy_running: Mutex<()>,
}

/// Monotonic counts since start-up.
#[derive(Debug, Default)]
pub struct Counters {
    /// Layer bytes received from registries (complete or not).
    pub pulled_bytes: std::sync::atomic::AtomicU64,
    /// Snapshots and blobs removed by garbage collection.
    pub gc_snapshots: std::sync::atomic::AtomicU64,
    pub gc_blobs: std::sync::atomic::AtomicU64,
    /// Images removed by the GC policy.
    pub gc_images: std::sync::atomic::AtomicU64,
}

/// Releases its digests when dropped.
pub struct LeaseGuard {
    leases: Arc<Mutex<Leases>>,
    digests: Vec<Digest>,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let mut l = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        for d in &self.digests {
            if let Some(n) = l.held.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    l.held.remove(d);
                }
            }
        }
    }
}

impl ImageService {
    pub fn new(dirs: Dirs, store: Arc<Store>, config: Config) -> ImageService {
        let pinned = config
            .image
            .pinned
            .iter()
            .filter_map(|p| ImageRef::parse(p).ok())
            .map(|r| r.to_string())
            .collect();
        ImageService {
            content: ContentStore::new(dirs.clone()),
            snapshots: Snapshots::new(dirs.clone()),
            dirs,
            store,
            config,
            pinned,
            leases: Arc::default(),
            layer_locks: Mutex::default(),
            counters: Counters::default(),
            policy_running: Mutex::new(()),
        }
    }

    pub fn snapshots(&self) -> &Snapshots {
        &self.snapshots
    }

    fn lease(&self, digests: Vec<Digest>) -> LeaseGuard {
        let mut l = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        for d in &digests {
            *l.held.entry(d.clone()).or_default() += 1;
        }
        LeaseGuard {
            leases: self.leases.clone(),
            digests,
        }
    }

    fn info(&self, record: ImageRecord) -> ImageInfo {
        let pinned = record
            .repo_tags
            .iter()
            .chain(&record.repo_digests)
            .any(|n| self.pinned.contains(n));
        ImageInfo { record, pinned }
    }

    /// Find an image by id (with or without `sha256:`), repo tag or repo digest, in any of the
    /// forms kubelet and crictl send (`busybox`, `docker.io/library/busybox:latest`, …), or by a
    /// unique prefix of its id. Returns the image and the name it was found by (None when found
    /// by id).
    ///
    /// The order is containerd's: a full id, then a name, then an id prefix — so `abc` is the
    /// repository `docker.io/library/abc` when that image is here, and an id prefix otherwise.
    pub fn resolve(&self, spec: &str) -> Result<Option<(ImageRecord, Option<String>)>, ImageError> {
        let as_id = if spec.len() == 64 {
            format!("sha256:{spec}")
        } else {
            spec.to_owned()
        };
        if let Ok(d) = Digest::parse(&as_id) {
            if let Some(r) = self.store.image(d.as_str())? {
                return Ok(Some((r, None)));
            }
        }
        let named = ImageRef::parse(spec).map(|r| r.to_string());
        if let Ok(name) = &named {
            if let Some(id) = self.store.image_id_by_name(name)? {
                if let Some(rec) = self.store.image(&id)? {
                    return Ok(Some((rec, Some(name.clone()))));
                }
            }
        }
        if let Some(hex) = id_prefix(spec) {
            let hits = self
                .store
                .image_ids_with_prefix(&format!("{}{hex}", digest::SHA256_PREFIX), 2)?;
            return match hits.as_slice() {
                [] => Ok(None),
                [id] => Ok(self.store.image(id)?.map(|r| (r, None))),
                _ => Err(ImageError::Ambiguous(spec.to_owned())),
            };
        }
        named?;
        Ok(None)
    }

    pub fn list(&self, filter: Option<&str>) -> Result<Vec<ImageInfo>, ImageError> {
        match filter {
            Some(f) if !f.is_empty() => Ok(self
                .resolve(f)
                .or_else(|e| match e {
                    ImageError::Reference(_) => Ok(None),
                    e => Err(e),
                })?
                .map(|(r, _)| vec![self.info(r)])
                .unwrap_or_default()),
            _ => Ok(self
                .store
                .images()?
                .into_iter()
                .map(|r| self.info(r))
                .collect()),
        }
    }

    /// None when the image does not exist (kubelet expects an empty answer, not an error).
    pub fn status(&self, spec: &str) -> Result<Option<ImageInfo>, ImageError> {
        Ok(self.resolve(spec)?.map(|(r, _)| self.info(r)))
    }

    /// The stored image config JSON, for verbose status.
    pub fn config_json(&self, rec: &ImageRecord) -> Option<serde_json::Value> {
        let d = Digest::parse(&rec.id).ok()?;
        serde_json::from_slice(&self.content.get(&d).ok()?).ok()
    }

    /// Remove by id (the whole image) or by one of its names (only that name while others
    /// remain). Removing what does not exist succeeds. Frees content no image references.
    pub fn remove(&self, spec: &str) -> Result<(), ImageError> {
        let Some((rec, name)) = self.resolve(spec)? else {
            return Ok(());
        };
        self.store.remove_image(&rec.id, name.as_deref())?;
        self.collect_garbage()?;
        Ok(())
    }

    /// Delete blobs and snapshots that no image and no in-flight pull references.
    pub fn collect_garbage(&self) -> Result<(usize, usize), ImageError> {
        let victims_dir = self.dirs.snapshots_tmp();
        let mut doomed = Vec::new();
        let mut blobs_removed = 0;
        {
            // Held across the decision so a pull cannot lease a digest we are about to remove.
            let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            let mut used: HashSet<String> = HashSet::new();
            for r in self.store.images()? {
                used.insert(r.id.clone());
                used.extend(r.blobs.iter().cloned());
                used.extend(r.layers.iter().map(|l| l.diff_id.clone()));
            }
            // A container keeps its image's layers (its rootfs stacks them) and config, even
            // after the image itself was removed.
            for c in self.store.list::<crate::store::ContainerRecord>()? {
                used.insert(c.image_id.clone());
                used.extend(c.layers.iter().cloned());
            }
            let keep = |d: &Digest| used.contains(d.as_str()) || leases.held.contains_key(d);
            for d in self.snapshots.list() {
                if !keep(&d) {
                    // Rename out of sight under the lock; delete the tree after.
                    let to = victims_dir.join(format!("gc-{}", d.hex()));
                    if std::fs::rename(self.dirs.snapshot(&d), &to).is_ok() {
                        doomed.push(to);
                    }
                }
            }
            for d in self.content.list() {
                if !keep(&d) {
                    self.content.remove(&d)?;
                    blobs_removed += 1;
                }
            }
        }
        let n = doomed.len();
        for p in doomed {
            if let Err(e) = std::fs::remove_dir_all(&p) {
                tracing::warn!(path = %p.display(), error = %e, "removing collected snapshot");
            }
        }
        if n + blobs_removed > 0 {
            use std::sync::atomic::Ordering::Relaxed;
            self.counters.gc_snapshots.fetch_add(n as u64, Relaxed);
            self.counters
                .gc_blobs
                .fetch_add(blobs_removed as u64, Relaxed);
            tracing::info!(
                snapshots = n,
                blobs = blobs_removed,
                "collected unreferenced image content"
            );
        }
        Ok((n, blobs_removed))
    }

    /// Apply the `[image.gc]` policy once: remove what `gc::plan` picks, as RemoveImage
    /// would. Returns the removed image ids. Does nothing when the policy is off.
    pub fn enforce_policy(&self) -> Result<Vec<String>, ImageError> {
        let policy = &self.config.image.gc;
        if !policy.enabled {
            return Ok(Vec::new());
        }
        let Ok(_running) = self.policy_running.try_lock() else {
            return Ok(Vec::new());
        };
        let in_use: HashSet<String> = self
            .store
            .list::<crate::store::ContainerRecord>()?
            .into_iter()
            .map(|c| c.image_id)
            .collect();
        let candidates: Vec<gc::Candidate> = self
            .store
            .images()?
            .into_iter()
            .map(|r| {
                let info = self.info(r);
                let r = info.record;
                gc::Candidate {
                    in_use: in_use.contains(&r.id),
                    pinned: info.pinned,
                    last_used: r.pulled_at.max(r.last_used),
                    layers: r
                        .layers
                        .iter()
                        .map(|l| (l.diff_id.clone(), l.bytes))
                        .collect(),
                    id: r.id,
                }
            })
            .collect();
        let disk = gc::disk_of(&self.dirs.snapshots());
        let plan = gc::plan(&candidates, pull::now(), policy, disk);
        let mut removed = Vec::new();
        for (id, reason) in plan {
            // By id: the whole image, every name. A container created since the plan was made
            // keeps its layers (collect_garbage spares what containers reference).
            match self.remove(&id) {
                Ok(()) => {
                    tracing::info!(image = %id, reason = ?reason, "image GC policy removed an image");
                    self.counters
                        .gc_images
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    removed.push(id);
                }
                Err(e) => {
                    tracing::warn!(image = %id, error = %e, "image GC policy: removal failed")
                }
            }
        }
        if let Some(d) = disk.filter(|_| !removed.is_empty()) {
            let after = gc::disk_of(&self.dirs.snapshots());
            tracing::info!(
                removed = removed.len(),
                used_before = d.used,
                used_after = after.map(|a| a.used).unwrap_or(0),
                capacity = d.capacity,
                "image GC policy ran"
            );
        }
        Ok(removed)
    }

    /// Bytes and inodes the image filesystem uses (snapshots + blobs), from the figures measured
    /// at unpack time, so kubelet's frequent polls cost no tree walk.
    pub fn usage(&self) -> (u64, u64) {
        let (mut bytes, mut inodes) = self.content.usage();
        for d in self.snapshots.list() {
            let (b, i) = snapshot::read_usage(&self.dirs.snapshot(&d));
            bytes += b;
            inodes += i;
        }
        (bytes, inodes)
    }

    pub fn image_fs_mountpoint(&self) -> std::path::PathBuf {
        self.dirs.snapshots()
    }

    /// Start-up: drop half-done unpacks and anything unreferenced.
    pub fn recover(&self) -> Result<(), ImageError> {
        self.snapshots.clean_tmp();
        if let Ok(rd) = std::fs::read_dir(self.dirs.content_tmp()) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        self.collect_garbage()?;
        Ok(())
    }
}

/// The hex digits of `spec` when it can be an id prefix: 1 to 64 lower-case hex digits, with or
/// without `sha256:`.
fn id_prefix(spec: &str) -> Option<&str> {
    let hex = spec.strip_prefix(digest::SHA256_PREFIX).unwrap_or(spec);
    crate::ids::validate(hex).ok()
}
