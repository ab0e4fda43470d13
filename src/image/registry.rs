//! The distribution API, by kelson's own small client: manifests and blobs from the endpoints
//! hosts.toml gives (mirrors first, then the upstream server), credentials for the upstream only,
//! the token handshake on a 401, every body read with a hard cap while it streams (`http.rs`), a
//! blob verified (size, digest) before the caller may use it — and the next endpoint tried when
//! one fails, tampered content included, as containerd tries its next host.

use std::future::Future;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Client, Method, Response, StatusCode, Url};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::digest::Digest;
use super::hosts::{Endpoint, Scheme};
use super::http::{self, Bounds, Request};
use super::manifest::{ACCEPTED_MANIFEST_TYPES, Descriptor, MAX_MANIFEST_BYTES};
use super::pull::Auth;
use super::reference::ImageRef;
use super::token::{self, Grant};

/// Largest error body read from a registry (its JSON envelope names the error; the rest is
/// noise or hostile).
pub const MAX_ERROR_BODY_BYTES: usize = 64 << 10;
/// Characters of a registry's own error message kept in kelson's error.
const MAX_ERROR_DETAIL_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{what} not found in registry ({url})")]
    NotFound { what: String, url: String },
    #[error("registry {host} refused the credentials or requires them")]
    Unauthorized { host: String },
    #[error("registry {host} unreachable: {message}")]
    Unavailable { host: String, message: String },
    #[error("registry {host}: {message}")]
    Protocol { host: String, message: String },
    #[error("registry {host}: TLS configuration: {message}")]
    Tls { host: String, message: String },
    #[error("{what} from {host}: no data received for {timeout:?}")]
    Stalled {
        what: String,
        host: String,
        timeout: Duration,
    },
    #[error(
        "{what} from {host}: the pull did not finish within image.pull_deadline ({deadline:?})"
    )]
    PullDeadline {
        what: String,
        host: String,
        deadline: Duration,
    },
    #[error("{what}: content hashes to {actual}, expected {expected}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what}: larger than {max} bytes")]
    TooLarge { what: String, max: u64 },
    #[error("no configured registry endpoint for {0} may {1}")]
    NoEndpoint(String, &'static str),
}

impl RegistryError {
    /// Errors after which the next mirror (or the upstream) is worth trying: any failure of an
    /// endpoint, but not the end of the pull's time.
    fn try_next(&self) -> bool {
        !matches!(self, RegistryError::PullDeadline { .. })
    }

    /// Content refused as wrong or oversized: the reason reported even when a later endpoint
    /// then fails for a less telling one (unreachable, not found).
    fn is_integrity(&self) -> bool {
        matches!(
            self,
            RegistryError::DigestMismatch { .. } | RegistryError::TooLarge { .. }
        )
    }
}

/// The error to report after `next` followed `last`.
fn worse(last: RegistryError, next: RegistryError) -> RegistryError {
    if last.is_integrity() && !next.is_integrity() {
        last
    } else {
        next
    }
}

/// Where verified blob bytes go. Cleared when a source's bytes turn out wrong, before the next
/// source is tried.
pub trait BlobSink: Send {
    fn put(&mut self, chunk: Bytes) -> impl Future<Output = io::Result<()>> + Send;
    fn clear(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

impl BlobSink for Vec<u8> {
    async fn put(&mut self, chunk: Bytes) -> io::Result<()> {
        self.extend_from_slice(&chunk);
        Ok(())
    }
    async fn clear(&mut self) -> io::Result<()> {
        self.clear();
        Ok(())
    }
}

/// How a blob download failed: no endpoint served the right bytes, or the sink (local disk)
/// failed.
#[derive(Debug)]
pub enum BlobError {
    Registry(RegistryError),
    Sink(io::Error),
}

impl From<RegistryError> for BlobError {
    fn from(e: RegistryError) -> BlobError {
        BlobError::Registry(e)
    }
}

/// What an endpoint may be shown.
enum Creds {
    Anonymous,
    Basic(HeaderValue),
    Bearer(HeaderValue),
    RefreshToken(String),
}

struct Remote {
    endpoint: Endpoint,
    client: Client,
    creds: Creds,
    /// The `Authorization` that last worked here: a realm's Bearer token, or the Basic
    /// credentials a Basic challenge asked for.
    authorization: Mutex<Option<HeaderValue>>,
}

/// A registry's JSON error envelope.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    errors: Vec<EnvelopeError>,
}

#[derive(Deserialize)]
struct EnvelopeError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

pub struct Registry {
    remotes: Vec<Remote>,
    bounds: Bounds,
}

impl Registry {
    pub fn new(
        endpoints: Vec<Endpoint>,
        auth: &Auth,
        bounds: Bounds,
    ) -> Result<Registry, RegistryError> {
        let remotes = endpoints
            .into_iter()
            .map(|endpoint| {
                // Mirrors never see the caller's credentials: they were issued for the upstream.
                let creds = match (auth, endpoint.upstream) {
                    (_, false) | (Auth::Anonymous, true) => Creds::Anonymous,
                    (Auth::Basic(h), true) => Creds::Basic(h.clone()),
                    (Auth::Bearer(h), true) => Creds::Bearer(h.clone()),
                    (Auth::RefreshToken(t), true) => Creds::RefreshToken(t.clone()),
                };
                let authorization = match &creds {
                    Creds::Bearer(h) => Some(h.clone()),
                    _ => None,
                };
                Ok(Remote {
                    client: http::client(&endpoint, &bounds)?,
                    endpoint,
                    creds,
                    authorization: Mutex::new(authorization),
                })
            })
            .collect::<Result<_, RegistryError>>()?;
        Ok(Registry { remotes, bounds })
    }

    fn url(
        remote: &Remote,
        repository: &str,
        kind: &str,
        reference: &str,
    ) -> Result<Url, RegistryError> {
        let scheme = match remote.endpoint.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        let u = format!(
            "{scheme}://{}/v2/{repository}/{kind}/{reference}",
            remote.endpoint.host
        );
        Url::parse(&u).map_err(|e| RegistryError::Protocol {
            host: remote.endpoint.host.clone(),
            message: format!("{u}: {e}"),
        })
    }

    fn current_authorization(remote: &Remote) -> Option<HeaderValue> {
        remote
            .authorization
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn remember_authorization(remote: &Remote, h: HeaderValue) {
        *remote
            .authorization
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(h);
    }

    /// GET `url` from `remote`, answering a 2xx response. A 401 gets one more try after the
    /// challenge it carries is met (a token from the realm, or Basic credentials); any other
    /// status becomes the error its code and (capped) error body say.
    async fn get(
        &self,
        remote: &Remote,
        url: Url,
        accept: Option<&str>,
        repository: &str,
        what: &str,
    ) -> Result<Response, RegistryError> {
        let host = remote.endpoint.host.as_str();
        let mut answered_challenge = false;
        loop {
            let req = Request {
                method: Method::GET,
                url: url.clone(),
                accept,
                authorization: Self::current_authorization(remote),
                form: None,
            };
            let res = http::send(&remote.client, &self.bounds, req, what, host).await?;
            let status = res.status();
            if status.is_success() {
                return Ok(res);
            }
            if status != StatusCode::UNAUTHORIZED || answered_challenge {
                return Err(self.status_error(res, what, host).await);
            }
            answered_challenge = true;
            let challenges: Vec<String> = res
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|h| h.to_str().ok().map(str::to_owned))
                .collect();
            drop(res);
            if let Some(c) = challenges
                .iter()
                .find_map(|h| token::parse_bearer_challenge(h))
            {
                let grant = match &remote.creds {
                    Creds::Anonymous => Grant::Anonymous,
                    Creds::Basic(h) => Grant::Basic(h),
                    Creds::RefreshToken(t) => Grant::RefreshToken(t),
                    // A registry token that is refused is not exchanged for another.
                    Creds::Bearer(_) => {
                        return Err(RegistryError::Unauthorized { host: host.into() });
                    }
                };
                let t = token::fetch(
                    &remote.client,
                    &self.bounds,
                    &remote.endpoint,
                    &c,
                    repository,
                    grant,
                )
                .await?;
                let mut h = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    RegistryError::Protocol {
                        host: host.into(),
                        message: "token response: the token is not a valid header value".into(),
                    }
                })?;
                h.set_sensitive(true);
                Self::remember_authorization(remote, h);
                continue;
            }
            let basic = challenges
                .iter()
                .any(|h| h.trim_start().to_ascii_lowercase().starts_with("basic"));
            match &remote.creds {
                Creds::Basic(h) if basic => Self::remember_authorization(remote, h.clone()),
                _ => return Err(RegistryError::Unauthorized { host: host.into() }),
            }
        }
    }

    /// The error a non-2xx response means; its body is read up to [`MAX_ERROR_BODY_BYTES`].
    async fn status_error(&self, mut res: Response, what: &str, host: &str) -> RegistryError {
        let status = res.status();
        let url = res.url().to_string();
        let body = match self
            .bounds
            .read_capped(
                &mut res,
                MAX_ERROR_BODY_BYTES,
                &format!("error response ({status}) to {what}"),
                host,
            )
            .await
        {
            Ok(b) => b,
            Err(e) => return e,
        };
        let errors = serde_json::from_slice::<Envelope>(&body)
            .map(|e| e.errors)
            .unwrap_or_default();
        let has = |codes: &[&str]| errors.iter().any(|e| codes.contains(&e.code.as_str()));
        let detail: String = errors
            .first()
            .map(|e| format!(": {} {:?}", e.code, e.message))
            .unwrap_or_default()
            .chars()
            .take(MAX_ERROR_DETAIL_CHARS)
            .collect();
        if status == StatusCode::NOT_FOUND
            || has(&[
                "MANIFEST_UNKNOWN",
                "BLOB_UNKNOWN",
                "NAME_UNKNOWN",
                "NOT_FOUND",
            ])
        {
            return RegistryError::NotFound {
                what: what.into(),
                url,
            };
        }
        if status == StatusCode::UNAUTHORIZED
            || status == StatusCode::FORBIDDEN
            || has(&["UNAUTHORIZED", "DENIED"])
        {
            return RegistryError::Unauthorized { host: host.into() };
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return RegistryError::Unavailable {
                host: host.into(),
                message: format!("{what}: {status}{detail}"),
            };
        }
        RegistryError::Protocol {
            host: host.into(),
            message: format!("{what}: {status}{detail}"),
        }
    }

    /// Fetch a manifest or index by the reference's tag, or by `digest`. Returns its bytes and
    /// their digest (checked against `digest` when given).
    pub async fn manifest(
        &self,
        r: &ImageRef,
        digest: Option<&Digest>,
    ) -> Result<(Bytes, Digest), RegistryError> {
        let by_tag = digest.is_none();
        let (reference, sep) = match (digest, &r.tag) {
            (Some(d), _) => (d.to_string(), '@'),
            (None, Some(t)) => (t.clone(), ':'),
            (None, None) => ("latest".to_owned(), ':'),
        };
        let what = format!("manifest {}{sep}{reference}", r.repository);
        let accept = ACCEPTED_MANIFEST_TYPES.join(", ");
        let mut last =
            RegistryError::NoEndpoint(r.to_string(), if by_tag { "resolve" } else { "pull" });
        for remote in self.remotes.iter().filter(|rm| {
            if by_tag {
                rm.endpoint.resolve
            } else {
                rm.endpoint.pull
            }
        }) {
            let got = self
                .manifest_from(remote, r, &reference, digest, &accept, &what)
                .await;
            match got {
                Ok(v) => return Ok(v),
                Err(e) if e.try_next() => {
                    log_fallthrough(&remote.endpoint.host, &e);
                    last = worse(last, e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn manifest_from(
        &self,
        remote: &Remote,
        r: &ImageRef,
        reference: &str,
        digest: Option<&Digest>,
        accept: &str,
        what: &str,
    ) -> Result<(Bytes, Digest), RegistryError> {
        let url = Self::url(remote, &r.repository, "manifests", reference)?;
        let mut res = self
            .get(remote, url, Some(accept), &r.repository, what)
            .await?;
        let bytes = self
            .bounds
            .read_capped(&mut res, MAX_MANIFEST_BYTES, what, &remote.endpoint.host)
            .await?;
        let actual = Digest::of(&bytes);
        if let Some(want) = digest {
            if &actual != want {
                return Err(RegistryError::DigestMismatch {
                    what: what.into(),
                    expected: want.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        Ok((Bytes::from(bytes), actual))
    }

    /// Download the blob `desc` into `sink`, each chunk within the stall timeout and the
    /// pull's deadline, never more than `desc.size` bytes. Returns only once size and digest
    /// checked out; a source that serves other bytes (or none) is abandoned, the sink cleared
    /// and the next source tried.
    pub async fn fetch_blob(
        &self,
        r: &ImageRef,
        desc: &Descriptor,
        sink: &mut impl BlobSink,
    ) -> Result<(), BlobError> {
        let what = format!("blob {}", desc.digest);
        let mut last = RegistryError::NoEndpoint(r.to_string(), "pull");
        let mut first = true;
        for remote in self.remotes.iter().filter(|rm| rm.endpoint.pull) {
            if !first {
                sink.clear().await.map_err(BlobError::Sink)?;
            }
            first = false;
            match self.blob_from(remote, r, desc, sink, &what).await {
                Ok(()) => return Ok(()),
                Err(BlobError::Registry(e)) if e.try_next() => {
                    log_fallthrough(&remote.endpoint.host, &e);
                    last = worse(last, e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(BlobError::Registry(last))
    }

    async fn blob_from(
        &self,
        remote: &Remote,
        r: &ImageRef,
        desc: &Descriptor,
        sink: &mut impl BlobSink,
        what: &str,
    ) -> Result<(), BlobError> {
        let host = remote.endpoint.host.as_str();
        let url = Self::url(remote, &r.repository, "blobs", desc.digest.as_str())?;
        let mut res = self.get(remote, url, None, &r.repository, what).await?;
        let too_large = || RegistryError::TooLarge {
            what: what.into(),
            max: desc.size,
        };
        if res.content_length().is_some_and(|n| n > desc.size) {
            return Err(too_large().into());
        }
        let mut hasher = Sha256::new();
        let mut n = 0u64;
        while let Some(c) = self.bounds.chunk(&mut res, what, host).await? {
            n += c.len() as u64;
            if n > desc.size {
                return Err(too_large().into());
            }
            hasher.update(&c);
            sink.put(c).await.map_err(BlobError::Sink)?;
        }
        let actual = Digest::from_hasher(hasher);
        if n != desc.size || actual != desc.digest {
            return Err(RegistryError::DigestMismatch {
                what: what.into(),
                expected: desc.digest.to_string(),
                actual: format!("{actual} ({n} of {} bytes)", desc.size),
            }
            .into());
        }
        Ok(())
    }
}

fn log_fallthrough(host: &str, e: &RegistryError) {
    if e.is_integrity() {
        tracing::warn!(host, error = %e, "registry endpoint served bad content; trying the next");
    } else {
        tracing::debug!(host, error = %e, "registry endpoint failed; trying the next");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrity_errors_outrank_later_failures() {
        let mismatch = || RegistryError::DigestMismatch {
            what: "blob x".into(),
            expected: "a".into(),
            actual: "b".into(),
        };
        let down = || RegistryError::Unavailable {
            host: "h".into(),
            message: "refused".into(),
        };
        assert!(matches!(
            worse(mismatch(), down()),
            RegistryError::DigestMismatch { .. }
        ));
        assert!(matches!(
            worse(down(), mismatch()),
            RegistryError::DigestMismatch { .. }
        ));
        assert!(matches!(
            worse(RegistryError::NoEndpoint("r".into(), "pull"), down()),
            RegistryError::Unavailable { .. }
        ));
        assert!(
            !RegistryError::PullDeadline {
                what: "x".into(),
                host: "h".into(),
                deadline: Duration::from_secs(1)
            }
            .try_next()
        );
    }
}
