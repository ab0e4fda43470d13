//! Image reference normalisation as kubelet and containerd do it: `busybox` →
//! `docker.io/library/busybox:latest`; a reference with both tag and digest keeps only the digest.
//! Pure: no I/O.

use std::fmt;

use oci_spec::distribution::Reference;

use super::digest::{Digest, DigestError};

/// Longest reference accepted before parsing (the grammar caps names at 255).
pub const MAX_REFERENCE_LEN: usize = 4096;

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
        let r: Reference = s.parse().map_err(|e| ReferenceError::Invalid {
            reference: s.to_owned(),
            reason: format!("{e}"),
        })?;
        let digest = r
            .digest()
            .map(|d| {
                Digest::parse(d).map_err(|source| ReferenceError::Digest {
                    reference: s.to_owned(),
                    source,
                })
            })
            .transpose()?;
        // containerd/docker: when a digest is present the tag is informational only and dropped.
        let tag = match digest {
            Some(_) => None,
            None => Some(r.tag().unwrap_or("latest").to_owned()),
        };
        Ok(ImageRef {
            registry: r.registry().to_owned(),
            repository: r.repository().to_owned(),
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
