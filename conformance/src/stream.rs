//! Streaming clients for the URLs `Exec` returns, speaking as kubectl does: WebSocket with the
//! Kubernetes channel subprotocols (`v5.channel.k8s.io`, `v4.channel.k8s.io`, and the base64
//! variants). Runtime-agnostic: only the URL and the protocol on the wire.

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

type Ws = WebSocketStream<TcpStream>;

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
    let ws_url = url.replacen("http://", "ws://", 1);
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
    let (ws, resp) = client_async(req, tcp).await.map_err(|e| match e {
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
