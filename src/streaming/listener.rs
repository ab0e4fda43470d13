//! The HTTP side of the streaming server: one path per URL handed out (`/<kind>/<token>`), the
//! WebSocket handshake (RFC 6455, subprotocol negotiated from the client's offer), and the
//! bounds: request heads must arrive within seconds (connections still sending theirs wait in
//! `heads`' pool, never in a session slot), one request per connection, sessions are capped in
//! number (a client past the cap gets 503 before anything starts), messages are capped in size. Port-forward
//! over WebSocket is either SPDY tunnelled in binary messages (`SPDY/3.1+portforward.k8s.io`)
//! or kubelet's channel protocols.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::Handle;
use super::channel::Protocol;
use super::heads::{MAX_PENDING_HEADS, Pending, PendingHeads};
use super::{Remote, Session};

/// Time a client gets to send its request head (and, over TLS, to finish its handshake first):
/// kubelet and the API server send theirs at once.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest WebSocket message accepted from a client (stdin chunks are far smaller).
pub const MAX_MESSAGE: usize = 256 * 1024;

pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = addr.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr:?}: {e}"))
    })?;
    TcpListener::bind(addr).await
}

/// Every answer but a 101 ends its connection: one request per connection, so one that was
/// answered cannot sit idle outside both the pending heads and the session slots.
fn reply(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn header_has(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

async fn handle(
    rt: Handle,
    sessions: Arc<Semaphore>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(session) = rt.urls.take(req.uri().path()) else {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "unknown, used or expired streaming URL",
        ));
    };
    if header_has(&req, header::UPGRADE, "SPDY/3.1") {
        return Ok(upgrade_spdy(rt, sessions, session, req));
    }
    if !header_has(&req, header::UPGRADE, "websocket") {
        return Ok(reply(
            StatusCode::BAD_REQUEST,
            "an upgrade to SPDY/3.1 or WebSocket is required",
        ));
    }
    Ok(upgrade_websocket(rt, sessions, session, req))
}

/// Every value of the request header `name`, as sent (each possibly comma-joined).
fn header_values(req: &Request<Incoming>, name: impl header::AsHeaderName) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect()
}

/// The 101 answer switching to `upgrade`, for the caller to add its protocol's headers.
fn switching_protocols(upgrade: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static(upgrade));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    r
}

/// The WebSocket upgrade (RFC 6455 version 13), the subprotocol chosen from the client's offer.
fn upgrade_websocket(
    rt: Handle,
    sessions: Arc<Semaphore>,
    session: Session,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec());
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let (Some(key), true) = (key, version_ok) else {
        return reply(
            StatusCode::BAD_REQUEST,
            "WebSocket upgrade without Sec-WebSocket-Key or version 13",
        );
    };
    let offered = header_values(&req, header::SEC_WEBSOCKET_PROTOCOL);
    let forward = match forward_protocol(&session, &offered, req.uri().query()) {
        Ok(forward) => forward,
        Err(e) => return reply(StatusCode::BAD_REQUEST, &e),
    };
    let (proto, chosen) = match &forward {
        Some(Forward::Tunnel) => (None, super::tunnel::PORTFORWARD),
        Some(Forward::Channels(name, _)) => (None, *name),
        None => match Protocol::negotiate(offered.iter().map(String::as_str)) {
            Some(p) => (Some(p), p.name()),
            None => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    "no supported subprotocol offered (v5.channel.k8s.io, v4.channel.k8s.io, v4.base64.channel.k8s.io, channel.k8s.io, base64.channel.k8s.io)",
                );
            }
        },
    };
    let Ok(permit) = sessions.try_acquire_owned() else {
        return busy();
    };
    let accept = derive_accept_key(&key);
    on_upgrade(req, permit, move |io| {
        serve_websocket(rt, session, proto, forward, io)
    });
    let mut r = switching_protocols("websocket");
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(chosen),
    );
    r
}

/// How a port-forward `session` speaks over WebSocket, from the client's `offered`
/// subprotocols: SPDY tunnelled in WebSocket (what client-go offers since Kubernetes 1.30,
/// ports in the SPDY streams' headers), else kubelet's WebSocket channel protocols with the
/// ports from the `query` (as kubectl sent them before). None for any other session; the
/// error is the body of a 400 answer.
fn forward_protocol(
    session: &Session,
    offered: &[String],
    query: Option<&str>,
) -> Result<Option<Forward>, String> {
    let mut offers = offered.iter().flat_map(|h| h.split(',')).map(str::trim);
    match session {
        Session::PortForward(_) if offers.clone().any(|p| p == super::tunnel::PORTFORWARD) => {
            Ok(Some(Forward::Tunnel))
        }
        Session::PortForward(r) => {
            let Some(name) =
                offers.find_map(|p| super::portforward::WS_PROTOCOLS.iter().find(|s| **s == p))
            else {
                return Err("no supported subprotocol offered (SPDY/3.1+portforward.k8s.io, portforward.k8s.io, base64.portforward.k8s.io)".into());
            };
            super::portforward::ws_ports(query, r).map(|ports| Some(Forward::Channels(name, ports)))
        }
        _ => Ok(None),
    }
}

/// A WebSocket session on the upgraded connection `io`: a remote command in `proto`, or a
/// port-forward as `forward` says.
async fn serve_websocket(
    rt: Handle,
    session: Session,
    proto: Option<Protocol>,
    forward: Option<Forward>,
    io: TokioIo<hyper::upgrade::Upgraded>,
) {
    let max = match forward {
        Some(Forward::Tunnel) => super::tunnel::MAX_TUNNEL_MESSAGE,
        _ => MAX_MESSAGE,
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    match (session, proto, forward) {
        (Session::Exec(r), Some(proto), _) => {
            super::ws::remote(rt, Remote::Exec(r), proto, ws).await
        }
        (Session::Attach(r), Some(proto), _) => {
            super::ws::remote(rt, Remote::Attach(r), proto, ws).await
        }
        (Session::PortForward(r), _, Some(Forward::Tunnel)) => {
            super::portforward::spdy(rt, r, super::tunnel::Tunnel::new(ws)).await
        }
        (Session::PortForward(r), _, Some(Forward::Channels(name, ports))) => {
            let base64 = name.starts_with("base64.");
            super::portforward::websocket(rt, r, ports, base64, ws).await
        }
        _ => {}
    }
}

/// How a WebSocket port-forward session speaks.
enum Forward {
    /// SPDY/3.1 port-forward inside the WebSocket's binary messages (`tunnel`).
    Tunnel,
    /// kubelet's channel protocols (`portforward::websocket`): the subprotocol and the ports.
    Channels(&'static str, Vec<u16>),
}

fn busy() -> Response<Full<Bytes>> {
    reply(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many streaming sessions at once; try again",
    )
}

/// After the 101 answer: run `session` on the upgraded connection in a task that holds the
/// session slot until it ends.
fn on_upgrade<F, Fut>(req: Request<Incoming>, permit: OwnedSemaphorePermit, session: F)
where
    F: FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(u) => session(TokioIo::new(u)).await,
            Err(e) => tracing::debug!(error = %e, "streaming: upgrade failed"),
        }
        drop(permit);
    });
}

/// The SPDY/3.1 upgrade: the remote-command version from `X-Stream-Protocol-Version`.
fn upgrade_spdy(
    rt: Handle,
    sessions: Arc<Semaphore>,
    session: Session,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let offered = header_values(&req, "x-stream-protocol-version");
    let version = match session {
        Session::PortForward(_) => offered
            .iter()
            .flat_map(|h| h.split(','))
            .any(|v| v.trim() == super::portforward::PROTOCOL)
            .then_some(super::portforward::PROTOCOL),
        _ => super::spdy::negotiate(offered.iter().map(String::as_str)),
    };
    let Some(version) = version else {
        return reply(
            StatusCode::FORBIDDEN,
            "no supported X-Stream-Protocol-Version offered (exec: v4.channel.k8s.io, v3.channel.k8s.io, v2.channel.k8s.io, channel.k8s.io; port-forward: portforward.k8s.io)",
        );
    };
    let Ok(permit) = sessions.try_acquire_owned() else {
        return busy();
    };
    on_upgrade(req, permit, move |io| async move {
        match session {
            Session::Exec(r) => super::spdy::remote(rt, Remote::Exec(r), version, io).await,
            Session::Attach(r) => super::spdy::remote(rt, Remote::Attach(r), version, io).await,
            Session::PortForward(r) => super::portforward::spdy(rt, r, io).await,
        }
    });
    let mut r = switching_protocols("SPDY/3.1");
    r.headers_mut().insert(
        "x-stream-protocol-version",
        HeaderValue::from_static(version),
    );
    r
}

/// The TLS side of the server from a PEM certificate chain and key (`streaming.tls_*`).
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("certificate and key: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn serve_connection<IO>(io: IO, rt: Handle, sessions: Arc<Semaphore>, head: Arc<Pending>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        // The head is in: the connection leaves the pending pool (an upgrade takes a session
        // slot instead).
        head.arrived();
        handle(rt.clone(), sessions.clone(), req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "streaming connection");
    }
}

/// Serve until kelsond stops (the task is dropped with the runtime); over TLS when `tls`.
pub async fn serve(
    rt: Handle,
    listener: TcpListener,
    max_sessions: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let sessions = Arc::new(Semaphore::new(max_sessions));
    // Connections still sending their head are pooled apart from the sessions, the oldest
    // dropped when the pool is full (`heads`): half-sent heads cannot keep valid URLs out.
    let heads = PendingHeads::new(MAX_PENDING_HEADS);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "streaming server: accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let head = Arc::new(heads.admit());
        let (rt, sessions, tls) = (rt.clone(), sessions.clone(), tls.clone());
        tokio::spawn(async move {
            let serving = async {
                match tls {
                    None => serve_connection(stream, rt, sessions, head.clone()).await,
                    // The handshake gets the same time as a request head.
                    Some(acceptor) => {
                        match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => serve_connection(s, rt, sessions, head.clone()).await,
                            Ok(Err(e)) => tracing::debug!(error = %e, "streaming: TLS handshake"),
                            Err(_) => tracing::debug!("streaming: TLS handshake timed out"),
                        }
                    }
                }
            };
            tokio::select! {
                _ = serving => {}
                _ = head.evicted() => {
                    tracing::debug!("streaming: a pending request head dropped for a newer connection");
                }
            }
        });
    }
}
