//! Unit tests of spec generation: each part, and a whole rich spec kept byte for byte.

use super::*;

fn cfg() -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        ..Default::default()
    }
}

#[test]
fn working_dirs_through_proc_magic_links_are_refused() {
    for bad in [
        "/proc/self/fd/7",
        "/proc/thread-self/fd/3",
        "/proc/1/cwd",
        "//proc/./self/root/etc",
        "/proc/42/task/42/cwd",
    ] {
        assert!(through_proc_magic_link(bad), "{bad}");
    }
    for ok in [
        "/proc",
        "/proc/sys",
        "/app",
        "/procfs/self/fd",
        "/home/proc/self/fd",
    ] {
        assert!(!through_proc_magic_link(ok), "{ok}");
    }
}

#[test]
fn argv_follows_kubelet() {
    let img = ImageRun {
        entrypoint: vec!["/ep".into()],
        cmd: vec!["cmd".into()],
        ..Default::default()
    };
    let mut c = cfg();
    assert_eq!(argv(&c, &img).unwrap(), ["/ep", "cmd"]);
    c.args = vec!["a".into()];
    assert_eq!(argv(&c, &img).unwrap(), ["/ep", "a"]);
    c.command = vec!["/x".into()];
    assert_eq!(argv(&c, &img).unwrap(), ["/x", "a"]);
    c.args.clear();
    assert_eq!(
        argv(&c, &img).unwrap(),
        ["/x"],
        "a command drops the image Cmd"
    );
    assert!(matches!(
        argv(&cfg(), &ImageRun::default()),
        Err(SpecError::NoCommand)
    ));
}

#[test]
fn env_merges_in_place() {
    let kv = |k: &str, v: &str| cri::KeyValue {
        key: k.into(),
        value: v.into(),
    };
    let e = env(
        &["PATH=/bin".into(), "A=1".into()],
        &[kv("A", "2"), kv("B", "x=y")],
    )
    .unwrap();
    assert_eq!(e, ["PATH=/bin", "A=2", "B=x=y"]);
    assert!(env(&[], &[kv("A=B", "1")]).is_err());
    assert!(env(&[], &[]).unwrap()[0].starts_with("PATH="));
    // a newline in a value is data in the process environment, never a new variable
    assert_eq!(
        env(&["PATH=/bin".into()], &[kv("HOME", "/x\nEVIL=1")]).unwrap()[1],
        "HOME=/x\nEVIL=1"
    );
}

#[test]
fn hostname_variable_comes_first_and_can_be_replaced() {
    let mut c = cfg();
    c.command = vec!["/x".into()];
    let pod = PodContext {
        hostname: "web-0".into(),
        ..Default::default()
    };
    let img = ImageRun::default();
    let (s, _) = generate(&input(&c, &img, &pod)).unwrap();
    assert_eq!(s["process"]["env"][0], "HOSTNAME=web-0");
    c.envs = vec![cri::KeyValue {
        key: "HOSTNAME".into(),
        value: "mine".into(),
    }];
    let (s, _) = generate(&input(&c, &img, &pod)).unwrap();
    let env = s["process"]["env"].as_array().unwrap();
    assert_eq!(
        env.iter()
            .filter(|e| e.as_str().unwrap().starts_with("HOSTNAME="))
            .count(),
        1
    );
    assert_eq!(env[0], "HOSTNAME=mine");
}

fn input<'a>(c: &'a cri::ContainerConfig, img: &'a ImageRun, pod: &'a PodContext) -> Input<'a> {
    Input {
        id: "cid",
        config: c,
        image: img,
        pod,
        rootfs: "/r/rootfs".into(),
        user: (1000, 1000, vec![]),
        own_oom_score_adj: 0,
        init: None,
        devices: vec![],
        host_caps: (1 << 41) - 1,
        cgroup_v1_dirs: &[],
        localhost_seccomp: None,
        apparmor_host: false,
        selinux_host: false,
        init_mount: None,
        sysctls: &NO_SYSCTLS,
        pod_privileged: false,
        kernel_rro: true,
        // As a handler letting every container annotation through would pass them.
        annotations: c
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

static NO_SYSCTLS: std::sync::LazyLock<HashMap<String, String>> =
    std::sync::LazyLock::new(HashMap::new);

#[test]
fn spec_joins_pod_namespaces_and_limits() {
    let mut c = cfg();
    c.command = vec!["/bin/sh".into()];
    c.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 512,
            oom_score_adj: -500,
            ..Default::default()
        }),
        ..Default::default()
    });
    c.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: "/srv/d".into(),
        readonly: true,
        propagation: 1,
        ..Default::default()
    }];
    let pod = PodContext {
        netns: "/s/netns".into(),
        ipcns: "/s/ipcns".into(),
        utsns: "/s/utsns".into(),
        shm: "/s/shm".into(),
        dir: "/s".into(),
        cgroup: "kubepods/pod1".into(),
        pidns: "/s/pidns".into(),
        ..Default::default()
    };
    let img = ImageRun::default();
    let (s, warnings) = generate(&input(&c, &img, &pod)).unwrap();
    assert_eq!(s["linux"]["cgroupsPath"], "/kubepods/pod1/cid");
    assert_eq!(s["linux"]["resources"]["memory"]["limit"], 64 << 20);
    assert_eq!(s["linux"]["resources"]["cpu"]["shares"], 512);
    let ns = s["linux"]["namespaces"].as_array().unwrap();
    assert!(ns.contains(&json!({"type": "network", "path": "/s/netns"})));
    assert!(ns.contains(&json!({"type": "pid"})));
    let mounts = s["mounts"].as_array().unwrap();
    assert!(mounts.contains(&json!({"destination": "/data", "type": "bind", "source": "/srv/d", "options": ["rbind", "rslave", "ro"]})));
    assert!(s["linux"].get("rootfsPropagation").is_none());
    let mut shared = c.clone();
    shared.mounts[0].propagation = cri::MountPropagation::PropagationBidirectional as i32;
    let (s2, _) = generate(&input(&shared, &img, &pod)).unwrap();
    assert_eq!(s2["linux"]["rootfsPropagation"], "shared");
    assert!(
        mounts
            .iter()
            .any(|m| m["destination"] == "/dev/shm" && m["source"] == "/s/shm")
    );
    assert!(
        mounts
            .iter()
            .any(|m| m["destination"] == "/etc/resolv.conf" && m["source"] == "/s/resolv.conf")
    );
    assert_eq!(s["process"]["user"]["uid"], 1000);
    assert!(s["process"].get("oomScoreAdj").is_none());
    assert_eq!(warnings.len(), 1);
}

#[test]
fn cgroups_paths_follow_the_driver() {
    assert_eq!(cgroups_path("kelson/p1", "", "c1"), "/kelson/p1/c1");
    let systemd = cgroups_path(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podX.slice",
        "kubepods-burstable-podX.slice",
        "c1",
    );
    assert_eq!(systemd, "kubepods-burstable-podX.slice:kelson:c1");
    assert_eq!(
        kelson_cgroups::dir_of(&systemd).unwrap(),
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podX.slice/kelson-c1.scope"
    );
}

#[test]
fn devices_are_created_and_allowed() {
    let mut c = cfg();
    c.command = vec!["/x".into()];
    let (img, pod) = (ImageRun::default(), PodContext::default());
    let mut i = input(&c, &img, &pod);
    i.devices = vec![Device {
        container_path: "/dev/fuse".into(),
        kind: 'c',
        major: 10,
        minor: 229,
        mode: 0o666,
        access: "rw".into(),
    }];
    let (s, _) = generate(&i).unwrap();
    assert_eq!(s["linux"]["devices"][0]["path"], "/dev/fuse");
    assert!(
        s["linux"]["resources"]["devices"]
            .as_array()
            .unwrap()
            .contains(
                &json!({"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"})
            )
    );
    i.devices[0].access = "rwx".into();
    assert!(generate(&i).is_err());
}

#[test]
fn pid_namespace_modes() {
    let pod = PodContext {
        pidns: "/s/pidns".into(),
        ..Default::default()
    };
    let img = ImageRun::default();
    let pid_ns = |mode: Option<cri::NamespaceMode>| {
        let mut c = cfg();
        c.command = vec!["/x".into()];
        if let Some(m) = mode {
            c.linux = Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: m as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let (s, _) = generate(&input(&c, &img, &pod)).unwrap();
        s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "pid")
            .cloned()
    };
    assert_eq!(pid_ns(None), Some(json!({"type": "pid"})));
    assert_eq!(
        pid_ns(Some(cri::NamespaceMode::Container)),
        Some(json!({"type": "pid"}))
    );
    assert_eq!(
        pid_ns(Some(cri::NamespaceMode::Pod)),
        Some(json!({"type": "pid", "path": "/s/pidns"}))
    );
    assert_eq!(pid_ns(Some(cri::NamespaceMode::Node)), None);
}

#[test]
fn init_goes_first() {
    let mut c = cfg();
    c.command = vec!["/app".into(), "x".into()];
    let (img, pod) = (ImageRun::default(), PodContext::default());
    let mut i = input(&c, &img, &pod);
    i.init = Some("/usr/lib/kelson/kelson-init".into());
    let (s, _) = generate(&i).unwrap();
    assert_eq!(
        s["process"]["args"],
        json!(["/.kelson/init", "--", "/app", "x"])
    );
    assert!(
        s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/.kelson/init"
                && m["options"].as_array().unwrap().contains(&json!("ro")))
    );
}

#[test]
fn recursive_read_only_mounts_follow_kep_3857() {
    let mut c = cfg();
    c.command = vec!["/x".into()];
    let m = |readonly, propagation| cri::Mount {
        container_path: "/data".into(),
        host_path: "/srv".into(),
        readonly,
        recursive_read_only: true,
        propagation,
        ..Default::default()
    };
    let (img, pod) = (ImageRun::default(), PodContext::default());
    c.mounts = vec![m(true, 0)];
    let (s, _) = generate(&input(&c, &img, &pod)).unwrap();
    let data = s["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["destination"] == "/data")
        .cloned()
        .unwrap();
    assert_eq!(data["options"], json!(["rbind", "rprivate", "ro", "rro"]));
    for (bad, why) in [
        (m(false, 0), "also be read-only"),
        (m(true, 1), "private propagation"),
    ] {
        c.mounts = vec![bad];
        let e = generate(&input(&c, &img, &pod)).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
    c.mounts = vec![m(true, 0)];
    let mut i = input(&c, &img, &pod);
    i.kernel_rro = false;
    assert!(generate(&i).unwrap_err().to_string().contains("kernel"));
}

#[test]
fn user_namespaced_pods_are_joined_with_their_mappings() {
    use crate::pod::userns::{IdMap, UserNs};
    let mut c = cfg();
    c.command = vec!["/x".into()];
    let maps = vec![IdMap {
        container: 0,
        host: 131072,
        len: 65536,
    }];
    let pod = PodContext {
        userns: "/s/userns".into(),
        netns: "/s/netns".into(),
        user_maps: Some(UserNs {
            uids: maps.clone(),
            gids: maps,
        }),
        ..Default::default()
    };
    let img = ImageRun::default();
    let (s, _) = generate(&input(&c, &img, &pod)).unwrap();
    let ns = s["linux"]["namespaces"].as_array().unwrap();
    assert!(ns.contains(&json!({"type": "user", "path": "/s/userns"})));
    assert_eq!(
        s["linux"]["uidMappings"],
        json!([{"containerID": 0, "hostID": 131072, "size": 65536}])
    );
    // The host's user namespace: nothing about users in the spec.
    let (s, _) = generate(&input(&c, &img, &PodContext::default())).unwrap();
    assert!(s["linux"].get("uidMappings").is_none());
}

/// A config that reaches every part of the spec.
fn rich_config() -> cri::ContainerConfig {
    use cri::security_profile::ProfileType;
    let profile = |t: ProfileType, r: &str| cri::SecurityProfile {
        profile_type: t as i32,
        localhost_ref: r.into(),
    };
    let mut c = cfg();
    c.command = vec!["/app".into()];
    c.args = vec!["--serve".into(), "x y".into()];
    c.envs = vec![
        cri::KeyValue {
            key: "A".into(),
            value: "2".into(),
        },
        cri::KeyValue {
            key: "B".into(),
            value: "b=c".into(),
        },
    ];
    c.working_dir = "/work".into();
    c.tty = true;
    c.annotations = [
        ("a.k/one".to_owned(), "1".to_owned()),
        ("b".into(), "2".into()),
    ]
    .into_iter()
    .collect();
    c.mounts = vec![
        cri::Mount {
            container_path: "/data".into(),
            host_path: "/srv/data".into(),
            readonly: true,
            recursive_read_only: true,
            ..Default::default()
        },
        cri::Mount {
            container_path: "/shared".into(),
            host_path: "/srv/shared".into(),
            propagation: cri::MountPropagation::PropagationBidirectional as i32,
            ..Default::default()
        },
        cri::Mount {
            container_path: "/etc/hosts".into(),
            host_path: "/srv/hosts".into(),
            propagation: cri::MountPropagation::PropagationHostToContainer as i32,
            ..Default::default()
        },
    ];
    let resources = cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 256,
        memory_limit_in_bytes: 128 << 20,
        memory_swap_limit_in_bytes: 256 << 20,
        oom_score_adj: 900,
        cpuset_cpus: "0-1".into(),
        cpuset_mems: "0".into(),
        hugepage_limits: vec![cri::HugepageLimit {
            page_size: "2MB".into(),
            limit: 4 << 20,
        }],
        unified: [("memory.high".to_owned(), "100000000".to_owned())]
            .into_iter()
            .collect(),
    };
    let sc = cri::LinuxContainerSecurityContext {
        capabilities: Some(cri::Capability {
            add_capabilities: vec!["CAP_NET_ADMIN".into()],
            drop_capabilities: vec!["CAP_MKNOD".into()],
            ..Default::default()
        }),
        namespace_options: Some(cri::NamespaceOption {
            pid: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        }),
        readonly_rootfs: true,
        no_new_privs: true,
        seccomp: Some(profile(ProfileType::Localhost, "/p/seccomp.json")),
        apparmor: Some(profile(ProfileType::RuntimeDefault, "")),
        masked_paths: vec!["/proc/extra".into()],
        readonly_paths: vec!["/proc/ro".into()],
        ..Default::default()
    };
    c.linux = Some(cri::LinuxContainerConfig {
        resources: Some(resources),
        security_context: Some(sc),
    });
    c
}

/// The rich config's spec, unprivileged and privileged.
fn rich_specs() -> Vec<Value> {
    use crate::pod::userns::{IdMap, UserNs};
    let c = rich_config();
    let img = ImageRun {
        entrypoint: vec!["/ignored".into()],
        cmd: vec!["ignored".into()],
        env: vec!["A=1".into(), "PATH=/bin".into()],
        working_dir: "/ignored".into(),
        user: "app".into(),
    };
    let maps = vec![IdMap {
        container: 0,
        host: 131072,
        len: 65536,
    }];
    let pod = PodContext {
        netns: "/s/netns".into(),
        ipcns: "/s/ipcns".into(),
        utsns: "/s/utsns".into(),
        pidns: "/s/pidns".into(),
        shm: "/s/shm".into(),
        dir: "/s".into(),
        cgroup: "kubepods/pod1".into(),
        userns: "/s/userns".into(),
        user_maps: Some(UserNs {
            uids: maps.clone(),
            gids: maps,
        }),
        hostname: "web-0".into(),
        ..Default::default()
    };
    let sysctls: HashMap<String, String> = [
        ("net.ipv4.ip_forward".to_owned(), "1".to_owned()),
        ("kernel.shmmax".into(), "65536".into()),
    ]
    .into_iter()
    .collect();
    let v1 = [
        "/sys/fs/cgroup/cpu".to_owned(),
        "/sys/fs/cgroup/memory".into(),
    ];
    let mut i = input(&c, &img, &pod);
    i.user = (1000, 2000, vec![3000, 4000]);
    i.own_oom_score_adj = -10;
    i.init = Some("/usr/lib/kelson/kelson-init".into());
    i.devices = vec![Device {
        container_path: "/dev/fuse".into(),
        kind: 'c',
        major: 10,
        minor: 229,
        mode: 0o666,
        access: "rw".into(),
    }];
    i.cgroup_v1_dirs = &v1;
    i.localhost_seccomp = Some(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}));
    i.apparmor_host = true;
    i.sysctls = &sysctls;
    let (unprivileged, w) = generate(&i).unwrap();
    assert!(w.is_empty(), "{w:?}");
    let mut p = c.clone();
    if let Some(sc) = p.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        sc.privileged = true;
        sc.apparmor = None;
        sc.seccomp = None;
    }
    if let Some(r) = p.linux.as_mut().and_then(|l| l.resources.as_mut()) {
        r.oom_score_adj = -500;
    }
    let mut i = Input { config: &p, ..i };
    i.pod_privileged = true;
    let (privileged, w) = generate(&i).unwrap();
    assert_eq!(w.len(), 1, "{w:?}");
    vec![unprivileged, privileged]
}

#[test]
fn a_rich_spec_matches_its_stored_expectation() {
    let want = include_str!("../testdata/spec-rich.json");
    let got = serde_json::to_string_pretty(&rich_specs()).unwrap() + "\n";
    if got != want {
        let path = std::env::temp_dir().join("kelson-spec-rich.actual.json");
        let _ = std::fs::write(&path, &got);
        panic!(
            "the spec differs from testdata/spec-rich.json; got {}",
            path.display()
        );
    }
}

#[test]
fn refuses_bad_paths() {
    let mut c = cfg();
    c.command = vec!["/bin/sh".into()];
    c.mounts = vec![cri::Mount {
        container_path: "../etc".into(),
        host_path: "/x".into(),
        ..Default::default()
    }];
    let (img, pod) = (ImageRun::default(), PodContext::default());
    assert!(matches!(
        generate(&input(&c, &img, &pod)),
        Err(SpecError::Invalid { .. })
    ));
    c.mounts.clear();
    c.working_dir = "relative".into();
    assert!(matches!(
        generate(&input(&c, &img, &pod)),
        Err(SpecError::Invalid { .. })
    ));
}
