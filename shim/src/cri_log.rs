//! The CRI log file, in kubelet's format: one record per line,
//! `<RFC 3339 timestamp, nanoseconds, UTC> <stdout|stderr> <P|F> <content>\n`.
//! Lines longer than `MAX_LINE` are cut into `P` (partial) records, the last piece `F` (full);
//! output that ends without a newline ends with a `P` record, since kubelet appends a newline
//! to every `F` record it shows and would otherwise add one the container never wrote.
//! Records are written straight to the file (no user-space buffering), so kubelet and
//! `crictl logs` see output promptly; `reopen` follows kubelet's log rotation. A line still
//! being read stays in memory until it ends, so rotation never tears one record in two files.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, OpenHow, ResolveFlag, fcntl, openat2};
use nix::sys::stat::{Mode, SFlag, mkdirat};

/// kubelet's and containerd's maximum record content before a line is split.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `2026-11-22T11:01:43.123456789Z`
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, mo, da) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{da:02}T{:02}:{:02}:{:02}.{:09}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60,
        d.subsec_nanos()
    )
}

pub fn record(t: SystemTime, stream: Stream, full: bool, content: &[u8]) -> Vec<u8> {
    let ts = rfc3339_nano(t);
    let mut v = Vec::with_capacity(ts.len() + content.len() + 12);
    v.extend_from_slice(ts.as_bytes());
    v.push(b' ');
    v.extend_from_slice(stream.as_str().as_bytes());
    v.extend_from_slice(if full { b" F " } else { b" P " });
    v.extend_from_slice(content);
    v.push(b'\n');
    v
}

/// Splits one stream's bytes into log records.
#[derive(Default)]
pub struct Splitter {
    pending: Vec<u8>,
}

impl Splitter {
    /// Feed bytes; `emit(content, full)` is called for every complete record.
    pub fn push(&mut self, mut data: &[u8], emit: &mut dyn FnMut(&[u8], bool)) {
        while !data.is_empty() {
            match data.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    let (line, rest) = data.split_at(i);
                    self.take(line, emit);
                    emit(&self.pending, true);
                    self.pending.clear();
                    data = &rest[1..];
                }
                None => {
                    self.take(data, emit);
                    data = &[];
                }
            }
        }
    }

    /// Append to the pending line, emitting `P` records whenever it reaches `MAX_LINE`.
    fn take(&mut self, mut part: &[u8], emit: &mut dyn FnMut(&[u8], bool)) {
        while self.pending.len() + part.len() > MAX_LINE {
            let n = MAX_LINE - self.pending.len();
            self.pending.extend_from_slice(&part[..n]);
            emit(&self.pending, false);
            self.pending.clear();
            part = &part[n..];
        }
        self.pending.extend_from_slice(part);
    }

    /// End of stream: an unterminated last line is written as a partial record (kubelet's
    /// reader joins `P` records until an `F` and shows a trailing `P` as it is, without a
    /// newline), as containerd does.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&[u8], bool)) {
        if !self.pending.is_empty() {
            emit(&self.pending, false);
            self.pending.clear();
        }
    }
}

/// Where the log file is: the pod's log directory as kubelet named it, and the file's path
/// below it. The directory's parents are the node's layout (an operator may have made
/// `/var/log/pods` a symlink to a larger disk) and are followed; the directory itself and every
/// component below it are not: whoever can write the pod's log directory (a log agent, a
/// container with it mounted) could otherwise swap a directory for a symlink and have the shim
/// create or append files anywhere on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPath {
    pub dir: PathBuf,
    pub rel: PathBuf,
}

impl LogPath {
    pub fn full(&self) -> PathBuf {
        self.dir.join(&self.rel)
    }
}

/// Why the log file could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The relative part is empty, absolute, or climbs with `..`.
    BadPath(PathBuf),
    /// A directory on the way, or the file, is a symlink: refused, never followed.
    Symlink(PathBuf),
    /// The name is taken by something that is not a regular file (a FIFO would block the
    /// shim, a device would take the container's output).
    NotRegular(PathBuf),
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl OpenError {
    /// A refusal of what is on disk (not a failure of the system).
    pub fn refused(&self) -> bool {
        matches!(self, OpenError::Symlink(_) | OpenError::NotRegular(_))
    }
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::BadPath(p) => write!(
                f,
                "log path {}: must be relative, without `..`",
                p.display()
            ),
            OpenError::Symlink(p) => write!(
                f,
                "log path {}: is a symlink, refused (log directories and files are never followed)",
                p.display()
            ),
            OpenError::NotRegular(p) => {
                write!(f, "log file {}: not a regular file, refused", p.display())
            }
            OpenError::Io { op, path, source } => write!(f, "{op} {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for OpenError {}

/// Mode of the directories the shim creates below the pod's log directory (kubelet makes the
/// ones it wants itself; what the shim makes is for it and root only).
const LOG_DIR_MODE: u32 = 0o700;
/// kubelet (root) reads container logs; nobody else needs to (CRI-O's conmon makes them 0600;
/// containerd 0640 with root's group). Container output may carry anything the app prints.
const LOG_FILE_MODE: u32 = 0o600;

/// `name` in `dir` as a directory, without following a symlink (ELOOP then).
fn open_dir_beneath(dir: &impl AsFd, name: &Path, full: &Path) -> Result<OwnedFd, OpenError> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH);
    openat2(dir, name, how).map_err(|e| match e {
        Errno::ELOOP => OpenError::Symlink(full.to_owned()),
        e => OpenError::Io {
            op: "opening directory",
            path: full.to_owned(),
            source: e.into(),
        },
    })
}

/// `name` in `dir` as a directory, made if missing.
fn make_dir_beneath(dir: &impl AsFd, name: &Path, full: &Path) -> Result<OwnedFd, OpenError> {
    match mkdirat(dir, name, Mode::from_bits_truncate(LOG_DIR_MODE)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => {
            return Err(OpenError::Io {
                op: "creating directory",
                path: full.to_owned(),
                source: e.into(),
            });
        }
    }
    open_dir_beneath(dir, name, full)
}

/// Open (creating what is missing) the log file at `at` for appending, following no symlink
/// from the pod's log directory down; the file's length.
fn open(at: &LogPath) -> Result<(File, u64), OpenError> {
    let io = |op, path: &Path| {
        let path = path.to_owned();
        move |e: Errno| OpenError::Io {
            op,
            path,
            source: e.into(),
        }
    };
    let comps: Vec<&std::ffi::OsStr> = at
        .rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(OpenError::BadPath(at.rel.clone())),
        })
        .collect::<Result<_, _>>()?;
    let Some((file_name, dirs)) = comps.split_last() else {
        return Err(OpenError::BadPath(at.rel.clone()));
    };
    // The pod's log directory: its parent as named, itself not followed.
    let (parent, own) = match (at.dir.parent(), at.dir.file_name()) {
        (Some(p), Some(n)) => (p, Path::new(n)),
        _ => (Path::new("/"), Path::new(".")),
    };
    std::fs::create_dir_all(parent).map_err(|source| OpenError::Io {
        op: "creating directory",
        path: parent.to_owned(),
        source,
    })?;
    let parent_fd = nix::fcntl::open(
        parent,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io("opening directory", parent))?;
    let mut dir = make_dir_beneath(&parent_fd, own, &at.dir)?;
    let mut walked = at.dir.clone();
    for d in dirs {
        walked.push(d);
        dir = make_dir_beneath(&dir, Path::new(d), &walked)?;
    }
    let full = at.full();
    let how = OpenHow::new()
        .flags(
            OFlag::O_WRONLY
                | OFlag::O_APPEND
                | OFlag::O_CREAT
                | OFlag::O_CLOEXEC
                | OFlag::O_NOCTTY
                // A FIFO put in its place must not block the shim's one thread.
                | OFlag::O_NONBLOCK,
        )
        .mode(Mode::from_bits_truncate(LOG_FILE_MODE))
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH);
    let fd = openat2(&dir, Path::new(file_name), how).map_err(|e| match e {
        Errno::ELOOP => OpenError::Symlink(full.clone()),
        e => OpenError::Io {
            op: "opening",
            path: full.clone(),
            source: e.into(),
        },
    })?;
    let st = nix::sys::stat::fstat(&fd).map_err(io("stat", &full))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(OpenError::NotRegular(full));
    }
    fcntl(&fd, FcntlArg::F_SETFL(OFlag::O_WRONLY | OFlag::O_APPEND)).map_err(io("fcntl", &full))?;
    Ok((File::from(fd), st.st_size as u64))
}

pub struct LogFile {
    at: LogPath,
    file: Option<File>,
    /// Bytes in the open file after the last whole record (the file is ours alone).
    len: u64,
    /// Records dropped since the last one that was written (disk full, file gone).
    dropped: u64,
    /// Set once the disk was found full: every record's space is reserved (fallocate) before
    /// it is written, so a record that does not fit leaves no byte behind — not even for a
    /// moment, which a reader tailing the file would see. Cleared when the file is reopened.
    reserve: bool,
}

impl LogFile {
    pub fn open(at: &LogPath) -> Result<LogFile, OpenError> {
        let (file, len) = open(at)?;
        Ok(LogFile {
            at: at.clone(),
            file: Some(file),
            len,
            dropped: 0,
            reserve: false,
        })
    }

    /// Append one record, whole or not at all: a write that fails part-way (ENOSPC) is cut
    /// back to the last whole record, so the file never holds a torn line that would corrupt
    /// the next one. Records are dropped while the disk is full — the container is never
    /// blocked on its output — and writing resumes by itself when space returns.
    pub fn write(&mut self, bytes: &[u8]) {
        if self.file.is_none()
            && let Ok((f, len)) = open(&self.at)
        {
            self.file = Some(f);
            self.len = len;
        }
        let Some(f) = self.file.as_mut() else {
            self.dropped += 1;
            return;
        };
        if self.reserve {
            use nix::fcntl::{FallocateFlags, fallocate};
            match fallocate(
                &*f,
                FallocateFlags::FALLOC_FL_KEEP_SIZE,
                self.len as i64,
                bytes.len() as i64,
            ) {
                Ok(()) => {}
                Err(nix::errno::Errno::ENOSPC | nix::errno::Errno::EDQUOT) => {
                    self.dropped += 1;
                    return;
                }
                // The filesystem cannot reserve: fall back to write-and-cut.
                Err(_) => self.reserve = false,
            }
        }
        match f.write_all(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                if self.dropped > 0 {
                    eprintln!(
                        "kelson-shim: log writable again after dropping {} records",
                        self.dropped
                    );
                    self.dropped = 0;
                }
            }
            Err(e) => {
                if self.dropped == 0 {
                    eprintln!("kelson-shim: dropping log records: {e}");
                }
                self.dropped += 1;
                if matches!(
                    e.raw_os_error(),
                    Some(nix::libc::ENOSPC | nix::libc::EDQUOT)
                ) {
                    self.reserve = true;
                }
                if f.set_len(self.len).is_err() {
                    // Cannot repair this file: open it afresh for the next record.
                    self.file = None;
                }
            }
        }
    }

    /// Open the file afresh (kubelet rotated it). On failure the file open until now stays
    /// in use: it was opened safely, and nothing is written through what refused.
    pub fn reopen(&mut self) -> Result<(), OpenError> {
        let (file, len) = open(&self.at)?;
        self.file = Some(file);
        self.len = len;
        self.reserve = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_795_000_000, 5);
        assert_eq!(rfc3339_nano(t), "2026-11-18T11:06:40.000000005Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339_nano(leap)[..10], "2000-02-29");
    }

    #[test]
    fn records() {
        let r = record(UNIX_EPOCH, Stream::Stderr, false, b"abc");
        assert_eq!(r, b"1970-01-01T00:00:00.000000000Z stderr P abc\n");
    }

    fn split(chunks: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut |b, f| out.push((b.to_vec(), f)));
        }
        s.finish(&mut |b, f| out.push((b.to_vec(), f)));
        out
    }

    #[test]
    fn splits_lines_and_partials() {
        assert_eq!(
            split(&[b"a\nb", b"c\n\n"]),
            vec![
                (b"a".to_vec(), true),
                (b"bc".to_vec(), true),
                (b"".to_vec(), true)
            ]
        );
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let mut input = long.clone();
        input.push(b'\n');
        let out = split(&[&input[..100], &input[100..]]);
        assert_eq!(out.len(), 3);
        assert_eq!((out[0].0.len(), out[0].1), (MAX_LINE, false));
        assert_eq!((out[1].0.len(), out[1].1), (MAX_LINE, false));
        assert_eq!((out[2].0.len(), out[2].1), (10, true));
        // exactly MAX_LINE then newline: one full record
        let mut exact = vec![b'y'; MAX_LINE];
        exact.push(b'\n');
        assert_eq!(split(&[&exact]).len(), 1);
    }

    #[test]
    fn unterminated_output_ends_partial() {
        assert_eq!(split(&[b"tail"]), vec![(b"tail".to_vec(), false)]);
        assert_eq!(
            split(&[b"a\n", b"b", b"c"]),
            vec![(b"a".to_vec(), true), (b"bc".to_vec(), false)]
        );
        assert_eq!(split(&[b"done\n"]), vec![(b"done".to_vec(), true)]);
        assert_eq!(split(&[]), vec![]);
        // A long unterminated line: every piece partial, the last one too.
        let long = vec![b'z'; MAX_LINE + 7];
        let out = split(&[&long[..MAX_LINE - 1], &long[MAX_LINE - 1..]]);
        assert_eq!(
            out.iter().map(|(b, f)| (b.len(), *f)).collect::<Vec<_>>(),
            [(MAX_LINE, false), (7, false)]
        );
        // Exactly MAX_LINE with no newline: one partial record, no empty one after it.
        let exact = vec![b'y'; MAX_LINE];
        assert_eq!(split(&[&exact]), vec![(exact.clone(), false)]);
        // A chunk that fills the line exactly, then the newline alone: one full record.
        let out = split(&[&exact, b"\n"]);
        assert_eq!(out, vec![(exact.clone(), true)]);
        // Filled exactly, then more of the same line.
        let out = split(&[&exact, b"x\n"]);
        assert_eq!(out, vec![(exact, false), (b"x".to_vec(), true)]);
    }

    /// What kubelet shows for a log: `F` contents with a newline, `P` contents as they are.
    fn kubelet_view(log: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in log.split_inclusive(|b| *b == b'\n') {
            let line = line
                .strip_suffix(b"\n")
                .expect("every record ends in a newline");
            let mut f = line.splitn(4, |b| *b == b' ');
            let (_ts, _stream, tag, content) = (f.next(), f.next(), f.next(), f.next());
            out.extend_from_slice(content.expect("four fields"));
            match tag {
                Some(b"F") => out.push(b'\n'),
                Some(b"P") => {}
                other => panic!("tag {other:?}"),
            }
        }
        out
    }

    #[test]
    fn kubelet_sees_exactly_the_bytes_written() {
        let mut input = b"one\n".to_vec();
        input.extend(std::iter::repeat_n(b'q', MAX_LINE * 2 + 3));
        input.extend_from_slice(b"\nlast, unterminated");
        for chunk in [1, 7, 4096, MAX_LINE, input.len()] {
            let mut s = Splitter::default();
            let mut log = Vec::new();
            let mut emit = |b: &[u8], f: bool| log.extend(record(UNIX_EPOCH, Stream::Stdout, f, b));
            for c in input.chunks(chunk) {
                s.push(c, &mut emit);
            }
            s.finish(&mut emit);
            assert_eq!(kubelet_view(&log), input, "chunks of {chunk}");
        }
    }

    fn at(dir: &Path, rel: &str) -> LogPath {
        LogPath {
            dir: dir.to_owned(),
            rel: rel.into(),
        }
    }

    #[test]
    fn directories_below_the_pod_log_dir_are_made_and_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let bait = tempfile::tempdir().unwrap();
        let pod = d.path().join("pod");
        // Missing directories are made (the pod's own too), and the file is written.
        let mut l = LogFile::open(&at(&pod, "c/0.log")).unwrap();
        l.write(b"one\n");
        assert_eq!(std::fs::read(pod.join("c/0.log")).unwrap(), b"one\n");
        // The container's directory swapped for a symlink: a reopen refuses it by name and the
        // file open until now stays in use.
        std::fs::rename(pod.join("c"), d.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(bait.path(), pod.join("c")).unwrap();
        let e = l.reopen().unwrap_err();
        assert!(e.refused(), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "log path {}: is a symlink, refused (log directories and files are never followed)",
                pod.join("c").display()
            )
        );
        l.write(b"two\n");
        assert_eq!(
            std::fs::read(d.path().join("moved/0.log")).unwrap(),
            b"one\ntwo\n"
        );
        assert!(LogFile::open(&at(&pod, "c/1.log")).is_err());
        assert_eq!(std::fs::read_dir(bait.path()).unwrap().count(), 0);
        // The pod's log directory itself as a symlink, and the file as one.
        let linked = d.path().join("linked-pod");
        std::os::unix::fs::symlink(bait.path(), &linked).unwrap();
        assert!(
            matches!(LogFile::open(&at(&linked, "0.log")), Err(OpenError::Symlink(p)) if p == linked)
        );
        std::os::unix::fs::symlink(bait.path().join("f"), pod.join("f.log")).unwrap();
        assert!(matches!(
            LogFile::open(&at(&pod, "f.log")),
            Err(OpenError::Symlink(_))
        ));
        assert_eq!(std::fs::read_dir(bait.path()).unwrap().count(), 0);
        // A parent of the pod's log directory may be a symlink (the node's layout).
        let real = tempfile::tempdir().unwrap();
        let pods = d.path().join("pods");
        std::os::unix::fs::symlink(real.path(), &pods).unwrap();
        LogFile::open(&at(&pods.join("p1"), "c/0.log")).unwrap();
        assert!(real.path().join("p1/c/0.log").is_file());
    }

    #[test]
    fn a_log_name_taken_by_a_fifo_or_a_bad_path_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&d.path().join("f.log"), Mode::from_bits_truncate(0o600)).unwrap();
        // A reader holds it open, so an open for writing would succeed (and block writes).
        let _reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(d.path().join("f.log"))
            .unwrap();
        assert!(matches!(
            LogFile::open(&at(d.path(), "f.log")),
            Err(OpenError::NotRegular(_))
        ));
        for bad in ["", "../x.log", "/abs.log", "a/../b.log"] {
            assert!(
                matches!(
                    LogFile::open(&at(d.path(), bad)),
                    Err(OpenError::BadPath(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_line_read_across_a_reopen_lands_whole_in_the_new_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let mut l = LogFile::open(&at(d.path(), "c.log")).unwrap();
        let mut s = Splitter::default();
        let feed = |l: &mut LogFile, s: &mut Splitter, data: &[u8], end: bool| {
            let mut emit = |b: &[u8], f: bool| l.write(&record(UNIX_EPOCH, Stream::Stderr, f, b));
            s.push(data, &mut emit);
            if end {
                s.finish(&mut emit);
            }
        };
        feed(&mut l, &mut s, b"whole\nhalf", false);
        std::fs::rename(&p, d.path().join("c.log.1")).unwrap();
        l.reopen().unwrap();
        feed(&mut l, &mut s, b" and rest\ntail", true);
        let ts = "1970-01-01T00:00:00.000000000Z";
        assert_eq!(
            std::fs::read_to_string(d.path().join("c.log.1")).unwrap(),
            format!("{ts} stderr F whole\n")
        );
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("{ts} stderr F half and rest\n{ts} stderr P tail\n")
        );
    }

    #[test]
    fn reopen_after_rotation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let mut l = LogFile::open(&at(d.path(), "c.log")).unwrap();
        l.write(b"one\n");
        std::fs::rename(&p, d.path().join("c.log.1")).unwrap();
        l.write(b"two\n");
        l.reopen().unwrap();
        l.write(b"three\n");
        assert_eq!(
            std::fs::read(d.path().join("c.log.1")).unwrap(),
            b"one\ntwo\n"
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"three\n");
    }
}
