//! Port forwarding over SPDY/3.1 (`portforward.k8s.io`), as kubectl, crictl and the API server
//! speak it: for each connection the client opens a pair of streams sharing a `requestID`
//! header — `streamType: error` and `streamType: data`, both with the target `port`. The
//! server dials that port on the loopback of the pod's network namespace and copies bytes
//! both ways on the data stream; a failure is written as text on the error stream. The
//! session lasts until the client closes it; each connection ends with FIN both ways. The same
//! session serves SPDY tunnelled in WebSocket (`tunnel`), given the tunnel as its byte stream.

use std::collections::HashMap;
use std::path::PathBuf;

use k8s_cri::v1 as cri;
use kelson_proto::spdy::frame::{self, FLAG_FIN, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::Handle;
use super::exec::QUEUE;
use super::spdy::{accept, refuse};

pub const PROTOCOL: &str = "portforward.k8s.io";
/// Connections forwarded at once in one session.
const MAX_CONNECTIONS: usize = 64;
const CHUNK: usize = 32 * 1024;

/// Half of a pair, until its partner arrives.
#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    port: u16,
}

pub async fn spdy<IO>(rt: Handle, req: cri::PortForwardRequest, io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The pod's network namespace ("" for a pod on the host's network).
    let netns = match rt.pods.find(&req.pod_sandbox_id) {
        Ok(p) => PathBuf::from(p.netns),
        Err(_) => return,
    };
    let (rd, wr) = tokio::io::split(io);
    let (frames, frames_rx) = mpsc::channel::<Frame>(QUEUE * 4);
    let writer = tokio::spawn(super::spdy::write_frames(wr, frames_rx));
    let mut frames_in = super::spdy::FrameReader::new(rd);
    let mut session = SpdySession {
        netns,
        allowed: req.port.clone(),
        frames,
        pairs: HashMap::new(),
        inbound: HashMap::new(),
        tasks: tokio::task::JoinSet::new(),
    };
    loop {
        let f = match frames_in.next().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "port-forward session: bad frame; closing");
                break;
            }
        };
        // Reap finished connections (their slots free up).
        while session.tasks.try_join_next().is_some() {}
        match f {
            Frame::SynStream {
                stream_id, headers, ..
            } => session.open(stream_id, &headers).await,
            Frame::Data {
                stream_id,
                flags,
                data,
            } => session.data(stream_id, flags, data).await,
            Frame::RstStream { stream_id, .. } => {
                session.inbound.remove(&stream_id);
            }
            Frame::Ping { id } => {
                let _ = session.frames.send(Frame::Ping { id }).await;
            }
            Frame::GoAway { .. } => break,
            _ => {}
        }
    }
    // The client is gone: every connection of the session ends with it.
    session.tasks.shutdown().await;
    drop(session);
    let _ = writer.await;
}

/// One SPDY port-forward session: the stream pairs being set up and the connections running.
struct SpdySession {
    netns: PathBuf,
    /// The ports the request named (empty: any).
    allowed: Vec<i32>,
    frames: mpsc::Sender<Frame>,
    /// Half-open pairs by `requestID`.
    pairs: HashMap<String, Pair>,
    /// Data stream id → the connection's inbound queue (None once the client sent FIN).
    inbound: HashMap<u32, mpsc::Sender<Option<Vec<u8>>>>,
    tasks: tokio::task::JoinSet<()>,
}

impl SpdySession {
    /// A new stream: accepted as half of its pair (refused without a port or as a second
    /// stream of a kind); the pair's connection starts once both halves are there.
    async fn open(&mut self, stream_id: u32, headers: &frame::Headers) {
        let kind = frame::header(headers, "streamtype").unwrap_or("");
        let port = frame::header(headers, "port").and_then(|p| p.parse::<u16>().ok());
        let id = frame::header(headers, "requestid").unwrap_or("").to_owned();
        let Some(port) = port.filter(|p| *p > 0) else {
            let _ = self.frames.send(refuse(stream_id)).await;
            return;
        };
        let p = self.pairs.entry(id.clone()).or_default();
        p.port = port;
        match kind {
            "error" if p.error.is_none() => p.error = Some(stream_id),
            "data" if p.data.is_none() => p.data = Some(stream_id),
            _ => {
                let _ = self.frames.send(refuse(stream_id)).await;
                return;
            }
        }
        let _ = self.frames.send(accept(stream_id)).await;
        let (Some(err_id), Some(data_id)) = (p.error, p.data) else {
            return;
        };
        self.pairs.remove(&id);
        self.connect(port, err_id, data_id).await;
    }

    /// Start the connection of a complete pair, unless the session has too many.
    async fn connect(&mut self, port: u16, err_id: u32, data_id: u32) {
        if self.tasks.len() >= MAX_CONNECTIONS {
            let _ = self
                .frames
                .send(Frame::Data {
                    stream_id: err_id,
                    flags: FLAG_FIN,
                    data: b"too many port-forward connections in this session".to_vec(),
                })
                .await;
            return;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        self.inbound.insert(data_id, tx);
        self.tasks.spawn(forward(
            self.netns.clone(),
            port,
            self.allowed.clone(),
            err_id,
            data_id,
            rx,
            self.frames.clone(),
        ));
    }

    /// Client bytes for a connection's data stream; FIN ends its way in.
    async fn data(&mut self, stream_id: u32, flags: u8, data: Vec<u8>) {
        let Some(tx) = self.inbound.get(&stream_id) else {
            return;
        };
        if !data.is_empty() && tx.send(Some(data)).await.is_err() {
            self.inbound.remove(&stream_id);
            return;
        }
        if flags & FLAG_FIN != 0 {
            let _ = tx.send(None).await;
            self.inbound.remove(&stream_id);
        }
    }
}

/// One forwarded connection.
async fn forward(
    netns: PathBuf,
    port: u16,
    allowed: Vec<i32>,
    err_id: u32,
    data_id: u32,
    mut inbound: mpsc::Receiver<Option<Vec<u8>>>,
    frames: mpsc::Sender<Frame>,
) {
    let fail = |msg: String| Frame::Data {
        stream_id: err_id,
        flags: FLAG_FIN,
        data: msg.into_bytes(),
    };
    let end_data = Frame::Data {
        stream_id: data_id,
        flags: FLAG_FIN,
        data: vec![],
    };
    if !allowed.is_empty() && !allowed.contains(&(port as i32)) {
        let _ = frames
            .send(fail(format!(
                "port {port} was not requested for forwarding"
            )))
            .await;
        let _ = frames.send(end_data).await;
        return;
    }
    let dial = tokio::task::spawn_blocking(move || {
        if netns.as_os_str().is_empty() {
            std::net::TcpStream::connect(("127.0.0.1", port))
        } else {
            crate::pod::namespaces::connect_tcp_in(&netns, port)
        }
    })
    .await;
    let tcp = match dial {
        Ok(Ok(s)) => s
            .set_nonblocking(true)
            .and_then(|_| tokio::net::TcpStream::from_std(s)),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    };
    let tcp = match tcp {
        Ok(t) => t,
        Err(e) => {
            let _ = frames
                .send(fail(format!("connecting to port {port} in the pod: {e}")))
                .await;
            let _ = frames.send(end_data).await;
            return;
        }
    };
    let (mut tr, mut tw) = tcp.into_split();
    // Client → the pod's port.
    let up = tokio::spawn(async move {
        while let Some(Some(data)) = inbound.recv().await {
            if tw.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = tw.shutdown().await;
    });
    // The pod's port → client.
    let mut chunk = vec![0u8; CHUNK];
    loop {
        match tr.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let f = Frame::Data {
                    stream_id: data_id,
                    flags: 0,
                    data: chunk[..n].to_vec(),
                };
                if frames.send(f).await.is_err() {
                    up.abort();
                    return;
                }
            }
        }
    }
    let _ = frames.send(end_data).await;
    let _ = frames
        .send(Frame::Data {
            stream_id: err_id,
            flags: FLAG_FIN,
            data: vec![],
        })
        .await;
    let _ = up.await;
}

/// The WebSocket port-forward protocols (kubelet's `portforward.k8s.io` and its base64
/// variant): one connection per requested port for the session; port `i` has data channel
/// `2i` and error channel `2i+1`, and each channel opens with the port number (2 bytes,
/// little-endian).
pub const WS_PROTOCOLS: [&str; 2] = ["portforward.k8s.io", "base64.portforward.k8s.io"];

pub async fn websocket<S>(
    rt: Handle,
    req: cri::PortForwardRequest,
    ports: Vec<u16>,
    base64: bool,
    ws: tokio_tungstenite::WebSocketStream<S>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use super::channel::{self, Frame as WsFrame, Protocol};
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let framing = if base64 {
        Protocol::V4Base64
    } else {
        Protocol::V4
    };
    let netns = match rt.pods.find(&req.pod_sandbox_id) {
        Ok(p) => PathBuf::from(p.netns),
        Err(_) => return,
    };
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Vec<u8>)>(QUEUE * 4);
    let writer = tokio::spawn(async move {
        while let Some((ch, data)) = out_rx.recv().await {
            let msg = match channel::encode(framing, ch, &data) {
                WsFrame::Binary(v) => Message::binary(v),
                WsFrame::Text(t) => Message::text(t),
            };
            if !matches!(
                tokio::time::timeout(super::exec::STALL, sink.send(msg)).await,
                Ok(Ok(()))
            ) {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let mut inbound = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        for ch in [data_ch, err_ch] {
            let _ = out_tx.send((ch, port.to_le_bytes().to_vec())).await;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        inbound.push(tx);
        let (out, netns, allowed) = (out_tx.clone(), netns.clone(), req.port.clone());
        tasks.spawn(async move {
            // Adapt the SPDY connection's frames to channel messages.
            let (frames, mut frames_rx) = mpsc::channel::<Frame>(QUEUE);
            let relay = tokio::spawn(async move {
                while let Some(f) = frames_rx.recv().await {
                    if let Frame::Data {
                        stream_id, data, ..
                    } = f
                        && !data.is_empty()
                    {
                        let ch = if stream_id == 1 { err_ch } else { data_ch };
                        if out.send((ch, data)).await.is_err() {
                            return;
                        }
                    }
                }
            });
            forward(netns, port, allowed, 1, 2, rx, frames).await;
            let _ = relay.await;
        });
    }
    drop(out_tx);
    while let Some(msg) = source.next().await {
        let frame = match msg {
            Ok(Message::Binary(b)) => WsFrame::Binary(b.to_vec()),
            Ok(Message::Text(t)) => WsFrame::Text(t.to_string()),
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        match channel::decode(framing, frame) {
            Ok((ch, data)) if ch % 2 == 0 && (ch as usize / 2) < inbound.len() => {
                if !data.is_empty() && inbound[ch as usize / 2].send(Some(data)).await.is_err() {
                    continue;
                }
            }
            Ok(_) | Err(channel::DecodeError::Empty) => {}
            Err(_) => break,
        }
    }
    // The client left: its connections end with it.
    tasks.shutdown().await;
    drop(inbound);
    let _ = writer.await;
}

/// The ports of a WebSocket port-forward: `port=` query parameters (as kubectl sends them),
/// else the ports of the PortForward request. At most 64; each 1–65535.
pub fn ws_ports(query: Option<&str>, req: &cri::PortForwardRequest) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in query.unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("port=") {
            let p = v
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("port {v:?} is not 1-65535"))?;
            ports.push(p);
        }
    }
    if ports.is_empty() {
        for p in &req.port {
            ports.push(
                u16::try_from(*p)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("port {p} is not 1-65535"))?,
            );
        }
    }
    if ports.is_empty() {
        return Err("no port to forward (query parameter \"port\" or the request's ports)".into());
    }
    if ports.len() > 64 {
        return Err("more than 64 ports in one port-forward session".into());
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_ports_come_from_the_query_or_the_request() {
        let req = cri::PortForwardRequest {
            pod_sandbox_id: "p".into(),
            port: vec![80, 443],
        };
        assert_eq!(
            ws_ports(Some("port=8080&port=9090"), &req),
            Ok(vec![8080, 9090])
        );
        assert_eq!(ws_ports(None, &req), Ok(vec![80, 443]));
        assert!(ws_ports(Some("port=0"), &req).is_err());
        assert!(ws_ports(Some("port=70000"), &req).is_err());
        let none = cri::PortForwardRequest::default();
        assert!(ws_ports(None, &none).is_err());
        let many: String = (1..=65).map(|p| format!("port={p}&")).collect();
        assert!(ws_ports(Some(&many), &none).is_err());
    }
}
