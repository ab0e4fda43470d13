//! The Kubernetes "channel" framing of remote commands over WebSocket, as the API server,
//! kubectl and client-go speak it (k8s.io/apimachinery wsstream, remotecommand v4/v5):
//! every message carries one stream, named by its first byte — 0 stdin, 1 stdout, 2 stderr,
//! 3 error (a `metav1.Status` JSON at the end), 4 resize (`{"Width":…,"Height":…}`). The
//! base64 variants send text messages whose first character is the channel digit and whose
//! rest is base64. v5 adds a close signal: channel 255 with the number of the stream the
//! client will send no more on (stdin's EOF).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: "no more data on the stream named next".
pub const CLOSE: u8 = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V5,
    V4,
    V4Base64,
    /// The original protocols (v1–v3 semantics: exit status on the error channel as text).
    Channel,
    Base64,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V5 => "v5.channel.k8s.io",
            Protocol::V4 => "v4.channel.k8s.io",
            Protocol::V4Base64 => "v4.base64.channel.k8s.io",
            Protocol::Channel => "channel.k8s.io",
            Protocol::Base64 => "base64.channel.k8s.io",
        }
    }

    fn from_name(s: &str) -> Option<Protocol> {
        [
            Protocol::V5,
            Protocol::V4,
            Protocol::V4Base64,
            Protocol::Channel,
            Protocol::Base64,
        ]
        .into_iter()
        .find(|p| p.name() == s)
    }

    pub fn base64(self) -> bool {
        matches!(self, Protocol::V4Base64 | Protocol::Base64)
    }

    /// The error channel carries a Status object (v4 and later), not plain text.
    pub fn status_json(self) -> bool {
        matches!(self, Protocol::V5 | Protocol::V4 | Protocol::V4Base64)
    }

    /// The best protocol among those a client offers (`Sec-WebSocket-Protocol`, comma
    /// separated, possibly over several headers).
    pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<Protocol> {
        offered
            .into_iter()
            .flat_map(|h| h.split(','))
            .filter_map(|p| Protocol::from_name(p.trim()))
            .min_by_key(|p| *p as u8)
    }
}

/// One WebSocket message's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Binary(Vec<u8>),
    Text(String),
}

pub fn encode(p: Protocol, channel: u8, data: &[u8]) -> Frame {
    if p.base64() {
        let mut s = String::with_capacity(1 + data.len().div_ceil(3) * 4);
        s.push((b'0' + channel) as char);
        B64.encode_string(data, &mut s);
        Frame::Text(s)
    } else {
        let mut v = Vec::with_capacity(1 + data.len());
        v.push(channel);
        v.extend_from_slice(data);
        Frame::Binary(v)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Empty,
    BadChannel(u8),
    BadBase64,
    WrongKind,
}

/// A client's message: (channel, data). Empty messages are an error the caller may ignore.
pub fn decode(p: Protocol, frame: Frame) -> Result<(u8, Vec<u8>), DecodeError> {
    match (p.base64(), frame) {
        (false, Frame::Binary(mut v)) => {
            if v.is_empty() {
                return Err(DecodeError::Empty);
            }
            let ch = v.remove(0);
            Ok((ch, v))
        }
        (true, Frame::Text(s)) => {
            let mut chars = s.chars();
            let c = chars.next().ok_or(DecodeError::Empty)?;
            let ch = c
                .to_digit(10)
                .ok_or(DecodeError::BadChannel(c as u32 as u8))? as u8;
            let data = B64
                .decode(chars.as_str())
                .map_err(|_| DecodeError::BadBase64)?;
            Ok((ch, data))
        }
        _ => Err(DecodeError::WrongKind),
    }
}

/// A terminal size from the resize channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Size {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

pub fn parse_resize(data: &[u8]) -> Option<Size> {
    serde_json::from_slice(data).ok()
}

/// What goes on the error channel when the command ended: the `metav1.Status` kubectl reads
/// (success, or `NonZeroExitCode` with an `ExitCode` cause it turns into its own exit code).
pub fn exit_status(p: Protocol, code: i32, cmd: &[String]) -> Vec<u8> {
    if code == 0 {
        return if p.status_json() {
            br#"{"metadata":{},"status":"Success"}"#.to_vec()
        } else {
            Vec::new()
        };
    }
    let message = format!(
        "command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"
    );
    if !p.status_json() {
        return message.into_bytes();
    }
    failure_status(
        &message,
        "NonZeroExitCode",
        Some(serde_json::json!({"causes": [{"reason": "ExitCode", "message": code.to_string()}]})),
    )
}

/// A `Failure` Status (e.g. the command could not be started).
pub fn failure_status(message: &str, reason: &str, details: Option<serde_json::Value>) -> Vec<u8> {
    let mut v = serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    });
    if let Some(d) = details {
        v["details"] = d;
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_prefers_the_newest_protocol_offered() {
        assert_eq!(
            Protocol::negotiate(["v4.channel.k8s.io, v5.channel.k8s.io"]),
            Some(Protocol::V5)
        );
        assert_eq!(
            Protocol::negotiate(["base64.channel.k8s.io", "v4.base64.channel.k8s.io"]),
            Some(Protocol::V4Base64)
        );
        assert_eq!(
            Protocol::negotiate(["channel.k8s.io"]),
            Some(Protocol::Channel)
        );
        assert_eq!(Protocol::negotiate(["chat", ""]), None);
        assert_eq!(Protocol::negotiate([]), None);
    }

    #[test]
    fn frames_round_trip_in_both_encodings() {
        for p in [Protocol::V5, Protocol::V4Base64] {
            let f = encode(p, STDOUT, b"hello\x00\xff");
            match (&f, p.base64()) {
                (Frame::Text(s), true) => assert!(s.starts_with('1'), "{s}"),
                (Frame::Binary(v), false) => assert_eq!(v[0], 1),
                _ => panic!("{f:?}"),
            }
            assert_eq!(decode(p, f), Ok((STDOUT, b"hello\x00\xff".to_vec())));
        }
        assert_eq!(
            encode(Protocol::V4, STDERR, b""),
            Frame::Binary(vec![STDERR])
        );
    }

    #[test]
    fn garbage_frames_are_refused_not_trusted() {
        assert_eq!(
            decode(Protocol::V5, Frame::Binary(vec![])),
            Err(DecodeError::Empty)
        );
        assert_eq!(
            decode(Protocol::V5, Frame::Text("0aGk=".into())),
            Err(DecodeError::WrongKind)
        );
        assert_eq!(
            decode(Protocol::Base64, Frame::Text("0!!!".into())),
            Err(DecodeError::BadBase64)
        );
        assert!(matches!(
            decode(Protocol::Base64, Frame::Text("x".into())),
            Err(DecodeError::BadChannel(_))
        ));
        assert_eq!(
            decode(Protocol::Base64, Frame::Text("0aGk=".into())),
            Ok((STDIN, b"hi".to_vec()))
        );
    }

    #[test]
    fn exit_status_is_the_status_kubectl_reads() {
        let ok = exit_status(Protocol::V4, 0, &[]);
        assert_eq!(ok, br#"{"metadata":{},"status":"Success"}"#);
        let cmd = vec!["sh".to_owned(), "-c".to_owned(), "exit 3".to_owned()];
        let v: serde_json::Value =
            serde_json::from_slice(&exit_status(Protocol::V5, 3, &cmd)).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        assert!(v["message"].as_str().unwrap().contains("exit code 3"));
        // The old protocols: nothing on success, plain text otherwise.
        assert!(exit_status(Protocol::Channel, 0, &cmd).is_empty());
        assert!(
            String::from_utf8(exit_status(Protocol::Channel, 3, &cmd))
                .unwrap()
                .contains("exit code 3")
        );
    }

    #[test]
    fn resize_messages_parse() {
        assert_eq!(
            parse_resize(br#"{"Width":120,"Height":40}"#),
            Some(Size {
                width: 120,
                height: 40
            })
        );
        assert_eq!(parse_resize(b"garbage"), None);
    }
}
