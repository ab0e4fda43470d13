//! Attachers: clients (kelsond's attach sessions) joined to the running container's stdio.
//! Each is a non-blocking connection carrying `AttachFrame`s: output fanned out to every
//! attacher that asked for it, stdin and resizes from them. Output to an attacher is
//! buffered up to `MAX_BUFFER` and dropped past it: a slow or stuck attacher never slows the
//! container, the log or the other attachers (the log keeps everything).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use bytes::{Buf, BytesMut};
use kelson_proto::shim::{self as msg, attach_frame::Kind};

use crate::cri_log::Stream;

/// Output queued per attacher before it is dropped.
pub const MAX_BUFFER: usize = 1 << 20;
/// Frames read from one attacher per turn of the event loop.
const READS_PER_TURN: usize = 16;

pub struct Attacher {
    conn: UnixStream,
    pub stdin: bool,
    stdout: bool,
    stderr: bool,
    inbuf: BytesMut,
    outbuf: BytesMut,
    /// Output bytes dropped because the attacher did not keep up.
    pub dropped: u64,
    /// Flush what is queued, then close (the attacher detached or the container exited).
    pub closing: bool,
}

/// What an attacher sent.
#[derive(Debug, PartialEq)]
pub enum Event {
    Stdin(Vec<u8>),
    StdinClose,
    Resize(u16, u16),
    /// The attacher left (EOF, error or a broken frame).
    Gone,
}

impl Attacher {
    pub fn new(conn: UnixStream, a: &msg::Attach) -> std::io::Result<Attacher> {
        conn.set_read_timeout(None)?;
        conn.set_write_timeout(None)?;
        conn.set_nonblocking(true)?;
        Ok(Attacher {
            conn,
            stdin: a.stdin,
            stdout: a.stdout,
            stderr: a.stderr,
            inbuf: BytesMut::new(),
            outbuf: BytesMut::new(),
            dropped: 0,
            closing: false,
        })
    }

    pub fn conn(&self) -> &UnixStream {
        &self.conn
    }

    pub fn wants_write(&self) -> bool {
        !self.outbuf.is_empty()
    }

    /// Queue output for this attacher if it asked for the stream and has room.
    pub fn offer(&mut self, stream: Stream, data: &[u8]) {
        let kind = match stream {
            Stream::Stdout if self.stdout => Kind::Stdout(data.to_vec()),
            Stream::Stderr if self.stderr => Kind::Stderr(data.to_vec()),
            _ => return,
        };
        if self.closing || self.outbuf.len() + data.len() + 16 > MAX_BUFFER {
            self.dropped += data.len() as u64;
            return;
        }
        let _ = kelson_proto::encode(&msg::AttachFrame { kind: Some(kind) }, &mut self.outbuf);
        // Try at once: most of the time the socket has room and the output goes out now.
        let _ = self.flush();
    }

    /// Write what is queued without blocking; `Err` when the attacher is gone.
    pub fn flush(&mut self) -> std::io::Result<()> {
        while !self.outbuf.is_empty() {
            match self.conn.write(&self.outbuf) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => self.outbuf.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Read what the attacher sent (a bounded amount per call).
    pub fn read(&mut self, buf: &mut [u8]) -> Vec<Event> {
        let mut events = Vec::new();
        for _ in 0..READS_PER_TURN {
            match self.conn.read(buf) {
                Ok(0) => {
                    events.push(Event::Gone);
                    return events;
                }
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    events.push(Event::Gone);
                    return events;
                }
            }
        }
        loop {
            match kelson_proto::decode::<msg::AttachFrame>(&mut self.inbuf) {
                Ok(None) => return events,
                Ok(Some(f)) => events.push(match f.kind {
                    Some(Kind::Stdin(d)) => Event::Stdin(d),
                    Some(Kind::StdinClose(_)) => Event::StdinClose,
                    Some(Kind::Resize(r)) => Event::Resize(
                        r.width.min(u16::MAX as u32) as u16,
                        r.height.min(u16::MAX as u32) as u16,
                    ),
                    // Output frames are the shim's to send; an attacher sending them is broken.
                    _ => Event::Gone,
                }),
                Err(_) => {
                    events.push(Event::Gone);
                    return events;
                }
            }
        }
    }

    /// The end: give the attacher up to `within` to take what is queued (blocking).
    pub fn finish(mut self, within: std::time::Duration) {
        if self.outbuf.is_empty() || self.conn.set_nonblocking(false).is_err() {
            return;
        }
        let _ = self.conn.set_write_timeout(Some(within));
        let _ = self.conn.write_all(&self.outbuf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(mut wire: BytesMut) -> Vec<msg::AttachFrame> {
        let mut v = Vec::new();
        while let Some(f) = kelson_proto::decode::<msg::AttachFrame>(&mut wire).unwrap() {
            v.push(f);
        }
        v
    }

    fn read_all(s: &mut UnixStream) -> BytesMut {
        s.set_nonblocking(true).unwrap();
        let mut out = BytesMut::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[test]
    fn output_goes_only_where_asked_and_is_dropped_past_the_bound() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let mut at = Attacher::new(
            a,
            &msg::Attach {
                stdin: false,
                stdout: true,
                stderr: false,
            },
        )
        .unwrap();
        at.offer(Stream::Stdout, b"hello");
        at.offer(Stream::Stderr, b"not asked for");
        let got = frames(read_all(&mut peer));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, Some(Kind::Stdout(b"hello".to_vec())));
        // The peer stops reading: the socket fills, then the buffer, then output is dropped
        // (never blocking the caller).
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..64 {
            at.offer(Stream::Stdout, &chunk);
        }
        assert!(at.dropped > 0, "nothing dropped");
        assert!(at.outbuf.len() <= MAX_BUFFER);
        // What was queued arrives whole, in order, once the peer reads again.
        let mut wire = BytesMut::new();
        let mut total = 0u64;
        loop {
            wire.extend_from_slice(&read_all(&mut peer));
            while let Some(f) = kelson_proto::decode::<msg::AttachFrame>(&mut wire).unwrap() {
                assert_eq!(f.kind, Some(Kind::Stdout(chunk.clone())));
                total += chunk.len() as u64;
            }
            at.flush().unwrap();
            if !at.wants_write() {
                wire.extend_from_slice(&read_all(&mut peer));
                while let Some(f) = kelson_proto::decode::<msg::AttachFrame>(&mut wire).unwrap() {
                    assert_eq!(f.kind, Some(Kind::Stdout(chunk.clone())));
                    total += chunk.len() as u64;
                }
                break;
            }
        }
        assert!(wire.is_empty());
        assert_eq!(total + at.dropped, 64 * 64 * 1024);
    }

    #[test]
    fn input_frames_and_broken_peers() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let mut at = Attacher::new(
            a,
            &msg::Attach {
                stdin: true,
                stdout: true,
                stderr: true,
            },
        )
        .unwrap();
        let mut wire = BytesMut::new();
        for kind in [
            Kind::Stdin(b"ls\n".to_vec()),
            Kind::Resize(msg::Resize {
                width: 80,
                height: 100_000,
            }),
            Kind::StdinClose(msg::Empty {}),
        ] {
            kelson_proto::encode(&msg::AttachFrame { kind: Some(kind) }, &mut wire).unwrap();
        }
        // Split mid-frame: the rest arrives later.
        peer.write_all(&wire[..5]).unwrap();
        let mut buf = [0u8; 4096];
        assert_eq!(at.read(&mut buf), vec![]);
        peer.write_all(&wire[5..]).unwrap();
        assert_eq!(
            at.read(&mut buf),
            vec![
                Event::Stdin(b"ls\n".to_vec()),
                Event::Resize(80, u16::MAX),
                Event::StdinClose
            ]
        );
        // An attacher sending output frames is broken.
        let mut wire = BytesMut::new();
        kelson_proto::encode(
            &msg::AttachFrame {
                kind: Some(Kind::Stdout(b"x".to_vec())),
            },
            &mut wire,
        )
        .unwrap();
        peer.write_all(&wire).unwrap();
        assert_eq!(at.read(&mut buf), vec![Event::Gone]);
        drop(peer);
        assert_eq!(at.read(&mut buf), vec![Event::Gone]);
    }
}
