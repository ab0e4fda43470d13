//! Creation of the container, once, before the loop starts: the stdio pipes, the console
//! socket for a terminal's master, the start report FIFO, and the `kelson-shim-engine create`
//! child (the creator), waited for until it exits with the init's pid or its error. Nothing
//! here runs after `Shim::create` returns, and it never leaves a creator running on failure.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use kelson_proto::shim as msg;
use nix::fcntl::OFlag;

use super::pipes::nonblocking;
use super::{Config, Shim};
use crate::cri_log::{LogFile, Splitter, Stream};

/// How long the creator may take to send a terminal's master.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a creator that sent no terminal may take to exit with its own error message.
const CREATOR_ERROR_GRACE: Duration = Duration::from_secs(5);

/// The container's stdio pipes: the creator's ends go to it, the shim keeps the others.
struct Pipes {
    out_r: OwnedFd,
    out_w: OwnedFd,
    err_r: OwnedFd,
    err_w: OwnedFd,
    /// stdin for attach: a pipe kept open by the shim (a terminal carries it instead).
    stdin_r: Option<OwnedFd>,
    stdin_w: Option<OwnedFd>,
}

/// Where the creator writes what the shim reads back.
struct CreatorFiles {
    pid_file: PathBuf,
    err_file: PathBuf,
    report_path: PathBuf,
    /// Beside the control socket, whose path is kept short (sun_path holds 108 bytes).
    console_path: PathBuf,
}

fn pipes(cfg: &Config) -> Result<Pipes, String> {
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    nonblocking(&out_r)
        .and(nonblocking(&err_r))
        .map_err(|e| format!("fcntl: {e}"))?;
    let (stdin_r, stdin_w) = if cfg.stdin && !cfg.tty {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        nonblocking(&w).map_err(|e| format!("fcntl: {e}"))?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    Ok(Pipes {
        out_r,
        out_w,
        err_r,
        err_w,
        stdin_r,
        stdin_w,
    })
}

/// The init's start report: this side reads, opened before the creator so that its write end
/// (held by the init until it execs) never waits for a reader.
fn open_start_report(report_path: &Path) -> Result<OwnedFd, String> {
    let _ = std::fs::remove_file(report_path);
    nix::unistd::mkfifo(report_path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| format!("making {}: {e}", report_path.display()))?;
    nix::fcntl::open(
        report_path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("opening {}: {e}", report_path.display()))
}

fn spawn_creator(
    cfg: &Config,
    files: &CreatorFiles,
    (out_w, err_w, stdin_r): (OwnedFd, OwnedFd, Option<OwnedFd>),
    console: bool,
) -> Result<Child, String> {
    let mut cmd = cfg.engine.command("create");
    cmd.args(["--id", &cfg.id])
        .arg("--root")
        .arg(&cfg.root)
        .arg("--bundle")
        .arg(&cfg.bundle)
        .arg("--pid-file")
        .arg(&files.pid_file)
        .arg("--error-file")
        .arg(&files.err_file)
        .arg("--start-report")
        .arg(&files.report_path)
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w));
    match stdin_r {
        Some(r) => cmd.arg("--stdin").stdin(Stdio::from(r)),
        None => cmd.stdin(Stdio::null()),
    };
    if console {
        cmd.arg("--console-socket").arg(&files.console_path);
    }
    // The command (and with it this side's copies of the pipe ends) is dropped here, so the
    // container's output reaches EOF when the container's side closes.
    cmd.spawn().map_err(|e| format!("spawning creator: {e}"))
}

/// The creator's own account of its failure when it left one in its error file.
fn creator_error(err_file: &Path) -> Option<String> {
    std::fs::read_to_string(err_file)
        .ok()
        .filter(|w| !w.trim().is_empty())
}

/// Paths whose names are removed when this goes out of scope (already gone: nothing).
struct RemoveOnDrop<const N: usize>([PathBuf; N]);

impl<const N: usize> Drop for RemoveOnDrop<N> {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The terminal's master from the creator; on failure the creator is gone and the error is
/// its own account, else what went wrong here.
fn receive_master(
    console: &UnixListener,
    creator: &mut Child,
    files: &CreatorFiles,
) -> Result<OwnedFd, String> {
    crate::console::receive(console, creator, CREATE_TIMEOUT).map_err(|e| {
        // A creator that failed inside the container says why in its error file as it
        // exits: give it a moment to, then make sure it is gone.
        let deadline = Instant::now() + CREATOR_ERROR_GRACE;
        while matches!(creator.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = creator.kill();
        let _ = creator.wait();
        let _ = std::fs::remove_file(&files.console_path);
        creator_error(&files.err_file)
            .unwrap_or(e)
            .trim()
            .to_owned()
    })
}

fn wait_creator(creator: &mut Child) -> Result<ExitStatus, String> {
    loop {
        match creator.wait() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r.map_err(|e| format!("waiting for the creator: {e}")),
        }
    }
}

fn read_init_pid(pid_file: &Path) -> Result<i32, String> {
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| "creator wrote no init pid".to_owned())
}

type Outputs = Vec<(Stream, OwnedFd, Splitter)>;

/// The loop's outputs, the container's stdin and the terminal (for resizes): the pipes, or
/// the terminal's master when there is one.
fn container_stdio(
    cfg: &Config,
    out_r: OwnedFd,
    err_r: OwnedFd,
    stdin_w: Option<OwnedFd>,
    master: Option<OwnedFd>,
) -> Result<(Outputs, Option<OwnedFd>, Option<OwnedFd>), String> {
    let mut outputs = vec![
        (Stream::Stdout, out_r, Splitter::default()),
        (Stream::Stderr, err_r, Splitter::default()),
    ];
    let Some(m) = master else {
        return Ok((outputs, stdin_w, None));
    };
    nonblocking(&m).map_err(|e| format!("fcntl: {e}"))?;
    let dup = m.try_clone().map_err(|e| format!("dup terminal: {e}"))?;
    // On a terminal everything the container writes is one stream: stdout.
    outputs.push((Stream::Stdout, m, Splitter::default()));
    let stdin = if cfg.stdin {
        Some(dup.try_clone().map_err(|e| format!("dup terminal: {e}"))?)
    } else {
        None
    };
    Ok((outputs, stdin, Some(dup)))
}

impl Shim {
    /// Create the container (through a creator child); the control socket is bound after.
    pub fn create(cfg: Config) -> Result<Shim, String> {
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| format!("set child subreaper: {e}"))?;
        Self::create_container(cfg)
    }

    /// The creation itself, in whatever process runs it (unit tests: not a subreaper).
    pub(super) fn create_container(cfg: Config) -> Result<Shim, String> {
        let log = LogFile::open(&cfg.log).map_err(|e| format!("opening the log: {e}"))?;
        let p = pipes(&cfg)?;
        let files = CreatorFiles {
            pid_file: cfg.dir.join("init.pid"),
            err_file: cfg.dir.join("create.err"),
            report_path: cfg.dir.join("start-report"),
            console_path: cfg.socket.with_extension("console"),
        };
        let console = if cfg.tty {
            Some(crate::console::listen(&files.console_path)?)
        } else {
            None
        };
        // On every way out: the console socket's name (beside the control socket, outside
        // the shim's dir, so kelsond's rollback would not find it) and the report FIFO's.
        let _names = RemoveOnDrop([files.console_path.clone(), files.report_path.clone()]);
        let start_report = open_start_report(&files.report_path)?;
        let mut creator = spawn_creator(
            &cfg,
            &files,
            (p.out_w, p.err_w, p.stdin_r),
            console.is_some(),
        )?;
        let master = match &console {
            Some(l) => Some(receive_master(l, &mut creator, &files)?),
            None => None,
        };
        drop(console);
        let _ = std::fs::remove_file(&files.console_path);
        let status = wait_creator(&mut creator)?;
        // Both ends are open by now (ours and the init's): the name is no longer needed.
        let _ = std::fs::remove_file(&files.report_path);
        if !status.success() {
            let why = creator_error(&files.err_file)
                .unwrap_or_else(|| format!("creator exited with {status}"));
            return Err(why.trim().to_owned());
        }
        let init = read_init_pid(&files.pid_file)?;
        let (outputs, stdin, term) = container_stdio(&cfg, p.out_r, p.err_r, p.stdin_w, master)?;
        Ok(Shim {
            cfg,
            log,
            init,
            status: msg::Status::Created,
            started_at: 0,
            exit: None,
            outputs,
            execs: Vec::new(),
            reaped: HashMap::new(),
            exec_seq: 0,
            waiters: Vec::new(),
            attachers: Vec::new(),
            stdin,
            stdin_buf: BytesMut::new(),
            stdin_eof: false,
            term,
            start_report: Some(start_report),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake_engine::{FakeEngine, config, leftovers};
    use super::*;

    fn create(dir: &Path, engine: FakeEngine, tty: bool) -> Result<Shim, String> {
        let mut cfg = config(dir, engine);
        cfg.tty = tty;
        Shim::create_container(cfg)
    }

    #[test]
    fn an_engine_that_cannot_be_spawned_is_the_create_error() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FakeEngine::default();
        let asked = engine.asked();
        let e = create(dir.path(), engine, false).err().unwrap();
        assert!(e.starts_with("spawning creator: "), "{e}");
        assert_eq!(*asked.borrow(), ["create"]);
    }

    #[test]
    fn a_terminal_create_that_cannot_spawn_leaves_no_socket_or_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let e = create(dir.path(), FakeEngine::default(), true)
            .err()
            .unwrap();
        assert!(e.starts_with("spawning creator: "), "{e}");
        assert!(!dir.path().join("c1.console").exists());
        assert_eq!(leftovers(dir.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn a_failed_creator_is_answered_with_its_own_account() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FakeEngine::default().with(
            "create",
            r#"echo "exec: no such file" > "$err_file"; exit 1"#,
        );
        let e = create(dir.path(), engine, false).err().unwrap();
        assert_eq!(e, "exec: no such file");
        assert_eq!(leftovers(dir.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn a_creator_that_fails_silently_is_named_by_its_exit() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FakeEngine::default().with("create", "exit 3");
        let e = create(dir.path(), engine, false).err().unwrap();
        assert_eq!(e, "creator exited with exit status: 3");
        assert_eq!(leftovers(dir.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn a_creator_that_succeeds_without_an_init_pid_is_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FakeEngine::default().with("create", "exit 0");
        let e = create(dir.path(), engine, false).err().unwrap();
        assert_eq!(e, "creator wrote no init pid");
        assert_eq!(leftovers(dir.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn a_terminal_creator_that_dies_is_reaped_and_its_socket_removed() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FakeEngine::default().with(
            "create",
            r#"test -S "$console" || exit 9
               echo $$ > "$pid_file"
               echo "no pty" > "$err_file"; exit 1"#,
        );
        let e = create(dir.path(), engine, true).err().unwrap();
        assert_eq!(e, "no pty");
        // The console socket lies beside the control socket, outside the shim's dir (which
        // kelsond's rollback removes, start report and all).
        assert!(!dir.path().join("c1.console").exists());
        // Waited for: not even a zombie is left.
        let pid = read_init_pid(&dir.path().join("init.pid")).unwrap();
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "{pid}");
    }

    #[test]
    fn a_created_container_has_its_init_and_its_output_on_the_shims_pipes() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FakeEngine::default().with(
            "create",
            r#"test -p "$report" || exit 9
               echo hello; echo oops >&2; echo 4242 > "$pid_file""#,
        );
        let asked = engine.asked();
        let shim = create(dir.path(), engine, false).unwrap();
        assert_eq!(shim.init_pid(), 4242);
        assert_eq!(shim.status, msg::Status::Created);
        assert!(shim.start_report.is_some() && shim.stdin.is_none() && shim.term.is_none());
        assert_eq!(leftovers(dir.path()), Vec::<PathBuf>::new());
        assert_eq!(*asked.borrow(), ["create"]);
        let mut buf = [0u8; 64];
        let read = |i: usize, buf: &mut [u8]| {
            let n = nix::unistd::read(&shim.outputs[i].1, buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        assert_eq!(read(0, &mut buf), "hello\n");
        assert_eq!(read(1, &mut buf), "oops\n");
    }

    #[test]
    fn the_creators_account_is_its_error_file_when_it_wrote_one() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("create.err");
        assert_eq!(creator_error(&f), None);
        std::fs::write(&f, " \n").unwrap();
        assert_eq!(creator_error(&f), None, "blank is no account");
        std::fs::write(&f, "exec: no such file\n").unwrap();
        assert_eq!(creator_error(&f).as_deref(), Some("exec: no such file\n"));
    }

    #[test]
    fn the_init_pid_is_read_back_or_its_absence_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("init.pid");
        assert_eq!(read_init_pid(&f), Err("creator wrote no init pid".into()));
        std::fs::write(&f, "not a pid").unwrap();
        assert_eq!(read_init_pid(&f), Err("creator wrote no init pid".into()));
        std::fs::write(&f, "4242\n").unwrap();
        assert_eq!(read_init_pid(&f), Ok(4242));
    }

    #[test]
    fn the_start_report_is_a_fresh_fifo_read_without_a_writer() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("start-report");
        std::fs::write(&p, "stale").unwrap();
        let fd = open_start_report(&p).unwrap();
        assert!(std::fs::metadata(&p).unwrap().file_type().is_fifo());
        drop(fd);
        let missing = dir.path().join("no/such/dir/start-report");
        let e = open_start_report(&missing).err().unwrap();
        assert!(e.starts_with("making "), "{e}");
    }
}
