//! RunPodSandbox as a sequence of steps, each registering its undo on one rollback stack:
//! validate → record (naming all it may make) → dir and files → cgroup → shm → pinned
//! namespaces → network → the final record.

use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;

use super::{
    DEFAULT_SHM_BYTES, DEFAULT_SLICE, PodError, PodService, files, mode, namespaces, now_ns,
    userns, userns_supported,
};
use crate::cgroups;
use crate::ids;
use crate::network::NetworkList;
use crate::owner_only;
use crate::rollback::Rollback;
use crate::store::{PodRecord, PodState};
use namespaces::PinRequest;
use userns::UserNs;

/// A RunPodSandbox request as the CRI edge checked it (`cri::request`): metadata present, its
/// fields well formed, labels and annotations within their caps.
pub struct RunRequest {
    pub meta: cri::PodSandboxMetadata,
    pub config: cri::PodSandboxConfig,
    pub handler: String,
}

/// A request checked against the node before anything is made.
struct Checked {
    meta: cri::PodSandboxMetadata,
    /// The pod's resolv.conf, or None for the host's.
    resolv: Option<String>,
    linux: cri::LinuxPodSandboxConfig,
    host_net: bool,
    host_ipc: bool,
    shared_pid: bool,
    user_ns: Option<UserNs>,
}

impl PodService {
    pub fn run(&self, req: RunRequest) -> Result<PodRecord, PodError> {
        let RunRequest {
            meta,
            config,
            handler,
        } = req;
        let handler = handler.as_str();
        let c = self.validate(meta, &config, handler)?;
        let id = ids::generate()?;
        let (cgroup, slice) = self.cgroup_for(&c.linux, &id)?;
        let dir = self.pod_dir(&id);
        let mut undo = Rollback::default();
        let (mut rec, req, network) =
            self.first_record(&config, handler, &c, &id, (cgroup, slice), &mut undo)?;
        let hostname = write_files(&dir, &config, &c, &mut undo)?;
        self.make_cgroup(&mut rec, &mut undo)?;
        // Root in a user-namespaced pod owns its files as root elsewhere does.
        let root_ids = c.user_ns.as_ref().map(UserNs::root_on_host);
        if !c.host_ipc {
            self.mount_shm(&dir, root_ids, &mut rec, &mut undo)?;
        }
        let req = PinRequest {
            hostname: (!c.host_net && !hostname.is_empty()).then(|| hostname.clone()),
            ..req
        };
        self.effects.pins.pin(&req)?;
        {
            let (pins, r) = (self.effects.pins.clone(), req.clone());
            undo.push(move || pins.unpin_all(&r));
        }
        if let Some(list) = network {
            self.add_network(list, &mut rec, &config, &mut undo)?;
        }
        self.store.update(&rec)?;
        undo.disarm();
        tracing::info!(pod = %rec.id, name = %rec.name_key, "pod sandbox ready");
        Ok(rec)
    }

    /// Everything else that can be refused before anything exists: the handler, hostname,
    /// DNS, namespace modes, the user namespace and the sysctls.
    fn validate(
        &self,
        meta: cri::PodSandboxMetadata,
        config: &cri::PodSandboxConfig,
        handler: &str,
    ) -> Result<Checked, PodError> {
        if !handler.is_empty() && !self.handlers.iter().any(|h| h == handler) {
            return Err(PodError::UnknownHandler(handler.to_owned()));
        }
        if !config.hostname.is_empty() {
            files::validate_hostname(&config.hostname)?;
        }
        let dns = config.dns_config.clone().unwrap_or_default();
        let resolv = files::resolv_conf(&dns.servers, &dns.searches, &dns.options)?;
        let linux = config.linux.clone().unwrap_or_default();
        let ns = linux
            .security_context
            .as_ref()
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        let host_net = mode(ns.network) == cri::NamespaceMode::Node;
        // A host-network pod shares the node's UTS namespace: it cannot have a hostname of its
        // own (kubelet sends none for such pods), and setting one would rename the node.
        if host_net && !config.hostname.is_empty() {
            let node = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default();
            if !config.hostname.eq_ignore_ascii_case(&node) {
                return Err(PodError::HostNetworkHostname {
                    hostname: config.hostname.clone(),
                    node,
                });
            }
        }
        let host_ipc = mode(ns.ipc) == cri::NamespaceMode::Node;
        let shared_pid = mode(ns.pid) == cri::NamespaceMode::Pod;
        let user_ns = userns::from_cri(ns.userns_options.as_ref())?;
        if user_ns.is_some() {
            // The pod's namespaces must belong to its user namespace: the host's do not.
            if host_net || host_ipc || mode(ns.pid) == cri::NamespaceMode::Node {
                return Err(PodError::UsernsWithHostNamespace);
            }
            if linux
                .security_context
                .as_ref()
                .is_some_and(|s| s.privileged)
            {
                return Err(PodError::UsernsPrivileged);
            }
            if !userns_supported() {
                return Err(PodError::UsernsUnsupported);
            }
        }
        // Sysctls apply in every container of the pod: refuse bad ones before anything exists.
        crate::security::sysctls(
            &linux.sysctls,
            crate::security::OwnNamespaces {
                net: !host_net,
                ipc: !host_ipc,
                uts: !host_net,
            },
        )?;

        Ok(Checked {
            meta,
            resolv,
            linux,
            host_net,
            host_ipc,
            shared_pid,
            user_ns,
        })
    }

    /// The pod's cgroup (relative to each hierarchy) and its systemd slice (empty under
    /// cgroupfs).
    fn cgroup_for(
        &self,
        linux: &cri::LinuxPodSandboxConfig,
        id: &str,
    ) -> Result<(String, String), PodError> {
        // cgroupfs: kelson makes the pod's directory. systemd: kubelet names (and makes) the
        // pod's slice; kelson only needs its path, for stats.
        let (cgroup, slice) = if self.systemd {
            let slice = if linux.cgroup_parent.is_empty() {
                DEFAULT_SLICE.to_owned()
            } else {
                linux.cgroup_parent.clone()
            };
            let dir = cgroups::systemd::expand_slice(&slice)
                .ok_or_else(|| PodError::NotASlice(slice.chars().take(120).collect()))?;
            (dir, slice)
        } else if linux.cgroup_parent.is_empty() {
            (format!("kelson/{id}"), String::new())
        } else {
            (cgroups::validate(&linux.cgroup_parent)?, String::new())
        };
        Ok((cgroup, slice))
    }

    /// The first record, which reserves the pod's name; undone by removing it.
    fn first_record(
        &self,
        config: &cri::PodSandboxConfig,
        handler: &str,
        c: &Checked,
        id: &str,
        (cgroup, slice): (String, String),
        undo: &mut Rollback,
    ) -> Result<(PodRecord, PinRequest, Option<NetworkList>), PodError> {
        let (meta, host_net, host_ipc) = (&c.meta, c.host_net, c.host_ipc);
        let name_key = format!(
            "{}_{}_{}_{}",
            meta.name, meta.namespace, meta.uid, meta.attempt
        );
        let dir = self.pod_dir(id);
        let req = PinRequest {
            net: (!host_net).then(|| dir.join("netns")),
            ipc: (!host_ipc).then(|| dir.join("ipcns")),
            // A pod on the host network keeps the host's UTS namespace too, as kubelet expects.
            uts: (!host_net).then(|| dir.join("utsns")),
            // Only a pod that shares one PID namespace gets one (with a holder as its PID 1).
            pid: c.shared_pid.then(|| dir.join("pidns")),
            hostname: None,
            user: c.user_ns.clone().map(|u| (dir.join("userns"), u)),
        };
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let network = if host_net {
            None
        } else {
            Some(
                self.effects
                    .cni
                    .config()
                    .map_err(crate::network::NetworkError::from)?,
            )
        };
        // The first record already names everything this call may make (cgroup, shm, pinned
        // namespaces, the network list), so that after a crash at any point stop/remove find
        // and release all of it; releasing what was never made is a no-op.
        let rec = PodRecord {
            id: id.to_owned(),
            name_key,
            state: PodState::Ready,
            created_at: now_ns(),
            runtime_handler: handler.to_owned(),
            config: serde_json::to_value(config).unwrap_or_default(),
            cgroup: cgroup.clone(),
            cgroup_created: !self.systemd && !self.cgroups.exists(&cgroup),
            cgroup_slice: slice,
            shm: if host_ipc {
                String::new()
            } else {
                dir.join("shm").display().to_string()
            },
            netns: path(&req.net),
            ipcns: path(&req.ipc),
            utsns: path(&req.uts),
            pidns: path(&req.pid),
            userns: req
                .user
                .as_ref()
                .map(|(p, _)| p.display().to_string())
                .unwrap_or_default(),
            network: network.as_ref().map(NetworkList::to_value),
            network_released: host_net,
            ..Default::default()
        };
        // Reserve the name first: a duplicate fails before anything is made.
        self.store.create(&rec)?;
        {
            let store = self.store.clone();
            let id = id.to_owned();
            undo.push(move || {
                let _ = store.remove::<PodRecord>(&id);
            });
        }
        Ok((rec, req, network))
    }

    /// The pod's cgroup, under cgroupfs (systemd's slices are kubelet's); undone by removing
    /// it when this call made it.
    fn make_cgroup(&self, rec: &mut PodRecord, undo: &mut Rollback) -> Result<(), PodError> {
        rec.cgroup_created = !self.systemd && self.cgroups.create(&rec.cgroup)?;
        if rec.cgroup_created {
            let cg = self.cgroups.clone();
            let c = rec.cgroup.clone();
            undo.push(move || {
                let _ = cg.remove(&c);
            });
        }
        Ok(())
    }

    /// The pod's /dev/shm, a tmpfs its containers share; undone by unmounting it.
    fn mount_shm(
        &self,
        dir: &Path,
        root_ids: Option<(u32, u32)>,
        rec: &mut PodRecord,
        undo: &mut Rollback,
    ) -> Result<(), PodError> {
        let shm = dir.join("shm");
        self.effects.shm.mount(&shm, DEFAULT_SHM_BYTES, root_ids)?;
        let (mounts, s) = (self.effects.shm.clone(), shm.clone());
        undo.push(move || {
            let _ = mounts.unmount(&s);
        });
        rec.shm = shm.display().to_string();
        Ok(())
    }

    /// CNI ADD in the pinned network namespace; undone by CNI DEL.
    fn add_network(
        &self,
        list: NetworkList,
        rec: &mut PodRecord,
        config: &cri::PodSandboxConfig,
        undo: &mut Rollback,
    ) -> Result<(), PodError> {
        let result = self.effects.cni.add(&list, &Self::pod_net(rec, config))?;
        rec.ips = serde_json::from_value::<crate::network::CniResult>(result.clone())
            .map(|r| r.pod_ips())
            .unwrap_or_default();
        rec.network_result = result.clone();
        let (net, pod) = (self.effects.cni.clone(), Self::pod_net(rec, config));
        undo.push(move || {
            let _ = net.del(&list, &pod, &result);
        });
        Ok(())
    }
}

/// The pod's dir and the files its containers bind (hostname, hosts, resolv.conf), owned by
/// the pod's root; undone by deleting the dir. Returns the pod's hostname.
fn write_files(
    dir: &Path,
    config: &cri::PodSandboxConfig,
    c: &Checked,
    undo: &mut Rollback,
) -> Result<String, PodError> {
    let io = |path: &PathBuf| {
        let path = path.clone();
        move |source| PodError::Io { path, source }
    };
    let dir = dir.to_owned();
    owner_only::create_dir_all(&dir).map_err(io(&dir))?;
    {
        let dir = dir.clone();
        undo.push(move || {
            let _ = std::fs::remove_dir_all(&dir);
        });
    }
    let hostname = if c.host_net {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default()
    } else {
        config.hostname.clone()
    };
    // Bound into every container and read there by any user; private by the pod's dir.
    let bound = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        owner_only::write_mode(&p, bytes, owner_only::BOUND_INTO_CONTAINERS).map_err(io(&p))
    };
    bound("hostname", format!("{hostname}\n").as_bytes())?;
    let hosts = if c.host_net {
        std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| files::hosts(&hostname))
    } else {
        files::hosts(&hostname)
    };
    bound("hosts", hosts.as_bytes())?;
    let resolv = match c.resolv.clone() {
        Some(r) => r,
        None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    bound("resolv.conf", resolv.as_bytes())?;
    // Root in a user-namespaced pod owns its files as root elsewhere does.
    let root_ids = c.user_ns.as_ref().map(UserNs::root_on_host);
    if let Some((uid, gid)) = root_ids {
        for f in ["hostname", "hosts", "resolv.conf"] {
            let p = dir.join(f);
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).map_err(io(&p))?;
        }
        // The container library prepares the pod's containers as its root, which must cross
        // this dir to the pins, these files and /dev/shm; nobody else may.
        owner_only::traversable_by_group(&dir, gid).map_err(io(&dir))?;
    }
    Ok(hostname)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;
    use crate::cgroups::Hierarchy;
    use crate::network::{ConfError, Network, NetworkConfig, NetworkError, PodNet};
    use crate::pod::effects::{Effects, NamespacePins, PodCni, ShmMount};
    use crate::pod::namespaces::NsError;
    use crate::rollback::Journal;
    use crate::store::Store;

    /// Every fake effect, writing to one journal.
    struct Fake(Arc<Journal>);

    impl NamespacePins for Fake {
        fn pin(&self, _: &PinRequest) -> Result<(), NsError> {
            if self.0.call("pin") {
                return Err(NsError::Helper("unshare: operation not permitted".into()));
            }
            Ok(())
        }

        fn unpin_all(&self, _: &PinRequest) {
            self.0.call("unpin");
        }
    }

    impl ShmMount for Fake {
        fn mount(&self, _: &Path, _: u64, _: Option<(u32, u32)>) -> Result<(), NsError> {
            if self.0.call("mount shm") {
                return Err(NsError::Sys {
                    op: "mount tmpfs",
                    path: "shm".into(),
                    errno: nix::errno::Errno::ENOMEM,
                });
            }
            Ok(())
        }

        fn unmount(&self, _: &Path) -> Result<(), NsError> {
            self.0.call("unmount shm");
            Ok(())
        }
    }

    impl PodCni for Fake {
        fn config(&self) -> Result<NetworkList, ConfError> {
            if self.0.call("cni config") {
                return Err(ConfError::NoConfig("/etc/cni/net.d".into()));
            }
            Ok(NetworkList {
                name: "pods".into(),
                cni_version: "1.0.0".into(),
                plugins: vec![json!({"type": "bridge"})],
                source: "/etc/cni/net.d/10-pods.conflist".into(),
            })
        }

        fn add(&self, _: &NetworkList, _: &PodNet) -> Result<Value, NetworkError> {
            if self.0.call("cni add") {
                return Err(NetworkError::Plugin {
                    plugin: "bridge".into(),
                    command: "ADD",
                    message: "no IP addresses available".into(),
                });
            }
            Ok(json!({"cniVersion": "1.0.0", "ips": [{"address": "10.88.0.7/16"}]}))
        }

        fn del(&self, _: &NetworkList, _: &PodNet, _: &Value) -> Result<(), NetworkError> {
            self.0.call("cni del");
            Ok(())
        }
    }

    /// A pod service on temp dirs (state, store, a cgroupfs stand-in) and fakes for the rest.
    struct Pods {
        svc: PodService,
        journal: Arc<Journal>,
        dir: tempfile::TempDir,
    }

    fn pods() -> Pods {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let network = Arc::new(Network::new(NetworkConfig {
            conf_dir: dir.path().join("cni"),
            bin_dirs: Vec::new(),
            timeout: Duration::from_secs(1),
        }));
        let journal = Arc::new(Journal::default());
        let fake = Arc::new(Fake(journal.clone()));
        let svc = PodService::new(
            store,
            dir.path().join("state"),
            Hierarchy::V2(dir.path().join("cgroup")),
            network,
            Vec::new(),
            false,
        )
        .with_effects(Effects {
            pins: fake.clone(),
            shm: fake.clone(),
            cni: fake,
        });
        Pods { svc, journal, dir }
    }

    /// The request as the CRI edge passes it on.
    fn request() -> RunRequest {
        let config = config();
        RunRequest {
            meta: config.metadata.clone().unwrap(),
            config,
            handler: String::new(),
        }
    }

    fn config() -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                namespace: "default".into(),
                uid: "u1".into(),
                attempt: 0,
            }),
            ..Default::default()
        }
    }

    /// Entries left in `dir` (absent: none).
    fn entries(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    }

    impl Pods {
        fn pods_dir(&self) -> PathBuf {
            self.dir.path().join("state/pods")
        }

        fn cgroups_dir(&self) -> PathBuf {
            self.dir.path().join("cgroup/kelson")
        }

        /// Run with `call` failing, expect an error and nothing left behind: no record, no pod
        /// dir, no cgroup, and the name free for the next attempt. Returns the error and the
        /// calls made, undo included.
        fn fail_at(&self, call: &'static str) -> (PodError, Vec<&'static str>) {
            self.journal.fail_at(Some(call));
            let e = self.svc.run(request()).expect_err("run fails");
            let asked = self.journal.take();
            assert_eq!(self.svc.list().unwrap().len(), 0, "a record is left");
            assert_eq!(entries(&self.pods_dir()), Vec::<PathBuf>::new());
            assert_eq!(entries(&self.cgroups_dir()), Vec::<PathBuf>::new());
            self.journal.fail_at(None);
            self.svc.run(request()).expect("the name is free again");
            self.journal.take();
            (e, asked)
        }
    }

    #[test]
    fn a_pod_is_recorded_ready_with_everything_it_made() {
        let p = pods();
        let rec = p.svc.run(request()).unwrap();
        assert_eq!(
            p.journal.take(),
            ["cni config", "mount shm", "pin", "cni add"]
        );
        let stored = p.svc.find(&rec.id).unwrap();
        assert_eq!(stored.state, PodState::Ready);
        assert_eq!(stored.ips, ["10.88.0.7"]);
        assert_eq!(stored.name_key, "web_default_u1_0");
        assert!(stored.cgroup_created && stored.network.is_some() && !stored.network_released);
        let dir = p.pods_dir().join(&rec.id);
        assert_eq!(stored.netns, dir.join("netns").display().to_string());
        assert_eq!(stored.shm, dir.join("shm").display().to_string());
        for f in ["hostname", "hosts", "resolv.conf"] {
            assert!(dir.join(f).is_file(), "{f}");
        }
        assert!(p.cgroups_dir().join(&rec.id).is_dir());
    }

    #[test]
    fn a_taken_name_is_refused_before_anything_is_made() {
        let p = pods();
        let first = p.svc.run(request()).unwrap();
        p.journal.take();
        let e = p.svc.run(request()).err().unwrap();
        assert!(matches!(e, PodError::NameTaken { .. }), "{e}");
        assert_eq!(p.journal.take(), ["cni config"]);
        assert_eq!(p.svc.list().unwrap().len(), 1);
        assert_eq!(entries(&p.pods_dir()), [p.pods_dir().join(&first.id)]);
    }

    #[test]
    fn no_network_config_fails_before_anything_is_made() {
        let p = pods();
        let (e, asked) = p.fail_at("cni config");
        assert!(matches!(e, PodError::Network(_)), "{e}");
        assert_eq!(asked, ["cni config"]);
    }

    #[test]
    fn a_failure_writing_the_files_removes_the_record() {
        let p = pods();
        // A file where the pods' dir should be.
        std::fs::create_dir_all(p.dir.path().join("state")).unwrap();
        std::fs::write(p.pods_dir(), "").unwrap();
        let e = p.svc.run(request()).err().unwrap();
        assert!(matches!(e, PodError::Io { .. }), "{e}");
        assert_eq!(p.journal.take(), ["cni config"]);
        assert_eq!(p.svc.list().unwrap().len(), 0);
    }

    #[test]
    fn a_failure_making_the_cgroup_removes_the_files_and_the_record() {
        let p = pods();
        std::fs::create_dir_all(p.dir.path().join("cgroup")).unwrap();
        std::fs::write(p.cgroups_dir(), "").unwrap();
        let e = p.svc.run(request()).err().unwrap();
        assert!(matches!(e, PodError::Cgroup(_)), "{e}");
        assert_eq!(p.journal.take(), ["cni config"]);
        assert_eq!(p.svc.list().unwrap().len(), 0);
        assert_eq!(entries(&p.pods_dir()), Vec::<PathBuf>::new());
    }

    #[test]
    fn a_failed_shm_mount_removes_the_cgroup_files_and_record() {
        let p = pods();
        let (e, asked) = p.fail_at("mount shm");
        assert!(matches!(e, PodError::Namespace(_)), "{e}");
        assert_eq!(asked, ["cni config", "mount shm"]);
    }

    #[test]
    fn a_failed_pin_unmounts_the_shm_then_removes_the_rest() {
        let p = pods();
        let (e, asked) = p.fail_at("pin");
        assert!(matches!(e, PodError::Namespace(_)), "{e}");
        assert_eq!(asked, ["cni config", "mount shm", "pin", "unmount shm"]);
    }

    #[test]
    fn a_failed_cni_add_unpins_and_unmounts_in_reverse_order() {
        let p = pods();
        let (e, asked) = p.fail_at("cni add");
        assert!(matches!(e, PodError::Network(_)), "{e}");
        assert_eq!(
            asked,
            [
                "cni config",
                "mount shm",
                "pin",
                "cni add",
                "unpin",
                "unmount shm"
            ]
        );
    }
}
