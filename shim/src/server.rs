//! The long-lived shim: one thread, one poll loop. Pumps the container's stdout/stderr into the
//! CRI log file, reaps every child (it is a child subreaper, so the container's init becomes its
//! child once the short-lived creator exits), records the exit, and answers control requests on
//! its unix socket. Container operations run in short-lived children (`engine.rs`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BytesMut};
use kelson_proto::shim::{self as msg, request::Kind};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::attach::{Attacher, Event};
use crate::exit::Exit;
use crate::log::{LogFile, Splitter, Stream, record};

/// Largest request accepted on the control socket.
const MAX_REQUEST: usize = 1 << 20;
/// Largest exec output kept per stream when the request asks for more.
pub const MAX_EXEC_OUTPUT: u64 = 16 << 20;
/// How long a control client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the creator may take to send a terminal's master.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a creator that sent no terminal may take to exit with its own error message.
const CREATOR_ERROR_GRACE: Duration = Duration::from_secs(5);
/// Attachers at once.
pub const MAX_ATTACHERS: usize = 32;
/// Attachers' stdin buffered for the container; past it, attachers with stdin are not read
/// until the container takes some (backpressure instead of memory).
const STDIN_BUFFER: usize = 1 << 20;
/// How long attachers get to take their last output when the container has exited.
const ATTACH_DRAIN: Duration = Duration::from_secs(2);
/// How long an exec'd command's output is still read once the command has exited. A child it
/// left in the background (`sh -c 'daemon &'`) may hold its stdout and stderr for good; the
/// answer goes out with what was read by then, and the child keeps running in the container.
/// Short, because kubelet's exec probes come every few seconds.
pub const EXEC_DRAIN: Duration = Duration::from_secs(2);

pub struct Config {
    pub id: String,
    pub root: PathBuf,
    pub bundle: PathBuf,
    pub dir: PathBuf,
    /// Control socket; kept short (unix socket paths are limited to 108 bytes).
    pub socket: PathBuf,
    pub log: PathBuf,
    /// Keep the container's stdin open for attachers.
    pub stdin: bool,
    /// Close the container's stdin when the first attacher with stdin leaves.
    pub stdin_once: bool,
    /// The container runs on a terminal (its spec says `terminal: true`).
    pub tty: bool,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

/// The engine kelsond gave (`--engine`): its sealed in-memory copy, opened here once and run as
/// `/proc/self/fd/N` (see kelsond's `shim::engine`); kept open for the shim's life.
static ENGINE: std::sync::OnceLock<(Option<std::fs::File>, PathBuf)> = std::sync::OnceLock::new();

pub fn set_engine(given: Option<&str>) -> Result<(), String> {
    let entry = match given {
        Some(p) if p.starts_with("/proc/") => {
            let f = std::fs::File::open(p).map_err(|e| format!("opening the engine {p}: {e}"))?;
            let path = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
            (Some(f), path)
        }
        Some(p) => (None, PathBuf::from(p)),
        None => (None, default_engine()),
    };
    let _ = ENGINE.set(entry);
    Ok(())
}

fn default_engine() -> PathBuf {
    std::env::current_exe()
        .map(|e| e.with_file_name("kelson-shim-engine"))
        .unwrap_or_else(|_| PathBuf::from("kelson-shim-engine"))
}

/// The engine binary: kelsond's sealed copy, else the one installed next to the shim.
pub fn engine_exe() -> PathBuf {
    ENGINE
        .get()
        .map(|(_, p)| p.clone())
        .unwrap_or_else(default_engine)
}

struct ExecSession {
    conn: UnixStream,
    child: Child,
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    cap: usize,
    deadline: Option<Instant>,
    exit: Option<i32>,
    /// When the command has exited: the end of `EXEC_DRAIN`.
    drain_until: Option<Instant>,
    timed_out: bool,
    pid_file: PathBuf,
}

impl ExecSession {
    /// When the loop must wake up for this session: the end of its drain once the command has
    /// exited, else its timeout (None: never, output or the exit wakes it).
    fn wake_at(&self) -> Option<Instant> {
        match self.exit {
            Some(_) => self.drain_until,
            None if self.timed_out => None,
            None => self.deadline,
        }
    }
}

pub struct Shim {
    cfg: Config,
    log: LogFile,
    init: i32,
    status: msg::Status,
    started_at: i64,
    exit: Option<Exit>,
    outputs: Vec<(Stream, OwnedFd, Splitter)>,
    execs: Vec<ExecSession>,
    reaped: HashMap<i32, i32>,
    exec_seq: u64,
    /// Connections waiting for the container to exit.
    waiters: Vec<UnixStream>,
    attachers: Vec<Attacher>,
    /// The container's stdin (a pipe, or the terminal) when it was created with stdin.
    stdin: Option<OwnedFd>,
    /// Attachers' stdin not yet taken by the container (bounded by `STDIN_BUFFER`).
    stdin_buf: BytesMut,
    /// Close stdin once `stdin_buf` is written (`stdin_once`).
    stdin_eof: bool,
    /// The terminal's master, for resizes (containers with a terminal).
    term: Option<OwnedFd>,
    /// The reading end of the init's start report (see the engine's `Workload`), until start.
    start_report: Option<OwnedFd>,
}

fn wait_code(s: WaitStatus) -> Option<(i32, i32)> {
    match s {
        WaitStatus::Exited(p, c) => Some((p.as_raw(), c)),
        WaitStatus::Signaled(p, sig, _) => Some((p.as_raw(), 128 + sig as i32)),
        _ => None,
    }
}

/// Read what is available from a non-blocking fd; Ok(None) at EOF.
/// Reads of one output per turn of the event loop (64 KiB each).
const PUMP_READS: usize = 16;

fn read_some(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    match nix::unistd::read(fd.as_fd(), buf) {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => Ok(Some(0)),
        Err(e) => Err(e.into()),
    }
}

impl Shim {
    /// Create the container (through a creator child) and bind the control socket.
    pub fn create(cfg: Config) -> Result<Shim, String> {
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| format!("set child subreaper: {e}"))?;
        let log = LogFile::open(&cfg.log)
            .map_err(|e| format!("opening log {}: {e}", cfg.log.display()))?;
        let (out_r, out_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let (err_r, err_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        nonblocking(&out_r)
            .and(nonblocking(&err_r))
            .map_err(|e| format!("fcntl: {e}"))?;
        // stdin for attach: a pipe kept open by the shim (a terminal carries it instead).
        let (stdin_r, stdin_w) = if cfg.stdin && !cfg.tty {
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
            nonblocking(&w).map_err(|e| format!("fcntl: {e}"))?;
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        // Beside the control socket, whose path is kept short (sun_path holds 108 bytes).
        let console_path = cfg.socket.with_extension("console");
        let console = if cfg.tty {
            Some(crate::console::listen(&console_path)?)
        } else {
            None
        };
        let pid_file = cfg.dir.join("init.pid");
        let err_file = cfg.dir.join("create.err");
        // The init's start report: this side reads, opened before the creator so that its
        // write end (held by the init until it execs) never waits for a reader.
        let report_path = cfg.dir.join("start-report");
        let _ = std::fs::remove_file(&report_path);
        nix::unistd::mkfifo(
            &report_path,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| format!("making {}: {e}", report_path.display()))?;
        let start_report: OwnedFd = nix::fcntl::open(
            &report_path,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| format!("opening {}: {e}", report_path.display()))?;
        let mut creator = {
            let mut cmd = Command::new(engine_exe());
            cmd.args(["create", "--id", &cfg.id])
                .arg("--root")
                .arg(&cfg.root)
                .arg("--bundle")
                .arg(&cfg.bundle)
                .arg("--pid-file")
                .arg(&pid_file)
                .arg("--error-file")
                .arg(&err_file)
                .arg("--start-report")
                .arg(&report_path)
                .stdout(Stdio::from(out_w))
                .stderr(Stdio::from(err_w));
            match stdin_r {
                Some(r) => cmd.arg("--stdin").stdin(Stdio::from(r)),
                None => cmd.stdin(Stdio::null()),
            };
            if console.is_some() {
                cmd.arg("--console-socket").arg(&console_path);
            }
            // The command (and with it this side's copies of the pipe ends) is dropped here,
            // so the container's output reaches EOF when the container's side closes.
            cmd.spawn().map_err(|e| format!("spawning creator: {e}"))?
        };
        let master = match &console {
            Some(l) => match crate::console::receive(l, &mut creator, CREATE_TIMEOUT) {
                Ok(m) => Some(m),
                Err(e) => {
                    // A creator that failed inside the container says why in its error file
                    // as it exits: give it a moment to, then make sure it is gone.
                    let deadline = Instant::now() + CREATOR_ERROR_GRACE;
                    while matches!(creator.try_wait(), Ok(None)) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let _ = creator.kill();
                    let _ = creator.wait();
                    let _ = std::fs::remove_file(&console_path);
                    // The creator's own account when it left one, else what went wrong here.
                    let why = std::fs::read_to_string(&err_file)
                        .ok()
                        .filter(|w| !w.trim().is_empty())
                        .unwrap_or(e);
                    return Err(why.trim().to_owned());
                }
            },
            None => None,
        };
        drop(console);
        let _ = std::fs::remove_file(&console_path);
        let status = loop {
            match creator.wait() {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r.map_err(|e| format!("waiting for the creator: {e}"))?,
            }
        };
        // Both ends are open by now (ours and the init's): the name is no longer needed.
        let _ = std::fs::remove_file(&report_path);
        if !status.success() {
            let why = std::fs::read_to_string(&err_file)
                .ok()
                .filter(|w| !w.trim().is_empty())
                .unwrap_or_else(|| format!("creator exited with {status}"));
            return Err(why.trim().to_owned());
        }
        let init: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or("creator wrote no init pid")?;
        let mut outputs = vec![
            (Stream::Stdout, out_r, Splitter::default()),
            (Stream::Stderr, err_r, Splitter::default()),
        ];
        let (stdin, term) = match master {
            Some(m) => {
                nonblocking(&m).map_err(|e| format!("fcntl: {e}"))?;
                let dup = m.try_clone().map_err(|e| format!("dup terminal: {e}"))?;
                // On a terminal everything the container writes is one stream: stdout.
                outputs.push((Stream::Stdout, m, Splitter::default()));
                let stdin = if cfg.stdin {
                    Some(dup.try_clone().map_err(|e| format!("dup terminal: {e}"))?)
                } else {
                    None
                };
                (stdin, Some(dup))
            }
            None => (stdin_w, None),
        };
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

    pub fn init_pid(&self) -> i32 {
        self.init
    }

    /// Bind the socket (root only: 0600, created under a temp name, renamed into place).
    pub fn bind(&self) -> Result<UnixListener, String> {
        let path = self.cfg.socket.clone();
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let l = UnixListener::bind(&tmp).map_err(|e| format!("bind {}: {e}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("chmod: {e}"))?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("rename socket: {e}"))?;
        l.set_nonblocking(true)
            .map_err(|e| format!("socket: {e}"))?;
        Ok(l)
    }

    pub fn run(mut self, listener: UnixListener, mut sigfd: UnixStream) -> ! {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if self.exit.is_some() && self.outputs.is_empty() && self.execs.is_empty() {
                // No new callers (they find the exit record instead), then answer the ones
                // already queued on the socket rather than resetting their connections.
                let _ = std::fs::remove_file(&self.cfg.socket);
                while let Ok((conn, _)) = listener.accept() {
                    self.serve(conn);
                }
                // Attachers get the container's last output, then their connection closes.
                for a in std::mem::take(&mut self.attachers) {
                    a.finish(ATTACH_DRAIN);
                }
                std::process::exit(0);
            }
            let timeout = self
                .execs
                .iter()
                .filter_map(ExecSession::wake_at)
                .min()
                .map(|d| {
                    PollTimeout::try_from(
                        d.saturating_duration_since(Instant::now())
                            .as_millis()
                            .min(60_000) as i32
                            + 1,
                    )
                    .unwrap_or(PollTimeout::NONE)
                })
                .unwrap_or(PollTimeout::NONE);
            let ready: Vec<Slot> = {
                let mut fds = Vec::new();
                let mut slots = Vec::new();
                macro_rules! watch {
                    ($fd:expr, $flags:expr, $slot:expr) => {{
                        fds.push(PollFd::new($fd, $flags));
                        slots.push($slot);
                    }};
                }
                watch!(listener.as_fd(), PollFlags::POLLIN, Slot::Listener);
                watch!(sigfd.as_fd(), PollFlags::POLLIN, Slot::Signal);
                for (i, (_, fd, _)) in self.outputs.iter().enumerate() {
                    watch!(fd.as_fd(), PollFlags::POLLIN, Slot::Output(i));
                }
                for (i, e) in self.execs.iter().enumerate() {
                    for fd in [&e.out, &e.err].into_iter().flatten() {
                        watch!(fd.as_fd(), PollFlags::POLLIN, Slot::Exec(i, fd.as_raw_fd()));
                    }
                }
                let stdin_full = self.stdin_buf.len() >= STDIN_BUFFER;
                for (i, a) in self.attachers.iter().enumerate() {
                    let mut flags = PollFlags::empty();
                    if !(a.closing || (a.stdin && stdin_full)) {
                        flags |= PollFlags::POLLIN;
                    }
                    if a.wants_write() {
                        flags |= PollFlags::POLLOUT;
                    }
                    watch!(a.conn().as_fd(), flags, Slot::Attacher(i));
                }
                if let Some(fd) = &self.stdin
                    && !self.stdin_buf.is_empty()
                {
                    watch!(fd.as_fd(), PollFlags::POLLOUT, Slot::Stdin);
                }
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        eprintln!("kelson-shim: poll: {e}");
                        std::process::exit(1);
                    }
                }
                fds.iter()
                    .zip(slots)
                    .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
                    .map(|(_, s)| s)
                    .collect()
            };
            let mut ready_listener = false;
            let mut ready_out = Vec::new();
            let mut ready_attachers = Vec::new();
            for slot in ready {
                match slot {
                    Slot::Listener => ready_listener = true,
                    Slot::Signal => {
                        let mut drain = [0u8; 64];
                        while matches!(sigfd.read(&mut drain), Ok(n) if n > 0) {}
                        self.reap();
                    }
                    Slot::Output(i) => ready_out.push(i),
                    Slot::Exec(i, raw) => self.pump_exec(i, raw, &mut buf),
                    Slot::Attacher(i) => ready_attachers.push(i),
                    Slot::Stdin => self.write_stdin(),
                }
            }
            // Outputs (and attachers) are removed as they end: highest index first.
            for i in ready_out.into_iter().rev() {
                self.pump(i, &mut buf);
            }
            for i in ready_attachers.into_iter().rev() {
                self.serve_attacher(i, &mut buf);
            }
            if ready_listener {
                while let Ok((conn, _)) = listener.accept() {
                    self.serve(conn);
                }
            }
            self.finish_execs();
        }
    }

    /// What an attacher sent, and its output queue.
    fn serve_attacher(&mut self, i: usize, buf: &mut [u8]) {
        let Some(a) = self.attachers.get_mut(i) else {
            return;
        };
        let mut gone = a.flush().is_err();
        let events = if gone || a.closing {
            vec![]
        } else {
            a.read(buf)
        };
        let detach_means_eof = self.cfg.stdin_once && !self.cfg.tty;
        for ev in events {
            match ev {
                Event::Stdin(data) => {
                    if self.attachers[i].stdin && self.stdin.is_some() && !self.stdin_eof {
                        self.stdin_buf.extend_from_slice(&data);
                    }
                }
                // stdin_once: the container's stdin ends with the first attacher's; the
                // attacher stays for the output. Otherwise the attacher detaches, and the
                // container's stdin stays open for the next one.
                Event::StdinClose if detach_means_eof => self.stdin_eof = true,
                Event::StdinClose => self.attachers[i].closing = true,
                Event::Resize(w, h) => {
                    if let Some(t) = &self.term
                        && let Err(e) = crate::console::set_size(t, w, h)
                    {
                        eprintln!("kelson-shim: resizing the terminal: {e}");
                    }
                }
                Event::Gone => gone = true,
            }
        }
        if !self.stdin_buf.is_empty() {
            self.write_stdin();
        }
        let a = &self.attachers[i];
        if gone || (a.closing && !a.wants_write()) {
            let a = self.attachers.remove(i);
            if a.stdin && detach_means_eof {
                self.stdin_eof = true;
            }
            if a.dropped > 0 {
                eprintln!(
                    "kelson-shim: an attacher missed {} bytes of output (it did not keep up)",
                    a.dropped
                );
            }
        }
        self.close_stdin_if_done();
    }

    /// Hand buffered stdin to the container without blocking.
    fn write_stdin(&mut self) {
        let Some(fd) = &self.stdin else {
            self.stdin_buf.clear();
            return;
        };
        while !self.stdin_buf.is_empty() {
            match nix::unistd::write(fd, &self.stdin_buf) {
                Ok(n) => self.stdin_buf.advance(n),
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                // The container closed its stdin (or exited): nothing more goes in.
                Err(_) => {
                    self.stdin = None;
                    self.stdin_buf.clear();
                    break;
                }
            }
        }
        self.close_stdin_if_done();
    }

    fn close_stdin_if_done(&mut self) {
        if self.stdin_eof && self.stdin_buf.is_empty() && self.stdin.is_some() {
            self.stdin = None;
        }
    }

    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(s) => {
                    if let Some((pid, code)) = wait_code(s) {
                        if pid == self.init {
                            self.on_init_exit(code);
                        } else {
                            self.reaped.insert(pid, code);
                        }
                    }
                }
            }
        }
    }

    fn on_init_exit(&mut self, code: i32) {
        let e = Exit {
            code,
            finished_at: now_ns(),
            started_at: self.started_at,
            oom_killed: code == 137 && self.oom_killed(),
        };
        if let Err(err) = e.write(&self.cfg.dir) {
            eprintln!("kelson-shim: writing exit record: {err}");
        }
        self.exit = Some(e);
        self.status = msg::Status::Exited;
        self.stdin = None;
        self.stdin_buf.clear();
        for w in std::mem::take(&mut self.waiters) {
            respond(
                w,
                msg::Response {
                    state: Some(self.state()),
                    ..Default::default()
                },
            );
        }
    }

    /// Whether the kernel's OOM killer acted in the container's cgroup.
    fn oom_killed(&self) -> bool {
        let Some(cg) = crate::cgroup_path(&self.cfg.bundle) else {
            return false;
        };
        for f in [
            format!("/sys/fs/cgroup/memory/{cg}/memory.oom_control"),
            format!("/sys/fs/cgroup/{cg}/memory.events"),
        ] {
            if let Ok(text) = std::fs::read_to_string(&f) {
                return text
                    .lines()
                    .any(|l| l.strip_prefix("oom_kill ").is_some_and(|n| n.trim() != "0"));
            }
        }
        false
    }

    fn pump(&mut self, i: usize, buf: &mut [u8]) {
        let log = &mut self.log;
        let attachers = &mut self.attachers;
        let (stream, fd, splitter) = &mut self.outputs[i];
        let stream = *stream;
        let mut emit = |content: &[u8], full: bool| {
            log.write(&record(SystemTime::now(), stream, full, content))
        };
        // A bounded helping per wake-up: a container that writes as fast as the shim reads
        // (or whose records are being dropped on a full disk) must not keep the loop from
        // answering kelsond. poll is level-triggered, so the rest is read on the next turn.
        for _ in 0..PUMP_READS {
            match read_some(fd, buf) {
                Ok(Some(0)) => return,
                Ok(Some(n)) => {
                    splitter.push(&buf[..n], &mut emit);
                    for a in attachers.iter_mut() {
                        a.offer(stream, &buf[..n]);
                    }
                }
                // EOF; on a terminal, EIO once the container's side is closed.
                Ok(None) | Err(_) => {
                    splitter.finish(&mut emit);
                    self.outputs.remove(i);
                    return;
                }
            }
        }
    }

    fn pump_exec(&mut self, i: usize, raw: i32, buf: &mut [u8]) {
        let Some(e) = self.execs.get_mut(i) else {
            return;
        };
        let is_out = e.out.as_ref().is_some_and(|f| f.as_raw_fd() == raw);
        for _ in 0..PUMP_READS {
            let slot = if is_out { &mut e.out } else { &mut e.err };
            let Some(fd) = slot.as_ref() else { return };
            match read_some(fd, buf) {
                Ok(Some(0)) => return,
                Ok(Some(n)) => {
                    let sink = if is_out { &mut e.stdout } else { &mut e.stderr };
                    let room = e.cap.saturating_sub(sink.len());
                    sink.extend_from_slice(&buf[..n.min(room)]);
                }
                Ok(None) | Err(_) => {
                    *slot = None;
                    return;
                }
            }
        }
    }

    /// Answer exec sessions whose process is done (or timed out).
    fn finish_execs(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.execs.len() {
            let e = &mut self.execs[i];
            let pid = e.child.id() as i32;
            if e.exit.is_none()
                && let Some(code) = self.reaped.remove(&pid)
            {
                e.exit = Some(code);
                e.drain_until = Some(now + EXEC_DRAIN);
            }
            if e.exit.is_none() && !e.timed_out && e.deadline.is_some_and(|d| now >= d) {
                e.timed_out = true;
                if let Some(p) = std::fs::read_to_string(&e.pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let drained =
                (e.out.is_none() && e.err.is_none()) || e.drain_until.is_some_and(|d| now >= d);
            if e.exit.is_some() && (drained || e.timed_out) {
                let e = self.execs.remove(i);
                let _ = std::fs::remove_file(&e.pid_file);
                let result = msg::ExecResult {
                    exit_code: e.exit.unwrap_or(-1),
                    stdout: e.stdout,
                    stderr: e.stderr,
                    timed_out: e.timed_out,
                };
                respond(
                    e.conn,
                    msg::Response {
                        exec: Some(result),
                        ..Default::default()
                    },
                );
                continue;
            }
            i += 1;
        }
    }

    fn state(&self) -> msg::State {
        let e = self.exit.unwrap_or_default();
        msg::State {
            status: self.status as i32,
            pid: self.init as u32,
            exit_code: e.code,
            started_at: self.started_at,
            finished_at: e.finished_at,
            oom_killed: e.oom_killed,
        }
    }

    fn serve(&mut self, mut conn: UnixStream) {
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
        let req = match read_request(&mut conn) {
            Ok(r) => r,
            Err(e) => return respond(conn, error(e)),
        };
        let resp = match req.kind {
            None => error("empty request".into()),
            Some(Kind::State(_)) => msg::Response {
                state: Some(self.state()),
                ..Default::default()
            },
            Some(Kind::Start(_)) => self.start(),
            Some(Kind::Signal(s)) => self.signal(s),
            Some(Kind::ReopenLog(_)) => match self.log.reopen() {
                Ok(()) => msg::Response::default(),
                Err(e) => error(format!("reopening log: {e}")),
            },
            Some(Kind::Exec(x)) => match self.exec(conn, x) {
                Ok(()) => return,
                Err((conn, e)) => return respond(conn, error(e)),
            },
            Some(Kind::Wait(_)) => {
                if self.exit.is_none() {
                    self.waiters.push(conn);
                    return;
                }
                msg::Response {
                    state: Some(self.state()),
                    ..Default::default()
                }
            }
            Some(Kind::Attach(a)) => {
                if self.status != msg::Status::Running || self.exit.is_some() {
                    return respond(conn, error("container is not running".into()));
                }
                if self.attachers.len() >= MAX_ATTACHERS {
                    return respond(
                        conn,
                        error(format!(
                            "{MAX_ATTACHERS} attachers already; try again later"
                        )),
                    );
                }
                if write_response(&mut conn, msg::Response::default()).is_err() {
                    return;
                }
                match Attacher::new(conn, &a) {
                    Ok(at) => self.attachers.push(at),
                    Err(e) => eprintln!("kelson-shim: attach: {e}"),
                }
                return;
            }
            Some(Kind::Shutdown(_)) => {
                respond(conn, msg::Response::default());
                std::process::exit(0);
            }
        };
        respond(conn, resp)
    }

    fn start(&mut self) -> msg::Response {
        if self.status != msg::Status::Created {
            return error(format!("container is {:?}, not created", self.status));
        }
        let mut cmd = Command::new(engine_exe());
        cmd.args(["start", "--id", &self.cfg.id])
            .arg("--root")
            .arg(&self.cfg.root);
        match self.start_report.take() {
            Some(r) => cmd.arg("--report-on-stdin").stdin(Stdio::from(r)),
            None => cmd.stdin(Stdio::null()),
        };
        let out = cmd.stdout(Stdio::null()).output();
        match out {
            Ok(o) if o.status.success() => {
                self.started_at = now_ns();
                self.status = msg::Status::Running;
                msg::Response {
                    state: Some(self.state()),
                    ..Default::default()
                }
            }
            Ok(o) => error(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
            Err(e) => error(format!("spawning starter: {e}")),
        }
    }

    fn signal(&mut self, s: msg::Signal) -> msg::Response {
        let Ok(sig) = Signal::try_from(s.signal) else {
            return error(format!("bad signal {}", s.signal));
        };
        if self.exit.is_some() {
            return msg::Response {
                state: Some(self.state()),
                ..Default::default()
            };
        }
        if s.all {
            for pid in crate::cgroup_procs(&self.cfg.bundle) {
                let _ = kill(Pid::from_raw(pid), sig);
            }
        }
        match kill(Pid::from_raw(self.init), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => msg::Response {
                state: Some(self.state()),
                ..Default::default()
            },
            Err(e) => error(format!("kill: {e}")),
        }
    }

    fn exec(&mut self, conn: UnixStream, x: msg::Exec) -> Result<(), (UnixStream, String)> {
        if self.status != msg::Status::Running {
            return Err((conn, "container is not running".into()));
        }
        if x.args.is_empty() {
            return Err((conn, "exec needs a command".into()));
        }
        let pipes = || -> nix::Result<(OwnedFd, OwnedFd, OwnedFd, OwnedFd)> {
            let (or, ow) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            let (er, ew) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            nonblocking(&or)?;
            nonblocking(&er)?;
            Ok((or, ow, er, ew))
        };
        let (or, ow, er, ew) = match pipes() {
            Ok(p) => p,
            Err(e) => return Err((conn, format!("pipe: {e}"))),
        };
        self.exec_seq += 1;
        let pid_file = self.cfg.dir.join(format!("exec-{}.pid", self.exec_seq));
        let child = Command::new(engine_exe())
            .args(["exec", "--id", &self.cfg.id])
            .arg("--root")
            .arg(&self.cfg.root)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg("--")
            .args(&x.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(ow))
            .stderr(Stdio::from(ew))
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => return Err((conn, format!("spawning exec: {e}"))),
        };
        let cap = if x.max_output == 0 {
            MAX_EXEC_OUTPUT
        } else {
            x.max_output.min(MAX_EXEC_OUTPUT)
        } as usize;
        self.execs.push(ExecSession {
            conn,
            child,
            out: Some(or),
            err: Some(er),
            stdout: Vec::new(),
            stderr: Vec::new(),
            cap,
            deadline: (x.timeout_ms > 0)
                .then(|| Instant::now() + Duration::from_millis(x.timeout_ms)),
            exit: None,
            drain_until: None,
            timed_out: false,
            pid_file,
        });
        Ok(())
    }
}

fn error(e: String) -> msg::Response {
    msg::Response {
        error: e,
        ..Default::default()
    }
}

fn read_request(conn: &mut UnixStream) -> Result<msg::Request, String> {
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(r) =
            kelson_proto::decode::<msg::Request>(&mut buf).map_err(|e| e.to_string())?
        {
            return Ok(r);
        }
        if buf.len() > MAX_REQUEST {
            return Err("request too large".into());
        }
        match conn.read(&mut chunk) {
            Ok(0) => return Err("connection closed before a whole request".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A socket with SO_RCVTIMEO is never restarted after a signal (signal(7)), and
            // SIGCHLD arrives whenever a container process exits: read again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading request: {e}")),
        }
    }
}

fn respond(mut conn: UnixStream, r: msg::Response) {
    let _ = write_response(&mut conn, r);
}

fn write_response(conn: &mut UnixStream, r: msg::Response) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    kelson_proto::encode(&r, &mut out)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    conn.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    conn.write_all(&out)
}

/// What a polled fd is.
#[derive(Clone, Copy)]
enum Slot {
    Listener,
    Signal,
    Output(usize),
    Exec(usize, i32),
    Attacher(usize),
    Stdin,
}

/// A socket that becomes readable on SIGCHLD (signal-hook's self-pipe). A handler rather than a
/// blocked mask + signalfd: a blocked mask would be inherited by the container's processes.
pub fn sigchld_fd() -> Result<UnixStream, String> {
    let (r, w) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    r.set_nonblocking(true)
        .and(w.set_nonblocking(true))
        .map_err(|e| format!("socketpair: {e}"))?;
    signal_hook::low_level::pipe::register(nix::libc::SIGCHLD, w)
        .map_err(|e| format!("SIGCHLD handler: {e}"))?;
    Ok(r)
}

pub fn shim_dir(p: &Path) -> PathBuf {
    p.to_owned()
}
