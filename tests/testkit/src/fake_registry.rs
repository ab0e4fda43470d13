//! A minimal in-process registry (read-only distribution API over HTTP/1.1) whose blob delivery
//! can be slowed or stalled, which can misbehave on purpose (endless bodies, tampered blobs), and
//! which counts blob downloads and hostile bytes sent: for the timing, sharing and hostile-registry
//! tests a real registry cannot be made to do on cue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::images::{Image, sha256};

#[derive(Debug, Clone, Copy)]
pub enum Delivery {
    /// All at once.
    Fast,
    /// `chunk` bytes every `every`.
    Drip { chunk: usize, every: Duration },
    /// Send the first `after` bytes of each layer, then nothing, forever.
    Stall { after: usize },
}

/// Ways to misbehave. The endless bodies are sent chunked, 64 KiB at a time, until the client
/// goes away or [`ENDLESS_LIMIT`] bytes were sent; each byte counts in `FakeRegistry::sent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// Behave.
    No,
    /// Every manifest is an endless 200 body.
    EndlessManifest,
    /// Every API call gets a Bearer challenge whose token endpoint answers an endless 200 body.
    EndlessToken,
    /// Every manifest request gets a 400 with an endless error body.
    EndlessError,
    /// Layer blobs are served with their first byte changed (same length).
    TamperedLayers,
}

/// Where an endless body stops if the client never does.
pub const ENDLESS_LIMIT: u64 = 1 << 30;

/// Token-protected mode: every API call needs `Authorization: Bearer <access>`, obtained from
/// `/token` by the refresh-token grant (`POST`), or anonymously (`GET`) when `anonymous` is set.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    pub refresh: String,
    pub access: String,
    pub anonymous: bool,
}

#[derive(Default)]
struct State {
    token_auth: Option<TokenAuth>,
    manifests: HashMap<String, (String, Vec<u8>)>,
    blobs: HashMap<String, Vec<u8>>,
    layer_digests: Vec<String>,
    /// Blob requests answered with a redirect to the same path on this host.
    redirect_blobs: Option<String>,
    /// Each request's path and `Authorization` header, in arrival order.
    seen: Vec<(String, Option<String>)>,
}

pub struct FakeRegistry {
    pub host: String,
    state: Arc<Mutex<State>>,
    delivery: Arc<Mutex<Delivery>>,
    hostile: Arc<Mutex<Hostile>>,
    pub blob_gets: Arc<AtomicUsize>,
    /// Bytes of endless bodies written to clients so far.
    pub sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeRegistry {
    pub async fn start() -> anyhow::Result<FakeRegistry> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let host = l.local_addr()?.to_string();
        let state: Arc<Mutex<State>> = Arc::default();
        let delivery = Arc::new(Mutex::new(Delivery::Fast));
        let blob_gets = Arc::new(AtomicUsize::new(0));
        let hostile = Arc::new(Mutex::new(Hostile::No));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, d, g) = (state.clone(), delivery.clone(), blob_gets.clone());
        let (h, n) = (hostile.clone(), sent.clone());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = l.accept().await {
                let (s, d, g) = (s.clone(), d.clone(), g.clone());
                let (h, n) = (h.clone(), n.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, s, d, g, h, n).await;
                });
            }
        });
        Ok(FakeRegistry {
            host,
            state,
            delivery,
            hostile,
            blob_gets,
            sent,
            task,
        })
    }

    /// Answer blob requests with `307` to the same path on `host` (a CDN, say).
    pub fn redirect_blobs(&self, host: &str) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .redirect_blobs = Some(host.to_owned());
    }

    /// Each request's path and `Authorization` header so far.
    pub fn authorizations(&self) -> Vec<(String, Option<String>)> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .clone()
    }

    pub fn set_hostile(&self, h: Hostile) {
        *self.hostile.lock().unwrap_or_else(|p| p.into_inner()) = h;
    }

    pub fn set_delivery(&self, d: Delivery) {
        *self.delivery.lock().unwrap_or_else(|p| p.into_inner()) = d;
    }

    pub fn require_tokens(&self, t: TokenAuth) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .token_auth = Some(t);
    }

    pub fn add(&self, repo: &str, tag: &str, img: &Image) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for l in &img.layers {
            s.blobs.insert(l.digest(), l.blob.clone());
            s.layer_digests.push(l.digest());
        }
        s.blobs.insert(sha256(&img.config), img.config.clone());
        let m = (img.manifest_media_type.clone(), img.manifest.clone());
        s.manifests.insert(format!("{repo}:{tag}"), m.clone());
        s.manifests
            .insert(format!("{repo}:{}", img.manifest_digest()), m);
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut conn: tokio::net::TcpStream,
    state: Arc<Mutex<State>>,
    delivery: Arc<Mutex<Delivery>>,
    gets: Arc<AtomicUsize>,
    hostile: Arc<Mutex<Hostile>>,
    sent: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut tmp).await?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut parts = head.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let head_only = method == "HEAD";
    let header = |name: &str| {
        head.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_owned())
        })
    };
    let reply = |status: &str, ctype: &str, len: usize, extra: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\nConnection: close\r\n{extra}\r\n"
        )
    };
    state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .seen
        .push((path.clone(), header("authorization")));
    let hostile = *hostile.lock().unwrap_or_else(|p| p.into_inner());
    let path_only = path.split('?').next().unwrap_or("");
    let is_manifest = path_only.contains("/manifests/");
    match hostile {
        Hostile::EndlessManifest if is_manifest => {
            return endless(
                &mut conn,
                "200 OK",
                "application/vnd.oci.image.manifest.v1+json",
                &sent,
            )
            .await;
        }
        Hostile::EndlessError if is_manifest => {
            return endless(&mut conn, "400 Bad Request", "application/json", &sent).await;
        }
        Hostile::EndlessToken if path_only == "/token" => {
            return endless(&mut conn, "200 OK", "application/json", &sent).await;
        }
        Hostile::EndlessToken => {
            let host = header("host").unwrap_or_default();
            let challenge = format!(
                "WWW-Authenticate: Bearer realm=\"http://{host}/token\",service=\"fake\"\r\n"
            );
            conn.write_all(reply("401 Unauthorized", "application/json", 2, &challenge).as_bytes())
                .await?;
            return conn.write_all(b"{}").await;
        }
        _ => {}
    }
    let token_auth = state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .token_auth
        .clone();
    if let Some(t) = token_auth {
        if path_only == "/token" {
            let ok = if method == "POST" {
                let len: usize = header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
                    .min(64 * 1024);
                let mut body = buf[head_end..].to_vec();
                while body.len() < len {
                    let n = conn.read(&mut tmp).await?;
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&tmp[..n]);
                }
                let body = String::from_utf8_lossy(&body).into_owned();
                let refresh = format!("refresh_token={}", t.refresh);
                body.split('&').any(|kv| kv == "grant_type=refresh_token")
                    && body.split('&').any(|kv| kv == refresh)
            } else {
                t.anonymous
            };
            let (status, body) = if ok {
                (
                    "200 OK",
                    format!("{{\"access_token\":\"{0}\",\"token\":\"{0}\"}}", t.access),
                )
            } else {
                ("401 Unauthorized", "{}".to_owned())
            };
            conn.write_all(reply(status, "application/json", body.len(), "").as_bytes())
                .await?;
            return conn.write_all(body.as_bytes()).await;
        }
        if header("authorization").as_deref() != Some(format!("Bearer {}", t.access).as_str()) {
            let host = header("host").unwrap_or_default();
            let challenge = format!(
                "WWW-Authenticate: Bearer realm=\"http://{host}/token\",service=\"fake\"\r\n"
            );
            let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}"#;
            conn.write_all(
                reply(
                    "401 Unauthorized",
                    "application/json",
                    body.len(),
                    &challenge,
                )
                .as_bytes(),
            )
            .await?;
            return conn.write_all(body).await;
        }
    }
    let path = path.as_str();
    if path == "/v2/" {
        conn.write_all(reply("200 OK", "application/json", 2, "").as_bytes())
            .await?;
        if !head_only {
            conn.write_all(b"{}").await?;
        }
        return Ok(());
    }
    let rest = path.strip_prefix("/v2/").unwrap_or("");
    let (found, body, ctype, is_layer) = if let Some((repo, r)) = rest.split_once("/manifests/") {
        let s = state.lock().unwrap_or_else(|p| p.into_inner());
        match s.manifests.get(&format!("{repo}:{r}")) {
            Some((mt, b)) => (true, b.clone(), mt.clone(), false),
            None => (false, vec![], String::new(), false),
        }
    } else if let Some((_, d)) = rest.split_once("/blobs/") {
        let redirect = state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .redirect_blobs
            .clone();
        if let Some(to) = redirect {
            let location = format!("Location: http://{to}{path}\r\n");
            let head = reply("307 Temporary Redirect", "text/plain", 0, &location);
            return conn.write_all(head.as_bytes()).await;
        }
        let s = state.lock().unwrap_or_else(|p| p.into_inner());
        match s.blobs.get(d) {
            Some(b) => (
                true,
                b.clone(),
                "application/octet-stream".to_owned(),
                s.layer_digests.iter().any(|l| l == d),
            ),
            None => (false, vec![], String::new(), false),
        }
    } else {
        (false, vec![], String::new(), false)
    };
    if !found {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#;
        conn.write_all(reply("404 Not Found", "application/json", body.len(), "").as_bytes())
            .await?;
        conn.write_all(body).await?;
        return Ok(());
    }
    let digest = sha256(&body);
    conn.write_all(
        reply(
            "200 OK",
            &ctype,
            body.len(),
            &format!("Docker-Content-Digest: {digest}\r\n"),
        )
        .as_bytes(),
    )
    .await?;
    if head_only {
        return Ok(());
    }
    if !is_layer {
        return conn.write_all(&body).await;
    }
    gets.fetch_add(1, Ordering::SeqCst);
    let mut body = body;
    if let (Hostile::TamperedLayers, Some(b)) = (hostile, body.first_mut()) {
        *b ^= 0xff;
    }
    let d = *delivery.lock().unwrap_or_else(|p| p.into_inner());
    match d {
        Delivery::Fast => conn.write_all(&body).await,
        Delivery::Drip { chunk, every } => {
            for c in body.chunks(chunk.max(1)) {
                conn.write_all(c).await?;
                conn.flush().await?;
                tokio::time::sleep(every).await;
            }
            Ok(())
        }
        Delivery::Stall { after } => {
            conn.write_all(&body[..after.min(body.len())]).await?;
            conn.flush().await?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
    }
}

/// An endless chunked body (`{` bytes) after a `status` head, until the client stops reading or
/// [`ENDLESS_LIMIT`] bytes went out.
async fn endless(
    conn: &mut tokio::net::TcpStream,
    status: &str,
    ctype: &str,
    sent: &AtomicU64,
) -> std::io::Result<()> {
    conn.write_all(
        format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let chunk = vec![b'{'; 64 * 1024];
    let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
    frame.extend_from_slice(&chunk);
    frame.extend_from_slice(b"\r\n");
    let mut n = 0u64;
    while n < ENDLESS_LIMIT {
        conn.write_all(&frame).await?;
        n += chunk.len() as u64;
        sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
    }
    Ok(())
}
