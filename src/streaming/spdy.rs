//! The SPDY/3.1 transport of a remote-command session (exec or attach), as the API server, kubelet, kubectl
//! and crictl speak it (k8s.io/apimachinery httpstream/spdy, kubelet's remotecommand server):
//! after the HTTP upgrade the client opens one SPDY stream per channel, each named by its
//! `streamType` header (`error`, `stdin`, `stdout`, `stderr`, `resize`); the server accepts
//! each with a SYN_REPLY, waits until every stream the request needs exists, runs the command,
//! and ends with the exit Status on the error stream, FIN on its streams and GOAWAY.
//!
//! Flow control: the Kubernetes SPDY implementation (spdystream) does not wait for
//! WINDOW_UPDATE frames (kelson-bench moves 100 MB each way through containerd's spdystream
//! server without sending one), so this side neither enforces nor sends windows; memory stays
//! bounded by the session's queues and the frame size limit instead. A strict SPDY/3.1 client
//! that waits for window updates would stall after 64 KiB.

use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use kelson_proto::spdy::frame::{self, FLAG_FIN, Frame, HeaderCodec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::Handle;
use super::Remote;
use super::channel::{self, Protocol};
use super::exec::{Input, Output, QUEUE, STALL};

/// The remote-command versions spoken over SPDY, best first.
pub const VERSIONS: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// How long the client gets to open the streams its request needs (kubelet: 30 s).
const STREAM_CREATION: Duration = Duration::from_secs(30);

/// The client's first offered version this side speaks (`X-Stream-Protocol-Version`, in the
/// client's order, possibly comma-joined).
pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    offered
        .into_iter()
        .flat_map(|h| h.split(','))
        .find_map(|v| VERSIONS.iter().find(|s| **s == v.trim()).copied())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Error,
    Stdin,
    Stdout,
    Stderr,
    Resize,
}

fn kind(name: &str) -> Option<Kind> {
    Some(match name {
        "error" => Kind::Error,
        "stdin" => Kind::Stdin,
        "stdout" => Kind::Stdout,
        "stderr" => Kind::Stderr,
        "resize" => Kind::Resize,
        _ => return None,
    })
}

/// Frames from the client: bytes read as needed, one header-decompression context.
pub(super) struct FrameReader<R> {
    rd: R,
    buf: BytesMut,
    codec: HeaderCodec,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(super) fn new(rd: R) -> FrameReader<R> {
        FrameReader {
            rd,
            buf: BytesMut::with_capacity(64 * 1024),
            codec: HeaderCodec::new(),
        }
    }

    /// The next frame; `Ok(None)` when the connection ended (EOF or a read error).
    pub(super) async fn next(&mut self) -> Result<Option<Frame>, frame::FrameError> {
        loop {
            if let Some(f) = frame::parse(&mut self.buf, &mut self.codec)? {
                return Ok(Some(f));
            }
            match self.rd.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }
}

/// Frames to the client, each written whole and flushed (one header-compression context, in
/// order); the connection is shut down after GOAWAY or when the session drops its sender (over
/// a WebSocket tunnel that is the close message the client reads as the end).
pub(super) async fn write_frames<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Frame>) {
    let mut codec = HeaderCodec::new();
    let mut buf = Vec::new();
    while let Some(f) = rx.recv().await {
        buf.clear();
        let end = matches!(f, Frame::GoAway { .. });
        frame::write(&f, &mut codec, &mut buf);
        let sent = tokio::time::timeout(STALL, async {
            w.write_all(&buf).await?;
            w.flush().await
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
        if end {
            break;
        }
    }
    let _ = tokio::time::timeout(STALL, w.shutdown()).await;
}

pub async fn remote<IO>(rt: Handle, cmd: Remote, version: &'static str, io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let proto = if version == VERSIONS[0] {
        Protocol::V4
    } else {
        Protocol::Channel
    };
    let (rd, wr) = tokio::io::split(io);
    let (frames, frames_rx) = mpsc::channel::<Frame>(QUEUE * 2);
    let writer = tokio::spawn(write_frames(wr, frames_rx));
    let (in_tx, in_rx) = mpsc::channel::<Input>(QUEUE);
    let (streams_tx, mut streams_rx) = mpsc::channel::<(Kind, u32)>(8);
    let client = Client {
        frames: frames.clone(),
        input: in_tx,
        streams: streams_tx,
        by_id: HashMap::new(),
        resize_buf: Vec::new(),
    };
    let reader = tokio::spawn(client.run(FrameReader::new(rd)));

    let Some(ids) = open_streams(&needed(&cmd.streams()), &mut streams_rx).await else {
        tracing::debug!("SPDY session: the client did not open the streams its request needs");
        reader.abort();
        let _ = frames.send(go_away(0)).await;
        drop(frames);
        let _ = writer.await;
        return;
    };

    let (out_tx, mut out_rx) = mpsc::channel::<Output>(QUEUE);
    let session = tokio::spawn(cmd.run(rt, proto, in_rx, out_tx));
    send_output(&ids, &mut out_rx, &frames).await;
    // The end: FIN on every stream this side writes, then GOAWAY (the writer closes).
    for k in [Kind::Stdout, Kind::Stderr, Kind::Error] {
        if let Some(f) = data_on(ids.get(&k), vec![], FLAG_FIN) {
            let _ = frames.send(f).await;
        }
    }
    let _ = frames.send(go_away(0)).await;
    reader.abort();
    drop(out_rx);
    drop(frames);
    let _ = session.await;
    let _ = writer.await;
}

/// The answer accepting the client's stream `stream_id`.
pub(super) fn accept(stream_id: u32) -> Frame {
    Frame::SynReply {
        stream_id,
        flags: 0,
        headers: vec![],
    }
}

/// The answer refusing it.
pub(super) fn refuse(stream_id: u32) -> Frame {
    Frame::RstStream {
        stream_id,
        status: frame::REFUSED_STREAM,
    }
}

fn go_away(status: u32) -> Frame {
    Frame::GoAway {
        last_good: 0,
        status,
    }
}

/// A data frame on the stream of that kind, if the client opened one.
fn data_on(id: Option<&u32>, data: Vec<u8>, flags: u8) -> Option<Frame> {
    id.map(|id| Frame::Data {
        stream_id: *id,
        flags,
        data,
    })
}

/// Everything from the client: stream set-up, stdin, resize, pings. Ends (dropping `input`:
/// "client gone") on EOF, GOAWAY, a reset stdin or a protocol error.
struct Client {
    frames: mpsc::Sender<Frame>,
    input: mpsc::Sender<Input>,
    /// Each stream accepted, for the session's start.
    streams: mpsc::Sender<(Kind, u32)>,
    by_id: HashMap<u32, Kind>,
    /// A resize message not yet ended by its newline.
    resize_buf: Vec<u8>,
}

impl Client {
    async fn run<R: AsyncRead + Unpin>(mut self, mut frames_in: FrameReader<R>) {
        loop {
            let f = match frames_in.next().await {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "SPDY session: bad frame; closing");
                    let _ = self.frames.send(go_away(frame::PROTOCOL_ERROR)).await;
                    return;
                }
            };
            if !self.frame(f).await {
                return;
            }
        }
    }

    /// One frame from the client; false when the session ends with it.
    async fn frame(&mut self, f: Frame) -> bool {
        match f {
            Frame::SynStream {
                stream_id, headers, ..
            } => self.open(stream_id, &headers).await,
            Frame::Data {
                stream_id,
                flags,
                data,
            } => match self.by_id.get(&stream_id) {
                Some(Kind::Stdin) => return self.stdin(flags, data).await,
                Some(Kind::Resize) => self.resize(&data).await,
                _ => {}
            },
            Frame::Ping { id } => {
                let _ = self.frames.send(Frame::Ping { id }).await;
            }
            Frame::RstStream { stream_id, .. }
                if self.by_id.get(&stream_id) == Some(&Kind::Stdin) =>
            {
                let _ = self.input.send(Input::StdinEof).await;
            }
            Frame::GoAway { .. } => return false,
            _ => {}
        }
        true
    }

    /// The first stream of each kind is accepted, any other refused.
    async fn open(&mut self, stream_id: u32, headers: &frame::Headers) {
        let k = frame::header(headers, "streamtype").and_then(kind);
        match k {
            Some(k) if !self.by_id.values().any(|v| *v == k) => {
                self.by_id.insert(stream_id, k);
                let _ = self.frames.send(accept(stream_id)).await;
                let _ = self.streams.send((k, stream_id)).await;
            }
            _ => {
                let _ = self.frames.send(refuse(stream_id)).await;
            }
        }
    }

    /// Stdin bytes, then its end on FIN; false once the session is gone.
    async fn stdin(&self, flags: u8, data: Vec<u8>) -> bool {
        if !data.is_empty() && self.input.send(Input::Stdin(data)).await.is_err() {
            return false;
        }
        if flags & FLAG_FIN != 0 && self.input.send(Input::StdinEof).await.is_err() {
            return false;
        }
        true
    }

    /// Resize messages are newline-ended JSON; a runaway partial line is dropped.
    async fn resize(&mut self, data: &[u8]) {
        self.resize_buf.extend_from_slice(data);
        while let Some(i) = self.resize_buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.resize_buf.drain(..=i).collect();
            if let Some(size) = channel::parse_resize(&line) {
                let _ = self.input.send(Input::Resize(size)).await;
            }
        }
        if self.resize_buf.len() > 4096 {
            self.resize_buf.clear();
        }
    }
}

/// The streams a request needs before it runs, as kubelet waits for them.
fn needed(req: &super::Streams) -> Vec<Kind> {
    let mut needed = vec![Kind::Error];
    if req.stdin {
        needed.push(Kind::Stdin);
    }
    if req.stdout {
        needed.push(Kind::Stdout);
    }
    if req.stderr && !req.tty {
        needed.push(Kind::Stderr);
    }
    needed
}

/// The stream id of each kind once all `needed` are open; None if the client did not open them
/// in time or is gone.
async fn open_streams(
    needed: &[Kind],
    streams_rx: &mut mpsc::Receiver<(Kind, u32)>,
) -> Option<HashMap<Kind, u32>> {
    let mut ids: HashMap<Kind, u32> = HashMap::new();
    let ready = tokio::time::timeout(STREAM_CREATION, async {
        while !needed.iter().all(|k| ids.contains_key(k)) {
            match streams_rx.recv().await {
                Some((k, id)) => {
                    ids.insert(k, id);
                }
                None => return false,
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    ready.then_some(ids)
}

/// The session's output onto its streams, until the exit status or the client is gone.
async fn send_output(
    ids: &HashMap<Kind, u32>,
    out_rx: &mut mpsc::Receiver<Output>,
    frames: &mpsc::Sender<Frame>,
) {
    while let Some(o) = out_rx.recv().await {
        let (f, last) = match o {
            Output::Stdout(d) => (data_on(ids.get(&Kind::Stdout), d, 0), false),
            Output::Stderr(d) => (data_on(ids.get(&Kind::Stderr), d, 0), false),
            Output::Exit(d) if d.is_empty() => (None, true),
            Output::Exit(d) => (data_on(ids.get(&Kind::Error), d, 0), true),
        };
        if let Some(f) = f
            && frames.send(f).await.is_err()
        {
            break;
        }
        if last {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_picked_in_the_clients_order() {
        assert_eq!(
            negotiate(["v4.channel.k8s.io", "v3.channel.k8s.io"]),
            Some("v4.channel.k8s.io")
        );
        assert_eq!(
            negotiate(["v9.channel.k8s.io, v2.channel.k8s.io"]),
            Some("v2.channel.k8s.io")
        );
        assert_eq!(negotiate(["portforward.k8s.io"]), None);
        assert_eq!(negotiate([]), None);
    }
}
