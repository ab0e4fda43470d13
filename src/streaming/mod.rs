//! The streaming server: `Exec`, `Attach` and `PortForward` answer with a URL here, carrying a
//! single-use token; kubelet's caller (the API server, or crictl) connects to it and upgrades
//! the connection to a stream protocol: exec over SPDY/3.1 and WebSocket (the remote-command
//! channel protocols, with or without a terminal), attach over the same protocols, and
//! port-forward over SPDY/3.1, over SPDY/3.1 tunnelled in WebSocket (KEP-4006, client-go since
//! Kubernetes 1.30) and over kubelet's WebSocket channel protocol.
//!
//! - `tokens`: the single-use, expiring tokens;
//! - `channel`: the channel framing and the Status messages kubectl reads;
//! - `listener`: the HTTP server (TCP, TLS), the WebSocket handshake and the bounds on sessions;
//! - `exec`: one exec session — the command in the container, its stdio pumped both ways;
//! - `attach`: one attach session — joined to a running container's stdio through its shim;
//! - `ws`, `spdy`: the two transports of a remote-command session;
//! - `portforward`: port-forward sessions over SPDY and WebSocket;
//! - `tunnel`: a WebSocket's binary messages as a byte stream, for SPDY inside WebSocket.

pub mod attach;
pub mod channel;
pub mod exec;
pub mod heads;
pub mod listener;
pub mod portforward;
pub mod spdy;
pub mod tokens;
pub mod tunnel;
pub mod ws;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;

use crate::container::ContainerService;
use crate::pod::PodService;

/// What the streaming server is handed at start-up, and all it reaches: the URLs handed out,
/// the containers (exec and attach run through them) and the pods (a port-forward dials inside
/// the pod's network namespace).
pub struct Backend {
    pub urls: Arc<Streaming>,
    pub containers: Arc<ContainerService>,
    pub pods: Arc<PodService>,
}

pub type Handle = Arc<Backend>;

/// What a URL was handed out for.
#[derive(Debug, Clone)]
pub enum Session {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
    PortForward(cri::PortForwardRequest),
}

impl Session {
    fn path(&self) -> &'static str {
        match self {
            Session::Exec(_) => "exec",
            Session::Attach(_) => "attach",
            Session::PortForward(_) => "portforward",
        }
    }
}

/// A remote-command session: exec and attach share the wire protocols.
#[derive(Debug)]
pub enum Remote {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
}

/// The streams a remote-command session uses.
#[derive(Debug, Clone, Copy)]
pub struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Remote {
    pub fn streams(&self) -> Streams {
        match self {
            Remote::Exec(r) => Streams {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
            },
            Remote::Attach(r) => Streams {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
            },
        }
    }

    /// Run the session with the client behind `input`/`output` (see `exec::run`).
    pub async fn run(
        self,
        rt: Handle,
        proto: channel::Protocol,
        input: tokio::sync::mpsc::Receiver<exec::Input>,
        output: tokio::sync::mpsc::Sender<exec::Output>,
    ) {
        match self {
            Remote::Exec(r) => exec::run(rt, r, proto, input, output).await,
            Remote::Attach(r) => attach::run(rt, r, proto, input, output).await,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("too many streaming URLs handed out and not used yet; try again")]
    Busy,
    #[error("streaming token: {0}")]
    Random(getrandom::Error),
}

pub struct Streaming {
    /// `http://host:port`, the address the server listens on.
    base: String,
    tokens: Mutex<tokens::Tokens<Session>>,
}

impl Streaming {
    pub fn new(base: String, token_ttl: Duration) -> Streaming {
        Streaming {
            base,
            tokens: Mutex::new(tokens::Tokens::new(token_ttl)),
        }
    }

    /// A URL for `session`, valid once, until the token's time to live runs out.
    pub fn url(&self, session: Session) -> Result<String, StreamingError> {
        let path = session.path();
        let token = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .issue(session, Instant::now())
            .map_err(|e| match e {
                tokens::TokenError::Full => StreamingError::Busy,
                tokens::TokenError::Random(m) => StreamingError::Random(m),
            })?;
        Ok(format!("{}/{path}/{token}", self.base))
    }

    /// The session behind a request path `/<kind>/<token>`, once.
    pub fn take(&self, path: &str) -> Option<Session> {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (kind, token) = (parts.next()?, parts.next()?);
        let s = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(token, Instant::now())?;
        (s.path() == kind).then_some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_kind_and_open_once() {
        let s = Streaming::new("http://127.0.0.1:1234".into(), Duration::from_secs(60));
        let url = s
            .url(Session::Exec(cri::ExecRequest {
                container_id: "c".into(),
                ..Default::default()
            }))
            .unwrap();
        let path = url.strip_prefix("http://127.0.0.1:1234").unwrap();
        assert!(path.starts_with("/exec/"), "{path}");
        // The token is bound to its kind: an exec token does not open a port-forward.
        let other = path.replace("/exec/", "/portforward/");
        assert!(s.take(&other).is_none());
        let url = s.url(Session::Exec(cri::ExecRequest::default())).unwrap();
        let path = url.strip_prefix("http://127.0.0.1:1234").unwrap();
        assert!(matches!(s.take(path), Some(Session::Exec(_))));
        assert!(s.take(path).is_none(), "single use");
        assert!(s.take("/exec").is_none());
        assert!(s.take("").is_none());
    }
}
