//! One exec session, whatever the wire: the command runs in the container (through
//! `kelson-shim-engine exec`, a child of kelsond for the session's life), the transport feeds
//! it `Input` and carries its `Output` to the client.
//!
//! The parts run concurrently, so no direction can block another (a command that stops
//! reading stdin while its stdout pipe is full would otherwise deadlock the session): the
//! transport's reader feeds stdin through a small bounded queue, a writer drains that queue
//! into the command, and the output pump hands chunks to the transport's writer through
//! another. A client that disconnects, stops reading for longer than `STALL`, or breaks the
//! protocol ends the session, and the command is killed: nothing outlives the session.

use std::time::Duration;

use k8s_cri::v1 as cri;
use std::os::fd::{AsFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::Handle;
use super::channel::{self, Protocol, Size};
use crate::container::exec::ExecProcess;

/// A client that accepts no output for this long is gone.
pub const STALL: Duration = Duration::from_secs(60);
/// Messages queued in either direction.
pub const QUEUE: usize = 8;
/// Output read per message.
const CHUNK: usize = 32 * 1024;

/// From the client.
#[derive(Debug)]
pub enum Input {
    Stdin(Vec<u8>),
    /// No more stdin.
    StdinEof,
    Resize(Size),
}

/// To the client.
#[derive(Debug)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The error channel's last word (a Status, or text on old protocols; may be empty).
    Exit(Vec<u8>),
}

/// Run `req` with the client behind `input`/`output`. `input` closing means the client is
/// gone. `proto` decides how the exit is reported.
pub async fn run(
    rt: Handle,
    req: cri::ExecRequest,
    proto: Protocol,
    mut input: mpsc::Receiver<Input>,
    output: mpsc::Sender<Output>,
) {
    if req.tty {
        return run_tty(rt, req, proto, input, output).await;
    }
    let mut proc = match rt
        .containers
        .exec_process(&req.container_id, &req.cmd, req.stdin)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            let _ = output
                .send(failure(proto, e.to_string(), "InternalError"))
                .await;
            return;
        }
    };
    tracing::info!(container = %req.container_id, cmd = ?req.cmd, "exec session started");

    // Client → stdin queue → the command. The reader ends when the client does.
    let (stdin_tx, mut stdin_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let want_stdin = req.stdin;
    let mut reader = tokio::spawn(async move {
        let mut stdin_tx = want_stdin.then_some(stdin_tx);
        while let Some(i) = input.recv().await {
            match i {
                Input::Stdin(data) => {
                    if let Some(tx) = &stdin_tx
                        && tx.send(data).await.is_err()
                    {
                        stdin_tx = None;
                    }
                }
                Input::StdinEof => stdin_tx = None,
                Input::Resize(_) => {} // no terminal in this session
            }
        }
    });
    let mut child_stdin = proc.child.stdin.take();
    let writer = tokio::spawn(async move {
        while let Some(data) = stdin_rx.recv().await {
            let Some(w) = child_stdin.as_mut() else {
                continue;
            };
            if w.write_all(&data).await.is_err() {
                child_stdin = None;
            }
        }
        // Queue closed: stdin's EOF (or the client left): the command sees EOF.
    });

    let mut out = proc.child.stdout.take();
    let mut err = proc.child.stderr.take();
    let (mut obuf, mut ebuf) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut client_gone = false;
    loop {
        if out.is_none() && err.is_none() {
            break;
        }
        let msg = tokio::select! {
            r = async { out.as_mut().unwrap().read(&mut obuf).await }, if out.is_some() => {
                match r {
                    Ok(0) | Err(_) => { out = None; continue; }
                    Ok(n) if req.stdout => Output::Stdout(obuf[..n].to_vec()),
                    Ok(_) => continue,
                }
            }
            r = async { err.as_mut().unwrap().read(&mut ebuf).await }, if err.is_some() => {
                match r {
                    Ok(0) | Err(_) => { err = None; continue; }
                    Ok(n) if req.stderr => Output::Stderr(ebuf[..n].to_vec()),
                    Ok(_) => continue,
                }
            }
            _ = &mut reader => { client_gone = true; break; }
        };
        match tokio::time::timeout(STALL, output.send(msg)).await {
            Ok(Ok(())) => {}
            _ => {
                client_gone = true;
                break;
            }
        }
    }
    finish(proc, &req, proto, &output, client_gone, &[&reader, &writer]).await;
}

/// The end of a session: with the client gone the command is killed; otherwise its exit is
/// waited for and reported. Either way the session's tasks stop and the pid file goes.
async fn finish(
    mut proc: ExecProcess,
    req: &cri::ExecRequest,
    proto: Protocol,
    output: &mpsc::Sender<Output>,
    client_gone: bool,
    tasks: &[&tokio::task::JoinHandle<()>],
) {
    let code = if client_gone {
        tracing::info!(container = %req.container_id, "exec session: client gone; killing the command");
        proc.kill().await;
        None
    } else {
        Some(match proc.child.wait().await {
            Ok(st) => st.code().unwrap_or(128 + 9),
            Err(_) => 255,
        })
    };
    for t in tasks {
        t.abort();
    }
    proc.cleanup();
    if let Some(code) = code {
        let _ = tokio::time::timeout(
            STALL,
            output.send(Output::Exit(channel::exit_status(proto, code, &req.cmd))),
        )
        .await;
        tracing::info!(container = %req.container_id, exit_code = code, "exec session ended");
    }
}

/// A Failure Status (or text, on the old protocols) as the session's last word.
pub(super) fn failure(proto: Protocol, msg: String, reason: &str) -> Output {
    Output::Exit(if proto.status_json() {
        channel::failure_status(&msg, reason, None)
    } else {
        msg.into_bytes()
    })
}

/// Read from a non-blocking fd through the reactor; `Ok(0)` at EOF (EIO on a pty master whose
/// last slave closed counts as EOF).
async fn read_fd(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|f| nix::unistd::read(f.get_ref(), buf).map_err(std::io::Error::from)) {
            Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => return Ok(0),
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

async fn write_fd(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|f| nix::unistd::write(f.get_ref(), data).map_err(std::io::Error::from))
        {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// A session on a terminal: the pty master carries stdin and the merged output; resize
/// events set the terminal's size (the command gets SIGWINCH).
async fn run_tty(
    rt: Handle,
    req: cri::ExecRequest,
    proto: Protocol,
    mut input: mpsc::Receiver<Input>,
    output: mpsc::Sender<Output>,
) {
    let mut proc = match rt
        .containers
        .exec_tty_process(&req.container_id, &req.cmd)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            let _ = output
                .send(failure(proto, e.to_string(), "InternalError"))
                .await;
            return;
        }
    };
    let master = match proc.pty.take().map(|m| {
        nix::fcntl::fcntl(
            &m,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(std::io::Error::from)
        .and_then(|_| crate::sys::async_fd(m))
    }) {
        Some(Ok(m)) => std::sync::Arc::new(m),
        _ => {
            proc.kill().await;
            proc.cleanup();
            let _ = output
                .send(failure(proto, "exec: no terminal".into(), "InternalError"))
                .await;
            return;
        }
    };
    tracing::info!(container = %req.container_id, cmd = ?req.cmd, "exec session on a terminal started");
    let want_stdin = req.stdin;
    let mut reader = {
        let master = master.clone();
        tokio::spawn(async move {
            while let Some(i) = input.recv().await {
                match i {
                    Input::Stdin(data) if want_stdin => {
                        // A failed write means the terminal is gone (the command ended):
                        // keep draining the client until the session ends.
                        let _ = write_fd(&master, &data).await;
                    }
                    Input::Resize(size) => {
                        let _ = crate::sys::set_window_size(
                            master.get_ref().as_fd(),
                            size.width,
                            size.height,
                        );
                    }
                    _ => {}
                }
            }
        })
    };
    let mut buf = vec![0u8; CHUNK];
    let mut client_gone = false;
    loop {
        let n = tokio::select! {
            r = read_fd(&master, &mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = &mut reader => { client_gone = true; break; }
        };
        match tokio::time::timeout(STALL, output.send(Output::Stdout(buf[..n].to_vec()))).await {
            Ok(Ok(())) => {}
            _ => {
                client_gone = true;
                break;
            }
        }
    }
    finish(proc, &req, proto, &output, client_gone, &[&reader]).await;
}
