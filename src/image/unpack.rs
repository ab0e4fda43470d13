//! The only tar code: unpacks one layer into an empty snapshot directory in overlayfs form.
//!
//! Every file operation is relative to a directory fd that was resolved with
//! `openat2(RESOLVE_IN_ROOT)` from the snapshot root, and every final component is created with
//! `O_NOFOLLOW`/`O_EXCL` or `*at(AT_SYMLINK_NOFOLLOW)`: a hostile archive (`..`, absolute paths,
//! symlinks or hard links aimed outside, a directory replaced by a symlink and then written
//! through, a hard link to a symlink followed by a chmod) can neither write nor read, chmod or
//! chown anything outside the snapshot. This is the containerd archive breakout set, enforced by
//! the kernel rather than by path-string checks.
//!
//! What a layer writes is counted before it is written, by what lands on disk rather than by the
//! bytes of the stream: a GNU sparse entry of a few KiB declares its full size and the tar crate
//! expands its holes to zeros, so a layer is charged every entry's apparent size (plus
//! [`ENTRY_COST`]) against its own cap and the pull's [`Budget`], and refused by the header alone.

use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstatat, futimens, mkdirat,
    mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};

/// Overlayfs' whiteout prefix and opaque-directory marker, as written by docker and buildkit.
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Deepest path accepted.
pub const MAX_DEPTH: usize = 256;
/// Largest xattr value kept (the kernel's own limit is 64 KiB).
const MAX_XATTR_VALUE: usize = 64 * 1024;
/// What every entry costs against the byte caps on top of its data, whatever its kind: an inode,
/// a name, a directory block or a whiteout are never free (one tar header's worth).
pub const ENTRY_COST: u64 = 512;
/// The most tar metadata one entry may carry: its header blocks, pax records, GNU long names and
/// GNU sparse maps. The tar crate reads these into memory as it parses, bounded only by the stream.
pub const MAX_ENTRY_METADATA: u64 = 1 << 20;
/// The only `security.*` xattr kept: file capabilities, which images use so that a non-root
/// process may bind a low port or open a raw socket. What they grant never exceeds the
/// container's bounding set. Labels (`security.selinux`, `.apparmor`) and integrity data
/// (`security.ima`, `.evm`) belong to the node's policy, not to image content.
const KEPT_SECURITY_XATTR: &[u8] = b"security.capability";
/// Pax records of the PAX sparse formats (0.0, 0.1, 1.0); the tar crate does not expand them.
const PAX_SPARSE_PREFIX: &[u8] = b"GNU.sparse.";

/// The caps of one pull (`[image]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes one layer may write (`image.max_layer_bytes`).
    pub layer_bytes: u64,
    /// Bytes all the layers one pull unpacks may write (`image.max_image_bytes`).
    pub image_bytes: u64,
    /// Entries (inodes) all the layers one pull unpacks may create (`image.max_image_entries`).
    pub image_entries: u64,
}

/// Which cap an entry crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    LayerBytes(u64),
    ImageBytes(u64),
    ImageEntries(u64),
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::LayerBytes(n) => write!(
                f,
                "unpacked content exceeds {n} bytes per layer (image.max_layer_bytes)"
            ),
            Limit::ImageBytes(n) => write!(
                f,
                "unpacked content exceeds {n} bytes per image (image.max_image_bytes)"
            ),
            Limit::ImageEntries(n) => write!(
                f,
                "more than {n} entries per image (image.max_image_entries)"
            ),
        }
    }
}

/// What the layers of one pull may still write, shared by the layers unpacking at once. Charged
/// before each entry is written, so a refused entry never touches the disk.
#[derive(Debug)]
pub struct Budget {
    limits: Limits,
    bytes: AtomicU64,
    entries: AtomicU64,
}

impl Budget {
    pub fn new(limits: Limits) -> Budget {
        Budget {
            limits,
            bytes: AtomicU64::new(0),
            entries: AtomicU64::new(0),
        }
    }

    /// Charge one entry of `bytes`; the cap it crosses, if any.
    fn charge(&self, bytes: u64) -> Result<(), Limit> {
        let entries = self
            .entries
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if entries > self.limits.image_entries {
            return Err(Limit::ImageEntries(self.limits.image_entries));
        }
        let total = self
            .bytes
            .fetch_add(bytes, Ordering::Relaxed)
            .saturating_add(bytes);
        if total > self.limits.image_bytes {
            return Err(Limit::ImageBytes(self.limits.image_bytes));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("reading layer archive: {0}")]
    Archive(io::Error),
    #[error("layer entry {path:?} escapes the layer root")]
    Escape { path: String },
    #[error("layer entry {path:?}: {reason}")]
    BadEntry { path: String, reason: String },
    #[error("layer entry {path:?}: {op}: {errno}")]
    Fs {
        path: String,
        op: &'static str,
        errno: Errno,
    },
    #[error("layer entry {path:?}: {limit}")]
    Limit { path: String, limit: Limit },
    #[error("layer entry after {after:?}: tar metadata exceeds {MAX_ENTRY_METADATA} bytes")]
    MetadataTooLarge { after: String },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub file_bytes: u64,
    /// What the layer was charged: apparent sizes plus [`ENTRY_COST`] per entry.
    pub charged_bytes: u64,
}

/// Split an archive path into safe components: leading `/` and `.` dropped (containerd treats
/// absolute names as relative to the root), `..` refused outright.
fn components(raw: &[u8]) -> Result<Vec<OsString>, UnpackError> {
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(UnpackError::Escape {
                    path: String::from_utf8_lossy(raw).into_owned(),
                });
            }
            c if c.contains(&0) => {
                return Err(UnpackError::BadEntry {
                    path: String::from_utf8_lossy(raw).into_owned(),
                    reason: "NUL in name".into(),
                });
            }
            c => out.push(OsString::from_vec(c.to_vec())),
        }
    }
    if out.len() > MAX_DEPTH {
        return Err(UnpackError::BadEntry {
            path: String::from_utf8_lossy(raw).into_owned(),
            reason: format!("deeper than {MAX_DEPTH}"),
        });
    }
    Ok(out)
}

fn join(comps: &[OsString]) -> PathBuf {
    if comps.is_empty() {
        return PathBuf::from(".");
    }
    let mut v = Vec::new();
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            v.push(b'/');
        }
        v.extend_from_slice(c.as_bytes());
    }
    PathBuf::from(OsString::from_vec(v))
}

/// A directory an archive only implies (an entry below it, no entry for it): as other
/// runtimes make it.
const IMPLIED_DIR_MODE: u32 = 0o755;

struct Unpacker<'b> {
    root: OwnedFd,
    stats: UnpackStats,
    budget: &'b Budget,
}

/// An entry's owner, mode, time and kept xattrs: its header's, overridden by its pax records.
struct Attrs {
    owner: (Option<Uid>, Option<Gid>),
    mode: Mode,
    mtime: TimeSpec,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Where one entry lands: its parent directory (resolved inside the root), its final name, and
/// its whole path for error messages.
struct Place<'a> {
    parent: OwnedFd,
    name: &'a OsStr,
    comps: &'a [OsString],
}

impl Place<'_> {
    /// Ownership of the entry itself, never of what it points to.
    fn chown(&self, (uid, gid): (Option<Uid>, Option<Gid>)) -> Result<(), UnpackError> {
        fchownat(
            self.parent.as_fd(),
            self.name,
            uid,
            gid,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(Unpacker::fs_err(self.comps, "chown"))
    }
}

fn in_root_how(flags: OFlag) -> OpenHow {
    OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(
        ResolveFlag::RESOLVE_IN_ROOT
            | ResolveFlag::RESOLVE_NO_MAGICLINKS
            | ResolveFlag::RESOLVE_NO_XDEV,
    )
}

impl Unpacker<'_> {
    fn fs_err(path: &[OsString], op: &'static str) -> impl FnOnce(Errno) -> UnpackError {
        let path = join(path).display().to_string();
        move |errno| UnpackError::Fs { path, op, errno }
    }

    /// Open (creating as needed) the directory `comps`, resolved inside the root.
    fn dir(&self, comps: &[OsString]) -> Result<OwnedFd, UnpackError> {
        let how = || in_root_how(OFlag::O_DIRECTORY | OFlag::O_RDONLY);
        match openat2(self.root.as_fd(), &join(comps), how()) {
            Ok(fd) => Ok(fd),
            Err(Errno::ENOENT) if !comps.is_empty() => {
                let (last, parent) = comps.split_last().ok_or(UnpackError::Escape {
                    path: String::new(),
                })?;
                let pfd = self.dir(parent)?;
                let made = match mkdirat(
                    pfd.as_fd(),
                    last.as_os_str(),
                    Mode::from_bits_truncate(IMPLIED_DIR_MODE),
                ) {
                    Ok(()) => true,
                    Err(Errno::EEXIST) => false,
                    Err(e) => return Err(Self::fs_err(comps, "mkdir")(e)),
                };
                let fd = openat2(pfd.as_fd(), last.as_os_str(), how())
                    .map_err(Self::fs_err(comps, "open dir"))?;
                if made {
                    // The mode images expect of a dir their archive only implies, not what
                    // kelsond's umask (077) left of it.
                    nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(IMPLIED_DIR_MODE))
                        .map_err(Self::fs_err(comps, "chmod"))?;
                }
                Ok(fd)
            }
            Err(e) => Err(Self::fs_err(comps, "open dir")(e)),
        }
    }

    /// Remove whatever is at `name` in `parent` (never following it), unless it is a directory
    /// and `keep_dir` is set. Returns whether a directory was kept.
    fn clear(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        keep_dir: bool,
        comps: &[OsString],
    ) -> Result<bool, UnpackError> {
        let st = match fstatat(parent.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(false),
            Err(e) => return Err(Self::fs_err(comps, "stat")(e)),
        };
        let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        if is_dir && keep_dir {
            return Ok(true);
        }
        if is_dir {
            // std's remove_dir_all opens each level with O_NOFOLLOW and unlinks relative to it
            // (the CVE-2022-21658 fix); the path goes through our fd, so it stays in the root.
            let p = Path::new("/proc/self/fd")
                .join(std::os::fd::AsRawFd::as_raw_fd(parent).to_string())
                .join(name);
            std::fs::remove_dir_all(&p).map_err(|e| UnpackError::Fs {
                path: join(comps).display().to_string(),
                op: "remove dir",
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc_eio())),
            })?;
        } else {
            unlinkat(parent.as_fd(), name, UnlinkatFlags::NoRemoveDir)
                .map_err(Self::fs_err(comps, "unlink"))?;
        }
        Ok(false)
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = entry.path_bytes().into_owned();
        let header = entry.header().clone();
        let kind = header.entry_type();
        let shown = || String::from_utf8_lossy(&raw_path).into_owned();
        let attrs = Attrs::read(entry, &header, &shown)?;
        self.charge(entry, &attrs, &shown)?;
        let comps = components(&raw_path)?;
        let Some((name, parent_comps)) = comps.split_last() else {
            return Ok(()); // the root itself: its metadata is the snapshot's, not the image's
        };
        if self.whiteout(name, parent_comps, &comps, &shown)? {
            return Ok(());
        }

        let at = Place {
            parent: self.dir(parent_comps)?,
            name,
            comps: &comps,
        };
        use tar::EntryType as T;
        match kind {
            T::Directory => self.directory(&at, &attrs)?,
            T::Regular | T::Continuous | T::GNUSparse => self.regular(&at, &attrs, entry)?,
            T::Symlink => {
                let target = link_target(entry, "symlink", &shown)?;
                self.symlink(&at, &attrs, &target)?;
            }
            T::Link => {
                let target = link_target(entry, "hard link", &shown)?;
                self.hard_link(&at, &target, &shown)?;
            }
            T::Char | T::Block | T::Fifo => self.node(&at, &attrs, &header)?,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => return Ok(()),
            other => {
                return Err(UnpackError::BadEntry {
                    path: shown(),
                    reason: format!("unsupported tar entry type {:?}", other),
                });
            }
        }
        Ok(())
    }

    /// Charge `entry` against the layer's cap and the pull's budget before anything of it is
    /// written: its apparent size (a GNU sparse file's full size, which the tar crate reports
    /// and expands), its link target and kept xattrs, and [`ENTRY_COST`].
    fn charge<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        attrs: &Attrs,
        shown: &dyn Fn() -> String,
    ) -> Result<(), UnpackError> {
        use tar::EntryType as T;
        let data = match entry.header().entry_type() {
            T::Regular | T::Continuous | T::GNUSparse => entry.size(),
            _ => 0,
        };
        let link = entry.link_name_bytes().map_or(0, |l| l.len() as u64);
        let xattrs: u64 = attrs
            .xattrs
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum();
        let cost = ENTRY_COST
            .saturating_add(data)
            .saturating_add(link)
            .saturating_add(xattrs);
        self.stats.entries += 1;
        self.stats.charged_bytes = self.stats.charged_bytes.saturating_add(cost);
        let refuse = |limit| UnpackError::Limit {
            path: shown(),
            limit,
        };
        if self.stats.charged_bytes > self.budget.limits.layer_bytes {
            return Err(refuse(Limit::LayerBytes(self.budget.limits.layer_bytes)));
        }
        self.budget.charge(cost).map_err(refuse)
    }

    /// Whiteouts become overlayfs whiteouts: a 0:0 char device, or an opaque xattr. Returns
    /// whether the entry was one (and so needs nothing more).
    fn whiteout(
        &mut self,
        name: &OsStr,
        parent_comps: &[OsString],
        comps: &[OsString],
        shown: &dyn Fn() -> String,
    ) -> Result<bool, UnpackError> {
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE_MARKER.as_bytes() {
            let dfd = self.dir(parent_comps)?;
            let f = File::from(dfd);
            xattr::FileExt::set_xattr(&f, OVERLAY_OPAQUE_XATTR, b"y").map_err(|e| {
                UnpackError::Fs {
                    path: shown(),
                    op: "set opaque xattr",
                    errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc_eio())),
                }
            })?;
            return Ok(true);
        }
        let Some(target) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) else {
            return Ok(false);
        };
        if target.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Ok(true); // other aufs metadata (.wh..wh.plnk etc.) has no overlay meaning
        }
        if target.is_empty() || target == b"." || target == b".." {
            return Err(UnpackError::Escape { path: shown() });
        }
        let pfd = self.dir(parent_comps)?;
        let target = OsStr::from_bytes(target);
        self.clear(&pfd, target, false, comps)?;
        mknodat(pfd.as_fd(), target, SFlag::S_IFCHR, Mode::empty(), 0)
            .map_err(Self::fs_err(comps, "mknod whiteout"))?;
        Ok(true)
    }

    fn directory(&self, at: &Place<'_>, attrs: &Attrs) -> Result<(), UnpackError> {
        self.clear(&at.parent, at.name, true, at.comps)?;
        match mkdirat(at.parent.as_fd(), at.name, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(Self::fs_err(at.comps, "mkdir")(e)),
        }
        let fd = nix::fcntl::openat(
            at.parent.as_fd(),
            at.name,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(Self::fs_err(at.comps, "open dir"))?;
        self.finish_fd(fd, attrs, None, at.comps)
    }

    fn regular<R: Read>(
        &mut self,
        at: &Place<'_>,
        attrs: &Attrs,
        data: &mut tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        self.clear(&at.parent, at.name, false, at.comps)?;
        let fd = nix::fcntl::openat(
            at.parent.as_fd(),
            at.name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(Self::fs_err(at.comps, "create"))?;
        let mut f = File::from(fd);
        let n = io::copy(data, &mut f).map_err(UnpackError::Archive)?;
        self.stats.file_bytes += n;
        self.finish_fd(f.into(), attrs, Some(attrs.mtime), at.comps)
    }

    fn symlink(&self, at: &Place<'_>, attrs: &Attrs, target: &[u8]) -> Result<(), UnpackError> {
        self.clear(&at.parent, at.name, false, at.comps)?;
        // The target is stored, never followed here: it is resolved later inside the
        // container's own root.
        symlinkat(OsStr::from_bytes(target), at.parent.as_fd(), at.name)
            .map_err(Self::fs_err(at.comps, "symlink"))?;
        at.chown(attrs.owner)?;
        let _ = utimensat(
            at.parent.as_fd(),
            at.name,
            &attrs.mtime,
            &attrs.mtime,
            UtimensatFlags::NoFollowSymlink,
        );
        Ok(())
    }

    fn hard_link(
        &self,
        at: &Place<'_>,
        target: &[u8],
        shown: &dyn Fn() -> String,
    ) -> Result<(), UnpackError> {
        let tcomps = components(target)?;
        let Some((tname, tparent)) = tcomps.split_last() else {
            return Err(UnpackError::BadEntry {
                path: shown(),
                reason: "hard link to the root".into(),
            });
        };
        let tfd = openat2(
            self.root.as_fd(),
            &join(tparent),
            in_root_how(OFlag::O_DIRECTORY | OFlag::O_PATH),
        )
        .map_err(Self::fs_err(&tcomps, "open link target dir"))?;
        self.clear(&at.parent, at.name, false, at.comps)?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself. The entry's
        // own mode/owner are not applied, so nothing is chmod'ed through the link.
        linkat(
            tfd.as_fd(),
            tname.as_os_str(),
            at.parent.as_fd(),
            at.name,
            AtFlags::empty(),
        )
        .map_err(Self::fs_err(at.comps, "hard link"))
    }

    /// A character or block device or a fifo.
    fn node(&self, at: &Place<'_>, attrs: &Attrs, header: &tar::Header) -> Result<(), UnpackError> {
        let sflag = match header.entry_type() {
            tar::EntryType::Char => SFlag::S_IFCHR,
            tar::EntryType::Block => SFlag::S_IFBLK,
            _ => SFlag::S_IFIFO,
        };
        let major = header
            .device_major()
            .map_err(UnpackError::Archive)?
            .unwrap_or(0);
        let minor = header
            .device_minor()
            .map_err(UnpackError::Archive)?
            .unwrap_or(0);
        self.clear(&at.parent, at.name, false, at.comps)?;
        mknodat(
            at.parent.as_fd(),
            at.name,
            sflag,
            Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(u64::from(major), u64::from(minor)),
        )
        .map_err(Self::fs_err(at.comps, "mknod"))?;
        at.chown(attrs.owner)?;
        // The node was created by us a moment ago in a directory nothing else writes to,
        // and mknod never makes a symlink, so following is moot.
        fchmodat(
            at.parent.as_fd(),
            at.name,
            attrs.mode,
            FchmodatFlags::FollowSymlink,
        )
        .map_err(Self::fs_err(at.comps, "chmod"))
    }

    /// Ownership, then mode (chown clears set-id bits), xattrs and times, all on our own fd.
    fn finish_fd(
        &self,
        fd: OwnedFd,
        attrs: &Attrs,
        mtime: Option<TimeSpec>,
        comps: &[OsString],
    ) -> Result<(), UnpackError> {
        let (uid, gid) = attrs.owner;
        fchown(fd.as_fd(), uid, gid).map_err(Self::fs_err(comps, "chown"))?;
        fchmod(fd.as_fd(), attrs.mode).map_err(Self::fs_err(comps, "chmod"))?;
        let f = File::from(fd);
        for (k, v) in &attrs.xattrs {
            xattr::FileExt::set_xattr(&f, k, v).map_err(|e| UnpackError::Fs {
                path: join(comps).display().to_string(),
                op: "set xattr",
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc_eio())),
            })?;
        }
        if let Some(t) = mtime {
            let _ = futimens(f.as_fd(), &t, &t);
        }
        Ok(())
    }
}

fn libc_eio() -> i32 {
    Errno::EIO as i32
}

fn parse_id(v: &[u8], shown: &dyn Fn() -> String) -> Result<u64, UnpackError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| UnpackError::BadEntry {
            path: shown(),
            reason: "bad pax uid/gid".into(),
        })
}

impl Attrs {
    fn read<R: Read>(
        entry: &mut tar::Entry<'_, R>,
        header: &tar::Header,
        shown: &dyn Fn() -> String,
    ) -> Result<Self, UnpackError> {
        let mut uid = header.uid().map_err(UnpackError::Archive)?;
        let mut gid = header.gid().map_err(UnpackError::Archive)?;
        let mut xattrs: Vec<(OsString, Vec<u8>)> = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(UnpackError::Archive)? {
            for ext in pax {
                let ext = ext.map_err(UnpackError::Archive)?;
                let key = ext.key_bytes();
                if key == b"uid" {
                    uid = parse_id(ext.value_bytes(), shown)?;
                } else if key == b"gid" {
                    gid = parse_id(ext.value_bytes(), shown)?;
                } else if key.starts_with(PAX_SPARSE_PREFIX) {
                    // The tar crate would write the packed data (and a 1.0 map) as the file's
                    // content: refused rather than unpacked wrong.
                    return Err(UnpackError::BadEntry {
                        path: shown(),
                        reason: "PAX sparse files (GNU.sparse.*) are not supported".into(),
                    });
                } else if let Some(x) = key.strip_prefix(b"SCHILY.xattr.") {
                    if kept_xattr(x) && ext.value_bytes().len() <= MAX_XATTR_VALUE {
                        xattrs.push((OsString::from_vec(x.to_vec()), ext.value_bytes().to_vec()));
                    }
                }
            }
        }
        if uid > u64::from(u32::MAX - 1) || gid > u64::from(u32::MAX - 1) {
            return Err(UnpackError::BadEntry {
                path: shown(),
                reason: format!("owner {uid}:{gid} out of range"),
            });
        }
        Ok(Attrs {
            owner: (
                Some(Uid::from_raw(uid as u32)),
                Some(Gid::from_raw(gid as u32)),
            ),
            mode: Mode::from_bits_truncate(header.mode().map_err(UnpackError::Archive)? & 0o7777),
            mtime: TimeSpec::new(header.mtime().unwrap_or(0).min(i64::MAX as u64) as i64, 0),
            xattrs,
        })
    }
}

/// Whether an xattr from a layer is applied. `trusted.*` is overlayfs' own namespace (redirect,
/// metacopy, opaque): image content must not steer the overlay (the opaque marker is made from
/// `.wh..wh..opq` by kelson itself). Of `security.*` only file capabilities are kept
/// ([`KEPT_SECURITY_XATTR`]); `system.*` (ACLs) and anything else are dropped.
fn kept_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.") || name == KEPT_SECURITY_XATTR
}

/// The link name of a symlink or hard link entry (`what` says which, for the error).
fn link_target<R: Read>(
    entry: &tar::Entry<'_, R>,
    what: &str,
    shown: &dyn Fn() -> String,
) -> Result<Vec<u8>, UnpackError> {
    let target = entry
        .link_name_bytes()
        .ok_or_else(|| UnpackError::BadEntry {
            path: shown(),
            reason: format!("{what} without target"),
        })?;
    Ok(target.into_owned())
}

/// The archive's reader, counting what the tar parser reads between entries (headers, pax
/// records, long names, sparse maps): at most [`MAX_ENTRY_METADATA`] per entry while armed.
struct Metered<'m, R> {
    inner: R,
    /// What the entry being parsed may still read; `None` while entry data is read.
    metadata_left: &'m Cell<Option<u64>>,
    tripped: &'m Cell<bool>,
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(left) = self.metadata_left.get() {
            match left.checked_sub(n as u64) {
                Some(left) => self.metadata_left.set(Some(left)),
                None => {
                    self.tripped.set(true);
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "tar metadata too large",
                    ));
                }
            }
        }
        Ok(n)
    }
}

/// Unpack the uncompressed tar stream `tar` into the (empty, private) directory `dest`, charging
/// every entry to `budget` (this layer's and the whole pull's caps) before writing it.
pub fn unpack<R: Read>(tar: R, dest: &Path, budget: &Budget) -> Result<UnpackStats, UnpackError> {
    let root = nix::fcntl::open(
        dest,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|errno| UnpackError::Fs {
        path: dest.display().to_string(),
        op: "open snapshot root",
        errno,
    })?;
    let mut u = Unpacker {
        root,
        stats: UnpackStats::default(),
        budget,
    };
    let (metadata_left, tripped) = (Cell::new(None), Cell::new(false));
    let mut archive = tar::Archive::new(Metered {
        inner: tar,
        metadata_left: &metadata_left,
        tripped: &tripped,
    });
    let mut entries = archive.entries().map_err(UnpackError::Archive)?;
    let mut last = String::new();
    loop {
        metadata_left.set(Some(MAX_ENTRY_METADATA));
        let next = entries.next();
        metadata_left.set(None);
        let mut entry = match next {
            None => break,
            Some(Ok(e)) => e,
            Some(Err(_)) if tripped.get() => {
                return Err(UnpackError::MetadataTooLarge { after: last });
            }
            Some(Err(e)) => return Err(UnpackError::Archive(e)),
        };
        u.entry(&mut entry)?;
        // The rest of an entry's data (a directory's, a skipped type's) is read here, outside
        // the metadata bound; the next header's parse then reads only metadata.
        io::copy(&mut entry, &mut io::sink()).map_err(UnpackError::Archive)?;
        last = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    }
    Ok(u.stats)
}

/// Sniffed layer compression; registries mislabel media types, so the bytes decide.
pub fn decompressor<'a, R: io::BufRead + 'a>(mut r: R) -> io::Result<Box<dyn Read + 'a>> {
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(r)?))
    } else {
        Ok(Box::new(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn components_refuse_dotdot() {
        assert_eq!(
            components(b"/a/./b//c").unwrap(),
            vec![OsString::from("a"), "b".into(), "c".into()]
        );
        assert!(matches!(
            components(b"a/../../b"),
            Err(UnpackError::Escape { .. })
        ));
        assert!(components(b"./").unwrap().is_empty());
    }

    fn header(path: &str, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        // set_path refuses `..`; write the raw name so tests can be hostile.
        let bytes = path.as_bytes();
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn build(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = header(path, *kind, data.len() as u64);
            if let Some(l) = link {
                h.set_link_name(l).unwrap_or_else(|_| {
                    let lb = l.as_bytes();
                    h.as_old_mut().linkname[..lb.len()].copy_from_slice(lb);
                });
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn unpacks_files_links_whiteouts() {
        let d = tempfile::tempdir().unwrap();
        let t = build(&[
            ("etc/", tar::EntryType::Directory, b"", None),
            ("etc/hosts", tar::EntryType::Regular, b"127.0.0.1 x\n", None),
            ("etc/link", tar::EntryType::Symlink, b"", Some("/etc/hosts")),
            ("etc/hard", tar::EntryType::Link, b"", Some("etc/hosts")),
            ("gone/.wh..wh..opq", tar::EntryType::Regular, b"", None),
            (".wh.old", tar::EntryType::Regular, b"", None),
        ]);
        let st = unpack(&t[..], d.path(), &roomy()).unwrap();
        assert_eq!(
            std::fs::read(d.path().join("etc/hosts")).unwrap(),
            b"127.0.0.1 x\n"
        );
        assert_eq!(
            std::fs::read_link(d.path().join("etc/link")).unwrap(),
            Path::new("/etc/hosts")
        );
        let a = std::fs::metadata(d.path().join("etc/hosts")).unwrap();
        let b = std::fs::metadata(d.path().join("etc/hard")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(a.permissions().mode() & 0o7777, 0o644);
        let wo = std::fs::symlink_metadata(d.path().join("old")).unwrap();
        assert_eq!(wo.mode() & 0o170000, 0o020000);
        assert_eq!(wo.rdev(), 0);
        assert_eq!(
            xattr::get(d.path().join("gone"), OVERLAY_OPAQUE_XATTR).unwrap(),
            Some(b"y".to_vec())
        );
        assert_eq!(st.file_bytes, 12);
    }

    #[test]
    fn hostile_archives_stay_inside() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"original").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let v = victim.to_str().unwrap();
        let od = outside.path().to_str().unwrap();
        let cases: Vec<Vec<u8>> = vec![
            // absolute path: lands inside the root
            build(&[(v, tar::EntryType::Regular, b"pwned", None)]),
            // symlink to outside, then write through it
            build(&[
                ("l", tar::EntryType::Symlink, b"", Some(v)),
                ("l", tar::EntryType::Regular, b"pwned", None),
            ]),
            // directory replaced by symlink to outside, then write through it
            build(&[
                ("d/", tar::EntryType::Directory, b"", None),
                ("d", tar::EntryType::Symlink, b"", Some(od)),
                ("d/victim", tar::EntryType::Regular, b"pwned", None),
            ]),
            // relative symlink climbing out, then write through it
            build(&[
                (
                    "up",
                    tar::EntryType::Symlink,
                    b"",
                    Some("../../../../../../../../"),
                ),
                (
                    &format!("up{v}")[..],
                    tar::EntryType::Regular,
                    b"pwned",
                    None,
                ),
            ]),
            // hard link to a symlink pointing outside, then chmod via a second entry
            build(&[
                ("s", tar::EntryType::Symlink, b"", Some(v)),
                ("h", tar::EntryType::Link, b"", Some("s")),
                ("h", tar::EntryType::Directory, b"", None),
            ]),
            // whiteout aimed through a symlink dir
            build(&[
                ("w", tar::EntryType::Symlink, b"", Some(od)),
                ("w/.wh.victim", tar::EntryType::Regular, b"", None),
            ]),
        ];
        for (i, t) in cases.iter().enumerate() {
            let d = tempfile::tempdir().unwrap();
            let _ = unpack(&t[..], d.path(), &roomy());
            assert_eq!(std::fs::read(&victim).unwrap(), b"original", "case {i}");
            let m = std::fs::metadata(&victim).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "case {i}");
        }
        // `..` names and hard links pointing outside are refused outright.
        let d = tempfile::tempdir().unwrap();
        let t = build(&[("../escape", tar::EntryType::Regular, b"x", None)]);
        assert!(matches!(
            unpack(&t[..], d.path(), &roomy()),
            Err(UnpackError::Escape { .. })
        ));
        let t = build(&[("h", tar::EntryType::Link, b"", Some("../../../etc/passwd"))]);
        assert!(matches!(
            unpack(&t[..], d.path(), &roomy()),
            Err(UnpackError::Escape { .. })
        ));
        // a hard link to an absolute host path resolves inside the root, where it does not exist
        let t = build(&[("h", tar::EntryType::Link, b"", Some(v))]);
        assert!(unpack(&t[..], d.path(), &roomy()).is_err());
        assert!(!outside.path().join("escape").exists());
    }

    #[test]
    fn absurd_entry_size_fails_without_allocating() {
        // A header claiming 2^40 bytes followed by a few: the copy ends at the stream's end.
        let mut h = header("huge", tar::EntryType::Regular, 0);
        h.set_size(1 << 40);
        h.set_cksum();
        let mut t = h.as_bytes().to_vec();
        t.extend_from_slice(&[1u8; 512]);
        let d = tempfile::tempdir().unwrap();
        assert!(unpack(&t[..], d.path(), &roomy()).is_err());
    }

    #[test]
    fn truncated_archive_fails() {
        let t = build(&[("big", tar::EntryType::Regular, &[7u8; 4096], None)]);
        let d = tempfile::tempdir().unwrap();
        assert!(unpack(&t[..1024], d.path(), &roomy()).is_err());
    }

    fn budget(layer_bytes: u64, image_bytes: u64, image_entries: u64) -> Budget {
        Budget::new(Limits {
            layer_bytes,
            image_bytes,
            image_entries,
        })
    }

    fn roomy() -> Budget {
        budget(u64::MAX, u64::MAX, u64::MAX)
    }

    /// A GNU sparse entry of `real_size` bytes: a hole, then `tail` (512 bytes) at the very end.
    fn gnu_sparse(path: &str, real_size: u64, tail: &[u8; 512]) -> Vec<u8> {
        let mut h = header(path, tar::EntryType::GNUSparse, 512);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(real_size);
        gnu.sparse[0].set_offset(real_size - 512);
        gnu.sparse[0].set_length(512);
        h.set_cksum();
        let mut t = h.as_bytes().to_vec();
        t.extend_from_slice(tail);
        t.extend_from_slice(&[0u8; 1024]);
        t
    }

    #[test]
    fn sparse_entries_are_charged_their_full_size_before_writing() {
        // 4 KiB of archive declaring 1 GiB: the tar crate would write 1 GiB of zeros.
        let t = gnu_sparse("bomb", 1 << 30, &[7u8; 512]);
        assert!(t.len() <= 4096);
        let d = tempfile::tempdir().unwrap();
        let err = unpack(&t[..], d.path(), &budget(1 << 20, u64::MAX, u64::MAX)).unwrap_err();
        assert!(
            matches!(&err, UnpackError::Limit { path, limit: Limit::LayerBytes(n) }
                if path == "bomb" && *n == 1 << 20),
            "{err}"
        );
        assert!(err.to_string().contains("image.max_layer_bytes"), "{err}");
        assert!(!d.path().join("bomb").exists(), "refused before creating");
        // A size no disk holds is refused the same way, by its header alone.
        let t = gnu_sparse("bomb", 1 << 60, &[7u8; 512]);
        let err = unpack(&t[..], d.path(), &budget(1 << 40, u64::MAX, u64::MAX)).unwrap_err();
        assert!(matches!(err, UnpackError::Limit { .. }), "{err}");
        // Under the cap it unpacks to its real content and is charged its real size.
        let t = gnu_sparse("small", 64 << 10, &[7u8; 512]);
        let st = unpack(&t[..], d.path(), &budget(1 << 20, u64::MAX, u64::MAX)).unwrap();
        let got = std::fs::read(d.path().join("small")).unwrap();
        assert_eq!(got.len(), 64 << 10);
        assert!(got[..(64 << 10) - 512].iter().all(|b| *b == 0));
        assert!(got[(64 << 10) - 512..].iter().all(|b| *b == 7));
        assert_eq!(st.charged_bytes, (64 << 10) + ENTRY_COST);
    }

    #[test]
    fn pax_sparse_entries_are_refused() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([
            ("GNU.sparse.major", &b"1"[..]),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", b"bomb"),
            ("GNU.sparse.realsize", b"1099511627776"),
        ])
        .unwrap();
        let mut map = b"1\n1099511627264\n512\n".to_vec();
        map.resize(1024, 7);
        let mut h = header("GNUSparseFile.0/bomb", tar::EntryType::Regular, 1024);
        h.set_cksum();
        b.append(&h, &map[..]).unwrap();
        let t = b.into_inner().unwrap();
        let d = tempfile::tempdir().unwrap();
        let err = unpack(&t[..], d.path(), &roomy()).unwrap_err();
        assert!(
            matches!(&err, UnpackError::BadEntry { reason, .. } if reason.contains("GNU.sparse")),
            "{err}"
        );
        assert!(!d.path().join("GNUSparseFile.0").exists());
    }

    #[test]
    fn the_image_budget_spans_layers_and_counts_every_entry() {
        let data = [1u8; 6000];
        let layer = build(&[("f", tar::EntryType::Regular, &data, None)]);
        let shared = budget(u64::MAX, 10_000, u64::MAX);
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        unpack(&layer[..], a.path(), &shared).unwrap();
        let err = unpack(&layer[..], b.path(), &shared).unwrap_err();
        assert!(
            matches!(
                err,
                UnpackError::Limit {
                    limit: Limit::ImageBytes(10_000),
                    ..
                }
            ),
            "{err}"
        );
        assert!(!b.path().join("f").exists());

        // Directories, whiteouts, links and empty files each take an inode.
        let many = build(&[
            ("d/", tar::EntryType::Directory, b"", None),
            (".wh.x", tar::EntryType::Regular, b"", None),
            ("l", tar::EntryType::Symlink, b"", Some("d")),
            ("e", tar::EntryType::Regular, b"", None),
        ]);
        let d = tempfile::tempdir().unwrap();
        let st = unpack(&many[..], d.path(), &budget(u64::MAX, u64::MAX, 4)).unwrap();
        assert_eq!(st.entries, 4);
        assert_eq!(st.charged_bytes, 4 * ENTRY_COST + 1);
        let d = tempfile::tempdir().unwrap();
        let err = unpack(&many[..], d.path(), &budget(u64::MAX, u64::MAX, 3)).unwrap_err();
        assert!(
            matches!(&err, UnpackError::Limit { path, limit: Limit::ImageEntries(3) } if path == "e"),
            "{err}"
        );
        assert!(err.to_string().contains("image.max_image_entries"), "{err}");
        assert!(!d.path().join("e").exists());
    }

    #[test]
    fn oversized_tar_metadata_is_refused_while_parsing() {
        let big = vec![b'a'; 2 << 20];
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("comment", &big[..])]).unwrap();
        let mut h = header("f", tar::EntryType::Regular, 1);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let t = b.into_inner().unwrap();
        let d = tempfile::tempdir().unwrap();
        let err = unpack(&t[..], d.path(), &roomy()).unwrap_err();
        assert!(matches!(err, UnpackError::MetadataTooLarge { .. }), "{err}");
        // A long name of the same size (GNU `L` entry) too; the data of a skipped entry is not
        // metadata.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header("dir/", tar::EntryType::Directory, 2 << 20);
        h.set_cksum();
        b.append(&h, &big[..]).unwrap();
        let mut h = header("././@LongLink", tar::EntryType::GNULongName, 2 << 20);
        h.set_cksum();
        b.append(&h, &big[..]).unwrap();
        let mut h = header("x", tar::EntryType::Regular, 0);
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
        let t = b.into_inner().unwrap();
        let d = tempfile::tempdir().unwrap();
        let err = unpack(&t[..], d.path(), &roomy()).unwrap_err();
        assert!(
            matches!(&err, UnpackError::MetadataTooLarge { after } if after == "dir/"),
            "{err}"
        );
    }

    #[test]
    fn only_user_and_capability_xattrs_are_applied() {
        // cap_net_raw in the permitted set, effective: a v2 vfs_cap_data.
        let mut cap = vec![0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00];
        cap.resize(20, 0);
        let records: Vec<(String, Vec<u8>)> = [
            ("trusted.overlay.opaque", &b"y"[..]),
            ("trusted.overlay.redirect", b"/etc"),
            ("trusted.overlay.metacopy", b""),
            ("security.selinux", b"system_u:object_r:shadow_t:s0"),
            ("security.ima", b"\x03\x02"),
            ("security.evm", b"\x05"),
            ("security.apparmor", b"unconfined"),
            ("security.capability", &cap),
            ("user.kept", b"yes"),
        ]
        .iter()
        .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.to_vec()))
        .collect();
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind) in [
            ("d/", tar::EntryType::Directory),
            ("f", tar::EntryType::Regular),
        ] {
            b.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), &v[..])))
                .unwrap();
            let mut h = header(path, kind, 0);
            h.set_cksum();
            b.append(&h, &b""[..]).unwrap();
        }
        let t = b.into_inner().unwrap();
        let d = tempfile::tempdir().unwrap();
        unpack(&t[..], d.path(), &roomy()).unwrap();
        for p in ["d", "f"] {
            let mut names: Vec<String> = xattr::list(d.path().join(p))
                .unwrap()
                .map(|n| n.to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names, ["security.capability", "user.kept"], "{p}");
        }
        assert_eq!(
            xattr::get(d.path().join("f"), "security.capability").unwrap(),
            Some(cap)
        );
    }

    #[test]
    fn sniffs_compression() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"hello").unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&b"hello"[..], 1).unwrap();
        for input in [gz, zs, b"hello".to_vec()] {
            let mut out = String::new();
            decompressor(&input[..])
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            assert_eq!(out, "hello");
        }
    }
}
