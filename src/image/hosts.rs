//! Per-registry host configuration in containerd's `hosts.toml` format (a directory per host under
//! `registry.config_path`, plus `_default`), so operators bring their existing files unchanged.
//! Reads config files only; never talks to the network.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Largest hosts.toml or CA file read.
pub const MAX_HOSTS_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// One place to fetch from, in the order to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// `host[:port]` as the HTTP client addresses it.
    pub host: String,
    /// May resolve tags to digests (a mirror without it serves digest fetches only).
    pub resolve: bool,
    pub pull: bool,
    /// PEM CA bundles to trust in addition to the system roots.
    pub ca_pem: Vec<Vec<u8>>,
    pub skip_verify: bool,
    /// The upstream server itself (not a mirror): the only endpoint credentials are sent to.
    pub upstream: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHostsFile {
    server: Option<String>,
    #[serde(flatten)]
    server_opts: RawHostOpts,
    #[serde(default)]
    host: toml::Table,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHostOpts {
    capabilities: Option<Vec<String>>,
    ca: Option<StringOrList>,
    client: Option<toml::Value>,
    skip_verify: Option<bool>,
    header: Option<toml::Table>,
    override_path: Option<bool>,
    dial_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

/// The registry name a hosts dir is looked up by, and its default upstream server.
fn default_server(registry: &str) -> (Scheme, String) {
    if registry == "docker.io" {
        return (Scheme::Https, "registry-1.docker.io".to_owned());
    }
    // Docker and containerd's defaults treat loopback registries as plain HTTP.
    let host = registry.rsplit_once(':').map_or(registry, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            registry
        }
    });
    let loopback =
        host == "localhost" || host.starts_with("127.") || host == "[::1]" || host == "::1";
    (
        if loopback {
            Scheme::Http
        } else {
            Scheme::Https
        },
        registry.to_owned(),
    )
}

fn parse_url(url: &str, path: &Path) -> Result<(Scheme, String), HostsError> {
    let bad = |m: String| HostsError::Parse {
        path: path.to_owned(),
        message: m,
    };
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else {
        return Err(bad(format!(
            "host {url:?} must start with http:// or https://"
        )));
    };
    let rest = rest.trim_end_matches('/');
    let host = rest.strip_suffix("/v2").unwrap_or(rest);
    if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
        return Err(bad(format!(
            "host {url:?}: only scheme://host[:port][/v2] is supported (no path prefix)"
        )));
    }
    Ok((scheme, host.to_owned()))
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, HostsError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|source| HostsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut buf = Vec::new();
    f.take(MAX_HOSTS_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|source| HostsError::Read {
            path: path.to_owned(),
            source,
        })?;
    if buf.len() as u64 > MAX_HOSTS_FILE_BYTES {
        return Err(HostsError::Parse {
            path: path.to_owned(),
            message: format!("larger than {MAX_HOSTS_FILE_BYTES} bytes"),
        });
    }
    Ok(buf)
}

fn endpoint(
    scheme: Scheme,
    host: String,
    opts: RawHostOpts,
    dir: &Path,
    file: &Path,
    upstream: bool,
) -> Result<Endpoint, HostsError> {
    let caps = opts
        .capabilities
        .unwrap_or_else(|| vec!["pull".into(), "resolve".into(), "push".into()]);
    for c in &caps {
        if !matches!(c.as_str(), "pull" | "resolve" | "push") {
            return Err(HostsError::Parse {
                path: file.to_owned(),
                message: format!("unknown capability {c:?} for host {host}"),
            });
        }
    }
    if opts.override_path == Some(true) {
        return Err(HostsError::Parse {
            path: file.to_owned(),
            message: format!("override_path for host {host} is not supported"),
        });
    }
    if opts.client.is_some() {
        return Err(HostsError::Parse {
            path: file.to_owned(),
            message: format!("client certificates for host {host} are not supported"),
        });
    }
    if opts.header.as_ref().is_some_and(|h| !h.is_empty()) {
        return Err(HostsError::Parse {
            path: file.to_owned(),
            message: format!("custom headers for host {host} are not supported"),
        });
    }
    let _ = opts.dial_timeout;
    let ca_paths = match opts.ca {
        None => vec![],
        Some(StringOrList::One(s)) => vec![s],
        Some(StringOrList::Many(v)) => v,
    };
    let ca_pem = ca_paths
        .iter()
        .map(|p| read_bounded(&dir.join(p)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Endpoint {
        scheme,
        host,
        resolve: caps.iter().any(|c| c == "resolve"),
        pull: caps.iter().any(|c| c == "pull"),
        ca_pem,
        skip_verify: opts.skip_verify.unwrap_or(false),
        upstream,
    })
}

/// Parse one hosts.toml. `dir` anchors relative CA paths.
pub fn parse_hosts_file(
    text: &str,
    registry: &str,
    dir: &Path,
    file: &Path,
) -> Result<Vec<Endpoint>, HostsError> {
    let raw: RawHostsFile = toml::from_str(text).map_err(|e| HostsError::Parse {
        path: file.to_owned(),
        message: e.to_string().trim().replace('\n', " "),
    })?;
    let mut out = Vec::new();
    // toml::Table keeps file order (preserve_order is on in toml's default features? not
    // guaranteed), so sort mirrors by their position in the text, as containerd tries them.
    let mut hosts: Vec<(usize, String, toml::Value)> = raw
        .host
        .into_iter()
        .map(|(k, v)| (text.find(&format!("\"{k}\"")).unwrap_or(usize::MAX), k, v))
        .collect();
    hosts.sort_by_key(|(pos, _, _)| *pos);
    for (_, url, value) in hosts {
        let opts: RawHostOpts =
            value
                .try_into()
                .map_err(|e: toml::de::Error| HostsError::Parse {
                    path: file.to_owned(),
                    message: format!("host {url:?}: {}", e.to_string().trim().replace('\n', " ")),
                })?;
        let (scheme, host) = parse_url(&url, file)?;
        out.push(endpoint(scheme, host, opts, dir, file, false)?);
    }
    let (scheme, host) = match raw.server {
        Some(s) => parse_url(&s, file)?,
        None => default_server(registry),
    };
    out.push(endpoint(scheme, host, raw.server_opts, dir, file, true)?);
    Ok(out)
}

/// Endpoints for `registry`: `<config_path>/<registry>/hosts.toml`, else `_default/hosts.toml`,
/// else the registry itself. Docker-style `*.crt` files in the host dir are trusted CAs too.
pub fn resolve(config_path: &Path, registry: &str) -> Result<Vec<Endpoint>, HostsError> {
    // `registry` was validated by the reference grammar: no `/`, no `..` component.
    for dir in [config_path.join(registry), config_path.join("_default")] {
        let file = dir.join("hosts.toml");
        let mut extra_ca = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "crt") {
                    extra_ca.push(read_bounded(&p)?);
                }
            }
        }
        let eps = match read_bounded(&file) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| HostsError::Parse {
                    path: file.clone(),
                    message: "not UTF-8".into(),
                })?;
                parse_hosts_file(&text, registry, &dir, &file)?
            }
            Err(HostsError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && !extra_ca.is_empty() =>
            {
                let (scheme, host) = default_server(registry);
                vec![default_endpoint(scheme, host)]
            }
            Err(HostsError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        return Ok(eps
            .into_iter()
            .map(|mut e| {
                e.ca_pem.extend(extra_ca.iter().cloned());
                e
            })
            .collect());
    }
    let (scheme, host) = default_server(registry);
    Ok(vec![default_endpoint(scheme, host)])
}

fn default_endpoint(scheme: Scheme, host: String) -> Endpoint {
    Endpoint {
        scheme,
        host,
        resolve: true,
        pull: true,
        ca_pem: vec![],
        skip_verify: false,
        upstream: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, registry: &str) -> Result<Vec<Endpoint>, HostsError> {
        parse_hosts_file(
            text,
            registry,
            Path::new("/nonexistent"),
            Path::new("/x/hosts.toml"),
        )
    }

    #[test]
    fn defaults_without_file() {
        let d = tempfile::tempdir().unwrap();
        let eps = resolve(d.path(), "docker.io").unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].host, "registry-1.docker.io");
        assert_eq!(eps[0].scheme, Scheme::Https);
        let eps = resolve(d.path(), "127.0.0.1:5000").unwrap();
        assert_eq!(eps[0].scheme, Scheme::Http);
        let eps = resolve(d.path(), "example.com:5000").unwrap();
        assert_eq!(eps[0].scheme, Scheme::Https);
    }

    #[test]
    fn mirrors_in_file_order_then_server() {
        let text = r#"
server = "https://registry-1.docker.io"

[host."https://zmirror.example:5000"]
  capabilities = ["pull", "resolve"]
  skip_verify = true

[host."http://amirror.example/v2"]
  capabilities = ["pull"]
"#;
        let eps = parse(text, "docker.io").unwrap();
        let hosts: Vec<_> = eps.iter().map(|e| e.host.as_str()).collect();
        assert_eq!(
            hosts,
            [
                "zmirror.example:5000",
                "amirror.example",
                "registry-1.docker.io"
            ]
        );
        assert!(eps[0].skip_verify && eps[0].resolve && !eps[0].upstream);
        assert_eq!(eps[1].scheme, Scheme::Http);
        assert!(!eps[1].resolve && eps[1].pull);
        assert!(eps[2].upstream);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse("serverr = \"x\"\n", "r").unwrap_err().to_string();
        assert!(e.contains("serverr"), "{e}");
        let e = parse("server = \"ftp://x\"\n", "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http:// or https://"), "{e}");
        let e = parse("[host.\"https://m\"]\ncapabilities = [\"fly\"]\n", "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fly"), "{e}");
        let e = parse("[host.\"https://m\"]\nca = \"missing.pem\"\n", "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }

    #[test]
    fn reads_ca_and_default_dir() {
        let d = tempfile::tempdir().unwrap();
        let def = d.path().join("_default");
        std::fs::create_dir_all(&def).unwrap();
        std::fs::write(def.join("ca.pem"), b"PEM").unwrap();
        std::fs::write(
            def.join("hosts.toml"),
            "server = \"https://fallback.example\"\nca = \"ca.pem\"\n",
        )
        .unwrap();
        let eps = resolve(d.path(), "quay.io").unwrap();
        assert_eq!(eps[0].host, "fallback.example");
        assert_eq!(eps[0].ca_pem, vec![b"PEM".to_vec()]);
        let own = d.path().join("quay.io");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(own.join("extra.crt"), b"CRT").unwrap();
        let eps = resolve(d.path(), "quay.io").unwrap();
        assert_eq!(eps[0].host, "quay.io");
        assert_eq!(eps[0].ca_pem, vec![b"CRT".to_vec()]);
    }
}
