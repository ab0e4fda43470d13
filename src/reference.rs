//! Image reference normalisation as kubelet and containerd do it: `busybox` →
//! `docker.io/library/busybox:latest`; a reference with both tag and digest keeps only the digest.
//! Pure: no I/O.

use std::fmt;

use crate::digest::{Digest, DigestError};

// The grammar of distribution/reference, by hand: oci-spec's parser compiles a large regex
// on first use and keeps it for the life of the process (about 12 MiB of kelsond's RSS).

/// Longest reference accepted before parsing (the grammar caps names at 255).
pub const MAX_REFERENCE_LEN: usize = 4096;
const MAX_NAME_LEN: usize = 255;
const DOCKER_HUB: &str = "docker.io";

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(&b[0]) || !alnum(&b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(&b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(&b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// `host[:port]`: DNS labels (letters, digits, inner dashes) joined by dots, an IPv4 address,
/// or a bracketed IPv6 address.
fn valid_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|c| c.is_ascii_digit()))
    {
        return false;
    }
    if host.is_empty() && d.starts_with('[') {
        return true;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host as named (`docker.io`, `localhost:5000`).
    pub registry: String,
    /// Repository path (`library/busybox`).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("image reference is empty")]
    Empty,
    #[error("image reference is longer than {MAX_REFERENCE_LEN} bytes")]
    TooLong,
    #[error("image reference {reference:?} is invalid: {reason}")]
    Invalid { reference: String, reason: String },
    #[error("image reference {reference:?}: {source}")]
    Digest {
        reference: String,
        source: DigestError,
    },
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.len() > MAX_REFERENCE_LEN {
            return Err(ReferenceError::TooLong);
        }
        let invalid = |reason: &str| ReferenceError::Invalid {
            reference: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let d = Digest::parse(d).map_err(|source| ReferenceError::Digest {
                    reference: s.to_owned(),
                    source,
                })?;
                (r, Some(d))
            }
            None => (s, None),
        };
        // A tag is what follows the last ':' after the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if !valid_tag(tag) {
                    return Err(invalid("tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
                }
                (&rest[..last_slash + i], Some(tag))
            }
            None => (rest, None),
        };
        if name.len() > MAX_NAME_LEN {
            return Err(invalid("repository name is longer than 255 bytes"));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, remote))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                if !valid_domain(first) {
                    return Err(invalid("registry host is not a valid host[:port]"));
                }
                let registry = if first == "index.docker.io" {
                    DOCKER_HUB
                } else {
                    first
                };
                (registry, remote.to_owned())
            }
            _ => (DOCKER_HUB, name.to_owned()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !repository.split('/').all(valid_path_component) {
            return Err(invalid(
                "repository path components must be lowercase letters and digits, separated by '.', '_', '__' or dashes",
            ));
        }
        // containerd/docker: when a digest is present the tag is informational only and dropped.
        let tag = match digest {
            Some(_) => None,
            None => Some(tag.unwrap_or("latest").to_owned()),
        };
        Ok(ImageRef {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`, the name repo tags and repo digests are built on.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    pub fn with_digest(&self, digest: &Digest) -> ImageRef {
        ImageRef {
            tag: None,
            digest: Some(digest.clone()),
            ..self.clone()
        }
    }

    /// The `name@digest` form kubelet expects in `repo_digests`.
    pub fn repo_digest(&self, manifest: &Digest) -> String {
        format!("{}@{}", self.name(), manifest)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.digest, &self.tag) {
            (Some(d), _) => write!(f, "{}@{}", self.name(), d),
            (None, Some(t)) => write!(f, "{}:{}", self.name(), t),
            (None, None) => f.write_str(&self.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalises_like_kubelet() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/library/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("someone/app:v1", "docker.io/someone/app:v1"),
            ("localhost:5000/a/b:c", "localhost:5000/a/b:c"),
            ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
            ("localhost/x", "localhost/x:latest"),
            ("Example.COM/a", "Example.COM/a:latest"),
            (
                "127.0.0.1:5000/a__b/c--d/e.f:V_1.0-x",
                "127.0.0.1:5000/a__b/c--d/e.f:V_1.0-x",
            ),
            ("[::1]:5000/x:1", "[::1]:5000/x:1"),
            ("[fe80::1]/x", "[fe80::1]/x:latest"),
            ("docker.io/a/b/c:1", "docker.io/a/b/c:1"),
        ];
        for (input, want) in cases {
            assert_eq!(ImageRef::parse(input).unwrap().to_string(), want, "{input}");
        }
    }

    #[test]
    fn digest_wins_over_tag() {
        let r = ImageRef::parse(&format!("busybox:1.36@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        let r = ImageRef::parse(&format!("localhost:5000/x@{D}")).unwrap();
        assert_eq!(r.digest.unwrap().as_str(), D);
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "upper/CASE",
            "a b",
            "busybox:",
            "busybox@sha256:abc",
            "../../etc/passwd",
            "busybox:bad/tag",
            "Upper",
            "a//b",
            "-a/b",
            "a/b-",
            "a/b.-c",
            "host:port/x",
            "exa_mple.com/x",
            "[zz]:5000/x",
            "a/b:-tag",
            "/a",
            "a/",
            "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            ImageRef::parse(&"a".repeat(MAX_REFERENCE_LEN + 1)),
            Err(ReferenceError::TooLong)
        );
        assert!(matches!(
            ImageRef::parse(&format!("busybox@sha512:{}", "a".repeat(128))),
            Err(ReferenceError::Digest { .. })
        ));
    }
}
