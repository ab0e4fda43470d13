//! Unit tests of CreateContainer: log paths and Localhost seccomp profiles, then every
//! rollback path through fake effects (rootfs mounts, shim launch).

use super::*;

#[test]
fn log_paths() {
    assert_eq!(
        log_path("/var/log/pods/x", "c/0.log").unwrap(),
        Some(LogAt {
            dir: PathBuf::from("/var/log/pods/x"),
            rel: PathBuf::from("c/0.log")
        })
    );
    assert_eq!(log_path("", "c/0.log").unwrap(), None);
    // The log path itself is checked at the edge (cri::request).
    assert!(log_path("relative", "a.log").is_err());
    assert!(log_path("/var/log/../../etc", "a.log").is_err());
}

#[test]
fn localhost_profiles_by_absolute_path_without_a_root() {
    let dir = tempfile::tempdir().unwrap();
    let good = br#"{"defaultAction":"SCMP_ACT_ALLOW"}"#;
    let p = dir.path().join("kubelet-root/seccomp/p.json");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, good).unwrap();
    assert!(read_localhost(&p.display().to_string(), None).is_ok());
    // Relative references need a root to be relative to; `..` is refused either way.
    let e = read_localhost("p.json", None).unwrap_err();
    assert!(e.to_string().contains("absolute"), "{e}");
    let dotdot = format!("{}/../seccomp/p.json", p.parent().unwrap().display());
    assert!(read_localhost(&dotdot, None).is_err());
    // A FIFO is refused, not waited on.
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let e = read_localhost(&fifo.display().to_string(), None).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

#[test]
fn localhost_profiles_stay_in_their_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("seccomp");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    let good = br#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#;
    std::fs::write(root.join("sub/p.json"), good).unwrap();
    assert!(read_localhost("sub/p.json", Some(&root)).is_ok());
    let abs = root.join("sub/p.json").display().to_string();
    assert!(read_localhost(&abs, Some(&root)).is_ok());
    // Outside the root, by .., by absolute path or by a symlink.
    std::fs::write(dir.path().join("outside.json"), good).unwrap();
    for r in ["../outside.json", "/etc/passwd", "sub/../../outside.json"] {
        let e = read_localhost(r, Some(&root)).unwrap_err();
        assert!(e.to_string().contains(r), "{e}");
    }
    std::os::unix::fs::symlink(dir.path().join("outside.json"), root.join("link.json")).unwrap();
    let e = read_localhost("link.json", Some(&root)).unwrap_err();
    assert!(e.to_string().contains("outside"), "{e}");
    // Not a profile, not a file, missing, too big.
    std::fs::write(root.join("bad.json"), b"{\"defaultAction\": 7}").unwrap();
    assert!(
        read_localhost("bad.json", Some(&root))
            .unwrap_err()
            .to_string()
            .contains("not a seccomp profile")
    );
    assert!(read_localhost("sub", Some(&root)).is_err());
    assert!(read_localhost("missing.json", Some(&root)).is_err());
    std::fs::write(root.join("big.json"), vec![b' '; MAX_PROFILE as usize + 1]).unwrap();
    assert!(
        read_localhost("big.json", Some(&root))
            .unwrap_err()
            .to_string()
            .contains("larger")
    );
}

mod rollback {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::cgroups::Hierarchy;
    use crate::container::effects::{Effects, RootfsMounts, ShimLauncher, Spawning};
    use crate::dirs::Dirs;
    use crate::image::ImageService;
    use crate::network::{Network, NetworkConfig};
    use crate::pod::PodService;
    use crate::rollback::Journal;
    use crate::shim_client::ShimError;
    use crate::store::Store;

    const POD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    /// A pod whose RuntimeClass handler is no longer configured.
    const ORPHAN_POD: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    const IMAGE: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    /// Every fake effect, writing to one journal.
    struct Fake(Arc<Journal>);

    impl RootfsMounts for Fake {
        fn mount(
            &self,
            _: &[PathBuf],
            dir: &Path,
            _: Option<rootfs::Idmapped>,
        ) -> Result<PathBuf, rootfs::RootfsError> {
            let rootfs = dir.join("rootfs");
            if self.0.call("mount rootfs") {
                return Err(rootfs::RootfsError::Fs {
                    path: rootfs,
                    op: "mount overlay",
                    reason: "no space left on device".into(),
                });
            }
            std::fs::create_dir_all(&rootfs).unwrap();
            Ok(rootfs)
        }

        fn unmount(&self, _: &Path) {
            self.0.call("unmount rootfs");
        }
    }

    impl ShimLauncher for Fake {
        fn spawn<'a>(&'a self, _: shim_client::Spawn<'a>) -> Spawning<'a> {
            let fails = self.0.call("spawn shim");
            Box::pin(async move {
                if fails {
                    return Err(ShimError::Create("exec: no such file".into()));
                }
                Ok(4242)
            })
        }

        fn delete(&self, _: &Path, _: &str, _: &Path) {
            self.0.call("delete engine state");
        }
    }

    /// A container service on temp dirs and a temp store, with a ready pod, an image and fakes
    /// for the rootfs mount and the shim.
    struct Containers {
        svc: ContainerService,
        journal: Arc<Journal>,
        dir: tempfile::TempDir,
    }

    fn containers() -> Containers {
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(&dir.path().join("root"), &dir.path().join("state"));
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let mut cfg = crate::config::Config::default();
        cfg.container.init = false;
        let images = Arc::new(ImageService::new(dirs.clone(), store.clone(), cfg.clone()));
        let network = Arc::new(Network::new(NetworkConfig {
            conf_dir: dir.path().join("cni"),
            bin_dirs: Vec::new(),
            timeout: Duration::from_secs(1),
        }));
        let pods = Arc::new(PodService::new(
            store.clone(),
            dirs.state.clone(),
            Hierarchy::V2(dir.path().join("cgroup")),
            network,
            Vec::new(),
            false,
        ));
        for (id, handler) in [(POD, ""), (ORPHAN_POD, "gone")] {
            store
                .create(&PodRecord {
                    id: id.into(),
                    name_key: format!("{id}_default_u1_0"),
                    state: PodState::Ready,
                    runtime_handler: handler.into(),
                    cgroup: format!("kelson/{id}"),
                    ..Default::default()
                })
                .unwrap();
        }
        store
            .put_image(&ImageRecord {
                id: format!("sha256:{IMAGE}"),
                ..Default::default()
            })
            .unwrap();
        let journal = Arc::new(Journal::default());
        let fake = Arc::new(Fake(journal.clone()));
        let svc = ContainerService::new(
            store,
            images,
            pods,
            dirs,
            dir.path().join("bin/kelson-shim"),
            cfg,
        )
        .with_effects(Effects {
            rootfs: fake.clone(),
            shims: fake,
        });
        Containers { svc, journal, dir }
    }

    fn config() -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            command: vec!["/bin/true".into()],
            ..Default::default()
        }
    }

    /// Entries left in `dir` (absent: none).
    fn entries(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    }

    impl Containers {
        fn create(
            &self,
            pod: &str,
            config: cri::ContainerConfig,
        ) -> Result<String, ContainerError> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(self.svc.create(CreateRequest {
                    pod_id: pod.to_owned(),
                    meta: config.metadata.clone().unwrap_or_default(),
                    image: config.image.clone().unwrap_or_default().image,
                    config,
                }))
        }

        /// Create with `call` failing (None: one of kelsond's own steps fails), expect an
        /// error and nothing left: no record, no container dirs, and the name free for the
        /// next attempt. Returns the error and the calls made, undo included.
        fn fail(
            &self,
            pod: &str,
            call: Option<&'static str>,
            config: cri::ContainerConfig,
        ) -> (ContainerError, Vec<&'static str>) {
            self.journal.fail_at(call);
            let e = self.create(pod, config).expect_err("create fails");
            let asked = self.journal.take();
            assert_eq!(self.svc.list().unwrap().len(), 0, "a record is left");
            for d in ["root/containers", "state/containers"] {
                assert_eq!(entries(&self.dir.path().join(d)), Vec::<PathBuf>::new());
            }
            self.journal.fail_at(None);
            if pod == POD {
                self.create(pod, self::config())
                    .expect("the name is free again");
                self.journal.take();
            }
            (e, asked)
        }
    }

    #[test]
    fn a_container_is_recorded_with_its_bundle_once_its_shim_runs() {
        let c = containers();
        let id = c.create(POD, config()).unwrap();
        assert_eq!(c.journal.take(), ["mount rootfs", "spawn shim"]);
        let rec = c.svc.find(&id).unwrap();
        assert_eq!(rec.pod_id, POD);
        assert_eq!(rec.name_key, format!("{POD}_app_0"));
        let bundle = c
            .dir
            .path()
            .join("state/containers")
            .join(&id)
            .join("bundle");
        assert!(bundle.join("config.json").is_file());
    }

    #[test]
    fn a_taken_name_is_refused_before_anything_is_made() {
        let c = containers();
        let first = c.create(POD, config()).unwrap();
        c.journal.take();
        let e = c.create(POD, config()).unwrap_err();
        assert!(matches!(e, ContainerError::NameTaken { .. }), "{e}");
        assert_eq!(c.journal.take(), Vec::<&str>::new());
        assert_eq!(c.svc.list().unwrap().len(), 1);
        let made = entries(&c.dir.path().join("root/containers"));
        assert_eq!(made, [c.dir.path().join("root/containers").join(first)]);
    }

    #[test]
    fn a_failure_making_the_dirs_removes_the_record() {
        let c = containers();
        // A file where the containers' dirs should be.
        std::fs::create_dir_all(c.dir.path().join("root")).unwrap();
        std::fs::write(c.dir.path().join("root/containers"), "").unwrap();
        let e = c.create(POD, config()).unwrap_err();
        assert!(matches!(e, ContainerError::Io { .. }), "{e}");
        assert_eq!(c.journal.take(), Vec::<&str>::new());
        assert_eq!(c.svc.list().unwrap().len(), 0);
        assert_eq!(
            entries(&c.dir.path().join("state/containers")),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn a_failed_rootfs_mount_removes_the_dirs_and_the_record() {
        let c = containers();
        let (e, asked) = c.fail(POD, Some("mount rootfs"), config());
        assert!(matches!(e, ContainerError::Rootfs(_)), "{e}");
        assert_eq!(asked, ["mount rootfs"]);
    }

    #[test]
    fn an_unknown_user_unmounts_the_rootfs() {
        let c = containers();
        let mut config = config();
        config.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                run_as_username: "nobody".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let (e, asked) = c.fail(POD, None, config);
        assert!(matches!(e, ContainerError::User(_)), "{e}");
        assert_eq!(asked, ["mount rootfs", "unmount rootfs"]);
    }

    #[test]
    fn a_spec_that_cannot_be_made_unmounts_the_rootfs() {
        let c = containers();
        let mut config = config();
        config.devices = vec![cri::Device {
            host_path: "/dev/no-such-device".into(),
            ..Default::default()
        }];
        let (e, asked) = c.fail(POD, None, config);
        assert!(e.to_string().contains("/dev/no-such-device"), "{e}");
        assert_eq!(asked, ["mount rootfs", "unmount rootfs"]);
    }

    #[test]
    fn a_handler_gone_deletes_the_engine_state_then_unmounts() {
        let c = containers();
        let (e, asked) = c.fail(ORPHAN_POD, None, config());
        assert!(e.to_string().contains("no longer configured"), "{e}");
        assert_eq!(
            asked,
            ["mount rootfs", "delete engine state", "unmount rootfs"]
        );
    }

    #[test]
    fn a_failed_shim_deletes_the_engine_state_then_unmounts() {
        let c = containers();
        let (e, asked) = c.fail(POD, Some("spawn shim"), config());
        assert!(matches!(e, ContainerError::Shim(_)), "{e}");
        assert_eq!(
            asked,
            [
                "mount rootfs",
                "spawn shim",
                "delete engine state",
                "unmount rootfs"
            ]
        );
    }
}
