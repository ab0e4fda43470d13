//! One attach session, whatever the wire: the client joins a running container's stdio
//! through its shim (which fans the output out to every attacher and keeps the log whole).
//! The session ends when the container exits (Success on the error channel), when the shim
//! detaches it (stdin closed without `stdin_once`), or when the client leaves — and leaving
//! never stops the container.

use bytes::BytesMut;
use k8s_cri::v1 as cri;
use kelson_proto::shim::{self as msg, attach_frame::Kind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Handle;
use super::channel::{self, Protocol};
use super::exec::{Input, Output, STALL, failure};

/// Client input queued for the shim (which applies its own bound to the container's stdin).
const PENDING: usize = 256 * 1024;

pub async fn run(
    rt: Handle,
    req: cri::AttachRequest,
    proto: Protocol,
    input: mpsc::Receiver<Input>,
    output: mpsc::Sender<Output>,
) {
    let wanted = msg::Attach {
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
    };
    let conn = match rt.containers.attach(&req.container_id, wanted).await {
        Ok((c, _tty)) => c,
        Err(e) => {
            let _ = output
                .send(failure(proto, e.to_string(), "InternalError"))
                .await;
            return;
        }
    };
    tracing::info!(container = %req.container_id, stdin = req.stdin, "attach session started");
    let (mut rd, wr) = conn.conn.into_split();
    let mut writer = tokio::spawn(to_shim(input, wr, req.stdin));
    let client_gone = from_shim(&mut rd, conn.buf, &mut writer, &output, &req.container_id).await;
    writer.abort();
    if client_gone {
        tracing::info!(container = %req.container_id, "attach session: client gone; detached");
        return;
    }
    let _ = tokio::time::timeout(
        STALL,
        output.send(Output::Exit(channel::exit_status(proto, 0, &[]))),
    )
    .await;
    tracing::info!(container = %req.container_id, "attach session ended");
}

/// Client → shim. Input keeps being read while the shim is slow to take it (so a client that
/// leaves is noticed), up to `PENDING` bytes. Ends `true` when the client left, `false` when
/// the shim closed.
async fn to_shim<W: AsyncWrite + Unpin>(
    mut input: mpsc::Receiver<Input>,
    mut wr: W,
    want_stdin: bool,
) -> bool {
    let mut pending = BytesMut::new();
    let mut open = true;
    loop {
        tokio::select! {
            i = input.recv(), if open && pending.len() < PENDING => {
                let kind = match i {
                    None => return true,
                    Some(Input::Stdin(d)) if want_stdin => Kind::Stdin(d),
                    Some(Input::StdinEof) if want_stdin => Kind::StdinClose(msg::Empty {}),
                    Some(Input::Resize(s)) => Kind::Resize(msg::Resize {
                        width: s.width.into(),
                        height: s.height.into(),
                    }),
                    Some(_) => continue,
                };
                if matches!(kind, Kind::StdinClose(_)) {
                    // Nothing after stdin's end matters to the shim but resizes; keep
                    // reading so the client's leaving is still seen.
                    open = want_stdin;
                }
                let _ = kelson_proto::encode(&msg::AttachFrame { kind: Some(kind) }, &mut pending);
            }
            r = wr.write(&pending), if !pending.is_empty() => match r {
                Ok(0) | Err(_) => return false,
                Ok(n) => { let _ = pending.split_to(n); }
            },
        }
    }
}

/// Shim → client: the container's output, starting with what the shim already sent in `buf`,
/// until the container exits, the shim detaches us or the client leaves (`true`: the client
/// is gone). `writer` is the client → shim side.
async fn from_shim<R: AsyncRead + Unpin>(
    rd: &mut R,
    mut buf: BytesMut,
    writer: &mut JoinHandle<bool>,
    output: &mpsc::Sender<Output>,
    container_id: &str,
) -> bool {
    let mut shim_closed = false;
    loop {
        loop {
            let frame = match kelson_proto::decode::<msg::AttachFrame>(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(container = %container_id, error = %e, "attach: bad frame from the shim");
                    return false;
                }
            };
            let out = match frame.kind {
                Some(Kind::Stdout(d)) => Output::Stdout(d),
                Some(Kind::Stderr(d)) => Output::Stderr(d),
                _ => continue,
            };
            if !matches!(
                tokio::time::timeout(STALL, output.send(out)).await,
                Ok(Ok(()))
            ) {
                return true;
            }
        }
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                // The container exited (its last output came first) or the shim detached us.
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            },
            gone = &mut *writer, if !shim_closed => {
                if gone.unwrap_or(true) {
                    return true;
                }
                // The shim closed its side: read what it sent before that.
                shim_closed = true;
            }
        }
    }
}
