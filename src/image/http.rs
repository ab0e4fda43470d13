//! Bounded HTTP for registry traffic: every wait limited by the stall timeout and by the pull's
//! deadline, every body read with a hard cap while it streams (never buffered whole first), and
//! redirects followed by hand so that an `Authorization` header never leaves the origin it was
//! meant for. Knows nothing of the distribution API itself.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, LOCATION};
use reqwest::{Client, Method, Response, Url};
use tokio::time::Instant;

use super::hosts::Endpoint;
use super::registry::RegistryError;

/// Redirects followed for one request (blob downloads are commonly sent on to a CDN once).
pub const MAX_REDIRECTS: usize = 5;

/// How long a registry may take: no byte for `stall` is a stall; nothing may arrive after
/// `deadline`, which is `total` after the pull began.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub stall: Duration,
    pub total: Duration,
    pub deadline: Instant,
}

impl Bounds {
    /// Bounds for a pull starting now.
    pub fn starting_now(stall: Duration, total: Duration) -> Bounds {
        Bounds {
            stall,
            total,
            deadline: Instant::now() + total,
        }
    }

    /// Await one step of a request (`send`, one body chunk): it must finish within the stall
    /// timeout and before the deadline.
    pub async fn wait<T>(
        &self,
        step: impl Future<Output = Result<T, reqwest::Error>>,
        what: &str,
        host: &str,
    ) -> Result<T, RegistryError> {
        let stall_at = Instant::now() + self.stall;
        let at = stall_at.min(self.deadline);
        match tokio::time::timeout_at(at, step).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(RegistryError::Unavailable {
                host: host.into(),
                message: format!("{what}: {}", error_chain(&e)),
            }),
            Err(_) if at == self.deadline => Err(RegistryError::PullDeadline {
                what: what.into(),
                host: host.into(),
                deadline: self.total,
            }),
            Err(_) => Err(RegistryError::Stalled {
                what: what.into(),
                host: host.into(),
                timeout: self.stall,
            }),
        }
    }

    /// The next chunk of `res`'s body (None at its end), within the bounds.
    pub async fn chunk(
        &self,
        res: &mut Response,
        what: &str,
        host: &str,
    ) -> Result<Option<Bytes>, RegistryError> {
        self.wait(res.chunk(), what, host).await
    }

    /// The whole body of `res`, refused as `TooLarge` as soon as it passes `max` bytes: a
    /// declared length over `max` is refused before reading, an undeclared one after at most
    /// `max` bytes and one chunk.
    pub async fn read_capped(
        &self,
        res: &mut Response,
        max: usize,
        what: &str,
        host: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let too_large = || RegistryError::TooLarge {
            what: what.into(),
            max: max as u64,
        };
        if res.content_length().is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let mut buf = Vec::new();
        while let Some(c) = self.chunk(res, what, host).await? {
            if buf.len() + c.len() > max {
                return Err(too_large());
            }
            buf.extend_from_slice(&c);
        }
        Ok(buf)
    }
}

/// One HTTP client per endpoint, with its TLS options; redirects are never followed by the
/// client itself (see [`send`]).
pub fn client(endpoint: &Endpoint, bounds: &Bounds) -> Result<Client, RegistryError> {
    let tls = |e: reqwest::Error| RegistryError::Tls {
        host: endpoint.host.clone(),
        message: error_chain(&e),
    };
    let mut b = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(bounds.stall.min(Duration::from_secs(30)))
        // Our own per-step bounds report stalls by name; this is a backstop.
        .read_timeout(bounds.stall + Duration::from_secs(5))
        .tls_danger_accept_invalid_certs(endpoint.skip_verify)
        .user_agent(concat!("kelson/", env!("CARGO_PKG_VERSION")));
    for pem in &endpoint.ca_pem {
        b = b.tls_certs_merge(reqwest::Certificate::from_pem_bundle(pem).map_err(tls)?);
    }
    b.build().map_err(tls)
}

/// A request to send, and where its credentials may go.
pub struct Request<'a> {
    pub method: Method,
    pub url: Url,
    pub accept: Option<&'a str>,
    /// Sent to `url`'s origin only: a redirect elsewhere (a CDN, another host) goes without.
    pub authorization: Option<HeaderValue>,
    /// A form body (the token endpoint's POST).
    pub form: Option<&'a [(&'a str, &'a str)]>,
}

/// Send `req`, following up to [`MAX_REDIRECTS`] redirects (http and https only) and
/// answering the final response, whatever its status.
pub async fn send(
    client: &Client,
    bounds: &Bounds,
    req: Request<'_>,
    what: &str,
    host: &str,
) -> Result<Response, RegistryError> {
    let origin = req.url.origin();
    let mut url = req.url;
    let mut method = req.method;
    for _ in 0..=MAX_REDIRECTS {
        let mut b = client.request(method.clone(), url.clone());
        if let Some(a) = req.accept {
            b = b.header(ACCEPT, a);
        }
        if let Some(a) = req
            .authorization
            .as_ref()
            .filter(|_| url.origin() == origin)
        {
            b = b.header(AUTHORIZATION, a.clone());
        }
        if let Some(f) = req.form.filter(|_| method == Method::POST) {
            b = b.form(f);
        }
        let res = bounds.wait(b.send(), what, host).await?;
        if !res.status().is_redirection() {
            return Ok(res);
        }
        let next = res
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| url.join(l).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| RegistryError::Protocol {
                host: host.into(),
                message: format!(
                    "{what}: redirect ({}) without a usable http(s) Location",
                    res.status()
                ),
            })?;
        // 303 turns any method into GET; kelson only redirects GETs otherwise.
        if res.status() == reqwest::StatusCode::SEE_OTHER {
            method = Method::GET;
        }
        url = next;
    }
    Err(RegistryError::Protocol {
        host: host.into(),
        message: format!("{what}: more than {MAX_REDIRECTS} redirects"),
    })
}

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
