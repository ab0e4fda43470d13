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
            mount_shm(&dir, root_ids, &mut rec, &mut undo)?;
        }
        let req = PinRequest {
            hostname: (!c.host_net && !hostname.is_empty()).then(|| hostname.clone()),
            ..req
        };
        namespaces::pin(&req)?;
        {
            let r = req.clone();
            undo.push(move || namespaces::unpin_all(&r));
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
                self.network
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

    /// CNI ADD in the pinned network namespace; undone by CNI DEL.
    fn add_network(
        &self,
        list: NetworkList,
        rec: &mut PodRecord,
        config: &cri::PodSandboxConfig,
        undo: &mut Rollback,
    ) -> Result<(), PodError> {
        let result = self.network.add_with(&list, &Self::pod_net(rec, config))?;
        rec.ips = serde_json::from_value::<crate::network::CniResult>(result.clone())
            .map(|r| r.pod_ips())
            .unwrap_or_default();
        rec.network_result = result.clone();
        let (net, pod) = (self.network.clone(), Self::pod_net(rec, config));
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
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
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
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))
        .map_err(io(&dir.join("hostname")))?;
    let hosts = if c.host_net {
        std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| files::hosts(&hostname))
    } else {
        files::hosts(&hostname)
    };
    std::fs::write(dir.join("hosts"), hosts).map_err(io(&dir.join("hosts")))?;
    let resolv = match c.resolv.clone() {
        Some(r) => r,
        None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    std::fs::write(dir.join("resolv.conf"), resolv).map_err(io(&dir.join("resolv.conf")))?;
    // Root in a user-namespaced pod owns its files as root elsewhere does.
    let root_ids = c.user_ns.as_ref().map(UserNs::root_on_host);
    if let Some((uid, gid)) = root_ids {
        for f in ["hostname", "hosts", "resolv.conf"] {
            let p = dir.join(f);
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).map_err(io(&p))?;
        }
    }
    Ok(hostname)
}

/// The pod's /dev/shm, a tmpfs its containers share; undone by unmounting it.
fn mount_shm(
    dir: &Path,
    root_ids: Option<(u32, u32)>,
    rec: &mut PodRecord,
    undo: &mut Rollback,
) -> Result<(), PodError> {
    let shm = dir.join("shm");
    namespaces::mount_shm(&shm, DEFAULT_SHM_BYTES, root_ids)?;
    let s = shm.clone();
    undo.push(move || {
        let _ = namespaces::unmount_dir(&s);
    });
    rec.shm = shm.display().to_string();
    Ok(())
}
