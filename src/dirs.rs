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

    /// Each container's rootfs, upper and work dirs (and a user-namespaced pod's clones).
    pub fn container_roots(&self) -> PathBuf {
        self.root.join("containers")
    }

    /// Each container's bundle and shim files.
    pub fn container_states(&self) -> PathBuf {
        self.state.join("containers")
    }

    /// Each pod's pinned namespaces, files and /dev/shm.
    pub fn pods(&self) -> PathBuf {
        self.state.join("pods")
    }

    /// libcontainer's state root, shared by all containers.
    pub fn engine(&self) -> PathBuf {
        self.state.join("engine")
    }

    /// The shims' control sockets (a short dir: socket paths are limited to 108 bytes).
    pub fn sockets(&self) -> PathBuf {
        self.state.join("s")
    }

    /// Create the directories kelsond needs, root-only, and narrow the modes of ones an older
    /// kelsond left wider (and of the database file). Traversable but not listable: the root
    /// and state dirs and the shared parents of pods' and containers' dirs, which the container
    /// library crosses as a user-namespaced pod's root — an unprivileged id on the host — to
    /// reach the pod's pins, files and rootfs by path. Everything below is private.
    pub fn create(&self) -> std::io::Result<()> {
        use crate::owner_only::{self, DIR, TRAVERSE};
        for (d, mode) in [
            (self.root.clone(), TRAVERSE),
            (self.state.clone(), TRAVERSE),
            (self.content(), DIR),
            (self.content_tmp(), DIR),
            (self.snapshots(), DIR),
            (self.snapshots_tmp(), DIR),
            (self.container_roots(), TRAVERSE),
            (self.container_states(), TRAVERSE),
            (self.pods(), TRAVERSE),
            (self.engine(), DIR),
            (self.sockets(), DIR),
        ] {
            owner_only::create_dir_all(&d)?;
            owner_only::set_mode(&d, mode)?;
        }
        owner_only::narrow_file(&self.database())?;
        // Containers an older kelsond made: their specs (env values) and the library's state
        // (annotations) become private too. Only files: the dirs' modes are left as made, so
        // a user-namespaced pod's root still crosses what it crossed.
        for (parent, files) in [
            (self.container_states(), &["bundle/config.json"][..]),
            (self.engine(), &["state.json", "youki_config.json"][..]),
        ] {
            for e in std::fs::read_dir(&parent)?.flatten() {
                for f in files {
                    owner_only::narrow_file(&e.path().join(f))?;
                }
            }
        }
        Ok(())
    }
}
