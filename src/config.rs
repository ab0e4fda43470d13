//! kelsond configuration: embedded defaults, an optional TOML file, and command-line overrides.
//! Never touches the filesystem beyond reading the one config file it is given.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default config file; a missing default file means "all defaults", a missing explicit one is an error.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/kelson/config.toml";

/// The effective configuration. Every key is optional in the file (`#[serde(default)]`), unknown keys
/// are refused (`deny_unknown_fields`) so a typo never silently falls back to a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent data: content store, snapshots, database.
    pub root: PathBuf,
    /// Runtime state: socket, shim sockets, pinned namespaces. Lost on reboot by design.
    pub state: PathBuf,
    pub grpc: GrpcConfig,
    pub log_level: String,
    pub log_format: LogFormat,
    pub cgroup_driver: CgroupDriver,
    /// The kelson-shim binary; empty: next to kelsond, else on PATH.
    pub shim_path: String,
    pub container: ContainerConfig,
    pub image: ImageConfig,
    pub registry: RegistryConfig,
    pub network: NetworkConfig,
    pub metrics: MetricsConfig,
    pub streaming: StreamingConfig,
    /// RuntimeClass handlers by name (`[runtimes.<handler>]`). The empty handler — what kubelet
    /// sends for pods without a RuntimeClass — is always the native one.
    pub runtimes: std::collections::BTreeMap<String, RuntimeHandler>,
}

/// How a RuntimeClass handler runs containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeType {
    /// kelson's own container creation (the container library in the shim's engine).
    Native,
    /// An OCI runtime binary (runc, crun, youki, runsc, …) driven through its command line by
    /// the same shim.
    Oci,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeHandler {
    #[serde(rename = "type")]
    pub runtime_type: RuntimeType,
    /// The OCI runtime binary (absolute); `oci` only.
    pub path: PathBuf,
    /// Its state root (`--root`); empty: `<state>/runtimes/<handler>`.
    pub root: PathBuf,
    /// Extra global arguments before each subcommand (e.g. runsc's `--platform=systrap`).
    pub args: Vec<String>,
    /// Pod annotations passed on to the runtime in each container's OCI spec (containerd's
    /// `pod_annotations`): keys, or patterns where `*` matches any run of characters but `/`.
    /// None by default: runtimes act on annotations (crun on `run.oci.*`).
    pub pod_annotations: Vec<String>,
    /// Container annotations passed on the same way (containerd's `container_annotations`).
    pub container_annotations: Vec<String>,
}

/// Longest annotation pattern in a handler's allow-lists (an annotation key's own bound).
pub const MAX_ANNOTATION_PATTERN: usize = 317;

impl Default for RuntimeHandler {
    fn default() -> Self {
        RuntimeHandler {
            runtime_type: RuntimeType::Native,
            path: PathBuf::new(),
            root: PathBuf::new(),
            args: Vec::new(),
            pod_annotations: Vec::new(),
            container_annotations: Vec::new(),
        }
    }
}

impl RuntimeHandler {
    /// The annotations a container's OCI spec carries for this handler: the pod's and the
    /// container's that its allow-lists name (the container's win on a shared key).
    pub fn passed_annotations(
        &self,
        pod: &HashMap<String, String>,
        container: &HashMap<String, String>,
    ) -> BTreeMap<String, String> {
        let pick = |from: &HashMap<String, String>, allowed: &[String]| {
            from.iter()
                .filter(|(k, _)| allowed.iter().any(|p| glob_match(p, k)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        out.extend(pick(pod, &self.pod_annotations));
        out.extend(pick(container, &self.container_annotations));
        out
    }
}

/// `pattern` matches `key` whole; `*` stands for any run of characters other than `/` (as a
/// shell glob over one path segment). Hand-written: a dozen lines, no crate needed.
fn glob_match(pattern: &str, key: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else {
        return pattern == key;
    };
    let Some(tail) = key.strip_prefix(head) else {
        return false;
    };
    // The star takes 0, 1, 2, … characters of `tail` (never a '/'), then the rest must match.
    for (i, c) in tail.char_indices() {
        if glob_match(rest, &tail[i..]) {
            return true;
        }
        if c == '/' {
            return false;
        }
    }
    glob_match(rest, "")
}

/// Longest handler name (a RuntimeClass handler is a DNS label).
pub const MAX_HANDLER_NAME: usize = 63;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// Unix socket path kubelet connects to.
    pub address: PathBuf,
    /// Group owning the socket (mode 0660); none means root only.
    pub gid: Option<u32>,
    /// Largest gRPC message accepted (answers may be as large as an ExecSync answer at its
    /// caps, 2 × 16 MiB, when that is more).
    pub max_message_bytes: usize,
    /// Calls of one connection handled at once; more wait their turn, so one client's flood
    /// cannot take the daemon from the others.
    pub max_concurrent_calls_per_connection: usize,
    /// HTTP/2 streams a connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

impl CgroupDriver {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupDriver::Cgroupfs => "cgroupfs",
            CgroupDriver::Systemd => "systemd",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageConfig {
    /// Images never removed by garbage collection and reported `pinned` to kubelet.
    pub pinned: Vec<String>,
    /// Layers downloaded at once per pull (each staged, verified, then unpacked).
    pub max_concurrent_downloads: usize,
    /// A pull that receives no byte for this long fails; a slow but moving pull never does.
    #[serde(with = "humantime_serde_compat")]
    pub pull_progress_timeout: Duration,
    /// The whole of a pull's registry traffic must be done within this, however steadily the
    /// bytes come (a drip-feeding registry cannot hold a pull forever).
    #[serde(with = "humantime_serde_compat")]
    pub pull_deadline: Duration,
    /// Refuse a layer whose uncompressed stream, or what it writes (apparent sizes, sparse
    /// files at their full size, plus a fixed cost per entry), exceeds this.
    pub max_layer_bytes: u64,
    /// Refuse an image whose layers, as one pull unpacks them, write more than this in all.
    pub max_image_bytes: u64,
    /// Refuse an image whose layers, as one pull unpacks them, have more entries (inodes).
    pub max_image_entries: u64,
    pub gc: ImageGcConfig,
}

/// The optional image garbage-collection policy (unreferenced content is always collected).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageGcConfig {
    pub enabled: bool,
    /// Image filesystem use (percent of its capacity) at which images are removed…
    pub high_threshold_percent: u8,
    /// …until use is back under this.
    pub low_threshold_percent: u8,
    /// Remove images unused for longer than this whatever the disk use; 0: never.
    #[serde(with = "humantime_serde_compat")]
    pub max_unused_age: Duration,
    /// Never remove an image pulled or used more recently than this.
    #[serde(with = "humantime_serde_compat")]
    pub min_age: Duration,
    /// How often the policy is checked (also after every pull).
    #[serde(with = "humantime_serde_compat")]
    pub interval: Duration,
}

impl Default for ImageGcConfig {
    fn default() -> Self {
        // Above kubelet's defaults (85/80), so on a node where kubelet manages images it acts
        // first and kelson is the backstop.
        ImageGcConfig {
            enabled: false,
            high_threshold_percent: 90,
            low_threshold_percent: 85,
            max_unused_age: Duration::ZERO,
            min_age: Duration::from_secs(2 * 60),
            interval: Duration::from_secs(5 * 60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerConfig {
    /// Run every container's process under kelson-init (PID 1 that reaps orphans).
    pub init: bool,
    /// The static kelson-init binary; empty: next to kelsond.
    pub init_path: String,
    /// Pod/container annotations kelson acts on; any other `kelson.io/*` annotation is data only.
    pub allowed_annotations: Vec<String>,
    /// Confines `Localhost` seccomp profiles to this directory; empty (the default): the
    /// absolute path kubelet sends is read wherever it is, as containerd and CRI-O do.
    pub seccomp_profile_root: PathBuf,
}

impl ContainerConfig {
    /// The Localhost seccomp confinement root, if one is configured.
    pub fn seccomp_root(&self) -> Option<&Path> {
        (!self.seccomp_profile_root.as_os_str().is_empty())
            .then_some(self.seccomp_profile_root.as_path())
    }
}

impl Default for ContainerConfig {
    fn default() -> Self {
        ContainerConfig {
            init: false,
            init_path: String::new(),
            allowed_annotations: vec![INIT_ANNOTATION.to_owned()],
            seccomp_profile_root: PathBuf::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// CNI network configs; the first valid file in lexical order is used.
    pub conf_dir: PathBuf,
    /// Where CNI plugin binaries are looked up, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// A plugin call that takes longer is killed and the pod creation fails.
    #[serde(with = "humantime_serde_compat")]
    pub plugin_timeout: Duration,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            plugin_timeout: Duration::from_secs(60),
        }
    }
}

/// kelsond's own Prometheus endpoint (`GET /metrics`); off unless an address is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` to listen on, e.g. `127.0.0.1:9390`; empty: no endpoint.
    pub address: String,
}

/// The streaming server for exec/attach/port-forward URLs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// `ip:port` to listen on; port 0 picks a free one. Loopback by default: kubelet, which
    /// proxies the API server's streams to it, runs on the same node.
    pub address: String,
    /// How long a URL handed out by Exec/Attach/PortForward stays valid (each is single-use).
    #[serde(with = "humantime_serde_compat")]
    pub token_ttl: Duration,
    /// Sessions at once; more are refused with 503 until one ends.
    pub max_sessions: usize,
    /// PEM certificate chain and private key: serve HTTPS (URLs are `https://…`). Both or
    /// neither; empty: plain HTTP (on loopback by default).
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: "127.0.0.1:0".into(),
            token_ttl: Duration::from_secs(60),
            max_sessions: 128,
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
        }
    }
}

/// `"true"`/`"false"` on a pod or container turns the built-in init on or off for it.
pub const INIT_ANNOTATION: &str = "kelson.io/init";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Directory of per-host `hosts.toml` files, in containerd's format.
    pub config_path: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/var/lib/kelson"),
            state: PathBuf::from("/run/kelson"),
            grpc: GrpcConfig::default(),
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
            cgroup_driver: CgroupDriver::Cgroupfs,
            shim_path: String::new(),
            container: ContainerConfig::default(),
            image: ImageConfig::default(),
            registry: RegistryConfig::default(),
            network: NetworkConfig::default(),
            metrics: MetricsConfig::default(),
            streaming: StreamingConfig::default(),
            runtimes: Default::default(),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            address: PathBuf::from("/run/kelson/kelson.sock"),
            gid: None,
            // kubelet's own default client limit is 16 MiB.
            max_message_bytes: 16 * 1024 * 1024,
            // kubelet runs every pod's probes on one connection, and a node of 110 pods may
            // probe a few hundred containers at once.
            max_concurrent_calls_per_connection: 256,
            max_concurrent_streams: 512,
        }
    }
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            pinned: Vec::new(),
            max_concurrent_downloads: 3,
            // containerd's image_pull_progress_timeout default.
            pull_progress_timeout: Duration::from_secs(5 * 60),
            // Room for a multi-GiB image over a slow link; kubelet itself sets no pull deadline.
            pull_deadline: Duration::from_secs(60 * 60),
            max_layer_bytes: 64 << 30,
            max_image_bytes: 128 << 30,
            max_image_entries: 4_000_000,
            gc: ImageGcConfig::default(),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            config_path: PathBuf::from("/etc/kelson/certs.d"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Overrides given on the command line, as containerd names them.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub root: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub address: Option<PathBuf>,
    pub log_level: Option<String>,
}

impl Config {
    /// Parse a TOML document; unknown keys and bad values name the key.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        let mut cfg = cfg;
        cfg.socket_follows_state();
        cfg.validate()?;
        Ok(cfg)
    }

    /// The socket lives in the state dir unless placed explicitly.
    fn socket_follows_state(&mut self) {
        if self.grpc.address == GrpcConfig::default().address
            && self.state != Config::default().state
        {
            self.grpc.address = self.state.join("kelson.sock");
        }
    }

    /// Load `path`; when `explicit` is false a missing file means the embedded defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::from_toml(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    pub fn apply(&mut self, o: Overrides) -> Result<(), ConfigError> {
        if let Some(root) = o.root {
            self.root = root;
        }
        if let Some(state) = o.state {
            self.state = state;
            self.socket_follows_state();
        }
        if let Some(address) = o.address {
            self.grpc.address = address;
        }
        if let Some(level) = o.log_level {
            self.log_level = level;
        }
        self.validate()
    }

    /// The handler a RuntimeClass names: "" is the native default; None when unknown.
    pub fn handler(&self, name: &str) -> Option<RuntimeHandler> {
        if name.is_empty() {
            return Some(RuntimeHandler::default());
        }
        self.runtimes.get(name).cloned()
    }

    /// An OCI handler's state root.
    pub fn handler_root(&self, name: &str, h: &RuntimeHandler) -> PathBuf {
        if h.root.as_os_str().is_empty() {
            self.state.join("runtimes").join(name)
        } else {
            h.root.clone()
        }
    }

    /// Every key checked, a step per section, in a fixed order: the first problem is reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_paths()?;
        self.image.gc.check()?;
        self.metrics.check()?;
        self.streaming.check()?;
        for (name, h) in &self.runtimes {
            h.check(name)?;
        }
        if !valid_log_filter(&self.log_level) {
            return Err(ConfigError::Invalid {
                key: "log_level",
                message: format!("{:?} is not a log level or filter", self.log_level),
            });
        }
        self.image.check_pulls()?;
        if self.grpc.max_message_bytes < 4096 {
            return Err(ConfigError::Invalid {
                key: "grpc.max_message_bytes",
                message: "must be at least 4096".into(),
            });
        }
        if !(1..=65_536).contains(&self.grpc.max_concurrent_calls_per_connection) {
            return Err(ConfigError::Invalid {
                key: "grpc.max_concurrent_calls_per_connection",
                message: "must be 1 to 65536".into(),
            });
        }
        if (self.grpc.max_concurrent_streams as usize)
            < self.grpc.max_concurrent_calls_per_connection
        {
            return Err(ConfigError::Invalid {
                key: "grpc.max_concurrent_streams",
                message: "must be at least grpc.max_concurrent_calls_per_connection".into(),
            });
        }
        self.image.check_pinned()
    }

    /// The directories and files kelsond uses: absolute, root and state apart, TLS cert and
    /// key as a pair.
    fn check_paths(&self) -> Result<(), ConfigError> {
        for (key, p) in [
            ("root", &self.root),
            ("state", &self.state),
            ("grpc.address", &self.grpc.address),
            ("registry.config_path", &self.registry.config_path),
        ] {
            if !p.is_absolute() {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{} is not an absolute path", p.display()),
                });
            }
        }
        if self.root == self.state {
            return Err(ConfigError::Invalid {
                key: "state",
                message: "must differ from root".into(),
            });
        }
        let st = &self.streaming;
        if st.tls_cert_file.as_os_str().is_empty() != st.tls_key_file.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "streaming.tls_cert_file",
                message: "tls_cert_file and tls_key_file go together".into(),
            });
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

impl ImageGcConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if !(self.low_threshold_percent < self.high_threshold_percent
            && self.high_threshold_percent <= 100)
        {
            return Err(ConfigError::Invalid {
                key: "image.gc.high_threshold_percent",
                message: format!(
                    "need low_threshold_percent ({}) < high_threshold_percent ({}) <= 100",
                    self.low_threshold_percent, self.high_threshold_percent
                ),
            });
        }
        if self.interval < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                key: "image.gc.interval",
                message: "must be at least 1s".into(),
            });
        }
        Ok(())
    }
}

impl MetricsConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if !self.address.is_empty() && self.address.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid {
                key: "metrics.address",
                message: format!("{:?} is not an ip:port address", self.address),
            });
        }
        Ok(())
    }
}

impl StreamingConfig {
    /// The listen address and the session limits (the TLS pair is checked with the paths).
    fn check(&self) -> Result<(), ConfigError> {
        if self.address.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid {
                key: "streaming.address",
                message: format!("{:?} is not an ip:port address", self.address),
            });
        }
        if self.token_ttl < Duration::from_secs(1) || self.max_sessions == 0 {
            return Err(ConfigError::Invalid {
                key: "streaming",
                message: "token_ttl must be at least 1s and max_sessions at least 1".into(),
            });
        }
        Ok(())
    }
}

impl RuntimeHandler {
    /// The handler `name` (a `[runtimes.<name>]` table).
    fn check(&self, name: &str) -> Result<(), ConfigError> {
        let label = !name.is_empty()
            && name.len() <= MAX_HANDLER_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !label {
            return Err(ConfigError::Invalid {
                key: "runtimes",
                message: format!("handler name {name:?} must be a DNS label (a-z, 0-9, -)"),
            });
        }
        match self.runtime_type {
            RuntimeType::Oci if !self.path.is_absolute() => {
                return Err(ConfigError::Invalid {
                    key: "runtimes.path",
                    message: format!(
                        "handler {name:?}: an oci handler needs the absolute path of its runtime binary"
                    ),
                });
            }
            RuntimeType::Native if !self.path.as_os_str().is_empty() => {
                return Err(ConfigError::Invalid {
                    key: "runtimes.path",
                    message: format!("handler {name:?}: a native handler takes no path"),
                });
            }
            _ => {}
        }
        if self
            .args
            .iter()
            .any(|a| !a.starts_with('-') || a.contains('\0'))
        {
            return Err(ConfigError::Invalid {
                key: "runtimes.args",
                message: format!("handler {name:?}: args are global options (each starts with -)"),
            });
        }
        if !self.root.as_os_str().is_empty() && !self.root.is_absolute() {
            return Err(ConfigError::Invalid {
                key: "runtimes.root",
                message: format!("handler {name:?}: {} is not absolute", self.root.display()),
            });
        }
        for (key, list) in [
            ("runtimes.pod_annotations", &self.pod_annotations),
            (
                "runtimes.container_annotations",
                &self.container_annotations,
            ),
        ] {
            if let Some(bad) = list.iter().find(|p| {
                p.is_empty()
                    || p.len() > MAX_ANNOTATION_PATTERN
                    || p.chars().any(|c| c.is_control() || c.is_whitespace())
            }) {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!(
                        "handler {name:?}: {bad:?} is not an annotation key or pattern (1 to {MAX_ANNOTATION_PATTERN} characters, no spaces)"
                    ),
                });
            }
        }
        Ok(())
    }
}

impl ImageConfig {
    fn check_pulls(&self) -> Result<(), ConfigError> {
        if !(1..=64).contains(&self.max_concurrent_downloads) {
            return Err(ConfigError::Invalid {
                key: "image.max_concurrent_downloads",
                message: "must be between 1 and 64".into(),
            });
        }
        if self.pull_progress_timeout < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                key: "image.pull_progress_timeout",
                message: "must be at least 1s".into(),
            });
        }
        if self.pull_deadline < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                key: "image.pull_deadline",
                message: "must be at least 1s".into(),
            });
        }
        for (key, v) in [
            ("image.max_layer_bytes", self.max_layer_bytes),
            ("image.max_image_bytes", self.max_image_bytes),
            ("image.max_image_entries", self.max_image_entries),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    message: "must be at least 1".into(),
                });
            }
        }
        Ok(())
    }

    fn check_pinned(&self) -> Result<(), ConfigError> {
        for p in &self.pinned {
            if crate::reference::ImageRef::parse(p).is_err() {
                return Err(ConfigError::Invalid {
                    key: "image.pinned",
                    message: format!("{p:?} is not an image reference"),
                });
            }
        }
        Ok(())
    }
}

/// A level (`info`) or comma-separated `target=level` directives, as `RUST_LOG` takes them.
/// Stricter than `EnvFilter`, which reads any word as a target and so accepts typos.
fn valid_log_filter(s: &str) -> bool {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let level = |l: &str| LEVELS.contains(&l.to_ascii_lowercase().as_str());
    !s.is_empty()
        && s.split(',').all(|d| match d.split_once('=') {
            Some((target, l)) => {
                !target.is_empty()
                    && target
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
                    && level(l)
            }
            None => level(d),
        })
}

/// Durations as humantime strings ("5m", "30s") in the file.
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::from_toml(s, Path::new("/t.toml"))
    }

    #[test]
    fn runtime_handlers_are_checked() {
        let c = parse(
            "[runtimes.runc]\ntype = \"oci\"\npath = \"/usr/sbin/runc\"\n[runtimes.fast]\ntype = \"native\"\n",
        )
        .unwrap();
        let runc = c.handler("runc").unwrap();
        assert_eq!(runc.runtime_type, RuntimeType::Oci);
        assert_eq!(
            c.handler_root("runc", &runc),
            PathBuf::from("/run/kelson/runtimes/runc")
        );
        assert_eq!(c.handler("fast").unwrap().runtime_type, RuntimeType::Native);
        assert_eq!(c.handler("").unwrap().runtime_type, RuntimeType::Native);
        assert!(c.handler("gvisor").is_none());
        for (bad, key) in [
            ("[runtimes.runc]\ntype = \"oci\"\n", "runtimes.path"),
            (
                "[runtimes.runc]\ntype = \"oci\"\npath = \"runc\"\n",
                "runtimes.path",
            ),
            ("[runtimes.Bad_Name]\ntype = \"native\"\n", "runtimes"),
            (
                "[runtimes.x]\ntype = \"native\"\npath = \"/bin/x\"\n",
                "runtimes.path",
            ),
            ("[runtimes.x]\ntype = \"wasm\"\n", "type"),
            (
                "[runtimes.x]\ntype = \"native\"\npod_annotations = [\"\"]\n",
                "runtimes.pod_annotations",
            ),
            (
                "[runtimes.x]\ntype = \"native\"\ncontainer_annotations = [\"a b\"]\n",
                "runtimes.container_annotations",
            ),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn annotation_patterns_match_one_segment() {
        for (p, k) in [
            ("io.katacontainers.*", "io.katacontainers.config.x"),
            (
                "run.oci.keep_original_groups",
                "run.oci.keep_original_groups",
            ),
            ("*", "anything.at.all"),
            ("a*c", "abbbc"),
            ("a*", "a"),
            ("example.com/*", "example.com/x"),
        ] {
            assert!(glob_match(p, k), "{p} {k}");
        }
        for (p, k) in [
            ("io.katacontainers.*", "io.katacontainers/x"),
            ("run.oci.x", "run.oci.xy"),
            ("*", "a/b"),
            ("a*c", "abd"),
            ("example.com/*", "example.org/x"),
        ] {
            assert!(!glob_match(p, k), "{p} {k}");
        }
    }

    #[test]
    fn only_allowed_annotations_are_passed_on() {
        let c = parse(
            "[runtimes.crun]\ntype = \"oci\"\npath = \"/usr/bin/crun\"\npod_annotations = [\"io.example.pod/*\"]\ncontainer_annotations = [\"run.oci.keep_original_groups\", \"io.example.*\"]\n",
        )
        .unwrap();
        let pod: HashMap<String, String> = [
            ("io.example.pod/a", "1"),
            ("run.oci.seccomp_fail_unknown_syscall", "1"),
            ("io.example.shared", "pod"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let ctr: HashMap<String, String> = [
            ("run.oci.keep_original_groups", "1"),
            ("run.oci.systemd.subgroup", "x"),
            ("io.example.shared", "container"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let got = c.handler("crun").unwrap().passed_annotations(&pod, &ctr);
        let want: BTreeMap<String, String> = [
            ("io.example.pod/a", "1"),
            ("io.example.shared", "container"),
            ("run.oci.keep_original_groups", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(got, want);
        assert!(
            c.handler("")
                .unwrap()
                .passed_annotations(&pod, &ctr)
                .is_empty(),
            "the default handler passes none"
        );
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn keys_override_defaults() {
        let c = parse(
            "root = \"/x\"\n[image]\npull_progress_timeout = \"30s\"\npinned = [\"busybox\"]\n",
        )
        .unwrap();
        assert_eq!(c.root, PathBuf::from("/x"));
        assert_eq!(c.image.pull_progress_timeout, Duration::from_secs(30));
        assert_eq!(c.image.max_concurrent_downloads, 3);
        assert_eq!(c.image.pinned, vec!["busybox".to_string()]);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[image]\npinnned = []\n").unwrap_err().to_string();
        assert!(e.contains("pinnned"), "{e}");
        let e = parse("rooot = \"/x\"\n").unwrap_err().to_string();
        assert!(e.contains("rooot"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse("root = \"rel\"\n").unwrap_err().to_string();
        assert!(e.contains("root"), "{e}");
        for key in ["max_layer_bytes", "max_image_bytes", "max_image_entries"] {
            let e = parse(&format!("[image]\n{key} = 0\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("image.{key}")), "{e}");
        }
        let e = parse("[image]\nmax_concurrent_downloads = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("image.max_concurrent_downloads"), "{e}");
        let e = parse("[image]\npull_progress_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pull_progress_timeout"), "{e}");
        let e = parse("[image]\npull_deadline = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("image.pull_deadline"), "{e}");
        let e = parse("cgroup_driver = \"nope\"\n").unwrap_err().to_string();
        assert!(e.contains("cgroup_driver"), "{e}");
        let e = parse("[image]\npinned = [\"x/UPPER\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("image.pinned"), "{e}");
        let e = parse("[metrics]\naddress = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("metrics.address"), "{e}");
        assert_eq!(Config::default().metrics.address, "", "off by default");
        let e = parse("[grpc]\nmax_concurrent_calls_per_connection = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("grpc.max_concurrent_calls_per_connection"),
            "{e}"
        );
        let e =
            parse("[grpc]\nmax_concurrent_calls_per_connection = 8\nmax_concurrent_streams = 4\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("grpc.max_concurrent_streams"), "{e}");
        let e = parse("[image.gc]\nhigh_threshold_percent = 50\nlow_threshold_percent = 60\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("image.gc.high_threshold_percent"), "{e}");
        let e = parse("[image.gc]\ninterval = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("image.gc.interval"), "{e}");
        let c = parse("[image.gc]\nenabled = true\nmax_unused_age = \"1h\"\n").unwrap();
        assert!(c.image.gc.enabled && c.image.gc.max_unused_age == Duration::from_secs(3600));
        let c = parse("[metrics]\naddress = \"127.0.0.1:9390\"\n").unwrap();
        assert_eq!(c.metrics.address, "127.0.0.1:9390");
    }

    #[test]
    fn log_filters() {
        for ok in ["info", "DEBUG", "kelson=debug,info", "kelson::image=trace"] {
            assert!(valid_log_filter(ok), "{ok}");
        }
        for bad in ["", "loud", "kelson=loud", "=info", "a b=info"] {
            assert!(!valid_log_filter(bad), "{bad}");
        }
    }

    #[test]
    fn state_override_moves_default_socket() {
        let mut c = Config::default();
        c.apply(Overrides {
            state: Some("/tmp/s".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.grpc.address, PathBuf::from("/tmp/s/kelson.sock"));
    }

    #[test]
    fn state_in_file_moves_default_socket() {
        let c = parse("state = \"/tmp/k\"\n").unwrap();
        assert_eq!(c.grpc.address, PathBuf::from("/tmp/k/kelson.sock"));
        let c = parse("state = \"/tmp/k\"\n[grpc]\naddress = \"/x.sock\"\n").unwrap();
        assert_eq!(c.grpc.address, PathBuf::from("/x.sock"));
    }

    #[test]
    fn printed_config_parses_back() {
        let c = Config::default();
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
    }
}
