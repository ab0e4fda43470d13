//! The on-disk layout under the root (persistent) and state (runtime) directories.
//! The one place paths are composed from ids; callers never `join` raw input.

use std::path::{Path, PathBuf};

use crate::digest::Digest;

#[derive(Debug, Clone)]
pub struct Dirs {
    pub root: PathBuf,
    pub state: PathBuf,
}

impl Dirs {
    pub fn new(root: &Path, state: &Path) -> Dirs {
        Dirs {
            root: root.to_owned(),
            state: state.to_owned(),
        }
    }

    pub fn database(&self) -> PathBuf {
        self.root.join("kelson.redb")
    }

    pub fn content(&self) -> PathBuf {
        self.root.join("content").join("sha256")
    }

    pub fn blob(&self, d: &Digest) -> PathBuf {
        self.content().join(d.hex())
    }

    /// Scratch space for writes in flight; same filesystem as their destination so rename is atomic.
    pub fn content_tmp(&self) -> PathBuf {
        self.root.join("content").join("tmp")
    }

    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// A committed, read-only layer snapshot; the overlay lowerdir is its `fs` child.
    pub fn snapshot(&self, diff_id: &Digest) -> PathBuf {
        self.snapshots().join(diff_id.hex())
    }

    pub fn snapshots_tmp(&self) -> PathBuf {
        self.snapshots().join(".tmp")
    }

    /// Create the directories kelsond needs, root-only.
    pub fn create(&self) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        for d in [
            &self.root,
            &self.state,
            &self.content(),
            &self.content_tmp(),
            &self.snapshots(),
            &self.snapshots_tmp(),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)?;
        }
        // Traversable, not listable: the container library prepares a user-namespaced pod's
        // containers as the pod's root — an unprivileged id on the host — and must reach the
        // pod's pinned namespaces, files and volume clones by path. Everything private below
        // stays 0700/0600.
        for d in [&self.root, &self.state] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))?;
        }
        Ok(())
    }
}
