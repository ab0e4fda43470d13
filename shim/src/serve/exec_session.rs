//! Exec sessions (ExecSync): a `kelson-shim-engine exec` child per request, its output read
//! into bounded buffers, its timeout and the drain after it exits, and the one answer on the
//! request's connection (the result, then the output in frames). It never blocks the loop
//! waiting for a command, and never keeps more than `MAX_EXEC_OUTPUT` of a stream: the rest is
//! read and dropped, counted in the answer.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use kelson_proto::shim as msg;
use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Shim;
use super::control::write_response;
use super::pipes::{PUMP_READS, nonblocking, read_some};

/// Largest exec output kept per stream when the request asks for more.
pub const MAX_EXEC_OUTPUT: u64 = 16 << 20;
/// How long an exec'd command's output is still read once the command has exited. A child it
/// left in the background (`sh -c 'daemon &'`) may hold its stdout and stderr for good; the
/// answer goes out with what was read by then, and the child keeps running in the container.
/// Short, because kubelet's exec probes come every few seconds.
pub const EXEC_DRAIN: Duration = Duration::from_secs(2);

pub struct ExecSession {
    conn: UnixStream,
    child: Child,
    pub(super) out: Option<OwnedFd>,
    pub(super) err: Option<OwnedFd>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Bytes read past `cap` and dropped, per stream (the command is never blocked on them).
    dropped: [u64; 2],
    cap: usize,
    progress: Progress,
    pid_file: PathBuf,
}

/// Where a session is in time: its timeout, the command's exit and the drain after it. Pure, so
/// the loop's wake-ups and the moment of the answer are decided (and tested) without processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    deadline: Option<Instant>,
    exit: Option<i32>,
    /// When the command has exited: the end of `EXEC_DRAIN`.
    drain_until: Option<Instant>,
    timed_out: bool,
}

impl Progress {
    /// A session started at `now`; `timeout_ms` 0 is no timeout.
    fn new(timeout_ms: u64, now: Instant) -> Progress {
        Progress {
            deadline: (timeout_ms > 0).then(|| now + Duration::from_millis(timeout_ms)),
            exit: None,
            drain_until: None,
            timed_out: false,
        }
    }

    /// When the loop must wake up for this session: the end of its drain once the command has
    /// exited, else its timeout (None: never, output or the exit wakes it).
    fn wake_at(&self) -> Option<Instant> {
        match self.exit {
            Some(_) => self.drain_until,
            None if self.timed_out => None,
            None => self.deadline,
        }
    }

    fn exited(&mut self, code: i32, now: Instant) {
        self.exit = Some(code);
        self.drain_until = Some(now + EXEC_DRAIN);
    }

    /// Whether the command must be killed now: still running past its deadline (once).
    fn time_out(&mut self, now: Instant) -> bool {
        if self.exit.is_none() && !self.timed_out && self.deadline.is_some_and(|d| now >= d) {
            self.timed_out = true;
            return true;
        }
        false
    }

    /// Whether the answer goes out now: the command has exited, and its output has ended
    /// (`pipes_closed`), or the drain is over, or it was killed for its timeout.
    fn answer_due(&self, pipes_closed: bool, now: Instant) -> bool {
        let drained = pipes_closed || self.drain_until.is_some_and(|d| now >= d);
        self.exit.is_some() && (drained || self.timed_out)
    }
}

/// The answer to an exec: its result, then its output in `ExecOutput` frames of at most
/// `MAX_EXEC_CHUNK` bytes — the output cap is larger than one frame may be.
fn answer(
    mut conn: UnixStream,
    result: msg::ExecResult,
    stdout: &[u8],
    stderr: &[u8],
) -> std::io::Result<()> {
    let response = msg::Response {
        exec: Some(result),
        ..Default::default()
    };
    write_response(&mut conn, response)?;
    let pieces = stdout
        .chunks(msg::MAX_EXEC_CHUNK)
        .map(|c| msg::exec_output::Kind::Stdout(c.to_vec()))
        .chain(
            stderr
                .chunks(msg::MAX_EXEC_CHUNK)
                .map(|c| msg::exec_output::Kind::Stderr(c.to_vec())),
        );
    for kind in pieces {
        let mut out = BytesMut::new();
        kelson_proto::encode(&msg::ExecOutput { kind: Some(kind) }, &mut out)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        conn.write_all(&out)?;
    }
    Ok(())
}

impl ExecSession {
    pub(super) fn wake_at(&self) -> Option<Instant> {
        self.progress.wake_at()
    }
}

/// The output kept per stream: the request's `max_output` (0: the most), at most
/// `MAX_EXEC_OUTPUT`.
fn output_cap(max_output: u64) -> usize {
    (if max_output == 0 {
        MAX_EXEC_OUTPUT
    } else {
        max_output.min(MAX_EXEC_OUTPUT)
    }) as usize
}

/// Why an exec request is refused before anything runs.
fn exec_refusal(status: msg::Status, args: &[String]) -> Option<(msg::ErrorKind, &'static str)> {
    if status != msg::Status::Running {
        return Some((msg::ErrorKind::WrongState, "container is not running"));
    }
    if args.is_empty() {
        return Some((msg::ErrorKind::BadRequest, "exec needs a command"));
    }
    None
}

impl Shim {
    /// Start an exec session; on error the connection comes back with the message to answer.
    pub(super) fn exec(
        &mut self,
        conn: UnixStream,
        x: msg::Exec,
    ) -> Result<(), (UnixStream, msg::ErrorKind, String)> {
        if let Some((kind, why)) = exec_refusal(self.status, &x.args) {
            return Err((conn, kind, why.into()));
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
            Err(e) => return Err((conn, msg::ErrorKind::Internal, format!("pipe: {e}"))),
        };
        self.exec_seq += 1;
        let pid_file = self.cfg.dir.join(format!("exec-{}.pid", self.exec_seq));
        let child = self
            .cfg
            .engine
            .command("exec")
            .args(["--id", &self.cfg.id])
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
            Err(e) => {
                return Err((
                    conn,
                    msg::ErrorKind::Internal,
                    format!("spawning exec: {e}"),
                ));
            }
        };
        self.execs.push(ExecSession {
            conn,
            child,
            out: Some(or),
            err: Some(er),
            stdout: Vec::new(),
            stderr: Vec::new(),
            dropped: [0; 2],
            cap: output_cap(x.max_output),
            progress: Progress::new(x.timeout_ms, Instant::now()),
            pid_file,
        });
        Ok(())
    }

    pub(super) fn pump_exec(&mut self, i: usize, raw: i32, buf: &mut [u8]) {
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
                    e.dropped[usize::from(!is_out)] += n.saturating_sub(room) as u64;
                }
                Ok(None) | Err(_) => {
                    *slot = None;
                    return;
                }
            }
        }
    }

    /// Answer exec sessions whose process is done (or timed out).
    pub(super) fn finish_execs(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.execs.len() {
            let e = &mut self.execs[i];
            let pid = e.child.id() as i32;
            if e.progress.exit.is_none()
                && let Some(code) = self.reaped.remove(&pid)
            {
                e.progress.exited(code, now);
            }
            if e.progress.time_out(now) {
                if let Some(p) = std::fs::read_to_string(&e.pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if e.progress
                .answer_due(e.out.is_none() && e.err.is_none(), now)
            {
                let e = self.execs.remove(i);
                let _ = std::fs::remove_file(&e.pid_file);
                let result = msg::ExecResult {
                    exit_code: e.progress.exit.unwrap_or(-1),
                    timed_out: e.progress.timed_out,
                    stdout_len: e.stdout.len() as u64,
                    stderr_len: e.stderr.len() as u64,
                    stdout_dropped: e.dropped[0],
                    stderr_dropped: e.dropped[1],
                    ..Default::default()
                };
                // A client that left gets nothing.
                let _ = answer(e.conn, result, &e.stdout, &e.stderr);
                continue;
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake_engine::{FakeEngine, config};
    use super::*;

    #[test]
    fn an_exec_the_engine_cannot_run_is_internal_and_keeps_no_session() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FakeEngine::default().with("create", r#"echo 4242 > "$pid_file""#);
        let asked = engine.asked();
        let mut shim = Shim::create_container(config(dir.path(), engine)).unwrap();
        shim.status = msg::Status::Running;
        let (conn, _client) = UnixStream::pair().unwrap();
        let x = msg::Exec {
            args: vec!["true".into()],
            ..Default::default()
        };
        let (_conn, kind, e) = shim.exec(conn, x).err().unwrap();
        assert_eq!(kind, msg::ErrorKind::Internal);
        assert!(e.starts_with("spawning exec: "), "{e}");
        assert!(shim.execs.is_empty());
        assert_eq!(*asked.borrow(), ["create", "exec"]);
    }

    #[test]
    fn output_larger_than_a_frame_follows_the_answer_in_chunks() {
        use std::io::Read;
        let (conn, mut client) = UnixStream::pair().unwrap();
        let stdout: Vec<u8> = (0..kelson_proto::MAX_FRAME_LEN + 5)
            .map(|i| i as u8)
            .collect();
        let stderr = b"err".to_vec();
        let result = msg::ExecResult {
            exit_code: 3,
            stdout_len: stdout.len() as u64,
            stderr_len: 3,
            ..Default::default()
        };
        let writer = {
            let out = stdout.clone();
            std::thread::spawn(move || answer(conn, result, &out, &stderr))
        };
        let mut wire = Vec::new();
        client.read_to_end(&mut wire).unwrap();
        writer.join().unwrap().unwrap();
        let mut buf = BytesMut::from(&wire[..]);
        let r = kelson_proto::decode::<msg::Response>(&mut buf)
            .unwrap()
            .unwrap();
        let exec = r.exec.unwrap();
        assert_eq!((exec.exit_code, exec.stdout.len()), (3, 0));
        let (mut out, mut err, mut frames) = (Vec::new(), Vec::new(), 0);
        while let Some(piece) = kelson_proto::decode::<msg::ExecOutput>(&mut buf).unwrap() {
            frames += 1;
            match piece.kind.unwrap() {
                msg::exec_output::Kind::Stdout(b) => out.extend(b),
                msg::exec_output::Kind::Stderr(b) => err.extend(b),
            }
        }
        assert!(buf.is_empty());
        assert_eq!(
            frames, 6,
            "five of stdout (MAX_EXEC_CHUNK each at most), one of stderr"
        );
        assert!(out == stdout);
        assert_eq!(err, b"err");
    }

    #[test]
    fn output_is_capped_at_the_request_and_the_bound() {
        assert_eq!(output_cap(0), MAX_EXEC_OUTPUT as usize);
        assert_eq!(output_cap(10), 10);
        assert_eq!(output_cap(MAX_EXEC_OUTPUT + 1), MAX_EXEC_OUTPUT as usize);
        assert_eq!(output_cap(u64::MAX), MAX_EXEC_OUTPUT as usize);
    }

    #[test]
    fn exec_needs_a_running_container_and_a_command() {
        let cmd = vec!["true".to_owned()];
        assert_eq!(exec_refusal(msg::Status::Running, &cmd), None);
        for s in [msg::Status::Created, msg::Status::Exited] {
            assert_eq!(
                exec_refusal(s, &cmd),
                Some((msg::ErrorKind::WrongState, "container is not running"))
            );
        }
        assert_eq!(
            exec_refusal(msg::Status::Running, &[]),
            Some((msg::ErrorKind::BadRequest, "exec needs a command"))
        );
    }

    #[test]
    fn without_a_timeout_only_the_exit_wakes_the_loop() {
        let t0 = Instant::now();
        let mut p = Progress::new(0, t0);
        assert_eq!(p.wake_at(), None);
        assert!(!p.time_out(t0 + Duration::from_secs(3600)));
        assert!(!p.answer_due(true, t0), "not before the command exits");
        p.exited(0, t0);
        assert_eq!(p.wake_at(), Some(t0 + EXEC_DRAIN));
    }

    #[test]
    fn the_answer_waits_for_the_output_or_the_end_of_the_drain() {
        let t0 = Instant::now();
        let mut p = Progress::new(0, t0);
        let exit_at = t0 + Duration::from_millis(500);
        p.exited(7, exit_at);
        assert_eq!(p.exit, Some(7));
        // A background child holds the pipes: the answer goes out when the drain ends.
        assert!(!p.answer_due(false, exit_at));
        assert!(!p.answer_due(false, exit_at + EXEC_DRAIN - Duration::from_millis(1)));
        assert!(p.answer_due(false, exit_at + EXEC_DRAIN));
        // Output ended with the command: at once.
        assert!(p.answer_due(true, exit_at));
    }

    #[test]
    fn a_timeout_fires_once_and_the_answer_follows_the_exit() {
        let t0 = Instant::now();
        let mut p = Progress::new(1000, t0);
        let deadline = t0 + Duration::from_millis(1000);
        assert_eq!(p.wake_at(), Some(deadline));
        assert!(!p.time_out(deadline - Duration::from_millis(1)));
        assert!(p.time_out(deadline));
        assert!(p.timed_out);
        assert!(
            !p.time_out(deadline + Duration::from_secs(1)),
            "killed once"
        );
        // Killed: nothing to wake for until the kill is reaped.
        assert_eq!(p.wake_at(), None);
        assert!(!p.answer_due(false, deadline));
        p.exited(137, deadline);
        // Timed out: answered without waiting for a background child's output.
        assert!(p.answer_due(false, deadline));
    }

    #[test]
    fn a_command_that_exits_in_time_is_not_timed_out() {
        let t0 = Instant::now();
        let mut p = Progress::new(1000, t0);
        p.exited(0, t0 + Duration::from_millis(10));
        assert!(!p.time_out(t0 + Duration::from_secs(5)));
        assert!(!p.timed_out);
        assert_eq!(
            p.wake_at(),
            Some(t0 + Duration::from_millis(10) + EXEC_DRAIN)
        );
    }
}
