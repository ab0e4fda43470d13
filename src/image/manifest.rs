//! Parsing of registry documents (manifests, indexes, image configs) and platform selection.
//! Pure: bytes in, typed values out. Every byte is hostile: sizes are capped, digests validated,
//! unknown media types refused by name.

use std::collections::HashMap;

use serde::Deserialize;

use super::digest::{Digest, DigestError};

/// Largest manifest or index accepted (containerd uses 4 MiB as well).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Largest image config accepted.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// More layers than overlayfs can stack are refused up front.
pub const MAX_LAYERS: usize = 128;

pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// What we ask registries for, most preferred first.
pub const ACCEPTED_MANIFEST_TYPES: &[&str] = &[
    MT_OCI_INDEX,
    MT_DOCKER_LIST,
    MT_OCI_MANIFEST,
    MT_DOCKER_MANIFEST,
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("{what} is not valid JSON of the expected shape: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("{what} is larger than {max} bytes")]
    TooLarge { what: &'static str, max: u64 },
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("docker schema 1 manifests are not supported; re-push the image with a current client")]
    Schema1,
    #[error("{what}: {source}")]
    Digest {
        what: &'static str,
        source: DigestError,
    },
    #[error("image has {0} layers, more than the {MAX_LAYERS} supported")]
    TooManyLayers(usize),
    #[error("image config lists {diff_ids} diff ids for {layers} layers")]
    LayerCountMismatch { diff_ids: usize, layers: usize },
    #[error("no manifest in the index matches platform {0}")]
    NoMatchingPlatform(String),
}

/// A descriptor whose digest is validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub descriptor: Descriptor,
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: String,
}

impl Platform {
    /// The platform this kelsond runs on, in OCI terms.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", ""),
            "aarch64" => ("arm64", "v8"),
            "arm" => ("arm", "v7"),
            "x86" => ("386", ""),
            "powerpc64" => ("ppc64le", ""),
            "s390x" => ("s390x", ""),
            "riscv64" => ("riscv64", ""),
            other => (other, ""),
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.into(),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    Manifest(Manifest),
    Index(Vec<IndexEntry>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDoc {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawIndexEntry>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIndexEntry {
    #[serde(flatten)]
    descriptor: RawDescriptor,
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: String,
}

fn descriptor(raw: RawDescriptor, what: &'static str) -> Result<Descriptor, ManifestError> {
    let digest =
        Digest::parse(&raw.digest).map_err(|source| ManifestError::Digest { what, source })?;
    let size = u64::try_from(raw.size).map_err(|_| ManifestError::Malformed {
        what,
        reason: format!("negative size {}", raw.size),
    })?;
    Ok(Descriptor {
        media_type: raw.media_type,
        digest,
        size,
    })
}

/// Parse a manifest or index as served by a registry.
pub fn parse_document(bytes: &[u8]) -> Result<Document, ManifestError> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge {
            what: "manifest",
            max: MAX_MANIFEST_BYTES as u64,
        });
    }
    let raw: RawDoc = serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed {
        what: "manifest",
        reason: e.to_string(),
    })?;
    if raw.schema_version == Some(1) {
        return Err(ManifestError::Schema1);
    }
    let mt = raw.media_type.as_deref().unwrap_or("");
    let is_index = match mt {
        MT_OCI_INDEX | MT_DOCKER_LIST => true,
        MT_OCI_MANIFEST | MT_DOCKER_MANIFEST => false,
        // OCI allows omitting mediaType: tell the two apart by their fields.
        "" => raw.manifests.is_some(),
        other => return Err(ManifestError::UnsupportedMediaType(other.to_owned())),
    };
    if is_index {
        let entries = raw.manifests.ok_or_else(|| ManifestError::Malformed {
            what: "index",
            reason: "no manifests field".into(),
        })?;
        let entries = entries
            .into_iter()
            .map(|e| {
                Ok(IndexEntry {
                    descriptor: descriptor(e.descriptor, "index entry")?,
                    platform: e.platform.map(|p| Platform {
                        os: p.os,
                        architecture: p.architecture,
                        variant: p.variant,
                    }),
                })
            })
            .collect::<Result<Vec<_>, ManifestError>>()?;
        return Ok(Document::Index(entries));
    }
    let config = raw.config.ok_or_else(|| ManifestError::Malformed {
        what: "manifest",
        reason: "no config descriptor".into(),
    })?;
    let config = descriptor(config, "config descriptor")?;
    match config.media_type.as_str() {
        MT_OCI_CONFIG | MT_DOCKER_CONFIG => {}
        // An artifact (Helm chart, signature, …) is not a runnable image.
        other => return Err(ManifestError::UnsupportedMediaType(other.to_owned())),
    }
    if config.size > MAX_CONFIG_BYTES {
        return Err(ManifestError::TooLarge {
            what: "image config",
            max: MAX_CONFIG_BYTES,
        });
    }
    let layers = raw.layers.unwrap_or_default();
    if layers.len() > MAX_LAYERS {
        return Err(ManifestError::TooManyLayers(layers.len()));
    }
    let layers = layers
        .into_iter()
        .map(|l| {
            let d = descriptor(l, "layer descriptor")?;
            layer_compression(&d.media_type)?;
            Ok(d)
        })
        .collect::<Result<Vec<_>, ManifestError>>()?;
    Ok(Document::Manifest(Manifest { config, layers }))
}

/// Declared compression of a layer media type. The unpacker sniffs the real format from magic
/// bytes (registries mislabel), so this only decides whether the type is a layer at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub fn layer_compression(media_type: &str) -> Result<Compression, ManifestError> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Ok(Compression::Zstd),
        other => Err(ManifestError::UnsupportedMediaType(other.to_owned())),
    }
}

/// Pick the index entry for `want`: same os and architecture, the variant equal or unset.
pub fn select_platform(entries: &[IndexEntry], want: &Platform) -> Result<Digest, ManifestError> {
    let candidates = entries.iter().filter(|e| {
        matches!(
            e.descriptor.media_type.as_str(),
            MT_OCI_MANIFEST | MT_DOCKER_MANIFEST | ""
        ) && e
            .platform
            .as_ref()
            .is_some_and(|p| p.os == want.os && p.architecture == want.architecture)
    });
    let mut fallback = None;
    for e in candidates {
        let variant = e
            .platform
            .as_ref()
            .map(|p| p.variant.as_str())
            .unwrap_or("");
        if variant == want.variant {
            return Ok(e.descriptor.digest.clone());
        }
        if variant.is_empty() || want.variant.is_empty() {
            fallback.get_or_insert_with(|| e.descriptor.digest.clone());
        }
    }
    fallback.ok_or_else(|| ManifestError::NoMatchingPlatform(want.to_string()))
}

/// The parts of an image config kelson reads; the rest stays in the stored JSON as data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfigSummary {
    pub diff_ids: Vec<Digest>,
    pub user: String,
    pub labels: HashMap<String, String>,
}

#[derive(Deserialize)]
struct RawConfig {
    rootfs: RawRootfs,
    #[serde(default)]
    config: Option<RawRunConfig>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    labels: Option<HashMap<String, String>>,
}

pub fn parse_config(bytes: &[u8], layers: usize) -> Result<ImageConfigSummary, ManifestError> {
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ManifestError::TooLarge {
            what: "image config",
            max: MAX_CONFIG_BYTES,
        });
    }
    let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed {
        what: "image config",
        reason: e.to_string(),
    })?;
    let diff_ids = raw
        .rootfs
        .diff_ids
        .iter()
        .map(|d| {
            Digest::parse(d).map_err(|source| ManifestError::Digest {
                what: "diff id",
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if diff_ids.len() != layers {
        return Err(ManifestError::LayerCountMismatch {
            diff_ids: diff_ids.len(),
            layers,
        });
    }
    let run = raw.config.unwrap_or(RawRunConfig {
        user: None,
        labels: None,
    });
    Ok(ImageConfigSummary {
        diff_ids,
        user: run.user.unwrap_or_default(),
        labels: run.labels.unwrap_or_default(),
    })
}

/// kubelet's view of an image user: a numeric uid goes in `uid`, a name in `username`.
pub fn split_user(user: &str) -> (Option<i64>, String) {
    let name = user.split(':').next().unwrap_or("");
    if name.is_empty() {
        return (None, String::new());
    }
    match name.parse::<u32>() {
        Ok(uid) => (Some(i64::from(uid)), String::new()),
        Err(_) => (None, name.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn manifest_json(layer_mt: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{MT_OCI_MANIFEST}","config":{{"mediaType":"{MT_OCI_CONFIG}","digest":"{}","size":10}},"layers":[{{"mediaType":"{layer_mt}","digest":"{}","size":20}}]}}"#,
            d('a'),
            d('b')
        )
    }

    #[test]
    fn parses_oci_and_docker_manifests() {
        let m =
            parse_document(manifest_json("application/vnd.oci.image.layer.v1.tar+zstd").as_bytes())
                .unwrap();
        let Document::Manifest(m) = m else { panic!() };
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.config.size, 10);
        let docker = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MT_DOCKER_MANIFEST}","config":{{"mediaType":"{MT_DOCKER_CONFIG}","digest":"{}","size":10}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":20}}]}}"#,
            d('a'),
            d('c')
        );
        assert!(matches!(
            parse_document(docker.as_bytes()).unwrap(),
            Document::Manifest(_)
        ));
    }

    #[test]
    fn refuses_hostile_documents() {
        assert!(matches!(
            parse_document(manifest_json("application/x-evil").as_bytes()),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
        assert_eq!(
            parse_document(br#"{"schemaVersion":1,"fsLayers":[]}"#),
            Err(ManifestError::Schema1)
        );
        let bad_digest = manifest_json("application/vnd.oci.image.layer.v1.tar")
            .replace(&d('b'), "sha256:../../x");
        assert!(matches!(
            parse_document(bad_digest.as_bytes()),
            Err(ManifestError::Digest { .. })
        ));
        let neg = manifest_json("application/vnd.oci.image.layer.v1.tar")
            .replace("\"size\":20", "\"size\":-1");
        assert!(matches!(
            parse_document(neg.as_bytes()),
            Err(ManifestError::Malformed { .. })
        ));
        assert!(matches!(
            parse_document(&vec![b' '; MAX_MANIFEST_BYTES + 1]),
            Err(ManifestError::TooLarge { .. })
        ));
        assert!(matches!(
            parse_document(b"null"),
            Err(ManifestError::Malformed { .. })
        ));
        let helm = manifest_json("application/vnd.oci.image.layer.v1.tar")
            .replace(MT_OCI_CONFIG, "application/vnd.cncf.helm.config.v1+json");
        assert!(matches!(
            parse_document(helm.as_bytes()),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn selects_platform() {
        let entry = |c: char, arch: &str, variant: &str| IndexEntry {
            descriptor: Descriptor {
                media_type: MT_OCI_MANIFEST.into(),
                digest: Digest::parse(&d(c)).unwrap(),
                size: 1,
            },
            platform: Some(Platform {
                os: "linux".into(),
                architecture: arch.into(),
                variant: variant.into(),
            }),
        };
        let entries = vec![
            entry('a', "arm", "v6"),
            entry('b', "arm", "v7"),
            entry('c', "amd64", ""),
            entry('e', "arm64", ""),
        ];
        let p = |a: &str, v: &str| Platform {
            os: "linux".into(),
            architecture: a.into(),
            variant: v.into(),
        };
        assert_eq!(
            select_platform(&entries, &p("amd64", "")).unwrap().as_str(),
            d('c')
        );
        assert_eq!(
            select_platform(&entries, &p("arm", "v7")).unwrap().as_str(),
            d('b')
        );
        assert_eq!(
            select_platform(&entries, &p("arm64", "v8"))
                .unwrap()
                .as_str(),
            d('e')
        );
        assert!(matches!(
            select_platform(&entries, &p("s390x", "")),
            Err(ManifestError::NoMatchingPlatform(_))
        ));
    }

    #[test]
    fn parses_index_without_media_type() {
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{MT_OCI_MANIFEST}","digest":"{}","size":5,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            d('a')
        );
        let Document::Index(e) = parse_document(idx.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(e[0].platform.as_ref().unwrap().architecture, "amd64");
    }

    #[test]
    fn config_and_user() {
        let cfg = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"User":"1000:1000","Labels":{{"a":"b"}}}},"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            d('f')
        );
        let c = parse_config(cfg.as_bytes(), 1).unwrap();
        assert_eq!(c.user, "1000:1000");
        assert_eq!(c.labels["a"], "b");
        assert!(matches!(
            parse_config(cfg.as_bytes(), 2),
            Err(ManifestError::LayerCountMismatch { .. })
        ));
        assert_eq!(split_user("1000:1000"), (Some(1000), String::new()));
        assert_eq!(split_user("nobody"), (None, "nobody".into()));
        assert_eq!(split_user(""), (None, String::new()));
        assert_eq!(split_user("99999999999"), (None, "99999999999".into()));
    }
}
