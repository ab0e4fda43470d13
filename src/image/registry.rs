//! Talking to registries: one `oci-client` client per endpoint (mirrors first, then the upstream
//! server, as hosts.toml orders them), credentials sent to the upstream server only, every
//! response bounded in size and in time without progress.

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::digest::Digest;
use super::hosts::{Endpoint, Scheme};
use super::manifest::{ACCEPTED_MANIFEST_TYPES, Descriptor, MAX_MANIFEST_BYTES};
use super::pull::Auth;
use super::reference::ImageRef;

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
    #[error("{what} from {host}: no data received for {timeout:?}")]
    Stalled {
        what: String,
        host: String,
        timeout: Duration,
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
    /// Errors after which the next mirror (or the upstream) is worth trying.
    fn try_next(&self) -> bool {
        !matches!(
            self,
            RegistryError::DigestMismatch { .. } | RegistryError::TooLarge { .. }
        )
    }
}

struct Remote {
    endpoint: Endpoint,
    client: Client,
    /// Resolved credentials; for a refresh token, filled by the first exchange.
    auth: tokio::sync::OnceCell<RegistryAuth>,
    refresh_token: Option<String>,
}

pub struct Registry {
    remotes: Vec<Remote>,
    timeout: Duration,
}

/// A blob download in progress.
pub type BlobStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>;

impl Registry {
    pub fn new(endpoints: Vec<Endpoint>, auth: Auth, timeout: Duration) -> Registry {
        let remotes = endpoints
            .into_iter()
            .map(|endpoint| {
                let config = ClientConfig {
                    protocol: match endpoint.scheme {
                        Scheme::Http => ClientProtocol::Http,
                        Scheme::Https => ClientProtocol::Https,
                    },
                    accept_invalid_certificates: endpoint.skip_verify,
                    extra_root_certificates: endpoint
                        .ca_pem
                        .iter()
                        .map(|pem| Certificate {
                            encoding: CertificateEncoding::Pem,
                            data: pem.clone(),
                        })
                        .collect(),
                    connect_timeout: Some(timeout.min(Duration::from_secs(30))),
                    // Our own per-chunk timeout (below) reports stalls; the client's is a backstop.
                    read_timeout: Some(timeout + Duration::from_secs(5)),
                    user_agent: concat!("kelson/", env!("CARGO_PKG_VERSION")),
                    ..Default::default()
                };
                // Mirrors never see the caller's credentials: they were issued for the upstream.
                let (ready, refresh_token) = match (&auth, endpoint.upstream) {
                    (_, false) => (Some(RegistryAuth::Anonymous), None),
                    (Auth::Direct(a), true) => (Some(a.clone()), None),
                    (Auth::RefreshToken(t), true) => (None, Some(t.clone())),
                };
                Remote {
                    client: Client::new(config),
                    endpoint,
                    auth: tokio::sync::OnceCell::new_with(ready),
                    refresh_token,
                }
            })
            .collect();
        Registry { remotes, timeout }
    }

    async fn auth<'a>(
        &self,
        remote: &'a Remote,
        repository: &str,
    ) -> Result<&'a RegistryAuth, RegistryError> {
        remote
            .auth
            .get_or_try_init(|| async {
                match &remote.refresh_token {
                    Some(t) => super::token::exchange_refresh_token(
                        &remote.endpoint,
                        repository,
                        t,
                        self.timeout,
                    )
                    .await
                    .map(RegistryAuth::Bearer),
                    None => Ok(RegistryAuth::Anonymous),
                }
            })
            .await
    }

    fn reference(remote: &Remote, r: &ImageRef, digest: Option<&Digest>) -> Reference {
        match (digest, &r.tag) {
            (Some(d), _) => Reference::with_digest(
                remote.endpoint.host.clone(),
                r.repository.clone(),
                d.to_string(),
            ),
            (None, Some(t)) => Reference::with_tag(
                remote.endpoint.host.clone(),
                r.repository.clone(),
                t.clone(),
            ),
            (None, None) => Reference::with_tag(
                remote.endpoint.host.clone(),
                r.repository.clone(),
                "latest".into(),
            ),
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
        let mut last =
            RegistryError::NoEndpoint(r.to_string(), if by_tag { "resolve" } else { "pull" });
        for remote in self.remotes.iter().filter(|rm| {
            if by_tag {
                rm.endpoint.resolve
            } else {
                rm.endpoint.pull
            }
        }) {
            let reference = Self::reference(remote, r, digest);
            let what = format!("manifest {reference}");
            let res = match self.auth(remote, &r.repository).await {
                Err(e) => Err(e),
                Ok(auth) => {
                    let fut =
                        remote
                            .client
                            .pull_manifest_raw(&reference, auth, ACCEPTED_MANIFEST_TYPES);
                    match tokio::time::timeout(self.timeout, fut).await {
                        Err(_) => Err(RegistryError::Stalled {
                            what: what.clone(),
                            host: remote.endpoint.host.clone(),
                            timeout: self.timeout,
                        }),
                        Ok(r) => r.map_err(|e| map_err(e, &what, &remote.endpoint.host)),
                    }
                }
            };
            match res {
                Ok((bytes, _)) => {
                    if bytes.len() > MAX_MANIFEST_BYTES {
                        return Err(RegistryError::TooLarge {
                            what,
                            max: MAX_MANIFEST_BYTES as u64,
                        });
                    }
                    let actual = Digest::of(&bytes);
                    if let Some(want) = digest {
                        if &actual != want {
                            return Err(RegistryError::DigestMismatch {
                                what,
                                expected: want.to_string(),
                                actual: actual.to_string(),
                            });
                        }
                    }
                    return Ok((bytes, actual));
                }
                Err(e) if e.try_next() => {
                    tracing::debug!(host = %remote.endpoint.host, error = %e, "endpoint failed, trying next");
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Stream a blob. Each chunk must arrive within the progress timeout; the stream yields an
    /// error (and ends) on a stall. Digest and size are checked by the caller as bytes flow.
    pub async fn blob(&self, r: &ImageRef, desc: &Descriptor) -> Result<BlobStream, RegistryError> {
        let mut last = RegistryError::NoEndpoint(r.to_string(), "pull");
        let od = OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.to_string(),
            size: i64::try_from(desc.size).unwrap_or(i64::MAX),
            ..Default::default()
        };
        for remote in self.remotes.iter().filter(|rm| rm.endpoint.pull) {
            let reference = Self::reference(remote, r, Some(&desc.digest));
            let what = format!("blob {}", desc.digest);
            let host = remote.endpoint.host.clone();
            // Authenticate first (no-op when a token is cached); pull_blob_stream does not.
            match self.auth(remote, &r.repository).await {
                Ok(auth) => {
                    remote
                        .client
                        .store_auth_if_needed(reference.resolve_registry(), auth)
                        .await
                }
                Err(e) if e.try_next() => {
                    last = e;
                    continue;
                }
                Err(e) => return Err(e),
            }
            let fut = remote.client.pull_blob_stream(&reference, &od);
            let res = match tokio::time::timeout(self.timeout, fut).await {
                Err(_) => Err(RegistryError::Stalled {
                    what: what.clone(),
                    host: host.clone(),
                    timeout: self.timeout,
                }),
                Ok(r) => r.map_err(|e| map_err(e, &what, &host)),
            };
            match res {
                Ok(s) => {
                    let timeout = self.timeout;
                    let inner = s.stream;
                    let st = futures::stream::unfold((inner, false), move |(mut inner, done)| {
                        let what = what.clone();
                        let host = host.clone();
                        async move {
                            if done {
                                return None;
                            }
                            match tokio::time::timeout(timeout, inner.next()).await {
                                Err(_) => Some((
                                    Err(RegistryError::Stalled {
                                        what,
                                        host,
                                        timeout,
                                    }),
                                    (inner, true),
                                )),
                                Ok(None) => None,
                                Ok(Some(Ok(b))) => Some((Ok(b), (inner, false))),
                                Ok(Some(Err(e))) => Some((
                                    Err(RegistryError::Unavailable {
                                        host,
                                        message: format!("{what}: {e}"),
                                    }),
                                    (inner, true),
                                )),
                            }
                        }
                    });
                    return Ok(Box::pin(st));
                }
                Err(e) if e.try_next() => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }
}

fn map_err(e: OciDistributionError, what: &str, host: &str) -> RegistryError {
    use OciDistributionError as E;
    match e {
        E::ImageManifestNotFoundError(url) => RegistryError::NotFound {
            what: what.into(),
            url,
        },
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => {
            RegistryError::Unauthorized { host: host.into() }
        }
        E::RegistryError { envelope, url } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                RegistryError::NotFound {
                    what: what.into(),
                    url,
                }
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                RegistryError::Unauthorized { host: host.into() }
            } else {
                RegistryError::Protocol {
                    host: host.into(),
                    message: format!("{what}: {envelope}"),
                }
            }
        }
        E::ServerError { code: 404, url, .. } => RegistryError::NotFound {
            what: what.into(),
            url,
        },
        E::ServerError {
            code: 401 | 403, ..
        } => RegistryError::Unauthorized { host: host.into() },
        E::RequestError(e) => RegistryError::Unavailable {
            host: host.into(),
            message: format!("{what}: {}", error_chain(&e)),
        },
        E::DigestError(e) => RegistryError::DigestMismatch {
            what: what.into(),
            expected: String::new(),
            actual: e.to_string(),
        },
        other => RegistryError::Protocol {
            host: host.into(),
            message: format!("{what}: {other}"),
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
