//! Pod networking through CNI plugins, executed as libcni does: the `CNI_*` environment, the
//! network config on stdin, the result on stdout; chained plugins get `prevResult`, DEL runs in
//! reverse order. No maintained Rust CNI client exists, so this module is the client: small and
//! typed (conf.rs, result.rs). Blocking: called from the pod service's blocking context.

pub mod conf;
mod process;
pub mod result;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub use conf::{ConfError, NetworkList};
pub use result::CniResult;

/// The interface name kubelet expects inside the pod.
pub const POD_IFNAME: &str = "eth0";
/// Largest plugin output read (each of stdout and stderr).
const MAX_PLUGIN_OUTPUT: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Conf(#[from] ConfError),
    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    PluginMissing { plugin: String, dirs: String },
    #[error("CNI plugin {plugin} {command} failed: {message}")]
    Plugin {
        plugin: String,
        command: &'static str,
        message: String,
    },
    #[error(
        "CNI plugin {plugin} {command} did not finish within {timeout:?}{}",
        if *output_held { " (it exited, but a process it started still held its output open)" } else { "" }
    )]
    Timeout {
        plugin: String,
        command: &'static str,
        timeout: Duration,
        output_held: bool,
    },
}

#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    pub timeout: Duration,
}

/// What the plugins need to know about the pod.
#[derive(Debug, Clone, Default)]
pub struct PodNet {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub netns: String,
    pub cgroup_path: String,
    /// (container_port, host_port, protocol, host_ip)
    pub port_mappings: Vec<(i32, i32, String, String)>,
    pub dns: Option<Value>,
    /// From the pod's `kubernetes.io/ingress-bandwidth` / `egress-bandwidth` annotations.
    pub bandwidth: Option<Value>,
}

pub struct Network {
    cfg: NetworkConfig,
    /// The node's pod CIDR from kubelet's UpdateRuntimeConfig, passed as `ipRanges`.
    pod_cidr: std::sync::Mutex<Option<String>>,
}

/// Kubernetes quantity ("10M", "1Gi", "500k") → bits per second, as the bandwidth plugin takes.
pub fn parse_bandwidth(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(q.len());
    let (num, unit) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let v = n * mult;
    (v.is_finite() && (1.0..1e15).contains(&v)).then_some(v as u64)
}

/// The bandwidth runtime config from pod annotations, as kubelet's dockershim/containerd read them.
pub fn bandwidth(annotations: &std::collections::HashMap<String, String>) -> Option<Value> {
    let ing = annotations
        .get("kubernetes.io/ingress-bandwidth")
        .and_then(|v| parse_bandwidth(v));
    let eg = annotations
        .get("kubernetes.io/egress-bandwidth")
        .and_then(|v| parse_bandwidth(v));
    if ing.is_none() && eg.is_none() {
        return None;
    }
    let mut b = serde_json::Map::new();
    if let Some(r) = ing {
        b.insert("ingressRate".into(), json!(r));
        b.insert("ingressBurst".into(), json!(u32::MAX));
    }
    if let Some(r) = eg {
        b.insert("egressRate".into(), json!(r));
        b.insert("egressBurst".into(), json!(u32::MAX));
    }
    Some(Value::Object(b))
}

impl Network {
    pub fn new(cfg: NetworkConfig) -> Network {
        Network {
            cfg,
            pod_cidr: std::sync::Mutex::new(None),
        }
    }

    /// kubelet's UpdateRuntimeConfig: the node's pod CIDR (checked at the CRI edge).
    pub fn set_pod_cidr(&self, cidr: &str) {
        *self.pod_cidr.lock().unwrap_or_else(|p| p.into_inner()) =
            (!cidr.is_empty()).then(|| cidr.to_owned());
    }

    /// The network config in force, or why there is none (NetworkReady follows this; the conf
    /// dir is read on every call, so a config that appears later is picked up).
    pub fn config(&self) -> Result<NetworkList, ConfError> {
        conf::load(&self.cfg.conf_dir)
    }

    fn find(&self, plugin: &str) -> Result<PathBuf, NetworkError> {
        self.cfg
            .bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| NetworkError::PluginMissing {
                plugin: plugin.to_owned(),
                dirs: self
                    .cfg
                    .bin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            })
    }

    fn cni_args(pod: &PodNet) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            pod.namespace, pod.name, pod.id, pod.uid
        )
    }

    /// The runtime config a plugin asked for through its `capabilities`.
    fn runtime_config(&self, plugin: &Value, pod: &PodNet) -> Value {
        let caps = &plugin["capabilities"];
        let mut rc = serde_json::Map::new();
        if caps["portMappings"] == json!(true) && !pod.port_mappings.is_empty() {
            let pm: Vec<Value> = pod
                .port_mappings
                .iter()
                .map(|(c, h, proto, ip)| {
                    let mut m = json!({"containerPort": c, "hostPort": h, "protocol": proto});
                    if !ip.is_empty() {
                        m["hostIP"] = json!(ip);
                    }
                    m
                })
                .collect();
            rc.insert("portMappings".into(), Value::Array(pm));
        }
        if caps["cgroupPath"] == json!(true) && !pod.cgroup_path.is_empty() {
            rc.insert("cgroupPath".into(), json!(pod.cgroup_path));
        }
        if caps["dns"] == json!(true) {
            if let Some(d) = &pod.dns {
                rc.insert("dns".into(), d.clone());
            }
        }
        if caps["bandwidth"] == json!(true) {
            if let Some(b) = &pod.bandwidth {
                rc.insert("bandwidth".into(), b.clone());
            }
        }
        if caps["ipRanges"] == json!(true) {
            if let Some(cidr) = self
                .pod_cidr
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                rc.insert("ipRanges".into(), json!([[{"subnet": cidr}]]));
            }
        }
        Value::Object(rc)
    }

    fn exec(
        &self,
        list: &NetworkList,
        plugin: &Value,
        command: &'static str,
        pod: &PodNet,
        prev: Option<&Value>,
    ) -> Result<Option<Value>, NetworkError> {
        let ty = plugin["type"].as_str().unwrap_or_default().to_owned();
        let bin = self.find(&ty)?;
        let conf = self.plugin_conf(list, plugin, pod, prev);
        let fail = |message: String| NetworkError::Plugin {
            plugin: ty.clone(),
            command,
            message,
        };
        let mut child = self
            .command(&bin, command, pod)
            .spawn()
            .map_err(|e| fail(format!("spawning {}: {e}", bin.display())))?;
        let input = conf.to_string();
        let deadline = Instant::now() + self.cfg.timeout;
        let done = process::communicate(&mut child, input.as_bytes(), MAX_PLUGIN_OUTPUT, deadline)
            .map_err(|e| fail(e.to_string()))?
            .map_err(|how| NetworkError::Timeout {
                plugin: ty.clone(),
                command,
                timeout: self.cfg.timeout,
                output_held: how == process::Overran::OutputHeld,
            })?;
        let (status, stdout, stderr) = (done.status, done.stdout, done.stderr);
        if !status.success() {
            return Err(fail(failure_message(status, &stdout, &stderr)));
        }
        if command == "DEL" || stdout.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(None);
        }
        serde_json::from_slice(&stdout)
            .map(Some)
            .map_err(|e| fail(format!("bad result: {e}")))
    }

    /// What one plugin of `list` reads on stdin: its own config with the list's name and
    /// version, the previous plugin's result and the runtime config it declares capabilities for.
    fn plugin_conf(
        &self,
        list: &NetworkList,
        plugin: &Value,
        pod: &PodNet,
        prev: Option<&Value>,
    ) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = json!(list.name);
        conf["cniVersion"] = json!(list.cni_version);
        if let Some(p) = prev.filter(|p| !p.is_null()) {
            conf["prevResult"] = p.clone();
        }
        let rc = self.runtime_config(plugin, pod);
        if rc.as_object().is_some_and(|m| !m.is_empty()) {
            conf["runtimeConfig"] = rc;
        }
        conf
    }

    /// The plugin `bin` run for `command` on `pod`: the `CNI_*` environment and nothing else,
    /// piped stdio, in a process group of its own.
    fn command(&self, bin: &Path, command: &'static str, pod: &PodNet) -> Command {
        let path = std::env::join_paths(&self.cfg.bin_dirs).unwrap_or_default();
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.id)
            .env("CNI_NETNS", &pod.netns)
            .env("CNI_IFNAME", POD_IFNAME)
            .env("CNI_ARGS", Self::cni_args(pod))
            .env("CNI_PATH", &path)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        cmd
    }

    /// ADD through every plugin, each given the previous result. On failure, what was added is
    /// deleted again (reverse order) and the error names the plugin.
    pub fn add(&self, pod: &PodNet) -> Result<(NetworkList, Value), NetworkError> {
        let list = self.config()?;
        let result = self.add_with(&list, pod)?;
        Ok((list, result))
    }

    /// ADD with a network list loaded before (and recorded by the caller).
    pub fn add_with(&self, list: &NetworkList, pod: &PodNet) -> Result<Value, NetworkError> {
        let list = list.clone();
        let mut prev: Option<Value> = None;
        for (i, p) in list.plugins.iter().enumerate() {
            match self.exec(&list, p, "ADD", pod, prev.as_ref()) {
                Ok(r) => prev = r.or(prev),
                Err(e) => {
                    for q in list.plugins[..=i].iter().rev() {
                        if let Err(de) = self.exec(&list, q, "DEL", pod, prev.as_ref()) {
                            tracing::warn!(pod = %pod.id, error = %de, "CNI DEL after a failed ADD");
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(prev.unwrap_or(json!({})))
    }

    /// DEL through every plugin in reverse order with the last ADD result; idempotent (plugins
    /// must accept a DEL for what is already gone, also when the netns no longer exists).
    pub fn del(
        &self,
        list: &NetworkList,
        pod: &PodNet,
        result: &Value,
    ) -> Result<(), NetworkError> {
        let mut first = None;
        for p in list.plugins.iter().rev() {
            if let Err(e) = self.exec(list, p, "DEL", pod, Some(result)) {
                tracing::warn!(pod = %pod.id, error = %e, "CNI DEL");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Why a plugin failed: its CNI error body on stdout, else its exit status and (the start of)
/// whatever it printed, stderr first.
fn failure_message(status: ExitStatus, stdout: &[u8], stderr: &[u8]) -> String {
    match serde_json::from_slice::<result::CniErrorBody>(stdout) {
        Ok(b) if !b.msg.is_empty() => format!(
            "{} (code {}{})",
            b.msg,
            b.code,
            if b.details.is_empty() {
                String::new()
            } else {
                format!(": {}", b.details)
            }
        ),
        _ => {
            let text = String::from_utf8_lossy(if stderr.is_empty() { stdout } else { stderr })
                .trim()
                .to_owned();
            format!("{status}: {}", text.chars().take(500).collect::<String>())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Network {
        Network::new(NetworkConfig {
            conf_dir: "/nonexistent".into(),
            bin_dirs: vec![],
            timeout: Duration::from_secs(1),
        })
    }

    #[test]
    fn runtime_config_follows_capabilities() {
        let n = net();
        n.set_pod_cidr("10.244.1.0/24");
        let pod = PodNet {
            port_mappings: vec![(80, 8080, "tcp".into(), String::new())],
            cgroup_path: "/kubepods/pod1".into(),
            bandwidth: bandwidth(
                &[(
                    "kubernetes.io/ingress-bandwidth".to_owned(),
                    "10M".to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        };
        let all = json!({"capabilities": {"portMappings": true, "cgroupPath": true, "bandwidth": true, "ipRanges": true}});
        let rc = n.runtime_config(&all, &pod);
        assert_eq!(rc["portMappings"][0]["hostPort"], 8080);
        assert_eq!(rc["cgroupPath"], "/kubepods/pod1");
        assert_eq!(rc["bandwidth"]["ingressRate"], 10_000_000);
        assert_eq!(rc["ipRanges"][0][0]["subnet"], "10.244.1.0/24");
        assert_eq!(
            n.runtime_config(&json!({"type": "bridge"}), &pod),
            json!({}),
            "no capabilities, no runtimeConfig"
        );
    }

    #[test]
    fn bandwidth_quantities() {
        assert_eq!(parse_bandwidth("1M"), Some(1_000_000));
        assert_eq!(parse_bandwidth("2Ki"), Some(2048));
        assert_eq!(parse_bandwidth("1.5G"), Some(1_500_000_000));
        assert_eq!(parse_bandwidth("fast"), None);
        assert_eq!(parse_bandwidth("-1M"), None);
    }
}
