//! One exec session over WebSocket: the command runs in the container (through
//! `kelson-shim-engine exec`, a child of kelsond for the session's life), its stdout and
//! stderr go to the client on their channels, the client's stdin to the command, and the exit
//! status ends the session on the error channel.
//!
//! Three concurrent parts, so that no direction can block another (a command that stops
//! reading stdin while its stdout pipe is full would otherwise deadlock the session): the
//! client reader feeds stdin through a small bounded queue, a writer drains that queue into the
//! command, and the output pump owns the socket's sending half. A client that disconnects,
//! stalls on reading for longer than `STALL`, or sends garbage ends the session, and the
//! command is killed: nothing outlives the session.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use k8s_cri::v1 as cri;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::channel::{self, Frame, Protocol};
use crate::cri::Shared;

/// A client that accepts no output for this long is gone.
const STALL: Duration = Duration::from_secs(60);
/// Stdin messages queued between the client reader and the command.
const STDIN_QUEUE: usize = 8;
/// Output read per message.
const CHUNK: usize = 32 * 1024;

fn to_message(f: Frame) -> Message {
    match f {
        Frame::Binary(v) => Message::binary(v),
        Frame::Text(s) => Message::text(s),
    }
}

pub async fn run<S>(rt: Shared, req: cri::ExecRequest, proto: Protocol, ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let send = |ch: u8, data: &[u8]| to_message(channel::encode(proto, ch, data));
    if req.tty {
        let _ = sink
            .send(send(
                channel::ERROR,
                &channel::failure_status(
                    "exec with a TTY is not served yet by kelson's streaming server",
                    "BadRequest",
                    None,
                ),
            ))
            .await;
        let _ = sink.close().await;
        return;
    }
    let mut proc = match rt
        .containers
        .exec_process(&req.container_id, &req.cmd, req.stdin)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            let _ = sink
                .send(send(
                    channel::ERROR,
                    &channel::failure_status(&e.to_string(), "InternalError", None),
                ))
                .await;
            let _ = sink.close().await;
            return;
        }
    };
    tracing::info!(container = %req.container_id, cmd = ?req.cmd, "exec session started");

    // Client → stdin queue. Ends with the client.
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(STDIN_QUEUE);
    let want_stdin = req.stdin;
    let mut reader = tokio::spawn(async move {
        let mut stdin_tx = want_stdin.then_some(stdin_tx);
        while let Some(msg) = source.next().await {
            let frame = match msg {
                Ok(Message::Binary(b)) => Frame::Binary(b.to_vec()),
                Ok(Message::Text(t)) => Frame::Text(t.to_string()),
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => continue, // ping/pong (answered by the library)
            };
            match channel::decode(proto, frame) {
                Ok((channel::STDIN, data)) => {
                    if let Some(tx) = &stdin_tx
                        && tx.send(data).await.is_err()
                    {
                        stdin_tx = None;
                    }
                }
                Ok((channel::CLOSE, data)) if data.first() == Some(&channel::STDIN) => {
                    stdin_tx = None; // EOF for the command
                }
                Ok((channel::RESIZE, _)) => {} // no terminal in this session
                Ok(_) | Err(channel::DecodeError::Empty) => {}
                Err(e) => {
                    tracing::debug!(error = ?e, "exec session: bad frame; closing");
                    return;
                }
            }
        }
        // The client closed, reset, or broke the protocol: the session ends.
    });
    // Stdin queue → the command.
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
        // Queue closed: the client sent stdin's EOF (or left): the command sees EOF.
    });

    let mut out = proc.child.stdout.take();
    let mut err = proc.child.stderr.take();
    let (mut obuf, mut ebuf) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut client_gone = false;
    loop {
        if out.is_none() && err.is_none() {
            break;
        }
        let (ch, n) = tokio::select! {
            r = async { out.as_mut().unwrap().read(&mut obuf).await }, if out.is_some() => {
                match r {
                    Ok(0) | Err(_) => { out = None; continue; }
                    Ok(n) => (channel::STDOUT, n),
                }
            }
            r = async { err.as_mut().unwrap().read(&mut ebuf).await }, if err.is_some() => {
                match r {
                    Ok(0) | Err(_) => { err = None; continue; }
                    Ok(n) => (channel::STDERR, n),
                }
            }
            _ = &mut reader => { client_gone = true; break; }
        };
        let wanted = if ch == channel::STDOUT {
            req.stdout
        } else {
            req.stderr
        };
        if !wanted {
            continue;
        }
        let data = if ch == channel::STDOUT {
            &obuf[..n]
        } else {
            &ebuf[..n]
        };
        match tokio::time::timeout(STALL, sink.send(send(ch, data))).await {
            Ok(Ok(())) => {}
            _ => {
                client_gone = true;
                break;
            }
        }
    }
    if client_gone {
        tracing::info!(container = %req.container_id, "exec session: client gone; killing the command");
        proc.kill().await;
        reader.abort();
        writer.abort();
        proc.cleanup();
        return;
    }
    let code = match proc.child.wait().await {
        Ok(st) => st.code().unwrap_or(128 + 9),
        Err(_) => 255,
    };
    writer.abort();
    proc.cleanup();
    let status = channel::exit_status(proto, code, &req.cmd);
    if !status.is_empty() {
        let _ = tokio::time::timeout(STALL, sink.send(send(channel::ERROR, &status))).await;
    }
    let _ = tokio::time::timeout(STALL, sink.close()).await;
    reader.abort();
    tracing::info!(container = %req.container_id, exit_code = code, "exec session ended");
}
