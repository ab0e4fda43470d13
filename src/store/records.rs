//! Plain data kept in the store. Serialized as JSON inside redb values so fields can be added
//! without a migration (`#[serde(default)]`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LayerRecord {
    /// Uncompressed digest; names the snapshot directory.
    pub diff_id: String,
    /// Bytes and inodes the snapshot uses on disk, measured when it was unpacked.
    pub bytes: u64,
    pub inodes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageRecord {
    /// Image id = config digest.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Digest of the platform manifest (the index digest is in `repo_digests`).
    pub manifest_digest: String,
    /// Digests of every document stored for this image (index, manifest, config).
    pub blobs: Vec<String>,
    pub layers: Vec<LayerRecord>,
    /// The image config's `User`.
    pub user: String,
    /// Unix seconds of the last pull.
    pub pulled_at: i64,
}

impl ImageRecord {
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.bytes).sum()
    }
}
