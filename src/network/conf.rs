//! CNI network configuration: the first valid file of the conf dir in lexical order (`.conflist`,
//! `.conf`, `.json`), as kubelet and containerd pick it. A single-plugin `.conf` is read as a list
//! of one. Pure parsing plus one directory read.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Largest network config file read.
pub const MAX_CONF_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    /// Each plugin's own JSON object (with `type`).
    pub plugins: Vec<Value>,
    pub source: PathBuf,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfError {
    #[error("no network config found in {0}")]
    NoConfig(PathBuf),
    #[error("network config {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

pub fn parse(text: &str, path: &Path) -> Result<NetworkList, ConfError> {
    let bad = |reason: String| ConfError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let v: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let name = v["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad("no name".into()))?
        .to_owned();
    let cni_version = v["cniVersion"].as_str().unwrap_or("0.4.0").to_owned();
    let plugins: Vec<Value> = match v.get("plugins") {
        Some(Value::Array(list)) => list.clone(),
        Some(_) => return Err(bad("plugins is not a list".into())),
        None => vec![v.clone()],
    };
    if plugins.is_empty() {
        return Err(bad("no plugins".into()));
    }
    for p in &plugins {
        let t = p["type"].as_str().unwrap_or("");
        if t.is_empty() || t.contains('/') || t.starts_with('.') {
            return Err(bad(format!(
                "plugin type {t:?} is not a plugin binary name"
            )));
        }
    }
    Ok(NetworkList {
        name,
        cni_version,
        plugins,
        source: path.to_owned(),
    })
}

impl NetworkList {
    /// As kept with a pod, so DEL uses the config its ADD used even if the conf dir changed.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::json!({"name": self.name, "cniVersion": self.cni_version, "plugins": self.plugins, "source": self.source})
    }

    pub fn from_value(v: &serde_json::Value) -> Option<NetworkList> {
        Some(NetworkList {
            name: v["name"].as_str()?.to_owned(),
            cni_version: v["cniVersion"].as_str()?.to_owned(),
            plugins: v["plugins"].as_array()?.clone(),
            source: PathBuf::from(v["source"].as_str().unwrap_or("")),
        })
    }
}

/// The network to use: the first file (lexical order) that parses.
pub fn load(dir: &Path) -> Result<NetworkList, ConfError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|_| ConfError::NoConfig(dir.to_owned()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "conflist" || x == "conf" || x == "json")
        })
        .collect();
    files.sort();
    let mut last = ConfError::NoConfig(dir.to_owned());
    for f in files {
        let Ok(meta) = std::fs::metadata(&f) else {
            continue;
        };
        if !meta.is_file() || meta.len() > MAX_CONF_BYTES {
            continue;
        }
        match std::fs::read_to_string(&f) {
            Ok(text) => match parse(&text, &f) {
                Ok(n) => return Ok(n),
                Err(e) => last = e,
            },
            Err(e) => {
                last = ConfError::Invalid {
                    path: f.clone(),
                    reason: e.to_string(),
                }
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_single_confs() {
        let l = parse(r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#, Path::new("a")).unwrap();
        assert_eq!((l.name.as_str(), l.plugins.len()), ("n", 2));
        let c = parse(
            r#"{"cniVersion":"0.4.0","name":"one","type":"bridge"}"#,
            Path::new("b"),
        )
        .unwrap();
        assert_eq!(c.plugins[0]["type"], "bridge");
        for bad in [
            r#"{"plugins":[{"type":"x"}]}"#,
            r#"{"name":"n","plugins":[]}"#,
            r#"{"name":"n","type":"../evil"}"#,
            "nope",
        ] {
            assert!(parse(bad, Path::new("c")).is_err(), "{bad}");
        }
    }

    #[test]
    fn first_valid_file_in_lexical_order() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(load(d.path()), Err(ConfError::NoConfig(_))));
        std::fs::write(d.path().join("10-broken.conflist"), "{").unwrap();
        assert!(matches!(load(d.path()), Err(ConfError::Invalid { .. })));
        std::fs::write(
            d.path().join("20-b.conflist"),
            r#"{"name":"b","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("30-a.conf"),
            r#"{"name":"a","type":"bridge"}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("00-ignored.txt"), "x").unwrap();
        assert_eq!(load(d.path()).unwrap().name, "b");
    }
}
