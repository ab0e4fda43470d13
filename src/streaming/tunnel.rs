//! SPDY tunnelled through WebSocket (KEP-4006, `SPDY/3.1+portforward.k8s.io`, what kubectl and
//! crictl speak for port-forward since Kubernetes 1.30): the binary messages of a WebSocket as
//! one byte stream both ways, so the SPDY port-forward session runs over it unchanged. Message
//! boundaries mean nothing — client-go's spdystream writes a frame in several messages (a data
//! frame as its 4-byte stream id, its 4-byte flags and length, then the payload). This module
//! never parses SPDY; it must not buffer more than one message each way.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use kelson_proto::spdy::frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{Error as E, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The WebSocket subprotocol a client offers (and the server answers) for SPDY port-forward
/// in WebSocket: the tunnelling prefix `SPDY/3.1+` before the SPDY protocol name.
pub const PORTFORWARD: &str = "SPDY/3.1+portforward.k8s.io";

/// Largest message taken from a client: a whole SPDY frame of the biggest size the frame
/// parser accepts (8-byte header and payload), in case a client writes one in a single message.
pub const MAX_TUNNEL_MESSAGE: usize = 8 + frame::MAX_DATA;

/// Largest message sent: one SPDY data frame as kelson writes it fits (32 KiB of payload).
const MAX_OUT_MESSAGE: usize = 64 * 1024;

fn to_io(e: E) -> io::Error {
    match e {
        E::Io(e) => e,
        E::ConnectionClosed | E::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        e => io::Error::new(io::ErrorKind::InvalidData, e),
    }
}

/// A WebSocket carrying a byte stream in binary messages.
pub struct Tunnel<S> {
    ws: WebSocketStream<S>,
    /// The rest of the message being read.
    current: Bytes,
    /// The client's close (or the end of its connection) was seen: reads return EOF.
    eof: bool,
    /// This side's close frame is queued.
    closing: bool,
}

impl<S> Tunnel<S> {
    pub fn new(ws: WebSocketStream<S>) -> Tunnel<S> {
        Tunnel {
            ws,
            current: Bytes::new(),
            eof: false,
            closing: false,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Tunnel<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.current.is_empty() && !this.eof {
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => this.current = b,
                // client-go's tunnel fails its read on a text message; so does this side.
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message in a SPDY-over-WebSocket tunnel",
                    )));
                }
                // A close of any code ends the byte stream (client-go sends 1000, normal).
                Some(Ok(Message::Close(_))) | None => this.eof = true,
                // Pings are answered by the library; client-go keeps the connection alive
                // with SPDY pings inside the tunnel instead.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
        let n = this.current.len().min(buf.remaining());
        buf.put_slice(&this.current[..n]);
        this.current.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tunnel<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closing {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut ws = Pin::new(&mut this.ws);
        ready!(ws.as_mut().poll_ready(cx)).map_err(to_io)?;
        let n = data.len().min(MAX_OUT_MESSAGE);
        ws.start_send(Message::binary(Bytes::copy_from_slice(&data[..n])))
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(to_io)
    }

    /// A normal close (1000), which client-go's tunnel reads as the end of the stream (any
    /// other code is an error to it).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut ws = Pin::new(&mut this.ws);
        // When the client closed first, the library has queued the answer to its close;
        // closing flushes it.
        if !this.closing && !this.eof {
            ready!(ws.as_mut().poll_ready(cx)).map_err(to_io)?;
            let normal = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            match ws.as_mut().start_send(Message::Close(Some(normal))) {
                Ok(()) => {}
                // The client's close arrived but was not read yet: as above.
                Err(E::Protocol(ProtocolError::SendAfterClosing))
                | Err(E::ConnectionClosed | E::AlreadyClosed) => {}
                Err(e) => return Poll::Ready(Err(to_io(e))),
            }
        }
        this.closing = true;
        ws.poll_close(cx).map_err(to_io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    async fn pair() -> (
        Tunnel<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(4096);
        let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
        let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        (Tunnel::new(server), client)
    }

    #[tokio::test]
    async fn messages_read_as_one_byte_stream_whatever_their_boundaries() {
        let (mut t, mut c) = pair().await;
        for piece in [&b"\x00\x00"[..], b"\x00\x03", b"", b"abc", b"defgh"] {
            c.send(Message::binary(piece.to_vec())).await.unwrap();
        }
        c.send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        c.send(Message::binary(b"ij".to_vec())).await.unwrap();
        c.send(Message::Close(None)).await.unwrap();
        let mut got = Vec::new();
        t.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"\x00\x00\x00\x03abcdefghij");
    }

    #[tokio::test]
    async fn writes_go_out_as_binary_messages_and_shutdown_is_a_normal_close() {
        let (mut t, mut c) = pair().await;
        let big = vec![7u8; MAX_OUT_MESSAGE + 10];
        let writer = tokio::spawn(async move {
            t.write_all(b"frame").await.unwrap();
            t.write_all(&big).await.unwrap();
            t.flush().await.unwrap();
            t.shutdown().await.unwrap();
            t
        });
        let mut sizes = Vec::new();
        let close = loop {
            match c.next().await.unwrap().unwrap() {
                Message::Binary(b) => sizes.push(b.len()),
                Message::Close(f) => break f,
                m => panic!("unexpected {m:?}"),
            }
        };
        assert_eq!(sizes, [5, MAX_OUT_MESSAGE, 10]);
        assert_eq!(close.map(|f| f.code), Some(CloseCode::Normal));
        drop(c);
        let _ = writer.await;
    }

    #[tokio::test]
    async fn the_clients_close_is_answered_when_the_session_ends() {
        let (mut t, mut c) = pair().await;
        let normal = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        c.send(Message::Close(Some(normal))).await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(t.read(&mut buf).await.unwrap(), 0);
        t.shutdown().await.unwrap();
        match c.next().await {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Normal),
            other => panic!("no close answered: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_text_message_is_an_error() {
        let (mut t, mut c) = pair().await;
        c.send(Message::text("0aGVsbG8=")).await.unwrap();
        let mut buf = [0u8; 16];
        let e = t.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
