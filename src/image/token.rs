//! The OAuth2 refresh-token grant of the registry token protocol, for a PullImage `identity_token`
//! (docker's IdentityToken): challenge from `GET /v2/`, then `POST <realm>` with
//! `grant_type=refresh_token`, giving a Bearer access token for the repository. oci-client does
//! the anonymous and Basic token flows itself but has no refresh-token grant, hence this module.

use std::time::Duration;

use serde::Deserialize;

use super::hosts::{Endpoint, Scheme};
use super::registry::RegistryError;

/// Largest token response read.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;

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

/// Exchange `refresh_token` for a pull token for `repository` on `endpoint`.
pub async fn exchange_refresh_token(
    endpoint: &Endpoint,
    repository: &str,
    refresh_token: &str,
    timeout: Duration,
) -> Result<String, RegistryError> {
    let host = endpoint.host.clone();
    let unavailable = |e: reqwest::Error| RegistryError::Unavailable {
        host: host.clone(),
        message: format!("token exchange: {e}"),
    };
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(30)))
        .tls_danger_accept_invalid_certs(endpoint.skip_verify)
        .user_agent(concat!("kelson/", env!("CARGO_PKG_VERSION")));
    for pem in &endpoint.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(unavailable)?;
        b = b.tls_certs_merge(certs);
    }
    let client = b.build().map_err(unavailable)?;
    let scheme = match endpoint.scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    let res = client
        .get(format!("{scheme}://{}/v2/", endpoint.host))
        .send()
        .await
        .map_err(unavailable)?;
    let challenge = res
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .and_then(parse_bearer_challenge)
        .ok_or_else(|| RegistryError::Protocol {
            host: host.clone(),
            message: "identity_token given but the registry offers no Bearer token service".into(),
        })?;
    let scope = format!("repository:{repository}:pull");
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", "kelson"),
        ("scope", scope.as_str()),
    ];
    if let Some(s) = challenge.service.as_deref() {
        form.push(("service", s));
    }
    let res = client
        .post(&challenge.realm)
        .form(&form)
        .send()
        .await
        .map_err(unavailable)?;
    let status = res.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(RegistryError::Unauthorized { host });
    }
    if !status.is_success() {
        return Err(RegistryError::Protocol {
            host,
            message: format!("token endpoint answered {status}"),
        });
    }
    let body = res.bytes().await.map_err(unavailable)?;
    if body.len() > MAX_TOKEN_RESPONSE {
        return Err(RegistryError::TooLarge {
            what: "token response".into(),
            max: MAX_TOKEN_RESPONSE as u64,
        });
    }
    let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol {
        host: host.clone(),
        message: format!("token response: {e}"),
    })?;
    t.access_token
        .or(t.token)
        .filter(|t| !t.is_empty())
        .ok_or(RegistryError::Protocol {
            host,
            message: "token response has no token".into(),
        })
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
