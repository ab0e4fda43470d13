//! The daemon side of the shim: spawning one per container (`kelson-shim spawn`, which leaves
//! the shim detached in its own session) and a client for its control socket. The exit record
//! the shim writes is read here too, so kelsond learns exits that happened while it was down.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;
pub use kelson_proto::shim as msg;
use kelson_proto::shim::request::Kind;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a control call may take (Exec calls add their own timeout).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The most exec output the shim keeps per stream (its own `MAX_EXEC_OUTPUT`): an answer
/// announcing more is refused before anything is read. Responses themselves are bounded by the
/// protocol's frame cap (`kelson_proto::MAX_FRAME_LEN`); exec output comes in frames after them.
pub const MAX_EXEC_OUTPUT: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("shim binary {path}: {reason}")]
    Spawn { path: PathBuf, reason: String },
    #[error("creating the container: {0}")]
    Create(String),
    #[error("shim for {id} is not running")]
    Gone { id: String },
    #[error("shim for {id}: {reason}")]
    Call { id: String, reason: CallFailure },
    /// The shim (or the engine) answered with a failure, of this kind.
    #[error("{message}")]
    Remote { kind: RemoteKind, message: String },
}

/// Why a call to a running shim failed before it answered.
#[derive(Debug, thiserror::Error)]
pub enum CallFailure {
    #[error(transparent)]
    Frame(#[from] kelson_proto::FrameError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("exec output of {announced} bytes announced, over the {limit}-byte cap")]
    TooLarge { announced: u64, limit: u64 },
    #[error("exec output longer than announced")]
    Overrun,
    #[error("connection closed")]
    Closed,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("no state in answer")]
    NoState,
    #[error("no exec result in answer")]
    NoExecResult,
}

/// What kind of failure the shim reported (its wire `ErrorKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteKind {
    /// Not classified (a shim from before kinds existed), or the engine's own failure.
    Unspecified,
    BadRequest,
    /// The container is not in the state the request needs.
    WrongState,
    /// The container's command could not be started.
    StartFailed,
    Internal,
    /// What the request would act on is refused as it is on disk (a symlinked log directory).
    Refused,
}

impl RemoteKind {
    fn from_wire(kind: i32) -> RemoteKind {
        match msg::ErrorKind::try_from(kind) {
            Ok(msg::ErrorKind::BadRequest) => RemoteKind::BadRequest,
            Ok(msg::ErrorKind::WrongState) => RemoteKind::WrongState,
            Ok(msg::ErrorKind::StartFailed) => RemoteKind::StartFailed,
            Ok(msg::ErrorKind::Internal) => RemoteKind::Internal,
            Ok(msg::ErrorKind::Refused) => RemoteKind::Refused,
            Ok(msg::ErrorKind::Unspecified) | Err(_) => RemoteKind::Unspecified,
        }
    }
}

/// The shim binary: config, else next to kelsond, else on PATH.
pub fn locate(configured: &str) -> PathBuf {
    if !configured.is_empty() {
        return PathBuf::from(configured);
    }
    if let Some(p) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("kelson-shim")))
        .filter(|p| p.exists())
    {
        return p;
    }
    PathBuf::from("kelson-shim")
}

pub struct Spawn<'a> {
    pub binary: &'a Path,
    pub id: &'a str,
    /// libcontainer's state root.
    pub root: &'a Path,
    pub bundle: &'a Path,
    /// Shim dir: exit record, pid files, shim log.
    pub dir: &'a Path,
    pub socket: &'a Path,
    /// The pod's log directory (its own name and everything below it are opened without
    /// following symlinks) …
    pub log_dir: &'a Path,
    /// … and the log file's path below it.
    pub log: &'a Path,
    /// The container's stdin stays open for attachers (CRI `stdin`).
    pub stdin: bool,
    /// … and closes when the first attacher with stdin leaves (CRI `stdin_once`).
    pub stdin_once: bool,
    /// The container runs on a terminal (CRI `tty`).
    pub tty: bool,
    /// The engine for the shim to open at start (`Engine::for_shim`).
    pub engine: &'a Path,
}

/// Start a shim, which creates the container. Returns the container's init pid.
pub async fn spawn(s: Spawn<'_>) -> Result<u32, ShimError> {
    let flags = [
        (s.stdin, "--stdin"),
        (s.stdin_once, "--stdin-once"),
        (s.tty, "--tty"),
    ];
    let out = tokio::process::Command::new(s.binary)
        .arg("spawn")
        .args(flags.iter().filter(|(on, _)| *on).map(|(_, f)| *f))
        .args(["--id", s.id])
        .arg("--root")
        .arg(s.root)
        .arg("--bundle")
        .arg(s.bundle)
        .arg("--dir")
        .arg(s.dir)
        .arg("--socket")
        .arg(s.socket)
        .arg("--log-dir")
        .arg(s.log_dir)
        .arg("--log")
        .arg(s.log)
        .arg("--engine")
        .arg(s.engine)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| ShimError::Spawn {
            path: s.binary.to_owned(),
            reason: e.to_string(),
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        return stdout
            .trim()
            .parse()
            .map_err(|_| ShimError::Create(format!("unexpected shim answer {:?}", stdout.trim())));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(ShimError::Create(
        err.trim().trim_start_matches("error: ").to_owned(),
    ))
}

/// Delete a container's engine state and cgroup (`kelson-shim-engine delete`).
pub async fn delete(engine: &Path, id: &str, root: &Path) -> Result<(), ShimError> {
    let out = tokio::process::Command::new(engine)
        .args(["delete", "--id", id])
        .arg("--root")
        .arg(root)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| ShimError::Spawn {
            path: engine.to_owned(),
            reason: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ShimError::Remote {
            kind: RemoteKind::Unspecified,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct ExitRecord {
    pub exit_code: i32,
    pub started_at: i64,
    pub finished_at: i64,
    pub oom_killed: bool,
}

pub fn read_exit(dir: &Path) -> Option<ExitRecord> {
    serde_json::from_slice(&std::fs::read(dir.join("exit.json")).ok()?).ok()
}

/// A control connection that goes on after its answer (attach), with what was read beyond it.
pub struct Connection {
    pub conn: tokio::net::UnixStream,
    pub buf: BytesMut,
}

pub struct Client {
    pub id: String,
    pub socket: PathBuf,
}

impl Client {
    pub fn new(id: &str, socket: &Path) -> Client {
        Client {
            id: id.to_owned(),
            socket: socket.to_owned(),
        }
    }

    pub async fn call(&self, kind: Kind, timeout: Duration) -> Result<msg::Response, ShimError> {
        self.open(kind, timeout).await.map(|(r, _)| r)
    }

    /// One request and its answer; the connection (with anything read past the answer) is
    /// returned for requests that go on as a stream (attach).
    async fn open(
        &self,
        kind: Kind,
        timeout: Duration,
    ) -> Result<(msg::Response, Connection), ShimError> {
        let id = self.id.clone();
        let call_err = |reason: CallFailure| ShimError::Call {
            id: id.clone(),
            reason,
        };
        let fut = async {
            let mut conn = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|_| ShimError::Gone {
                    id: self.id.clone(),
                })?;
            let mut out = BytesMut::new();
            kelson_proto::encode(&msg::Request { kind: Some(kind) }, &mut out)
                .map_err(|e| call_err(e.into()))?;
            conn.write_all(&out).await.map_err(|e| call_err(e.into()))?;
            let mut buf = BytesMut::new();
            loop {
                if let Some(r) = kelson_proto::decode::<msg::Response>(&mut buf)
                    .map_err(|e| call_err(e.into()))?
                {
                    return Ok((r, Connection { conn, buf }));
                }
                let n = conn
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| call_err(e.into()))?;
                if n == 0 {
                    return Err(call_err(CallFailure::Closed));
                }
            }
        };
        let (r, conn) = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| call_err(CallFailure::Timeout(timeout)))??;
        if !r.error.is_empty() {
            return Err(ShimError::Remote {
                kind: RemoteKind::from_wire(r.error_kind),
                message: r.error,
            });
        }
        Ok((r, conn))
    }

    /// Run a process in the container (ExecSync): its result with its output, which follows
    /// the answer in frames, all within `timeout`.
    pub async fn exec(
        &self,
        x: msg::Exec,
        timeout: Duration,
    ) -> Result<msg::ExecResult, ShimError> {
        let limit = match x.max_output {
            0 => MAX_EXEC_OUTPUT,
            n => n.min(MAX_EXEC_OUTPUT),
        };
        let call_err = |reason: CallFailure| ShimError::Call {
            id: self.id.clone(),
            reason,
        };
        let began = tokio::time::Instant::now();
        let (r, conn) = self.open(Kind::Exec(x), timeout).await?;
        let mut result = r.exec.ok_or_else(|| call_err(CallFailure::NoExecResult))?;
        for announced in [result.stdout_len, result.stderr_len] {
            if announced > limit {
                return Err(call_err(CallFailure::TooLarge { announced, limit }));
            }
        }
        let left = timeout.saturating_sub(began.elapsed());
        tokio::time::timeout(left, read_exec_output(conn, &mut result))
            .await
            .map_err(|_| call_err(CallFailure::Timeout(timeout)))?
            .map_err(call_err)?;
        Ok(result)
    }

    /// Join the container's stdio: frames both ways on the returned connection.
    pub async fn attach(&self, a: msg::Attach) -> Result<Connection, ShimError> {
        self.open(Kind::Attach(a), Duration::from_secs(5))
            .await
            .map(|(_, c)| c)
    }

    /// The container's state, if the shim answers within `timeout`.
    pub async fn state(&self, timeout: Duration) -> Result<msg::State, ShimError> {
        let r = self.call(Kind::State(msg::Empty {}), timeout).await?;
        r.state.ok_or_else(|| ShimError::Call {
            id: self.id.clone(),
            reason: CallFailure::NoState,
        })
    }
}

/// Read the `ExecOutput` frames after an exec's answer into `result`, until both streams
/// have the lengths it announced (checked against the cap by the caller).
async fn read_exec_output(c: Connection, result: &mut msg::ExecResult) -> Result<(), CallFailure> {
    use msg::exec_output::Kind as Out;
    let Connection { mut conn, mut buf } = c;
    let want = (result.stdout_len as usize, result.stderr_len as usize);
    result.stdout.reserve(want.0);
    result.stderr.reserve(want.1);
    while result.stdout.len() < want.0 || result.stderr.len() < want.1 {
        let Some(piece) = kelson_proto::decode::<msg::ExecOutput>(&mut buf)? else {
            if conn.read_buf(&mut buf).await? == 0 {
                return Err(CallFailure::Closed);
            }
            continue;
        };
        let (sink, wanted, bytes) = match piece.kind {
            Some(Out::Stdout(b)) => (&mut result.stdout, want.0, b),
            Some(Out::Stderr(b)) => (&mut result.stderr, want.1, b),
            None => continue,
        };
        if sink.len() + bytes.len() > wanted {
            return Err(CallFailure::Overrun);
        }
        sink.extend_from_slice(&bytes);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_kinds_come_from_the_wire_kind() {
        let k = |w: msg::ErrorKind| RemoteKind::from_wire(w as i32);
        assert_eq!(k(msg::ErrorKind::WrongState), RemoteKind::WrongState);
        assert_eq!(k(msg::ErrorKind::StartFailed), RemoteKind::StartFailed);
        assert_eq!(k(msg::ErrorKind::BadRequest), RemoteKind::BadRequest);
        assert_eq!(k(msg::ErrorKind::Internal), RemoteKind::Internal);
        assert_eq!(k(msg::ErrorKind::Refused), RemoteKind::Refused);
        assert_eq!(k(msg::ErrorKind::Unspecified), RemoteKind::Unspecified);
        // A kind this daemon does not know yet is a plain failure of the call.
        assert_eq!(RemoteKind::from_wire(99), RemoteKind::Unspecified);
    }
}
