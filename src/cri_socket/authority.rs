//! Any `:authority` on the CRI socket: rewrites the header blocks a client sends so that h2
//! never sees an authority it would refuse; every other byte passes through untouched.
//!
//! Why: over a unix socket, gRPC's C-core clients (Python's grpcio and every binding built on
//! C-core, since grpc 1.57) send the percent-encoded socket path as `:authority`
//! (`tmp%2Fk%2Fkelson.sock`). h2 parses it with the `http` crate's `Authority`, which refuses
//! a `%` outside userinfo or an IPv6 zone and any `/`, and answers RST_STREAM PROTOCOL_ERROR
//! before tonic sees the call (grpc/grpc#38142; h2's own fix, hyperium/h2#487, is unmerged and
//! h2 has no switch for it). Go clients send `localhost` and never noticed.
//!
//! HPACK makes this a decode, not a byte patch: the authority may sit in the client's dynamic
//! table and be referred to by index on every later call, so each block is decoded here with
//! a table that follows the client's encoder, and re-encoded as literals that index nothing —
//! h2's own table then stays empty, so the two decoders can never disagree. A refused
//! authority is dropped: a request without one is valid HTTP/2, and on a unix socket it names
//! nothing anyway. Everything but HEADERS/CONTINUATION (DATA above all) is streamed through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113 §3.4), passed on as it comes (h2 checks it).
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;
/// The most of one header block (a HEADERS frame and its CONTINUATIONs, as sent) held here.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
/// The most of one decoded header list (RFC 7541 §4.1 sizes: name + value + 32 per field):
/// HPACK indexes expand a byte to a whole table entry, so the encoded bound is not enough.
pub const MAX_HEADER_LIST: usize = 1 << 20;
/// Frames written to h2 carry at most this: the size every HTTP/2 endpoint must accept.
const MAX_OUT_FRAME: usize = 16_384;
/// The dynamic table the client's encoder may use: h2 (through hyper and tonic) advertises no
/// SETTINGS_HEADER_TABLE_SIZE, so the protocol's default. Were it raised there, a client using
/// the room would fail here with a clear error rather than desynchronise.
const HPACK_TABLE_SIZE: usize = 4_096;
/// How much is read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("stream {stream}: header block over {limit} bytes")]
    BlockTooLarge { stream: u32, limit: usize },
    #[error("stream {stream}: decoded header list over {limit} bytes")]
    ListTooLarge { stream: u32, limit: usize },
    #[error("stream {stream}: header block interrupted by a frame of type {kind:#x}")]
    Interrupted { stream: u32, kind: u8 },
    #[error("stream {stream}: HEADERS frame shorter than its padding and priority")]
    ShortHeaders { stream: u32 },
    #[error("stream {stream}: hpack: {source}")]
    Hpack {
        stream: u32,
        source: loona_hpack::decoder::DecoderError,
    },
}

/// A connection whose client→server bytes go through a [`Rewriter`].
pub struct AnyAuthority<S> {
    io: S,
    rewriter: Rewriter,
    /// Rewritten bytes not yet handed to h2.
    out: BytesMut,
    eof: bool,
}

impl<S> AnyAuthority<S> {
    pub fn new(io: S) -> Self {
        AnyAuthority {
            io,
            rewriter: Rewriter::new(),
            out: BytesMut::new(),
            eof: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AnyAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            if !me.out.is_empty() {
                let n = me.out.len().min(buf.remaining());
                buf.put_slice(&me.out[..n]);
                me.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if me.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut me.io).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                me.eof = true;
                continue;
            }
            if let Err(e) = me.rewriter.feed(read.filled(), &mut me.out) {
                // HPACK state is per connection: after a block it cannot decode, no later
                // block can be trusted either (RFC 7541 §2.3 makes it a connection error).
                tracing::warn!(error = %e, "closing a CRI connection");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AnyAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AnyAuthority<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

enum State {
    Preface {
        left: usize,
    },
    FrameHeader,
    /// Inside a frame that passes through untouched.
    Pass {
        left: usize,
    },
    /// Waiting for the whole payload of a HEADERS or CONTINUATION frame.
    Fragment {
        len: usize,
        kind: u8,
        flags: u8,
        stream: u32,
    },
}

/// A header block being gathered across CONTINUATION frames.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    bytes: Vec<u8>,
}

/// The client→server byte stream of one connection, frame by frame.
pub struct Rewriter {
    state: State,
    /// Bytes read but not yet consumed: at most one header fragment plus a read.
    raw: BytesMut,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    pub fn new() -> Rewriter {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HPACK_TABLE_SIZE);
        Rewriter {
            state: State::Preface { left: PREFACE_LEN },
            raw: BytesMut::new(),
            block: None,
            decoder,
        }
    }

    /// Consume `input`, appending to `out` every byte that is ready for h2.
    pub fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), AuthorityError> {
        self.raw.extend_from_slice(input);
        loop {
            match self.state {
                State::Preface { left } | State::Pass { left } => {
                    let n = left.min(self.raw.len());
                    out.extend_from_slice(&self.raw.split_to(n));
                    let preface = matches!(self.state, State::Preface { .. });
                    self.state = match left - n {
                        0 => State::FrameHeader,
                        left if preface => State::Preface { left },
                        left => State::Pass { left },
                    };
                    if self.raw.is_empty() {
                        return Ok(());
                    }
                }
                State::FrameHeader => {
                    let Some(h) = self.raw.get(..FRAME_HEADER_LEN) else {
                        return Ok(());
                    };
                    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    let (kind, flags) = (h[3], h[4]);
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    let gathering = self.block.as_ref().map(|b| b.stream);
                    match (kind, gathering) {
                        (HEADERS, None) | (CONTINUATION, Some(_)) => {
                            if gathering.is_some_and(|s| s != stream) {
                                return Err(AuthorityError::Interrupted { stream, kind });
                            }
                            let held = self.block.as_ref().map_or(0, |b| b.bytes.len());
                            if held + len > MAX_HEADER_BLOCK {
                                return Err(AuthorityError::BlockTooLarge {
                                    stream,
                                    limit: MAX_HEADER_BLOCK,
                                });
                            }
                            self.raw.advance(FRAME_HEADER_LEN);
                            self.state = State::Fragment {
                                len,
                                kind,
                                flags,
                                stream,
                            };
                        }
                        (_, Some(stream)) => {
                            return Err(AuthorityError::Interrupted { stream, kind });
                        }
                        // Anything else, a stray CONTINUATION included: h2 judges it.
                        (_, None) => {
                            out.extend_from_slice(&self.raw.split_to(FRAME_HEADER_LEN));
                            self.state = State::Pass { left: len };
                        }
                    }
                }
                State::Fragment {
                    len,
                    kind,
                    flags,
                    stream,
                } => {
                    if self.raw.len() < len {
                        return Ok(());
                    }
                    let payload = self.raw.split_to(len);
                    self.state = State::FrameHeader;
                    self.fragment(kind, flags, stream, &payload, out)?;
                }
            }
        }
    }

    fn fragment(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), AuthorityError> {
        let short = || AuthorityError::ShortHeaders { stream };
        if kind == HEADERS {
            let mut p = payload;
            let mut pad = 0;
            if flags & PADDED != 0 {
                let (&n, rest) = p.split_first().ok_or_else(short)?;
                (pad, p) = (usize::from(n), rest);
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                let (head, rest) = p.split_first_chunk::<PRIORITY_LEN>().ok_or_else(short)?;
                (priority, p) = (Some(*head), rest);
            }
            let fragment = p.get(..p.len().checked_sub(pad).ok_or_else(short)?);
            self.block = Some(Block {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                bytes: fragment.ok_or_else(short)?.to_vec(),
            });
        } else if let Some(b) = self.block.as_mut() {
            b.bytes.extend_from_slice(payload);
        }
        match self.block.take() {
            Some(block) if flags & END_HEADERS != 0 => self.finish(block, out),
            gathering => {
                self.block = gathering;
                Ok(())
            }
        }
    }

    /// Decode a whole block, drop a refused authority, and write it out as literals.
    fn finish(&mut self, block: Block, out: &mut BytesMut) -> Result<(), AuthorityError> {
        let stream = block.stream;
        let mut encoded = Vec::with_capacity(block.bytes.len());
        let mut size = 0usize;
        self.decoder
            .decode_with_cb(&block.bytes, |name, value| {
                size = size.saturating_add(name.len() + value.len() + 32);
                if size > MAX_HEADER_LIST
                    || (&*name == b":authority" && http::uri::Authority::try_from(&*value).is_err())
                {
                    return;
                }
                // Literal Header Field without Indexing, new name (RFC 7541 §6.2.2).
                encoded.push(0);
                string(&name, &mut encoded);
                string(&value, &mut encoded);
            })
            .map_err(|source| AuthorityError::Hpack { stream, source })?;
        if size > MAX_HEADER_LIST {
            return Err(AuthorityError::ListTooLarge {
                stream,
                limit: MAX_HEADER_LIST,
            });
        }
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        let mut first: Vec<u8> = Vec::new();
        if let Some(p) = block.priority {
            flags |= PRIORITY;
            first.extend_from_slice(&p);
        }
        let split = encoded.len().min(MAX_OUT_FRAME - first.len());
        let (head, mut rest) = encoded.split_at(split);
        first.extend_from_slice(head);
        let end = |rest: &[u8]| if rest.is_empty() { END_HEADERS } else { 0 };
        frame(out, HEADERS, flags | end(rest), stream, &first);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_OUT_FRAME));
            rest = tail;
            frame(out, CONTINUATION, end(rest), stream, chunk);
        }
        Ok(())
    }
}

/// An HPACK string literal, not Huffman-coded (RFC 7541 §5.2).
fn string(s: &[u8], out: &mut Vec<u8>) {
    integer(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

/// An HPACK integer with an N-bit prefix (RFC 7541 §5.1), `high` in the prefix byte's top bits.
fn integer(mut v: usize, prefix: u8, high: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if v < max {
        out.push(high | v as u8);
        return;
    }
    out.push(high | max as u8);
    v -= max;
    while v >= 0x80 {
        out.push((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn frame(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut v = Vec::new();
        let mut b = bytes;
        while !b.is_empty() {
            let len = usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
            let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
            v.push((b[3], b[4], stream, b[9..9 + len].to_vec()));
            b = &b[9 + len..];
        }
        v
    }

    fn raw_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        frame(&mut out, kind, flags, stream, payload);
        out.to_vec()
    }

    /// What C-core sends: the percent-encoded socket path, added to the dynamic table on the
    /// first call (with `te`), referred to by index on every later one.
    fn request(first: bool, authority: &[u8]) -> Vec<u8> {
        let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
        b.push(0x04); // :path, name from the static table, not indexed
        string(b"/runtime.v1.RuntimeService/Version", &mut b);
        if first {
            b.push(0x41); // :authority, incremental indexing: dynamic entry 62
            string(authority, &mut b);
            b.push(0x40); // te: trailers, incremental indexing: 62 (authority moves to 63)
            string(b"te", &mut b);
            string(b"trailers", &mut b);
        } else {
            b.extend([0x80 | 63, 0x80 | 62]);
        }
        b
    }

    fn decode(dec: &mut loona_hpack::Decoder<'_>, block: &[u8]) -> Vec<(String, String)> {
        dec.decode(block)
            .unwrap()
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    /// Feed `input` in pieces of `step` bytes: the output must not depend on how reads split.
    fn run(input: &[u8], step: usize) -> Result<Vec<u8>, AuthorityError> {
        let mut r = Rewriter::new();
        let mut out = BytesMut::new();
        for chunk in input.chunks(step) {
            r.feed(chunk, &mut out)?;
        }
        Ok(out.to_vec())
    }

    #[test]
    fn drops_a_refused_authority_on_every_call_and_keeps_a_valid_one() {
        let mut input = PREFACE.to_vec();
        input.extend(raw_frame(0x4, 0, 0, &[])); // SETTINGS
        for stream in [1, 3] {
            let block = request(stream == 1, b"tmp%2Fk%2Fkelson.sock");
            input.extend(raw_frame(HEADERS, END_HEADERS, stream, &block));
            input.extend(raw_frame(0x0, END_STREAM, stream, b"\0\0\0\0\0"));
        }
        let mut block = vec![0x20]; // a table size update to 0 evicts both entries
        block.extend(request(true, b"localhost"));
        input.extend(raw_frame(HEADERS, END_HEADERS, 5, &block));
        for step in [1, 7, 4096] {
            let out = run(&input, step).unwrap();
            assert_eq!(&out[..24], PREFACE);
            let f = frames(&out[24..]);
            let mut dec = loona_hpack::Decoder::new();
            let kinds: Vec<(u8, u32)> = f.iter().map(|f| (f.0, f.2)).collect();
            assert_eq!(kinds, [(4, 0), (1, 1), (0, 1), (1, 3), (0, 3), (1, 5)]);
            for (kind, flags, stream, payload) in &f[1..] {
                if *kind == HEADERS {
                    assert_eq!(*flags, END_HEADERS);
                    let h = decode(&mut dec, payload);
                    let names: Vec<&str> = h.iter().map(|(n, _)| n.as_str()).collect();
                    let want_authority = *stream == 5;
                    assert_eq!(names.contains(&":authority"), want_authority, "{h:?}");
                    assert!(
                        h.contains(&(":path".into(), "/runtime.v1.RuntimeService/Version".into()))
                    );
                    assert!(h.contains(&("te".into(), "trailers".into())), "{h:?}");
                } else {
                    assert_eq!(payload, b"\0\0\0\0\0");
                    assert_eq!(*flags, END_STREAM);
                }
            }
            assert!(decode(&mut dec, &f[5].3).contains(&(":authority".into(), "localhost".into())));
        }
    }

    #[test]
    fn continuations_padding_and_priority_are_reassembled() {
        let block = request(true, b"%2Frun%2Fk.sock");
        let (a, b) = block.split_at(10);
        let mut headers = vec![3u8]; // pad length
        headers.extend([0x80, 0, 0, 1, 200]); // exclusive dependency on 1, weight
        headers.extend(a);
        headers.extend([0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(raw_frame(
            HEADERS,
            PADDED | PRIORITY | END_STREAM,
            3,
            &headers,
        ));
        input.extend(raw_frame(CONTINUATION, END_HEADERS, 3, b));
        let f = frames(&run(&input, 5).unwrap()[24..]);
        assert_eq!(f.len(), 1);
        let (kind, flags, stream, payload) = &f[0];
        assert_eq!(
            (*kind, *flags, *stream),
            (HEADERS, PRIORITY | END_STREAM | END_HEADERS, 3)
        );
        assert_eq!(&payload[..5], &[0x80, 0, 0, 1, 200]);
        let h = decode(&mut loona_hpack::Decoder::new(), &payload[5..]);
        assert_eq!(h.len(), 4);
        assert!(!h.iter().any(|(n, _)| n == ":authority"));
    }

    #[test]
    fn a_large_block_is_split_into_continuations() {
        let mut enc = loona_hpack::Encoder::new();
        let big = "x".repeat(40_000);
        let block = enc.encode([(&b":method"[..], &b"POST"[..]), (b"x-big", big.as_bytes())]);
        let mut input = PREFACE.to_vec();
        for (i, c) in block.chunks(16_000).enumerate() {
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            let last = (i + 1) * 16_000 >= block.len();
            input.extend(raw_frame(kind, if last { END_HEADERS } else { 0 }, 1, c));
        }
        let f = frames(&run(&input, 9000).unwrap()[24..]);
        assert!(f.len() >= 3);
        assert!(f.iter().all(|f| f.3.len() <= MAX_OUT_FRAME));
        let whole: Vec<u8> = f.iter().flat_map(|f| f.3.clone()).collect();
        let h = decode(&mut loona_hpack::Decoder::new(), &whole);
        assert_eq!(h[1].1, big);
        assert_eq!(f.last().map(|f| f.1), Some(END_HEADERS));
    }

    #[test]
    fn hostile_blocks_are_refused_with_a_reason() {
        let big = |len: usize| {
            let mut v = PREFACE.to_vec();
            v.extend(raw_frame(HEADERS, 0, 1, &[0; 16]));
            let mut f = raw_frame(CONTINUATION, 0, 1, &[]);
            f[..3].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
            v.extend(f);
            v
        };
        assert!(matches!(
            run(&big(MAX_HEADER_BLOCK), 64),
            Err(AuthorityError::BlockTooLarge { stream: 1, .. })
        ));
        // One table entry of ~4 KiB, then indexes to it: the decoded list is bounded.
        let mut block = vec![0x40];
        string(b"x-a", &mut block);
        string(&[b'a'; 4000], &mut block);
        block.extend(std::iter::repeat_n(0x80 | 62, 300));
        let mut input = PREFACE.to_vec();
        input.extend(raw_frame(HEADERS, END_HEADERS, 1, &block));
        assert!(matches!(
            run(&input, 4096),
            Err(AuthorityError::ListTooLarge { stream: 1, .. })
        ));
        // A frame between a HEADERS and its CONTINUATION.
        let mut input = PREFACE.to_vec();
        input.extend(raw_frame(HEADERS, 0, 1, &[0x82]));
        input.extend(raw_frame(0x0, 0, 1, b"x"));
        assert!(matches!(
            run(&input, 100),
            Err(AuthorityError::Interrupted { stream: 1, kind: 0 })
        ));
        // An index past both tables; padding longer than the frame.
        let mut input = PREFACE.to_vec();
        input.extend(raw_frame(HEADERS, END_HEADERS, 1, &[0x80 | 70]));
        assert!(matches!(
            run(&input, 100),
            Err(AuthorityError::Hpack { .. })
        ));
        let mut input = PREFACE.to_vec();
        input.extend(raw_frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 0x82]));
        assert!(matches!(
            run(&input, 100),
            Err(AuthorityError::ShortHeaders { stream: 1 })
        ));
    }

    #[test]
    fn integers_follow_rfc_7541() {
        // RFC 7541 C.1: 10 and 1337 with a 5-bit prefix, 42 with an 8-bit one.
        for (v, prefix, want) in [
            (10, 5, vec![0x0a]),
            (1337, 5, vec![0x1f, 0x9a, 0x0a]),
            (42, 8, vec![0x2a]),
        ] {
            let mut out = Vec::new();
            integer(v, prefix, 0, &mut out);
            assert_eq!(out, want);
        }
    }
}
