//! Content-addressed blob store for registry documents (indexes, manifests, configs): a blob is
//! written to a temp file, fsynced, and renamed into `content/sha256/<hex>` only after its digest
//! is checked, so a reader never sees a partial or wrong blob.

use std::io::Write;
use std::path::PathBuf;

use crate::dirs::Dirs;

use super::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("content {digest}: {op} {path}: {source}")]
    Io {
        digest: String,
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("content {expected}: data hashes to {actual}")]
    Mismatch { expected: String, actual: String },
}

#[derive(Clone)]
pub struct ContentStore {
    dirs: Dirs,
}

impl ContentStore {
    pub fn new(dirs: Dirs) -> ContentStore {
        ContentStore { dirs }
    }

    pub fn put(&self, digest: &Digest, data: &[u8]) -> Result<(), ContentError> {
        let actual = Digest::of(data);
        if &actual != digest {
            return Err(ContentError::Mismatch {
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        let path = self.dirs.blob(digest);
        if path.exists() {
            return Ok(());
        }
        let io = |op, path: &PathBuf| {
            let path = path.clone();
            move |source| ContentError::Io {
                digest: digest.to_string(),
                op,
                path,
                source,
            }
        };
        let tmp_dir = self.dirs.content_tmp();
        let mut tmp =
            tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io("create temp in", &tmp_dir))?;
        tmp.write_all(data).map_err(io("write", &path))?;
        tmp.as_file().sync_all().map_err(io("sync", &path))?;
        tmp.persist(&path).map_err(|e| ContentError::Io {
            digest: digest.to_string(),
            op: "rename into",
            path: path.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    pub fn get(&self, digest: &Digest) -> Result<Vec<u8>, ContentError> {
        let path = self.dirs.blob(digest);
        std::fs::read(&path).map_err(|source| ContentError::Io {
            digest: digest.to_string(),
            op: "read",
            path,
            source,
        })
    }

    pub fn exists(&self, digest: &Digest) -> bool {
        self.dirs.blob(digest).exists()
    }

    pub fn remove(&self, digest: &Digest) -> Result<(), ContentError> {
        let path = self.dirs.blob(digest);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ContentError::Io {
                digest: digest.to_string(),
                op: "remove",
                path,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Every stored digest (names that are not digests are ignored: they are not ours).
    pub fn list(&self) -> Vec<Digest> {
        let Ok(rd) = std::fs::read_dir(self.dirs.content()) else {
            return vec![];
        };
        rd.flatten()
            .filter_map(|e| {
                Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy())).ok()
            })
            .collect()
    }

    /// Bytes and inodes used by blobs.
    pub fn usage(&self) -> (u64, u64) {
        super::snapshot::disk_usage(&self.dirs.content())
    }
}
