//! The registry token protocol: parse a `WWW-Authenticate` challenge, and get a Bearer token from
//! its realm — anonymously, with Basic credentials (`GET`), or by the OAuth2 refresh-token grant
//! for a PullImage `identity_token` (docker's IdentityToken, `POST grant_type=refresh_token`).
//! Token bodies are read with their own small cap.

use reqwest::header::HeaderValue;
use reqwest::{Client, Method, StatusCode, Url};
use serde::Deserialize;

use super::hosts::{Endpoint, Scheme};
use super::http::{self, Bounds, Request};
use super::registry::RegistryError;

/// Largest token response read (a registry JWT is a few KiB).
pub const MAX_TOKEN_BYTES: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub service: Option<String>,
}

/// Parse `Bearer realm="…",service="…",scope="…"`; None for any other scheme.
pub fn parse_bearer_challenge(header: &str) -> Option<Challenge> {
    let rest = header.trim();
    let (scheme, params) = rest.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    let mut s = params.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        match key.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value.to_owned()),
            "service" => service = Some(value.to_owned()),
            _ => {}
        }
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    let realm = realm?;
    if !(realm.starts_with("https://") || realm.starts_with("http://")) {
        return None;
    }
    Some(Challenge { realm, service })
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token: Option<String>,
}

/// What the token endpoint is shown.
#[derive(Clone, Copy)]
pub enum Grant<'a> {
    Anonymous,
    Basic(&'a HeaderValue),
    RefreshToken(&'a str),
}

/// A pull token for `repository` from the realm of `challenge`, which `endpoint` sent.
pub async fn fetch(
    client: &Client,
    bounds: &Bounds,
    endpoint: &Endpoint,
    challenge: &Challenge,
    repository: &str,
    grant: Grant<'_>,
) -> Result<String, RegistryError> {
    let host = endpoint.host.as_str();
    let what = "token request";
    let protocol = |message: String| RegistryError::Protocol {
        host: host.into(),
        message,
    };
    let mut url = Url::parse(&challenge.realm)
        .map_err(|e| protocol(format!("token realm {:?}: {e}", challenge.realm)))?;
    // Credentials travel to the realm only as safely as to the registry itself.
    if !matches!(grant, Grant::Anonymous)
        && endpoint.scheme == Scheme::Https
        && url.scheme() != "https"
    {
        return Err(protocol(format!(
            "token realm {} is not https; credentials are not sent over it",
            challenge.realm
        )));
    }
    let scope = format!("repository:{repository}:pull");
    let mut form = vec![("scope", scope.as_str())];
    if let Some(s) = challenge.service.as_deref() {
        form.push(("service", s));
    }
    let req = match grant {
        Grant::Anonymous | Grant::Basic(_) => {
            url.query_pairs_mut().extend_pairs(&form);
            Request {
                method: Method::GET,
                url,
                accept: None,
                authorization: match grant {
                    Grant::Basic(h) => Some(h.clone()),
                    _ => None,
                },
                form: None,
            }
        }
        Grant::RefreshToken(t) => {
            form.extend([
                ("grant_type", "refresh_token"),
                ("refresh_token", t),
                ("client_id", "kelson"),
            ]);
            Request {
                method: Method::POST,
                url,
                accept: None,
                authorization: None,
                form: Some(&form),
            }
        }
    };
    let mut res = http::send(client, bounds, req, what, host).await?;
    let status = res.status();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(RegistryError::Unauthorized { host: host.into() });
    }
    if !status.is_success() {
        return Err(protocol(format!("token endpoint answered {status}")));
    }
    let body = bounds
        .read_capped(&mut res, MAX_TOKEN_BYTES, "token response", host)
        .await?;
    let t: TokenResponse =
        serde_json::from_slice(&body).map_err(|e| protocol(format!("token response: {e}")))?;
    t.access_token
        .or(t.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| protocol("token response has no token".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_bearer_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            Some(Challenge {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            })
        );
        assert_eq!(
            parse_bearer_challenge("bearer realm=http://127.0.0.1:1/token"),
            Some(Challenge {
                realm: "http://127.0.0.1:1/token".into(),
                service: None
            })
        );
        assert_eq!(parse_bearer_challenge(r#"Basic realm="x""#), None);
        assert_eq!(parse_bearer_challenge(r#"Bearer service="x""#), None);
        assert_eq!(
            parse_bearer_challenge(r#"Bearer realm="file:///etc/passwd""#),
            None
        );
        assert_eq!(
            parse_bearer_challenge(r#"Bearer realm="unterminated"#),
            None
        );
    }
}
