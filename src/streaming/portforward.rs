//! Port forwarding over SPDY/3.1 (`portforward.k8s.io`), as kubectl, crictl and the API server
//! speak it: for each connection the client opens a pair of streams sharing a `requestID`
//! header — `streamType: error` and `streamType: data`, both with the target `port`. The
//! server dials that port on the loopback of the pod's network namespace and copies bytes
//! both ways on the data stream; a failure is written as text on the error stream. The
//! session lasts until the client closes it; each connection ends with FIN both ways.

use std::collections::HashMap;
use std::path::PathBuf;

use bytes::BytesMut;
use k8s_cri::v1 as cri;
use kelson_proto::spdy::frame::{self, FLAG_FIN, Frame, HeaderCodec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::exec::QUEUE;
use crate::cri::Shared;

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

pub async fn spdy<IO>(rt: Shared, req: cri::PortForwardRequest, io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The pod's network namespace ("" for a pod on the host's network).
    let netns = match rt.pods.find(&req.pod_sandbox_id) {
        Ok(p) => PathBuf::from(p.netns),
        Err(_) => return,
    };
    let allowed: Vec<i32> = req.port.clone();
    let (mut rd, wr) = tokio::io::split(io);
    let (frames, frames_rx) = mpsc::channel::<Frame>(QUEUE * 4);
    let writer = tokio::spawn(super::spdy::write_frames(wr, frames_rx));
    let mut codec = HeaderCodec::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // Data stream id → the connection's inbound queue (None once the client sent FIN).
    let mut inbound: HashMap<u32, mpsc::Sender<Option<Vec<u8>>>> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let f = match frame::parse(&mut buf, &mut codec) {
            Ok(Some(f)) => f,
            Ok(None) => match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            },
            Err(e) => {
                tracing::debug!(error = %e, "port-forward session: bad frame; closing");
                break;
            }
        };
        // Reap finished connections (their slots free up).
        while tasks.try_join_next().is_some() {}
        match f {
            Frame::SynStream {
                stream_id, headers, ..
            } => {
                let kind = frame::header(&headers, "streamtype").unwrap_or("");
                let port = frame::header(&headers, "port").and_then(|p| p.parse::<u16>().ok());
                let id = frame::header(&headers, "requestid")
                    .unwrap_or("")
                    .to_owned();
                let refuse = |stream_id| Frame::RstStream {
                    stream_id,
                    status: frame::REFUSED_STREAM,
                };
                let Some(port) = port.filter(|p| *p > 0) else {
                    let _ = frames.send(refuse(stream_id)).await;
                    continue;
                };
                let p = pairs.entry(id.clone()).or_default();
                p.port = port;
                match kind {
                    "error" if p.error.is_none() => p.error = Some(stream_id),
                    "data" if p.data.is_none() => p.data = Some(stream_id),
                    _ => {
                        let _ = frames.send(refuse(stream_id)).await;
                        continue;
                    }
                }
                let _ = frames
                    .send(Frame::SynReply {
                        stream_id,
                        flags: 0,
                        headers: vec![],
                    })
                    .await;
                let (Some(err_id), Some(data_id)) = (p.error, p.data) else {
                    continue;
                };
                pairs.remove(&id);
                if tasks.len() >= MAX_CONNECTIONS {
                    let _ = frames
                        .send(Frame::Data {
                            stream_id: err_id,
                            flags: FLAG_FIN,
                            data: b"too many port-forward connections in this session".to_vec(),
                        })
                        .await;
                    continue;
                }
                let (tx, rx) = mpsc::channel(QUEUE);
                inbound.insert(data_id, tx);
                tasks.spawn(forward(
                    netns.clone(),
                    port,
                    allowed.clone(),
                    err_id,
                    data_id,
                    rx,
                    frames.clone(),
                ));
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if let Some(tx) = inbound.get(&stream_id) {
                    if !data.is_empty() && tx.send(Some(data)).await.is_err() {
                        inbound.remove(&stream_id);
                        continue;
                    }
                    if flags & FLAG_FIN != 0 {
                        let _ = tx.send(None).await;
                        inbound.remove(&stream_id);
                    }
                }
            }
            Frame::RstStream { stream_id, .. } => {
                inbound.remove(&stream_id);
            }
            Frame::Ping { id } => {
                let _ = frames.send(Frame::Ping { id }).await;
            }
            Frame::GoAway { .. } => break,
            _ => {}
        }
    }
    // The client is gone: every connection of the session ends with it.
    tasks.shutdown().await;
    drop(frames);
    let _ = writer.await;
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
