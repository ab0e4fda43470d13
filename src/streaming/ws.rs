//! The WebSocket transport of a remote-command session (exec or attach): channel-framed messages (see
//! `channel`) to and from `exec::Input`/`exec::Output`.

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::Handle;
use super::Remote;
use super::channel::{self, Frame, Protocol};
use super::exec::{Input, Output, QUEUE, STALL};

fn to_message(f: Frame) -> Message {
    match f {
        Frame::Binary(v) => Message::binary(v),
        Frame::Text(s) => Message::text(s),
    }
}

pub async fn remote<S>(rt: Handle, cmd: Remote, proto: Protocol, ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let (out_tx, mut out_rx) = mpsc::channel(QUEUE);
    let session = tokio::spawn(cmd.run(rt, proto, in_rx, out_tx));
    // Client → session; ends (dropping `in_tx`: "client gone") on close, reset or garbage.
    let reader = tokio::spawn(async move {
        while let Some(msg) = source.next().await {
            let frame = match msg {
                Ok(Message::Binary(b)) => Frame::Binary(b.to_vec()),
                Ok(Message::Text(t)) => Frame::Text(t.to_string()),
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => continue, // ping/pong (answered by the library)
            };
            let input = match channel::decode(proto, frame) {
                Ok((channel::STDIN, data)) => Input::Stdin(data),
                Ok((channel::CLOSE, data)) if data.first() == Some(&channel::STDIN) => {
                    Input::StdinEof
                }
                Ok((channel::RESIZE, data)) => match channel::parse_resize(&data) {
                    Some(size) => Input::Resize(size),
                    None => continue,
                },
                Ok(_) | Err(channel::DecodeError::Empty) => continue,
                Err(e) => {
                    tracing::debug!(error = ?e, "exec session: bad frame; closing");
                    return;
                }
            };
            if in_tx.send(input).await.is_err() {
                return;
            }
        }
    });
    // Session → client.
    while let Some(o) = out_rx.recv().await {
        let (ch, data, last) = match o {
            Output::Stdout(d) => (channel::STDOUT, d, false),
            Output::Stderr(d) => (channel::STDERR, d, false),
            Output::Exit(d) => (channel::ERROR, d, true),
        };
        if !(last && data.is_empty()) {
            let msg = to_message(channel::encode(proto, ch, &data));
            if !matches!(
                tokio::time::timeout(STALL, sink.send(msg)).await,
                Ok(Ok(()))
            ) {
                break;
            }
        }
        if last {
            break;
        }
    }
    let _ = tokio::time::timeout(STALL, sink.close()).await;
    reader.abort();
    drop(out_rx);
    let _ = session.await;
}
