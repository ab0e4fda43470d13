//! kelson-proto: the daemon ⇄ shim control protocol: prost messages (declared here with prost's
//! derive, so no code generation step), length-delimited over the shim's unix stream socket, with
//! a hard cap on frame size so neither side can be made to allocate without bound. One request,
//! one response per connection.

pub mod shim;
#[cfg(feature = "spdy")]
pub mod spdy;

use bytes::{Buf, BufMut, BytesMut};

/// Largest frame either side accepts.
pub const MAX_FRAME_LEN: usize = 4 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    #[error("frame does not encode: {0}")]
    Encode(#[from] prost::EncodeError),
    #[error("frame does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Append `msg` to `out` as a 4-byte big-endian length followed by its encoding.
pub fn encode<M: prost::Message>(msg: &M, out: &mut BytesMut) -> Result<(), FrameError> {
    let len = msg.encoded_len();
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    out.reserve(4 + len);
    out.put_u32(len as u32);
    Ok(msg.encode(out)?)
}

/// Take one whole frame off the front of `buf`, if one is there.
pub fn decode<M: prost::Message + Default>(buf: &mut BytesMut) -> Result<Option<M>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    buf.advance(4);
    let frame = buf.split_to(len);
    Ok(Some(M::decode(frame)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Ping {
        #[prost(string, tag = "1")]
        id: String,
        #[prost(uint32, tag = "2")]
        n: u32,
    }

    #[test]
    fn round_trip_in_pieces() {
        let mut wire = BytesMut::new();
        encode(
            &Ping {
                id: "a".into(),
                n: 7,
            },
            &mut wire,
        )
        .unwrap();
        encode(
            &Ping {
                id: "b".into(),
                n: 8,
            },
            &mut wire,
        )
        .unwrap();
        let bytes = wire.freeze();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in bytes.iter() {
            buf.put_u8(*b);
            while let Some(p) = decode::<Ping>(&mut buf).unwrap() {
                got.push(p);
            }
        }
        assert_eq!(
            got,
            vec![
                Ping {
                    id: "a".into(),
                    n: 7
                },
                Ping {
                    id: "b".into(),
                    n: 8
                }
            ]
        );
    }

    #[test]
    fn a_whole_exec_chunk_fits_in_a_frame() {
        let piece = shim::ExecOutput {
            kind: Some(shim::exec_output::Kind::Stderr(vec![
                0;
                shim::MAX_EXEC_CHUNK
            ])),
        };
        encode(&piece, &mut BytesMut::new()).unwrap();
    }

    #[test]
    fn refuses_oversized_and_garbage() {
        let mut buf = BytesMut::new();
        buf.put_u32((MAX_FRAME_LEN + 1) as u32);
        assert_eq!(
            decode::<Ping>(&mut buf),
            Err(FrameError::TooLarge(MAX_FRAME_LEN + 1))
        );
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(
            decode::<Ping>(&mut buf),
            Err(FrameError::Decode(_))
        ));
    }
}
