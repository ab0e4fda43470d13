//! The control socket: kelsond's requests, one length-delimited request and response per
//! connection on a 0600 socket. This is the one place that dispatches a request to its handler
//! (state, start, signal, reopen-log, exec, wait, attach, shutdown). A request is read within
//! `REQUEST_TIMEOUT` and never held past its answer, except by the handlers that keep the
//! connection (exec, wait, attach); it never waits for the container.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Stdio;
use std::time::Duration;

use bytes::BytesMut;
use kelson_proto::shim::{self as msg, request::Kind};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{Shim, container_cgroup, now_ns};
use crate::attachers::Attacher;

/// Largest request accepted on the control socket.
const MAX_REQUEST: usize = 1 << 20;
/// How long a control client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Attachers at once.
pub const MAX_ATTACHERS: usize = 32;

/// Why an attach request is refused: the container must be running and have room for one more.
fn attach_refusal(status: msg::Status, exited: bool, attachers: usize) -> Option<String> {
    if status != msg::Status::Running || exited {
        return Some("container is not running".into());
    }
    if attachers >= MAX_ATTACHERS {
        return Some(format!(
            "{MAX_ATTACHERS} attachers already; try again later"
        ));
    }
    None
}

/// Why a start request is refused: only a created container starts.
fn start_refusal(status: msg::Status) -> Option<String> {
    (status != msg::Status::Created).then(|| format!("container is {status:?}, not created"))
}

impl Shim {
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

    /// Read one request from `conn` and hand it to its handler.
    pub(super) fn serve(&mut self, mut conn: UnixStream) {
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
        let req = match read_request(&mut conn) {
            Ok(r) => r,
            Err(e) => return respond(conn, error(msg::ErrorKind::BadRequest, e)),
        };
        let resp = match req.kind {
            None => error(msg::ErrorKind::BadRequest, "empty request".into()),
            Some(Kind::State(_)) => msg::Response {
                state: Some(self.state()),
                ..Default::default()
            },
            Some(Kind::Start(_)) => self.start(),
            Some(Kind::Signal(s)) => self.signal(s),
            Some(Kind::ReopenLog(_)) => match self.log.reopen() {
                Ok(()) => msg::Response::default(),
                Err(e) if e.refused() => {
                    error(msg::ErrorKind::Refused, format!("reopening log: {e}"))
                }
                Err(e) => error(msg::ErrorKind::Internal, format!("reopening log: {e}")),
            },
            Some(Kind::Exec(x)) => match self.exec(conn, x) {
                Ok(()) => return,
                Err((conn, kind, e)) => return respond(conn, error(kind, e)),
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
            Some(Kind::Attach(a)) => return self.attach(conn, &a),
            Some(Kind::Shutdown(_)) => {
                respond(conn, msg::Response::default());
                std::process::exit(0);
            }
        };
        respond(conn, resp)
    }

    /// Join `conn` to the container's stdio (see `attachers`), after an empty answer.
    fn attach(&mut self, mut conn: UnixStream, a: &msg::Attach) {
        if let Some(why) = attach_refusal(self.status, self.exit.is_some(), self.attachers.len()) {
            return respond(conn, error(msg::ErrorKind::WrongState, why));
        }
        if write_response(&mut conn, msg::Response::default()).is_err() {
            return;
        }
        match Attacher::new(conn, a) {
            Ok(at) => self.attachers.push(at),
            Err(e) => eprintln!("kelson-shim: attach: {e}"),
        }
    }

    fn start(&mut self) -> msg::Response {
        if let Some(why) = start_refusal(self.status) {
            return error(msg::ErrorKind::WrongState, why);
        }
        let mut cmd = self.cfg.engine.command("start");
        cmd.args(["--id", &self.cfg.id])
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
            Ok(o) => error(
                msg::ErrorKind::StartFailed,
                String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            ),
            Err(e) => error(msg::ErrorKind::Internal, format!("spawning starter: {e}")),
        }
    }

    fn signal(&mut self, s: msg::Signal) -> msg::Response {
        let Ok(sig) = Signal::try_from(s.signal) else {
            return error(
                msg::ErrorKind::BadRequest,
                format!("bad signal {}", s.signal),
            );
        };
        if self.exit.is_some() {
            return msg::Response {
                state: Some(self.state()),
                ..Default::default()
            };
        }
        if s.all {
            for pid in container_cgroup::cgroup_procs(&self.cfg.bundle) {
                let _ = kill(Pid::from_raw(pid), sig);
            }
        }
        match kill(Pid::from_raw(self.init), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => msg::Response {
                state: Some(self.state()),
                ..Default::default()
            },
            Err(e) => error(msg::ErrorKind::Internal, format!("kill: {e}")),
        }
    }
}

fn error(kind: msg::ErrorKind, e: String) -> msg::Response {
    msg::Response {
        error: e,
        error_kind: kind as i32,
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

/// Answer `conn` and close it; a client that left gets nothing.
pub(super) fn respond(mut conn: UnixStream, r: msg::Response) {
    let _ = write_response(&mut conn, r);
}

pub(super) fn write_response(conn: &mut UnixStream, r: msg::Response) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    kelson_proto::encode(&r, &mut out)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    conn.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    conn.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::super::fake_engine::{FakeEngine, config};
    use super::*;

    /// A created container whose engine starts it with `start` (None: cannot be spawned).
    fn created(dir: &std::path::Path, start: Option<&str>) -> Shim {
        let mut engine = FakeEngine::default().with("create", r#"echo 4242 > "$pid_file""#);
        if let Some(script) = start {
            engine = engine.with("start", script);
        }
        Shim::create_container(config(dir, engine)).unwrap()
    }

    fn kind(r: &msg::Response) -> msg::ErrorKind {
        msg::ErrorKind::try_from(r.error_kind).unwrap()
    }

    #[test]
    fn a_start_the_engine_refuses_is_a_start_failure_with_its_words() {
        let dir = tempfile::tempdir().unwrap();
        let mut shim = created(
            dir.path(),
            Some("echo 'exec: permission denied' >&2; exit 1"),
        );
        let r = shim.start();
        assert_eq!(kind(&r), msg::ErrorKind::StartFailed);
        assert_eq!(r.error, "exec: permission denied");
        assert_eq!(shim.status, msg::Status::Created);
        assert_eq!(shim.started_at, 0);
    }

    #[test]
    fn an_engine_that_cannot_be_spawned_to_start_is_an_internal_failure() {
        let dir = tempfile::tempdir().unwrap();
        let mut shim = created(dir.path(), None);
        let r = shim.start();
        assert_eq!(kind(&r), msg::ErrorKind::Internal);
        assert!(r.error.starts_with("spawning starter: "), "{}", r.error);
        assert_eq!(shim.status, msg::Status::Created);
    }

    #[test]
    fn a_started_container_runs_and_is_not_started_twice() {
        let dir = tempfile::tempdir().unwrap();
        // The init's start report arrives on the starter's stdin.
        let mut shim = created(
            dir.path(),
            Some(r#"[ "$1 $2" = "--id c1" ] && [ "$5" = --report-on-stdin ] || exit 9"#),
        );
        let r = shim.start();
        assert_eq!((r.error.as_str(), r.error_kind), ("", 0));
        assert_eq!(shim.status, msg::Status::Running);
        let state = r.state.unwrap();
        assert_eq!(
            (state.status, state.pid),
            (msg::Status::Running as i32, 4242)
        );
        assert!(state.started_at > 0);
        let again = shim.start();
        assert_eq!(kind(&again), msg::ErrorKind::WrongState);
        assert_eq!(again.error, "container is Running, not created");
    }

    #[test]
    fn attach_needs_a_running_container_with_room() {
        assert_eq!(attach_refusal(msg::Status::Running, false, 0), None);
        assert_eq!(
            attach_refusal(msg::Status::Running, false, MAX_ATTACHERS - 1),
            None
        );
        let not_running = Some("container is not running".to_owned());
        assert_eq!(attach_refusal(msg::Status::Created, false, 0), not_running);
        assert_eq!(attach_refusal(msg::Status::Exited, true, 0), not_running);
        // The init exited, the status not yet changed by a reader: still refused.
        assert_eq!(attach_refusal(msg::Status::Running, true, 0), not_running);
        assert_eq!(
            attach_refusal(msg::Status::Running, false, MAX_ATTACHERS),
            Some("32 attachers already; try again later".to_owned())
        );
    }

    #[test]
    fn only_a_created_container_starts() {
        assert_eq!(start_refusal(msg::Status::Created), None);
        assert_eq!(
            start_refusal(msg::Status::Running).as_deref(),
            Some("container is Running, not created")
        );
        assert_eq!(
            start_refusal(msg::Status::Exited).as_deref(),
            Some("container is Exited, not created")
        );
    }

    fn send(bytes: &[u8]) -> Result<msg::Request, String> {
        let (mut client, mut server) = UnixStream::pair().unwrap();
        client.write_all(bytes).unwrap();
        drop(client);
        read_request(&mut server)
    }

    #[test]
    fn a_whole_request_is_read_and_a_cut_one_refused() {
        let req = msg::Request {
            kind: Some(Kind::State(msg::Empty {})),
        };
        let mut framed = BytesMut::new();
        kelson_proto::encode(&req, &mut framed).unwrap();
        assert_eq!(send(&framed).unwrap(), req);
        assert_eq!(
            send(&framed[..framed.len() - 1]).err().as_deref(),
            Some("connection closed before a whole request")
        );
        assert_eq!(
            send(&[]).err().as_deref(),
            Some("connection closed before a whole request")
        );
    }

    #[test]
    fn an_answer_is_framed_for_the_client() {
        let (client, mut server) = UnixStream::pair().unwrap();
        respond(
            client,
            error(msg::ErrorKind::BadRequest, "bad signal 99".into()),
        );
        let mut got = BytesMut::new();
        let mut chunk = [0u8; 256];
        let n = server.read(&mut chunk).unwrap();
        got.extend_from_slice(&chunk[..n]);
        let r = kelson_proto::decode::<msg::Response>(&mut got)
            .unwrap()
            .unwrap();
        assert_eq!(r.error, "bad signal 99");
    }
}
