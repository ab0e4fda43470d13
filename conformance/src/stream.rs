//! Streaming clients for the URLs `Exec`, `Attach` and `PortForward` return, speaking as kubectl
//! and crictl do: WebSocket with the Kubernetes channel subprotocols (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`, and the base64 variants), SPDY/3.1, and SPDY/3.1 tunnelled in WebSocket
//! (`SPDY/3.1+portforward.k8s.io`). Runtime-agnostic: only the URL and the protocol on the wire.

use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{WebSocketStream, client_async};

/// A byte stream: TCP, or TLS over TCP (`https://` URLs).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Ws = WebSocketStream<Box<dyn Io>>;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
pub const CLOSE: u8 = 255;

/// An open remote-command session.
pub struct Session {
    pub tx: Sender,
    pub rx: Receiver,
    /// The subprotocol the server chose.
    pub protocol: String,
}

/// The sending half (stdin, resize, close).
pub struct Sender {
    sink: SplitSink<Ws, Message>,
    protocol: String,
}

/// The receiving half (stdout, stderr, error).
pub struct Receiver {
    source: SplitStream<Ws>,
}

/// Everything a finished session delivered.
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The error channel's content (a `metav1.Status` JSON with v4 and later).
    pub error: Vec<u8>,
}

impl Output {
    /// The exit code the error channel reports (0 for Success), as kubectl computes it.
    pub fn exit_code(&self) -> Option<i32> {
        let v: serde_json::Value = serde_json::from_slice(&self.error).ok()?;
        match v["status"].as_str()? {
            "Success" => Some(0),
            _ => v["details"]["causes"]
                .as_array()?
                .iter()
                .find(|c| c["reason"] == "ExitCode")?["message"]
                .as_str()?
                .parse()
                .ok(),
        }
    }
}

/// Connect to `url` (http://…) offering `protocols`, best first. Errors carry the HTTP status
/// when the server refuses the upgrade (404 for a used or expired URL).
pub async fn connect(url: &str, protocols: &[&str]) -> anyhow::Result<Session> {
    connect_with(url, protocols, None).await
}

/// `connect` to an `https://` URL, trusting the CA certificates in `ca_pem`.
pub async fn connect_tls(
    url: &str,
    protocols: &[&str],
    ca_pem: &std::path::Path,
) -> anyhow::Result<Session> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_pem)? {
        roots.add(c?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    connect_with(url, protocols, Some(config)).await
}

async fn connect_with(
    url: &str,
    protocols: &[&str],
    tls: Option<tokio_rustls::rustls::ClientConfig>,
) -> anyhow::Result<Session> {
    let ws_url = if tls.is_some() {
        url.replacen("https://", "wss://", 1)
    } else {
        url.replacen("http://", "ws://", 1)
    };
    let mut req = ws_url.as_str().into_client_request()?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(&protocols.join(","))?,
    );
    let host = req
        .uri()
        .authority()
        .context("URL without host")?
        .as_str()
        .to_owned();
    let tcp = TcpStream::connect(&host).await?;
    let io: Box<dyn Io> = match tls {
        None => Box::new(tcp),
        Some(config) => {
            let name = rustls_pki_types::ServerName::try_from(
                host.rsplit_once(':')
                    .map(|(h, _)| h)
                    .unwrap_or(&host)
                    .to_owned(),
            )?;
            let conn = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
            Box::new(conn.connect(name, tcp).await?)
        }
    };
    let (ws, resp) = client_async(req, io).await.map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => {
            anyhow::anyhow!("HTTP {}", r.status().as_u16())
        }
        e => anyhow::anyhow!(e),
    })?;
    let protocol = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (sink, source) = ws.split();
    Ok(Session {
        tx: Sender {
            sink,
            protocol: protocol.clone(),
        },
        rx: Receiver { source },
        protocol,
    })
}

impl Session {
    pub async fn send(&mut self, channel: u8, data: &[u8]) -> anyhow::Result<()> {
        self.tx.send(channel, data).await
    }

    pub async fn close_stdin(&mut self) -> anyhow::Result<()> {
        self.tx.close_stdin().await
    }

    pub async fn recv(&mut self) -> anyhow::Result<Option<(u8, Vec<u8>)>> {
        self.rx.recv().await
    }

    /// Read until the server ends the session (or `within` passes).
    pub async fn collect(self, within: Duration) -> anyhow::Result<Output> {
        self.rx.collect(within).await
    }

    /// Drop the connection without a close handshake (a client that vanished).
    pub fn abandon(self) {
        drop(self);
    }
}

impl Sender {
    fn base64(&self) -> bool {
        self.protocol.contains("base64")
    }

    /// Send `data` on `channel`.
    pub async fn send(&mut self, channel: u8, data: &[u8]) -> anyhow::Result<()> {
        let msg = if self.base64() {
            Message::text(format!("{}{}", (b'0' + channel) as char, B64.encode(data)))
        } else {
            let mut v = Vec::with_capacity(data.len() + 1);
            v.push(channel);
            v.extend_from_slice(data);
            Message::binary(v)
        };
        self.sink.send(msg).await?;
        Ok(())
    }

    /// A text message as is, whatever the protocol (to test how a server treats garbage).
    pub async fn send_raw_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.sink.send(Message::text(text.to_owned())).await?;
        Ok(())
    }

    /// v5: no more stdin.
    pub async fn close_stdin(&mut self) -> anyhow::Result<()> {
        if !self.protocol.starts_with("v5.") {
            bail!(
                "closing stdin needs v5.channel.k8s.io (got {:?})",
                self.protocol
            );
        }
        self.send(CLOSE, &[STDIN]).await
    }
}

impl Receiver {
    /// The next message: (channel, data); None when the server closed the session.
    pub async fn recv(&mut self) -> anyhow::Result<Option<(u8, Vec<u8>)>> {
        loop {
            let Some(msg) = self.source.next().await else {
                return Ok(None);
            };
            match msg? {
                Message::Binary(b) if !b.is_empty() => return Ok(Some((b[0], b[1..].to_vec()))),
                Message::Text(t) if !t.is_empty() => {
                    let ch = t.as_bytes()[0].wrapping_sub(b'0');
                    return Ok(Some((ch, B64.decode(&t.as_bytes()[1..])?)));
                }
                Message::Close(_) => return Ok(None),
                _ => continue,
            }
        }
    }

    /// Read until the server ends the session (or `within` passes).
    pub async fn collect(mut self, within: Duration) -> anyhow::Result<Output> {
        let mut out = Output::default();
        tokio::time::timeout(within, async {
            while let Some((ch, data)) = self.recv().await? {
                match ch {
                    STDOUT => out.stdout.extend_from_slice(&data),
                    STDERR => out.stderr.extend_from_slice(&data),
                    ERROR => out.error.extend_from_slice(&data),
                    _ => {}
                }
            }
            anyhow::Ok(())
        })
        .await
        .context("session did not end in time")??;
        Ok(out)
    }
}

/// The SPDY/3.1 transport, as kubectl and crictl (and the API server towards kubelet) speak
/// it: an HTTP upgrade, then one SPDY stream per channel named by its `streamType`. For
/// port-forward the same SPDY session can instead run inside a WebSocket (KEP-4006, client-go
/// since Kubernetes 1.30): `connect_portforward_websocket`.
pub mod spdy {
    use std::collections::HashMap;
    use std::time::Duration;

    use anyhow::{Context, bail};
    use bytes::BytesMut;
    use futures::stream::{SplitSink, SplitStream};
    use futures::{SinkExt, StreamExt};
    use kelson_proto::spdy::frame::{self, FLAG_FIN, Frame, HeaderCodec};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    use super::Output;

    /// The WebSocket subprotocol of SPDY port-forward in WebSocket: the tunnelling prefix
    /// `SPDY/3.1+` before the SPDY protocol name.
    pub const TUNNEL_PORTFORWARD: &str = "SPDY/3.1+portforward.k8s.io";

    /// Where the SPDY bytes travel.
    enum Read {
        Tcp(tokio::net::tcp::OwnedReadHalf),
        /// Binary WebSocket messages, their boundaries meaningless.
        Ws(SplitStream<WebSocketStream<TcpStream>>),
    }

    enum Write {
        Tcp(tokio::net::tcp::OwnedWriteHalf),
        Ws(SplitSink<WebSocketStream<TcpStream>, Message>),
    }

    impl Read {
        /// More bytes into `buf`; 0 at the end (EOF, or a WebSocket close).
        async fn more(&mut self, buf: &mut BytesMut) -> anyhow::Result<usize> {
            match self {
                Read::Tcp(rd) => Ok(rd.read_buf(buf).await?),
                Read::Ws(source) => loop {
                    match source.next().await {
                        None | Some(Ok(Message::Close(_))) => return Ok(0),
                        Some(Ok(Message::Binary(b))) if !b.is_empty() => {
                            buf.extend_from_slice(&b);
                            return Ok(b.len());
                        }
                        // client-go's tunnel fails on anything but binary data.
                        Some(Ok(Message::Text(_))) => bail!("text message in the SPDY tunnel"),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e.into()),
                    }
                },
            }
        }
    }

    /// The pieces client-go's SPDY framer (spdystream) writes one frame in: each field of the
    /// frame header is its own write, and every write through the tunnel is one WebSocket
    /// message — a data frame goes as its stream id (4 bytes), flags and length (4), then the
    /// payload (an empty message when there is none).
    pub fn client_go_pieces(frame: &[u8]) -> Vec<&[u8]> {
        let control = frame.first().is_some_and(|b| b & 0x80 != 0);
        let kind = frame.get(2..4).map(|t| u16::from_be_bytes([t[0], t[1]]));
        let fields: &[usize] = match (control, kind) {
            (false, _) => &[4, 4],
            (true, Some(1)) => &[2, 2, 4, 4, 4, 1, 1], // SYN_STREAM, then the header block
            (true, Some(3 | 7)) => &[2, 2, 4, 4, 4],   // RST_STREAM, GOAWAY
            (true, Some(6)) => &[2, 2, 4, 4],          // PING
            _ => &[2, 2, 4],
        };
        let mut pieces = Vec::new();
        let mut rest = frame;
        for n in fields {
            if rest.len() < *n {
                break;
            }
            let (piece, tail) = rest.split_at(*n);
            pieces.push(piece);
            rest = tail;
        }
        if !control || !rest.is_empty() {
            pieces.push(rest);
        }
        pieces
    }

    pub struct Session {
        rd: Read,
        /// Taken by `take_writer` for a sender in another task.
        wr: Option<Writer>,
        rx: HeaderCodec,
        buf: BytesMut,
        /// streamType → stream id.
        pub streams: HashMap<&'static str, u32>,
        /// Highest stream id used by `forward` so far (+1).
        next_id: u32,
        /// The version the server chose.
        pub version: String,
    }

    /// Upgrade to SPDY at `url` offering `versions`, and open the streams of an exec (error,
    /// then stdin/stdout/stderr as asked), waiting for the server to accept each.
    pub async fn connect(
        url: &str,
        versions: &[&str],
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> anyhow::Result<Session> {
        let mut s = upgrade(url, versions).await?;
        let mut kinds = vec!["error"];
        if stdin {
            kinds.push("stdin");
        }
        if stdout {
            kinds.push("stdout");
        }
        if stderr {
            kinds.push("stderr");
        }
        for (i, k) in kinds.iter().enumerate() {
            let id = 1 + 2 * i as u32;
            s.send(&Frame::SynStream {
                stream_id: id,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: vec![("streamtype".into(), k.to_string())],
            })
            .await?;
            s.streams.insert(k, id);
        }
        if let Some(w) = s.wr.as_mut() {
            w.stdin = s.streams.get("stdin").copied().unwrap_or(0);
        }
        let mut replied = 0;
        while replied < kinds.len() {
            match s.next().await? {
                Some(Frame::SynReply { .. }) => replied += 1,
                Some(Frame::RstStream { stream_id, .. }) => bail!("stream {stream_id} refused"),
                Some(_) => {}
                None => bail!("connection closed while opening streams"),
            }
        }
        Ok(s)
    }

    /// The HTTP upgrade to SPDY/3.1, offering `versions`.
    async fn upgrade(url: &str, versions: &[&str]) -> anyhow::Result<Session> {
        let rest = url.strip_prefix("http://").context("http:// URL")?;
        let (host, path) = rest.split_at(rest.find('/').context("URL without path")?);
        let mut tcp = TcpStream::connect(host).await?;
        let mut head = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        );
        for v in versions {
            head.push_str(&format!("X-Stream-Protocol-Version: {v}\r\n"));
        }
        head.push_str("\r\n");
        tcp.write_all(head.as_bytes()).await?;
        let mut buf = BytesMut::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 16 * 1024 || tcp.read_buf(&mut buf).await? == 0 {
                bail!("no HTTP response head");
            }
        };
        let head = String::from_utf8_lossy(&buf.split_to(end)).into_owned();
        let code: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if code != 101 {
            bail!("HTTP {code}");
        }
        let version = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("x-stream-protocol-version")
                    .then(|| v.trim().to_owned())
            })
            .unwrap_or_default();
        let (rd, wr) = tcp.into_split();
        Ok(Session::new(Read::Tcp(rd), Write::Tcp(wr), buf, version))
    }

    /// The WebSocket handshake of SPDY port-forward in WebSocket, as client-go's tunnelling
    /// dialer does it: GET, offering only `SPDY/3.1+portforward.k8s.io`, and the server must
    /// choose it. The SPDY session then starts at once, with no further HTTP.
    pub async fn connect_portforward_websocket(url: &str) -> anyhow::Result<Session> {
        let ws_url = url
            .strip_prefix("http://")
            .map(|rest| format!("ws://{rest}"))
            .context("http:// URL")?;
        let mut req = ws_url.as_str().into_client_request()?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(TUNNEL_PORTFORWARD),
        );
        let host = req
            .uri()
            .authority()
            .context("URL without host")?
            .as_str()
            .to_owned();
        let tcp = TcpStream::connect(&host).await?;
        let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(r) => {
                    anyhow::anyhow!("HTTP {}", r.status().as_u16())
                }
                e => anyhow::anyhow!(e),
            })?;
        let chosen = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if chosen != TUNNEL_PORTFORWARD {
            bail!("the server chose subprotocol {chosen:?}, not {TUNNEL_PORTFORWARD:?}");
        }
        let version = chosen.trim_start_matches("SPDY/3.1+").to_owned();
        let (sink, source) = ws.split();
        Ok(Session::new(
            Read::Ws(source),
            Write::Ws(sink),
            BytesMut::new(),
            version,
        ))
    }

    /// The sending half: frames to the server, stdin.
    pub struct Writer {
        wr: Write,
        tx: HeaderCodec,
        stdin: u32,
    }

    impl Writer {
        pub async fn send(&mut self, f: &Frame) -> anyhow::Result<()> {
            let mut out = Vec::new();
            frame::write(f, &mut self.tx, &mut out);
            match &mut self.wr {
                Write::Tcp(wr) => wr.write_all(&out).await?,
                Write::Ws(sink) => {
                    for piece in client_go_pieces(&out) {
                        sink.send(Message::binary(piece.to_vec())).await?;
                    }
                }
            }
            Ok(())
        }

        /// The end of the session as client-go ends a tunnel: a normal (1000) close, or
        /// FIN on the TCP connection.
        pub async fn close(&mut self) -> anyhow::Result<()> {
            match &mut self.wr {
                Write::Tcp(wr) => wr.shutdown().await?,
                Write::Ws(sink) => {
                    let normal = CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    };
                    sink.send(Message::Close(Some(normal))).await?;
                }
            }
            Ok(())
        }

        pub async fn stdin(&mut self, data: &[u8], fin: bool) -> anyhow::Result<()> {
            if self.stdin == 0 {
                bail!("no stdin stream");
            }
            self.send(&Frame::Data {
                stream_id: self.stdin,
                flags: if fin { FLAG_FIN } else { 0 },
                data: data.to_vec(),
            })
            .await
        }
    }

    /// Upgrade to SPDY for port-forwarding (`portforward.k8s.io`); no stream is opened yet.
    pub async fn connect_portforward(url: &str) -> anyhow::Result<Session> {
        upgrade(url, &["portforward.k8s.io"]).await
    }

    /// What one forwarded connection delivered.
    #[derive(Debug, Default)]
    pub struct Forwarded {
        pub data: Vec<u8>,
        pub error: Vec<u8>,
    }

    impl Session {
        fn new(rd: Read, wr: Write, buf: BytesMut, version: String) -> Session {
            Session {
                rd,
                wr: Some(Writer {
                    wr,
                    tx: HeaderCodec::new(),
                    stdin: 0,
                }),
                rx: HeaderCodec::new(),
                buf,
                streams: HashMap::new(),
                next_id: 0,
                version,
            }
        }

        /// End the session from this side (see `Writer::close`).
        pub async fn close(&mut self) -> anyhow::Result<()> {
            self.writer()?.close().await
        }

        /// Forward one connection to `port`: open the error and data streams of `request_id`,
        /// send `send` then FIN, and read until the server ends the data stream.
        pub async fn forward(
            &mut self,
            port: u16,
            send: &[u8],
            within: Duration,
        ) -> anyhow::Result<Forwarded> {
            // Fresh stream ids and request id for every connection (SPDY never reuses ids).
            self.next_id += 4;
            let (err_id, data_id) = (self.next_id - 3, self.next_id - 1);
            let request_id = self.next_id / 4;
            for (id, kind) in [(err_id, "error"), (data_id, "data")] {
                self.send(&Frame::SynStream {
                    stream_id: id,
                    associated: 0,
                    priority: 0,
                    flags: 0,
                    headers: vec![
                        ("streamtype".into(), kind.into()),
                        ("port".into(), port.to_string()),
                        ("requestid".into(), request_id.to_string()),
                    ],
                })
                .await?;
            }
            if !send.is_empty() {
                self.send(&Frame::Data {
                    stream_id: data_id,
                    flags: 0,
                    data: send.to_vec(),
                })
                .await?;
            }
            self.send(&Frame::Data {
                stream_id: data_id,
                flags: FLAG_FIN,
                data: vec![],
            })
            .await?;
            let mut out = Forwarded::default();
            let (mut data_done, mut err_done) = (false, false);
            tokio::time::timeout(within, async {
                while !(data_done && err_done) {
                    match self.next().await? {
                        Some(Frame::Data {
                            stream_id,
                            flags,
                            data,
                        }) => {
                            if stream_id == data_id {
                                out.data.extend_from_slice(&data);
                                data_done |= flags & FLAG_FIN != 0;
                            } else if stream_id == err_id {
                                out.error.extend_from_slice(&data);
                                err_done |= flags & FLAG_FIN != 0;
                            }
                        }
                        Some(Frame::RstStream { stream_id, .. })
                            if stream_id == data_id || stream_id == err_id =>
                        {
                            bail!("stream {stream_id} refused")
                        }
                        Some(_) => {}
                        None => bail!("connection closed"),
                    }
                }
                anyhow::Ok(())
            })
            .await
            .context("forwarded connection did not end in time")??;
            Ok(out)
        }

        fn writer(&mut self) -> anyhow::Result<&mut Writer> {
            self.wr.as_mut().context("the writer was taken")
        }

        pub async fn send(&mut self, f: &Frame) -> anyhow::Result<()> {
            self.writer()?.send(f).await
        }

        /// The sending half, for another task (the session keeps reading).
        pub fn take_writer(&mut self) -> Option<Writer> {
            self.wr.take()
        }

        /// The next frame; None at EOF.
        pub async fn next(&mut self) -> anyhow::Result<Option<Frame>> {
            loop {
                if let Some(f) = frame::parse(&mut self.buf, &mut self.rx)? {
                    return Ok(Some(f));
                }
                if self.rd.more(&mut self.buf).await? == 0 {
                    return Ok(None);
                }
            }
        }

        pub async fn stdin(&mut self, data: &[u8], fin: bool) -> anyhow::Result<()> {
            self.writer()?.stdin(data, fin).await
        }

        /// Read until the server ends the session (GOAWAY or EOF) or `within` passes.
        pub async fn collect(mut self, within: Duration) -> anyhow::Result<Output> {
            let mut out = Output::default();
            let by_id: HashMap<u32, &str> = self.streams.iter().map(|(k, v)| (*v, *k)).collect();
            tokio::time::timeout(within, async {
                while let Some(f) = self.next().await? {
                    match f {
                        Frame::Data {
                            stream_id, data, ..
                        } => match by_id.get(&stream_id) {
                            Some(&"stdout") => out.stdout.extend_from_slice(&data),
                            Some(&"stderr") => out.stderr.extend_from_slice(&data),
                            Some(&"error") => out.error.extend_from_slice(&data),
                            _ => {}
                        },
                        Frame::GoAway { .. } => break,
                        _ => {}
                    }
                }
                anyhow::Ok(())
            })
            .await
            .context("session did not end in time")??;
            Ok(out)
        }
    }
}
