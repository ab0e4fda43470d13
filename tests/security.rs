//! Security contexts on real containers: capability sets as containerd derives them, privileged
//! containers (and the privileged pod they need), masked and read-only paths, and sysctls —
//! namespaced ones applied, node-wide and smuggled ones refused by name.

mod common;

use anyhow::Context;
use common::TestPod;
use k8s_cri::v1 as cri;
use kelson_testkit::cri::{self as req, as_root, capabilities as caps};
use kelson_testkit::daemon::Cri;

/// A capability set from /proc/<pid>/status (`CapBnd:\t000001ffffffffff`).
fn cap_set(status: &str, which: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{which}:")))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {which} in {status}"))
}

const CAP_CHOWN: u64 = 1 << 0;
const CAP_NET_BIND_SERVICE: u64 = 1 << 10;
const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_SYS_ADMIN: u64 = 1 << 21;

async fn exec_out(c: &mut Cri, id: &str, cmd: &[&str]) -> anyhow::Result<String> {
    let (code, out, err) = common::exec_sync(c, id, cmd).await?;
    anyhow::ensure!(code == 0, "{cmd:?} exited {code}: {err}");
    Ok(out)
}

/// An exec that must fail: its stderr.
async fn exec_fails(c: &mut Cri, id: &str, cmd: &[&str]) -> anyhow::Result<String> {
    let (code, _, err) = common::exec_sync(c, id, cmd).await?;
    anyhow::ensure!(code != 0, "{cmd:?} succeeded");
    Ok(err)
}

/// A running kelsond with the standard image, and a pod `name` (in the test's cgroup tree
/// `kelson-sectest-<pid>`) carrying two namespaced sysctls.
struct SecPod {
    /// The registry and kelsond, alive as long as the pod is used.
    _env: common::Env,
    image: String,
    c: Cri,
    top: String,
    logs: tempfile::TempDir,
    cfg: cri::PodSandboxConfig,
    pod: String,
}

impl SecPod {
    async fn start(name: &str) -> anyhow::Result<SecPod> {
        let (e, image) = common::env_standard().await?;
        let mut c = e.daemon.cri().await?;
        let top = format!("kelson-sectest-{}", std::process::id());
        let logs = tempfile::tempdir()?;
        let mut cfg = common::pod_config(name, "default", &format!("/{top}/{name}"), logs.path());
        cfg.linux.as_mut().unwrap().sysctls = [
            ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
            ("kernel/msgmax".to_string(), "12345".to_string()),
        ]
        .into();
        let pod = common::run_pod(&mut c, &cfg).await?;
        Ok(SecPod {
            _env: e,
            image,
            c,
            top,
            logs,
            cfg,
            pod,
        })
    }

    fn sleeper(&self, name: &str) -> cri::ContainerConfig {
        common::container_config(name, &self.image, &["/bin/sleep", "3600"])
    }

    /// Create and start `ctr` in the pod, naming the caller's line on failure.
    async fn run(&mut self, ctr: cri::ContainerConfig, line: u32) -> anyhow::Result<String> {
        common::create_start(&mut self.c, &self.pod, &self.cfg, ctr)
            .await
            .with_context(|| format!("line {line}"))
    }

    /// CreateContainer + StartContainer that must be refused: the gRPC status.
    async fn refused(&mut self, ctr: cri::ContainerConfig) -> tonic::Status {
        let err = common::create_start(&mut self.c, &self.pod, &self.cfg, ctr)
            .await
            .unwrap_err();
        err.downcast_ref::<tonic::Status>()
            .expect("a gRPC status")
            .clone()
    }

    async fn remove(mut self) -> anyhow::Result<()> {
        self.c
            .runtime
            .remove_pod_sandbox(req::remove_pod(&self.pod))
            .await?;
        common::remove_cgroup_tree(&self.top);
        Ok(())
    }
}

const PROC_STATUS: [&str; 3] = ["/bin/busybox", "cat", "/proc/self/status"];
const MOUNTINFO: [&str; 3] = ["/bin/busybox", "cat", "/proc/self/mountinfo"];

/// containerd's default set for root (CHOWN yes, NET_ADMIN and SYS_ADMIN no), an added and a
/// dropped capability, and drop ALL with one added back.
#[tokio::test(flavor = "multi_thread")]
async fn capability_sets_follow_containerd_defaults_adds_and_drops() -> anyhow::Result<()> {
    let mut s = SecPod::start("caps").await?;
    let mut ctr = s.sleeper("default");
    as_root(&mut ctr);
    let id = s.run(ctr, line!()).await?;
    let st = exec_out(&mut s.c, &id, &PROC_STATUS).await?;
    let bnd = cap_set(&st, "CapBnd");
    assert!(
        bnd & CAP_CHOWN != 0 && bnd & (CAP_NET_ADMIN | CAP_SYS_ADMIN) == 0,
        "{bnd:x}"
    );
    assert_eq!(cap_set(&st, "CapEff"), bnd, "root has its bounding set");
    assert_eq!(cap_set(&st, "CapInh"), 0, "no inheritable capabilities");

    // add NET_ADMIN, drop CHOWN.
    let mut ctr = s.sleeper("added");
    as_root(&mut ctr).capabilities = caps(&["NET_ADMIN"], &["CHOWN"]);
    let id = s.run(ctr, line!()).await?;
    let st = exec_out(&mut s.c, &id, &PROC_STATUS).await?;
    let bnd = cap_set(&st, "CapBnd");
    assert!(bnd & CAP_NET_ADMIN != 0 && bnd & CAP_CHOWN == 0, "{bnd:x}");

    // drop ALL, add back one.
    let mut ctr = s.sleeper("minimal");
    as_root(&mut ctr).capabilities = caps(&["NET_BIND_SERVICE"], &["ALL"]);
    let id = s.run(ctr, line!()).await?;
    let st = exec_out(&mut s.c, &id, &PROC_STATUS).await?;
    assert_eq!(cap_set(&st, "CapBnd"), CAP_NET_BIND_SERVICE);
    s.remove().await
}

/// The pod's namespaced sysctls reach the container, the host keeps its own; node-wide and
/// smuggled sysctls are refused by name.
#[tokio::test(flavor = "multi_thread")]
async fn namespaced_sysctls_apply_and_node_wide_ones_are_refused() -> anyhow::Result<()> {
    let mut s = SecPod::start("sysctl").await?;
    let mut ctr = s.sleeper("default");
    as_root(&mut ctr);
    let id = s.run(ctr, line!()).await?;
    let v = exec_out(
        &mut s.c,
        &id,
        &["/bin/busybox", "cat", "/proc/sys/kernel/shm_rmid_forced"],
    )
    .await?;
    assert_eq!(v.trim(), "1");
    let v = exec_out(
        &mut s.c,
        &id,
        &["/bin/busybox", "cat", "/proc/sys/kernel/msgmax"],
    )
    .await?;
    assert_eq!(v.trim(), "12345");
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/msgmax")?.trim(),
        "12345"
    );
    for (k, v) in [
        ("kernel.core_pattern", "|/tmp/x"),
        ("kernel.shm_rmid_forced", "1+kernel.core_pattern=|/tmp/x"),
    ] {
        let mut bad = common::pod_config(
            "badsys",
            "default",
            &format!("/{}/badsys", s.top),
            s.logs.path(),
        );
        bad.linux.as_mut().unwrap().sysctls = [(k.to_string(), v.to_string())].into();
        let r = match common::run_pod(&mut s.c, &bad).await {
            Ok(p) => {
                let x = s.sleeper("x");
                let r = common::create_start(&mut s.c, &p, &bad, x).await;
                s.c.runtime.remove_pod_sandbox(req::remove_pod(&p)).await?;
                r.map(|_| ())
            }
            Err(e) => Err(e),
        };
        let err = r.expect_err("a bad sysctl was accepted");
        let st = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
        assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
        assert!(st.message().contains("sysctl"), "{st:?}");
    }
    assert!(!std::fs::read_to_string("/proc/sys/kernel/core_pattern")?.contains("/tmp/x"));
    s.remove().await
}

/// Default masked paths (/proc/keys hides behind /dev/null; this kernel has no /proc/kcore),
/// /proc/sys and /sys read-only, the cgroup tree read-only so root inside cannot lift its own
/// limits; a masked-path list of the request's own replaces the defaults.
#[tokio::test(flavor = "multi_thread")]
async fn masked_and_read_only_paths_keep_root_from_the_kernel() -> anyhow::Result<()> {
    let mut s = SecPod::start("masked").await?;
    let mut ctr = s.sleeper("default");
    as_root(&mut ctr);
    let id = s.run(ctr, line!()).await?;
    let mi = exec_out(&mut s.c, &id, &MOUNTINFO).await?;
    assert!(mi.lines().any(|l| l.contains(" /proc/keys ")), "{mi}");
    assert!(
        mi.lines().any(|l| l.contains(" /proc/sys ")
            && l.split_whitespace()
                .nth(5)
                .is_some_and(|o| o.starts_with("ro"))),
        "{mi}"
    );
    assert!(
        mi.lines()
            .any(|l| l.contains(" /sys ") && l.contains(" ro,")),
        "{mi}"
    );
    // The topmost mount at each point of the cgroup tree is read-only.
    let mut top_mounts = std::collections::BTreeMap::new();
    for l in mi.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 5 && f[4].starts_with("/sys/fs/cgroup") {
            top_mounts.insert(f[4].to_string(), f[5].to_string());
        }
    }
    assert!(!top_mounts.is_empty(), "{mi}");
    for (point, opts) in &top_mounts {
        assert!(
            opts.starts_with("ro"),
            "writable cgroup mount {point} ({opts}): {mi}"
        );
    }
    let r =
        s.c.runtime
            .exec_sync(req::sh(
                &id,
                "echo 9999999999 > /sys/fs/cgroup/memory/memory.limit_in_bytes",
                20,
            ))
            .await?
            .into_inner();
    assert_ne!(
        r.exit_code, 0,
        "root in the container rewrote its memory limit"
    );

    let mut ctr = s.sleeper("own-list");
    as_root(&mut ctr).masked_paths = vec!["/proc/timer_list".into()];
    let id = s.run(ctr, line!()).await?;
    let mi = exec_out(&mut s.c, &id, &MOUNTINFO).await?;
    assert!(mi.lines().any(|l| l.contains(" /proc/timer_list ")), "{mi}");
    assert!(!mi.lines().any(|l| l.contains(" /proc/keys ")), "{mi}");
    s.remove().await
}

/// Supplemental groups (Strict: the request's only), reported in the status as kubelet shows
/// them, and what the process really has; the feature is advertised.
#[tokio::test(flavor = "multi_thread")]
async fn strict_supplemental_groups_are_the_requests_only() -> anyhow::Result<()> {
    let mut s = SecPod::start("groups").await?;
    let mut ctr = s.sleeper("groups");
    let sc = req::security(&mut ctr);
    sc.supplemental_groups = vec![3001, 3000];
    sc.supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
    let id = s.run(ctr, line!()).await?;
    let st = common::container_status(&mut s.c, &id).await?;
    let user = st
        .user
        .and_then(|u| u.linux)
        .expect("status reports the user");
    assert_eq!((user.uid, user.gid), (65534, 65534), "the image's USER");
    // The primary gid is one of the process's groups, as containerd sets them.
    assert_eq!(user.supplemental_groups, [3000, 3001, 65534]);
    let groups = exec_out(&mut s.c, &id, &["/bin/busybox", "id", "-G"]).await?;
    assert_eq!(groups.trim(), "65534 3000 3001");
    let features =
        s.c.runtime
            .status(req::runtime_status())
            .await?
            .into_inner()
            .features
            .unwrap_or_default();
    assert!(features.supplemental_groups_policy);
    s.remove().await
}

/// Refused by name: an unknown capability, a privileged container in a pod that is not
/// privileged, and (this host has neither AppArmor nor SELinux, as containerd on such a host)
/// an AppArmor profile other than Unconfined; SELinux options are ignored.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_capabilities_unprivileged_pods_and_apparmor_are_refused_by_name()
-> anyhow::Result<()> {
    let mut s = SecPod::start("refused").await?;
    let mut ctr = s.sleeper("bogus");
    as_root(&mut ctr).capabilities = caps(&["TAKE_OVER"], &[]);
    let st = s.refused(ctr).await;
    assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
    assert!(st.message().contains("TAKE_OVER"), "{st:?}");
    let mut ctr = s.sleeper("priv");
    as_root(&mut ctr).privileged = true;
    let st = s.refused(ctr).await;
    assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
    assert!(st.message().contains("privileged pod"), "{st:?}");
    let mut ctr = s.sleeper("apparmor");
    as_root(&mut ctr).apparmor = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    let st = s.refused(ctr).await;
    assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
    assert!(st.message().contains("apparmor is not supported"), "{st:?}");
    let mut ctr = s.sleeper("selinux");
    as_root(&mut ctr).selinux_options = Some(cri::SeLinuxOption {
        user: "system_u".into(),
        role: "system_r".into(),
        r#type: "container_t".into(),
        level: "s0:c1,c2".into(),
    });
    s.run(ctr, line!())
        .await
        .context("SELinux options on a host without SELinux")?;
    s.remove().await
}

/// A privileged pod and container: every capability, /sys writable, nothing masked, the
/// host's devices.
#[tokio::test(flavor = "multi_thread")]
async fn privileged_containers_get_every_capability_and_the_host_devices() -> anyhow::Result<()> {
    let mut s = SecPod::start("plain").await?;
    let mut pcfg = common::pod_config(
        "priv",
        "default",
        &format!("/{}/priv", s.top),
        s.logs.path(),
    );
    pcfg.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        privileged: true,
        ..Default::default()
    });
    let ppod = common::run_pod(&mut s.c, &pcfg).await?;
    let mut ctr = s.sleeper("priv");
    as_root(&mut ctr).privileged = true;
    let id = common::create_start(&mut s.c, &ppod, &pcfg, ctr)
        .await
        .with_context(|| format!("line {}", line!()))?;
    let st = exec_out(&mut s.c, &id, &PROC_STATUS).await?;
    // Every capability kelsond has (this host withholds CAP_SYS_RESOURCE from it).
    let own = cap_set(&std::fs::read_to_string("/proc/self/status")?, "CapEff");
    assert_eq!(cap_set(&st, "CapBnd"), own);
    let mi = exec_out(&mut s.c, &id, &MOUNTINFO).await?;
    assert!(!mi.lines().any(|l| l.contains(" /proc/keys ")), "{mi}");
    assert!(
        mi.lines()
            .any(|l| l.contains(" /sys ") && l.contains(" rw,")),
        "{mi}"
    );
    let host_dev = ["/dev/vda", "/dev/loop0", "/dev/kmsg"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("a device node on the host");
    exec_out(&mut s.c, &id, &["/bin/busybox", "test", "-e", host_dev]).await?;
    s.c.runtime
        .remove_pod_sandbox(req::remove_pod(&ppod))
        .await?;
    s.remove().await
}

/// The container's log once it holds `needle`.
async fn log_with(path: &std::path::Path, needle: &str) -> anyhow::Result<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return Ok(text);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in {}: {text}",
            path.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

use cri::security_profile::ProfileType;

fn profile(t: ProfileType, localhost_ref: &str) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: t as i32,
        localhost_ref: localhost_ref.into(),
    })
}

/// ExecSync with a 20 s timeout: the whole response.
async fn exec(c: &mut Cri, id: &str, cmd: &[&str]) -> anyhow::Result<cri::ExecSyncResponse> {
    Ok(c.runtime
        .exec_sync(req::exec(id, cmd, 20))
        .await?
        .into_inner())
}

/// kelsond with a seccomp profile root holding `no-mkdir.json`, the standard image, and a pod
/// `seccomp` for containers that try a user namespace and a mkdir.
struct Seccomp {
    p: TestPod,
    image: String,
    profiles: tempfile::TempDir,
}

impl Seccomp {
    async fn start(test: &str) -> anyhow::Result<Seccomp> {
        let profiles = tempfile::tempdir()?;
        std::fs::write(
            profiles.path().join("no-mkdir.json"),
            br#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
        )?;
        let e = common::env_config(&format!(
            "[container]\nseccomp_profile_root = {:?}\n",
            profiles.path().display().to_string()
        ))
        .await?;
        let image = common::pull_standard(&e).await?;
        let prefix = format!("kelson-sectest2-{test}");
        let p = TestPod::start(e, &prefix, "seccomp").await?;
        Ok(Seccomp { p, image, profiles })
    }

    /// A root container `name` under `profile` that tries a user namespace and a mkdir,
    /// reports both, and stays up.
    fn ctr(&self, name: &str, profile: Option<cri::SecurityProfile>) -> cri::ContainerConfig {
        let script = "/bin/busybox unshare -U /bin/busybox true; echo userns=$?; \
                      /bin/busybox mkdir /tmp/d; echo mkdir=$?; exec /bin/sleep 3600";
        let mut ctr = common::container_config(name, &self.image, &["/bin/sh", "-c", script]);
        as_root(&mut ctr).seccomp = profile;
        ctr
    }

    /// Start `name` under `profile`: its id and its report (the log once it has `mkdir=`).
    async fn run(
        &mut self,
        name: &str,
        profile: Option<cri::SecurityProfile>,
    ) -> anyhow::Result<(String, String)> {
        let ctr = self.ctr(name, profile);
        let id = self.p.run(ctr).await.context(name.to_owned())?;
        let log = self
            .p
            .logs
            .path()
            .join("seccomp")
            .join(format!("{name}.log"));
        Ok((id, log_with(&log, "mkdir=").await?))
    }

    /// The Seccomp: mode of the container's init.
    async fn mode(&mut self, id: &str) -> anyhow::Result<String> {
        let st = exec_out(
            &mut self.p.c,
            id,
            &["/bin/busybox", "cat", "/proc/1/status"],
        )
        .await?;
        Ok(st
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default())
    }
}

/// Unconfined lets a user namespace and a mkdir through, with no filter on the process.
#[tokio::test(flavor = "multi_thread")]
async fn seccomp_unconfined_filters_nothing() -> anyhow::Result<()> {
    let mut s = Seccomp::start("unconfined").await?;
    let (id, text) = s
        .run("unconfined", profile(ProfileType::Unconfined, ""))
        .await?;
    assert!(
        text.contains("userns=0") && text.contains("mkdir=0"),
        "{text}"
    );
    assert_eq!(s.mode(&id).await?, "0");
    s.p.remove().await
}

/// RuntimeDefault blocks what containerd's default blocks (a new user namespace, which needs no
/// capability, is refused) while ordinary work goes on. Exec'd processes are filtered too
/// (libcontainer leaves them unfiltered; kelson-init loads the container's filter in front of
/// them), the filter's variable does not leak, and ordinary exec work goes on.
#[tokio::test(flavor = "multi_thread")]
async fn seccomp_runtime_default_filters_the_container_and_its_execs() -> anyhow::Result<()> {
    let mut s = Seccomp::start("default").await?;
    let (id, text) = s
        .run("default", profile(ProfileType::RuntimeDefault, ""))
        .await?;
    assert!(
        !text.contains("userns=0"),
        "RuntimeDefault let a user namespace be made: {text}"
    );
    assert!(text.contains("mkdir=0"), "ordinary work goes on: {text}");
    assert_eq!(s.mode(&id).await?, "2", "filter mode");
    let c = &mut s.p.c;
    let r = exec(
        c,
        &id,
        &["/bin/busybox", "unshare", "-U", "/bin/busybox", "true"],
    )
    .await?;
    assert_ne!(
        r.exit_code, 0,
        "an exec'd process made a user namespace under RuntimeDefault"
    );
    let st = exec_out(c, &id, &["/bin/busybox", "cat", "/proc/self/status"]).await?;
    assert!(
        st.contains("Seccomp:\t2"),
        "exec'd process unfiltered: {st}"
    );
    assert!(!st.contains("KELSON_SECCOMP_BPF"));
    let env = exec_out(c, &id, &["/bin/busybox", "env"]).await?;
    assert!(
        !env.contains("KELSON_SECCOMP_BPF"),
        "the filter variable leaked: {env}"
    );
    assert_eq!(
        exec_out(c, &id, &["/bin/busybox", "echo", "hi"]).await?,
        "hi\n"
    );
    let r = exec(c, &id, &["/no/such/command"]).await?;
    assert_eq!(r.exit_code, 127, "{}", String::from_utf8_lossy(&r.stderr));
    s.p.remove().await
}

/// A Localhost profile from the configured root applies, to the container and to exec'd
/// processes, named relative to the root or by its absolute path.
#[tokio::test(flavor = "multi_thread")]
async fn seccomp_localhost_profiles_apply_from_the_profile_root() -> anyhow::Result<()> {
    let mut s = Seccomp::start("local").await?;
    let (id, text) = s
        .run("local", profile(ProfileType::Localhost, "no-mkdir.json"))
        .await?;
    assert!(
        text.contains("userns=0") && !text.contains("mkdir=0"),
        "{text}"
    );
    let r = exec(&mut s.p.c, &id, &["/bin/busybox", "mkdir", "/tmp/by-exec"]).await?;
    assert_ne!(
        r.exit_code, 0,
        "the Localhost profile did not apply to an exec'd process"
    );
    let abs = s
        .profiles
        .path()
        .join("no-mkdir.json")
        .display()
        .to_string();
    let (_, text) = s
        .run("local-abs", profile(ProfileType::Localhost, &abs))
        .await
        .context("localhost by absolute path")?;
    assert!(!text.contains("mkdir=0"), "{text}");
    s.p.remove().await
}

/// A missing or escaping Localhost profile is refused by name.
#[tokio::test(flavor = "multi_thread")]
async fn seccomp_profiles_missing_or_escaping_the_root_are_refused() -> anyhow::Result<()> {
    let mut s = Seccomp::start("bad").await?;
    for bad in ["missing.json", "../../etc/passwd", "/etc/passwd"] {
        let ctr = s.ctr("bad", profile(ProfileType::Localhost, bad));
        let err = s.p.run(ctr).await.unwrap_err();
        let st = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
        assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
        assert!(st.message().contains(bad), "{st:?}");
    }
    s.p.remove().await
}

/// CVE-2024-21626 through the image: a WORKDIR that is itself plain (`/app`, `/srv/up`) but a
/// symlink in the image to /proc's fd or cwd links is refused by name, as the literal string
/// is; a WORKDIR symlinked to an ordinary directory of the image still works.
#[tokio::test(flavor = "multi_thread")]
async fn image_workdirs_symlinked_through_proc_magic_links_are_refused() -> anyhow::Result<()> {
    use kelson_testkit::TarBuilder;
    let e = common::env().await?;
    let layer = TarBuilder::new()
        .link(tar::EntryType::Symlink, "app", "/proc/self/fd/7")
        .dir("srv", 0o755)
        .dir("srv/real", 0o755)
        .link(tar::EntryType::Symlink, "srv/up", "../proc/1/cwd")
        .link(tar::EntryType::Symlink, "hop", "/proc/self")
        .link(tar::EntryType::Symlink, "work", "srv/real")
        .finish();
    let mut p = TestPod::start(e, "kelson-sectest-workdir", "workdir").await?;
    for (tag, workdir) in [("app", "/app"), ("up", "/srv/up"), ("hop", "/hop/cwd")] {
        let image = common::push_with_layer(
            &p.e,
            "test/workdir",
            tag,
            layer.clone(),
            serde_json::json!({"Cmd": ["/bin/sleep", "3600"], "Env": ["PATH=/bin"], "WorkingDir": workdir}),
        )
        .await?;
        let ctr = common::container_config(tag, &image, &["/bin/sleep", "3600"]);
        let err = p.run(ctr).await.unwrap_err();
        let st = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
        assert_eq!(st.code(), tonic::Code::InvalidArgument, "{workdir}: {st:?}");
        assert!(
            st.message().contains("magic link") && st.message().contains(workdir),
            "{workdir}: {st:?}"
        );
    }
    let image = common::push_with_layer(
        &p.e,
        "test/workdir",
        "plain",
        layer,
        serde_json::json!({"Cmd": ["/bin/sleep", "3600"], "Env": ["PATH=/bin"], "WorkingDir": "/work"}),
    )
    .await?;
    let id = p
        .run(common::container_config(
            "plain",
            &image,
            &["/bin/sleep", "3600"],
        ))
        .await?;
    let cwd = exec_out(&mut p.c, &id, &["/bin/busybox", "readlink", "/proc/1/cwd"]).await?;
    assert_eq!(cwd.trim(), "/srv/real");
    p.remove().await
}

/// runc CVE-2024-21626's class: a working directory through /proc's fd links is refused, and
/// neither the container's process nor an exec'd one holds any fd from the host side (only its
/// stdio, pipes and sockets the shim gave it, and /dev/null).
#[tokio::test(flavor = "multi_thread")]
async fn no_host_fd_reaches_a_container() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let (top, _logs, cfg, pod) = common::pod_in(&mut c, "kelson-sectest3", "fds").await?;

    for cwd in ["/proc/self/fd/7", "/proc/1/cwd", "/proc/thread-self/fd/3"] {
        let mut ctr = common::container_config("leak", &image, &["/bin/sleep", "3600"]);
        ctr.working_dir = cwd.into();
        let err = common::create_start(&mut c, &pod, &cfg, ctr)
            .await
            .unwrap_err();
        let s = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("magic link"), "{s:?}");
    }

    let mut ctr = common::container_config("main", &image, &["/bin/sleep", "3600"]);
    as_root(&mut ctr);
    let id = common::create_start(&mut c, &pod, &cfg, ctr).await?;
    // Every fd of the container's init and of an exec'd process, with its target.
    let script = "for p in 1 self; do for f in /proc/$p/fd/*; do \
                  echo \"$p $f $(/bin/busybox readlink $f)\"; done; done";
    let out = exec_out(&mut c, &id, &["/bin/sh", "-c", script]).await?;
    let mut seen = 0;
    for line in out.lines() {
        let target = line.split_whitespace().nth(2).unwrap_or("");
        seen += 1;
        // (An empty target: the shell's own directory fd, closed by the time readlink ran.)
        let fine = target.is_empty()
            || target.starts_with("pipe:")
            || target.starts_with("socket:")
            || target == "/dev/null"
            || target.starts_with("/proc/")
            || target.starts_with("/dev/pts/");
        assert!(fine, "a container process holds {line:?}: {out}");
    }
    assert!(seen >= 6, "{out}");
    // The init holds exactly its stdio.
    let init: Vec<&str> = out.lines().filter(|l| l.starts_with("1 ")).collect();
    assert_eq!(init.len(), 3, "{out}");

    common::remove_pod(&mut c, &pod, &top).await?;
    Ok(())
}

/// runc CVE-2019-5736's class: the processes of the engine that enter a container (a created
/// container's init waiting for start, exec'd processes before they exec) run from a sealed
/// in-memory copy, so `/proc/<pid>/exe` inside the container leads to nothing writable and
/// never to the host's binary.
#[tokio::test(flavor = "multi_thread")]
async fn the_engine_entering_containers_is_a_sealed_copy() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let (top, _logs, cfg, pod) = common::pod_in(&mut c, "kelson-sectest4", "exe").await?;
    let id = c
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(common::container_config(
                "main",
                &image,
                &["/bin/sleep", "3600"],
            )),
            sandbox_config: Some(cfg.clone()),
        })
        .await?
        .into_inner()
        .container_id;
    // The created container's init: the engine, waiting in the container for start.
    let procs =
        std::fs::read_to_string(format!("/sys/fs/cgroup/pids/{top}/exe/{id}/cgroup.procs"))?;
    let init: i32 = procs
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no process in the created container: {procs:?}"))?;
    let exe = std::fs::read_link(format!("/proc/{init}/exe"))?;
    assert!(
        exe.to_string_lossy()
            .starts_with("/memfd:kelson-shim-engine"),
        "the created container's init runs {}",
        exe.display()
    );
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{init}/exe"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"x"));
    assert!(
        w.is_err(),
        "the engine's image was writable through /proc/<pid>/exe"
    );
    c.runtime.start_container(req::start(&id)).await?;
    // After start the container runs its own program, not the engine.
    let exe = std::fs::read_link(format!("/proc/{init}/exe"))?;
    assert!(
        !exe.to_string_lossy().contains("kelson"),
        "{}",
        exe.display()
    );

    common::remove_pod(&mut c, &pod, &top).await?;
    Ok(())
}

/// runc CVE-2019-5736 against the built-in init: root in a container whose PID 1 is
/// kelson-init (a read-only bind of the host's binary) tries to overwrite it through
/// `/proc/1/exe` and fails; the host's binary is unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn the_built_in_init_cannot_be_overwritten_through_proc_exe() -> anyhow::Result<()> {
    let host_init = std::path::Path::new(common::KELSOND).with_file_name("kelson-init");
    let before = std::fs::read(&host_init)?;
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let (top, _logs, cfg, pod) =
        common::pod_in(&mut c, "kelson-sectest-initexe", "initexe").await?;
    let mut ctr = common::container_config("main", &image, &["/bin/sleep", "3600"]);
    ctr.annotations
        .insert("kelson.io/init".into(), "true".into());
    as_root(&mut ctr);
    let id = common::create_start(&mut c, &pod, &cfg, ctr).await?;
    // The kernel answers "text file busy" while PID 1 runs the binary; what keeps it safe
    // when nothing runs it is the read-only mount, checked as the container sees it.
    let script = "echo pid1=$(/bin/busybox readlink /proc/1/exe); \
                  (printf x >> /proc/1/exe) 2>&1; echo append=$?; \
                  (printf x 1<> /proc/1/exe) 2>&1; echo rw=$?; \
                  /bin/busybox grep ' /.kelson/init ' /proc/self/mountinfo";
    let out = exec_out(&mut c, &id, &["/bin/sh", "-c", script]).await?;
    assert!(
        out.lines().next().is_some_and(|l| l.contains("init")),
        "PID 1 is not the init: {out}"
    );
    assert!(
        !out.contains("append=0") && !out.contains("rw=0"),
        "/proc/1/exe was writable: {out}"
    );
    let mount = out
        .lines()
        .find(|l| l.contains(" /.kelson/init "))
        .unwrap_or_else(|| panic!("the init is not a mount of its own: {out}"));
    let options = mount.split_whitespace().nth(5).unwrap_or("");
    assert!(
        options.split(',').any(|o| o == "ro"),
        "the init's mount is writable: {mount}"
    );
    assert!(
        std::fs::read(&host_init)? == before,
        "the host's kelson-init changed"
    );
    common::remove_pod(&mut c, &pod, &top).await?;
    Ok(())
}

/// What a container of a shared-PID pod finds behind `/proc/1` (the pod's holder) when it has
/// `SYS_PTRACE`, which lets it past the kernel's ptrace checks on another user's and a
/// non-dumpable process's `/proc` entries.
struct Pid1Probe {
    /// Host bait: a file with `secret` in it, in a directory the container tries to write to.
    bait: tempfile::TempDir,
    secret: String,
}

impl Pid1Probe {
    fn new() -> anyhow::Result<Pid1Probe> {
        use std::os::unix::fs::PermissionsExt;
        let bait = tempfile::Builder::new().prefix("kelson-pid1-").tempdir()?;
        // Readable and writable by anyone: only the way in must stop a container, whatever
        // its uid on the host.
        std::fs::set_permissions(bait.path(), std::fs::Permissions::from_mode(0o777))?;
        let secret = format!("host secret {}", std::process::id());
        std::fs::write(bait.path().join("secret"), &secret)?;
        Ok(Pid1Probe { bait, secret })
    }

    /// A root container with `SYS_PTRACE` under RuntimeDefault seccomp, joining the pod's PID
    /// namespace (`ns`: the pod's namespace options, for a user-namespaced pod).
    fn container(image: &str, ns: cri::NamespaceOption) -> cri::ContainerConfig {
        let mut ctr = common::container_config("tracer", image, &["/bin/sleep", "3600"]);
        let sc = as_root(&mut ctr);
        sc.capabilities = caps(&["SYS_PTRACE"], &[]);
        sc.seccomp = profile(ProfileType::RuntimeDefault, "");
        sc.namespace_options = Some(ns);
        ctr
    }

    /// Every way through PID 1 to the host, from container `id`; `uid` is what the holder
    /// must run as, seen from the container.
    async fn run(&self, c: &mut Cri, id: &str, uid: u32) -> anyhow::Result<()> {
        let bb = "/bin/busybox";
        let b = self.bait.path().display().to_string();
        let one = exec_out(c, id, &[bb, "cat", "/proc/1/cmdline"]).await?;
        assert!(one.contains("pod-holder"), "PID 1 is the holder: {one:?}");
        // Its root: an empty directory, or nothing at all.
        let (_, ls, _) = common::exec_sync(c, id, &[bb, "ls", "-a", "/proc/1/root/"]).await?;
        assert!(
            ls.lines().all(|l| l == "." || l == ".."),
            "the holder's root shows {ls:?}"
        );
        let (_, cat, _) =
            common::exec_sync(c, id, &[bb, "cat", &format!("/proc/1/root{b}/secret")]).await?;
        assert!(
            !cat.contains(&self.secret),
            "the host's bait was read through /proc/1/root"
        );
        let write = format!("echo x > /proc/1/root{b}/written");
        let (code, _, _) = common::exec_sync(c, id, &[bb, "sh", "-c", &write]).await?;
        assert_ne!(code, 0, "the host's bait directory was written");
        assert!(
            !self.bait.path().join("written").exists(),
            "a host file was made through /proc/1/root"
        );
        // Its mount table: at most its own empty root, nothing of the host's.
        let (_, mounts, _) = common::exec_sync(c, id, &[bb, "cat", "/proc/1/mountinfo"]).await?;
        assert!(mounts.lines().count() <= 1, "the holder's mounts: {mounts}");
        for l in mounts.lines() {
            assert_eq!(l.split(' ').nth(4), Some("/"), "{l}");
            assert!(l.contains(" - tmpfs ") && l.contains(" ro,"), "{l}");
        }
        let (_, env, _) = common::exec_sync(c, id, &[bb, "cat", "/proc/1/environ"]).await?;
        assert!(env.is_empty(), "the holder's environment: {env:?}");
        // Its binary: a sealed copy, neither the host's file nor writable.
        let (_, exe, _) = common::exec_sync(c, id, &[bb, "readlink", "/proc/1/exe"]).await?;
        assert!(
            exe.is_empty() || exe.starts_with("/memfd:"),
            "the holder runs {exe:?}"
        );
        let (code, _, _) =
            common::exec_sync(c, id, &[bb, "sh", "-c", "echo x >> /proc/1/exe"]).await?;
        assert_ne!(code, 0, "the holder's binary was written");
        // No capability in any set, an unprivileged uid, and no way to regain either.
        let st = exec_out(c, id, &[bb, "cat", "/proc/1/status"]).await?;
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(cap_set(&st, set), 0, "{set}: {st}");
        }
        let ids = |which: &str| -> Vec<String> {
            st.lines()
                .find_map(|l| l.strip_prefix(which))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(ids("Uid:"), vec![uid.to_string(); 4], "{st}");
        assert!(ids("Gid:").iter().all(|g| g != "0"), "{st}");
        assert_eq!(ids("Groups:"), Vec::<String>::new(), "{st}");
        assert_eq!(ids("NoNewPrivs:"), ["1"], "{st}");
        Ok(())
    }
}

/// Zombies in the PID namespace of container `id`.
async fn zombies(c: &mut Cri, id: &str) -> anyhow::Result<usize> {
    let script = "for s in /proc/[0-9]*/stat; do read -r l < $s; \
                  case \"$l\" in *') Z '*) echo Z;; esac; done";
    let out = exec_out(c, id, &["/bin/sh", "-c", script]).await?;
    Ok(out.lines().count())
}

/// The holder, dropped to nothing, is still the pod's init: an orphan is re-parented to it
/// and reaped when it exits.
async fn holder_reaps_orphans(c: &mut Cri, id: &str) -> anyhow::Result<()> {
    let bb = "/bin/busybox";
    exec_out(
        c,
        id,
        &[
            bb,
            "sh",
            "-c",
            "(/bin/sleep 2 </dev/null >/dev/null 2>&1 & echo $! > /tmp/orphan)",
        ],
    )
    .await?;
    let stat = exec_out(
        c,
        id,
        &[bb, "sh", "-c", "cat /proc/$(cat /tmp/orphan)/stat"],
    )
    .await?;
    assert_eq!(
        stat.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1)),
        Some("1"),
        "the orphan's parent: {stat}"
    );
    // It exits after 2 s; a zombie left 20 s later was never reaped.
    for _ in 0..200 {
        let gone = exec_out(
            c,
            id,
            &[
                bb,
                "sh",
                "-c",
                "test -e /proc/$(cat /tmp/orphan)/stat || echo gone",
            ],
        )
        .await?;
        if gone.trim() == "gone" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(zombies(c, id).await?, 0, "an orphan was left a zombie");
    Ok(())
}

/// A shared-PID pod's PID 1 is no door to the host (the holder used to run as root with every
/// capability in the host's mount namespace, from the host's binary): a root container with
/// `SYS_PTRACE` finds behind `/proc/1` an empty read-only root, no host mount, no environment,
/// a sealed binary, no capability and uid 65534; and the holder still reaps orphans.
#[tokio::test(flavor = "multi_thread")]
async fn a_shared_pid_pods_pid_1_is_no_door_to_the_host() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let top = format!("kelson-sectest-pid1-{}", std::process::id());
    let logs = tempfile::tempdir()?;
    let mut cfg = common::pod_config("pid1", "default", &format!("/{top}/pid1"), logs.path());
    let ns = cri::NamespaceOption {
        pid: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    };
    cfg.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(ns.clone()),
        ..Default::default()
    });
    let mut p = TestPod::with_config(e, top, logs, cfg).await?;
    let probe = Pid1Probe::new()?;
    // Both containers first: libcontainer (0.7, cgroup v1) looks a new container's pid in the
    // pod's namespace up in the host's /proc, so creation fails when the pod's next pid names
    // no host process, and the probes below use up pids.
    let id = p.run(Pid1Probe::container(&image, ns.clone())).await?;
    let mut plain = common::container_config("plain", &image, &["/bin/sleep", "3600"]);
    kelson_testkit::cri::security(&mut plain).namespace_options = Some(ns);
    let plain = p.run(plain).await?;
    probe.run(&mut p.c, &id, 65534).await?;
    // Without SYS_PTRACE, the mount table either.
    let (_, mounts, _) = common::exec_sync(
        &mut p.c,
        &plain,
        &["/bin/busybox", "cat", "/proc/1/mountinfo"],
    )
    .await?;
    assert!(mounts.lines().count() <= 1, "the holder's mounts: {mounts}");
    holder_reaps_orphans(&mut p.c, &id).await?;
    p.remove().await
}

/// The same in a user-namespaced pod, where the holder is made inside the pod's user namespace
/// and drops to an id mapped there (65534 inside).
#[tokio::test(flavor = "multi_thread")]
async fn a_user_namespaced_pods_pid_1_is_no_door_to_the_host() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let top = format!("kelson-userns-pid1-{}", std::process::id());
    let logs = tempfile::tempdir()?;
    let cfg = userns_pod(&top, logs.path());
    let mut p = TestPod::with_config(e, top, logs, cfg).await?;
    let probe = Pid1Probe::new()?;
    let id = p
        .run(Pid1Probe::container(
            &image,
            userns_options(USERNS_HOST_BASE),
        ))
        .await?;
    probe.run(&mut p.c, &id, 65534).await?;
    holder_reaps_orphans(&mut p.c, &id).await?;
    p.remove().await
}

/// Host files and directories a hostile image points its symlinks at; they must stay as made.
struct Bait {
    dir: tempfile::TempDir,
    /// The bait directory's path, as the symlinks name it.
    b: String,
}

impl Bait {
    fn new(files: &[&str], dirs: &[&str]) -> anyhow::Result<Bait> {
        let dir = tempfile::Builder::new().prefix("kelson-bait-").tempdir()?;
        for f in files {
            std::fs::write(dir.path().join(f), b"host file\n")?;
        }
        for d in dirs {
            std::fs::create_dir(dir.path().join(d))?;
        }
        let b = dir.path().display().to_string();
        Ok(Bait { dir, b })
    }

    /// Nothing mounted on the bait, its `files` unwritten and its `dirs` empty.
    fn untouched(&self, what: &str, files: &[&str], dirs: &[&str]) {
        let on = mounts_on(&self.b);
        assert!(
            on.is_empty(),
            "{what}: a mount landed on the host: {}",
            on.join("\n")
        );
        for f in files {
            assert_eq!(
                std::fs::read(self.dir.path().join(f)).unwrap(),
                b"host file\n",
                "{what}: {f} was written"
            );
        }
        for d in dirs {
            assert_eq!(
                std::fs::read_dir(self.dir.path().join(d)).unwrap().count(),
                0,
                "{what}: {d} was filled"
            );
        }
    }
}

const HOSTILE_FILES: [&str; 3] = ["hosts", "resolv", "hostname"];
const HOSTILE_DIRS: [&str; 4] = ["dev", "proc", "sys", "shm"];
/// Enough `..` to climb out of any rootfs.
const UP: &str = "../../../../../../../../../..";

/// Push `layer` as `test/hostile:<name>` and start a container of it in pod `hostile`: started,
/// the files kelson mounted are inside the container; refused, it is a clear refusal and not a
/// crash. Either way nothing was mounted over the bait, and it is unchanged.
async fn hostile_image_stays_inside(
    p: &mut TestPod,
    bait: &Bait,
    name: &str,
    layer: Vec<u8>,
) -> anyhow::Result<()> {
    let image = common::push_with_layer(
        &p.e,
        "test/hostile",
        name,
        layer,
        serde_json::json!({"Cmd": ["/bin/sleep", "3600"], "Env": ["PATH=/bin"]}),
    )
    .await?;
    let ctr = common::container_config(name, &image, &["/bin/sleep", "3600"]);
    let r = p.run(ctr).await;
    println!(
        "hostile rootfs {name}: {:?}",
        r.as_ref().map_err(|e| e.to_string())
    );
    match &r {
        Ok(id) => {
            let hosts = exec_out(&mut p.c, id, &["/bin/busybox", "cat", "/etc/hosts"]).await?;
            assert!(!hosts.contains("host file"), "{hosts}");
        }
        Err(err) => {
            let s = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
            assert_ne!(s.code(), tonic::Code::Unknown, "{s:?}");
        }
    }
    bait.untouched(name, &HOSTILE_FILES, &HOSTILE_DIRS);
    Ok(())
}

async fn hostile_pod(test: &str) -> anyhow::Result<(TestPod, Bait)> {
    let e = common::env().await?;
    let bait = Bait::new(&HOSTILE_FILES, &HOSTILE_DIRS)?;
    let p = TestPod::start(e, &format!("kelson-sectest5-{test}"), "hostile").await?;
    Ok((p, bait))
}

/// Hostile root filesystems (runc CVE-2019-19921, CVE-2021-30465 and kin): images whose
/// `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname` (the files kelson bind-mounts) are
/// symlinks pointing at the host — absolute, relative with `..`, and through /proc's magic
/// links — cannot make kelson mount or write anything outside the container.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_etc_file_symlinks_stay_inside() -> anyhow::Result<()> {
    use kelson_testkit::TarBuilder;
    let (mut p, bait) = hostile_pod("etc").await?;
    let b = &bait.b;
    let etc = |path: &str, target: String| {
        TarBuilder::new()
            .dir("etc", 0o755)
            .link(tar::EntryType::Symlink, path, &target)
            .finish()
    };
    for (name, layer) in [
        ("hosts-abs", etc("etc/hosts", format!("{b}/hosts"))),
        (
            "resolv-rel",
            etc("etc/resolv.conf", format!("{UP}{b}/resolv")),
        ),
        (
            "hostname-magic",
            etc("etc/hostname", format!("/proc/self/root{b}/hostname")),
        ),
    ] {
        hostile_image_stays_inside(&mut p, &bait, name, layer).await?;
    }
    p.remove().await
}

/// Hostile root filesystems whose `/proc`, `/sys` and `/dev` (where the container library mounts
/// filesystems) are symlinks to the host: every target resolves inside the rootfs or the
/// container is refused, and the host's directories stay empty.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_proc_sys_and_dev_symlinks_stay_inside() -> anyhow::Result<()> {
    use kelson_testkit::TarBuilder;
    let (mut p, bait) = hostile_pod("dirs").await?;
    let b = &bait.b;
    let link = |path: &str, target: String| {
        TarBuilder::new()
            .link(tar::EntryType::Symlink, path, &target)
            .finish()
    };
    for (name, layer) in [
        ("proc", link("proc", format!("{b}/proc"))),
        ("sys", link("sys", format!("/proc/self/root{b}/sys"))),
        ("dev", link("dev", format!("{UP}{b}/dev"))),
    ] {
        hostile_image_stays_inside(&mut p, &bait, name, layer).await?;
    }
    p.remove().await
}

/// What real images do must still work: in-root symlinks, relative (/etc/resolv.conf →
/// ../run/…) and absolute (/var/run → /run, under which kubelet mounts the service account).
#[tokio::test(flavor = "multi_thread")]
async fn in_root_symlinks_of_real_images_still_work() -> anyhow::Result<()> {
    use kelson_testkit::TarBuilder;
    let (mut p, _bait) = hostile_pod("benign").await?;
    let benign = TarBuilder::new()
        .dir("etc", 0o755)
        .dir("run", 0o755)
        .file("run/resolv.conf", 0o644, b"# image\n")
        .link(
            tar::EntryType::Symlink,
            "etc/resolv.conf",
            "../run/resolv.conf",
        )
        .dir("var", 0o755)
        .link(tar::EntryType::Symlink, "var/run", "/run")
        .finish();
    let image = common::push_with_layer(
        &p.e,
        "test/hostile",
        "benign",
        benign,
        serde_json::json!({"Cmd": ["/bin/sleep", "3600"], "Env": ["PATH=/bin"]}),
    )
    .await?;
    let secrets = tempfile::tempdir()?;
    std::fs::write(secrets.path().join("token"), b"sa-token")?;
    let mut ctr = common::container_config("benign", &image, &["/bin/sleep", "3600"]);
    ctr.mounts = vec![cri::Mount {
        container_path: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
        host_path: secrets.path().display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let id = p.run(ctr).await.context("an image with in-root symlinks")?;
    let token = exec_out(
        &mut p.c,
        &id,
        &[
            "/bin/busybox",
            "cat",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
        ],
    )
    .await?;
    assert_eq!(token, "sa-token");
    let resolv = exec_out(&mut p.c, &id, &["/bin/busybox", "cat", "/etc/resolv.conf"]).await?;
    assert!(
        !resolv.contains("# image"),
        "the pod's resolv.conf is not in place: {resolv}"
    );
    p.remove().await
}

/// The host pid of a container's init (from verbose ContainerStatus).
async fn init_pid(c: &mut Cri, id: &str) -> anyhow::Result<u32> {
    let st = c
        .runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await?
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(st.info.get("info").context("no info")?)?;
    info["pid"]
        .as_u64()
        .map(|p| p as u32)
        .with_context(|| format!("no pid in {info}"))
}

/// kubelet's mapping for a pod with `hostUsers: false`: 65536 ids at a multiple of 65536.
const USERNS_HOST_BASE: u32 = 65536 * 47;

fn userns_options(host: u32) -> cri::NamespaceOption {
    // Shared PID namespace too: its holder must run inside the user namespace.
    cri::NamespaceOption {
        pid: cri::NamespaceMode::Pod as i32,
        ..kelson_testkit::pod_userns(host)
    }
}

/// A user-namespaced pod (`hostUsers: false`, shared PID namespace) with a net sysctl, which
/// works only when the pod's network namespace belongs to its user one.
fn userns_pod(top: &str, logs: &std::path::Path) -> cri::PodSandboxConfig {
    let mut cfg = common::pod_config("userns", "default", &format!("/{top}/u"), logs);
    let linux = cfg.linux.as_mut().unwrap();
    linux.security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(userns_options(USERNS_HOST_BASE)),
        ..Default::default()
    });
    linux.sysctls = [(
        "net.ipv4.ping_group_range".to_string(),
        "0 65535".to_string(),
    )]
    .into();
    cfg
}

/// A running root container in a user-namespaced pod (`userns_pod`) with two volumes: a
/// directory holding a file of host root's, and a single file, as kubelet mounts
/// /dev/termination-log and /etc/hosts.
struct Userns {
    p: TestPod,
    /// Mounts below kelsond's dirs before the container was made.
    mounts_before: usize,
    vol: tempfile::TempDir,
    log_file: tempfile::NamedTempFile,
    id: String,
}

impl Userns {
    async fn start(test: &str) -> anyhow::Result<Userns> {
        let (e, image) = common::env_standard().await?;
        let top = format!("kelson-userns-{test}-{}", std::process::id());
        let logs = tempfile::tempdir()?;
        let cfg = userns_pod(&top, logs.path());
        let mut p = TestPod::with_config(e, top, logs, cfg).await?;
        let mounts_before = common::mounts_of(&p.e.daemon);
        let vol = tempfile::Builder::new().prefix("kelson-vol-").tempdir()?;
        std::fs::write(vol.path().join("from-host"), b"host data\n")?;
        let mut ctr = common::container_config("c", &image, &["/bin/sleep", "3600"]);
        as_root(&mut ctr).namespace_options = Some(userns_options(USERNS_HOST_BASE));
        let log_file = tempfile::NamedTempFile::new()?;
        ctr.mounts = vec![
            common::bind("/data", vol.path()),
            common::bind("/dev/termination-log", log_file.path()),
        ];
        let id = match p.run(ctr).await {
            Ok(id) => id,
            Err(err) => {
                println!("{}", p.e.daemon.log());
                return Err(err.context("a container in a user-namespaced pod"));
            }
        };
        Ok(Userns {
            p,
            mounts_before,
            vol,
            log_file,
            id,
        })
    }

    async fn exec(&mut self, cmd: &[&str]) -> anyhow::Result<String> {
        exec_out(&mut self.p.c, &self.id, cmd).await
    }

    /// Remove the pod: no pin or mount is left.
    async fn remove(mut self) -> anyhow::Result<()> {
        let p = &mut self.p;
        p.c.runtime
            .remove_pod_sandbox(req::remove_pod(&p.pod))
            .await?;
        assert_eq!(common::mounts_of(&p.e.daemon), 0, "a pin or mount was left");
        common::remove_cgroup_tree(&p.top);
        Ok(())
    }
}

/// Root inside, an unprivileged id on the host, the shared PID namespace's holder too; the
/// capabilities are the namespace's, not the host's: no device nodes, no host sysctls (the
/// pod's net sysctl applies), and the pod's files and /dev/shm are its root's.
#[tokio::test(flavor = "multi_thread")]
async fn user_namespaced_root_is_unprivileged_on_the_host() -> anyhow::Result<()> {
    let mut u = Userns::start("root").await?;
    assert_eq!(u.exec(&["/bin/busybox", "id", "-u"]).await?.trim(), "0");
    let map = u
        .exec(&["/bin/busybox", "cat", "/proc/self/uid_map"])
        .await?;
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", &USERNS_HOST_BASE.to_string(), "65536"]
    );
    let pid = init_pid(&mut u.p.c, &u.id).await?;
    let host_status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uids = host_status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .context("no Uid line")?;
    assert!(
        uids.split_whitespace()
            .all(|u| u == USERNS_HOST_BASE.to_string()),
        "the container's init runs as {uids} on the host"
    );
    let err = exec_fails(
        &mut u.p.c,
        &u.id,
        &["/bin/busybox", "mknod", "/tmp/null", "c", "1", "3"],
    )
    .await?;
    assert!(err.contains("not permitted"), "{err}");
    let range = u
        .exec(&["/bin/busybox", "cat", "/proc/sys/net/ipv4/ping_group_range"])
        .await?;
    assert_eq!(range.split_whitespace().collect::<Vec<_>>(), ["0", "65535"]);
    u.exec(&[
        "/bin/busybox",
        "sh",
        "-c",
        "echo x >> /etc/hosts && /bin/busybox touch /dev/shm/x",
    ])
    .await?;
    let one = u.exec(&["/bin/busybox", "cat", "/proc/1/cmdline"]).await?;
    assert!(one.contains("pod-holder"), "{one:?}");
    u.remove().await
}

/// The image's files are root's inside through idmapped layers, no shared snapshot chowned; what
/// root writes in the rootfs lands as the pod's id on the host.
#[tokio::test(flavor = "multi_thread")]
async fn user_namespaced_layers_are_idmapped_not_chowned() -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut u = Userns::start("layers").await?;
    let owner = u
        .exec(&["/bin/busybox", "stat", "-c", "%u:%g", "/bin/busybox"])
        .await?;
    assert_eq!(owner.trim(), "0:0");
    let snapshots = u.p.e.daemon.dir.path().join("root/snapshots");
    assert!(
        walk_owners(&snapshots)
            .iter()
            .all(|u| *u != USERNS_HOST_BASE),
        "a shared snapshot was chowned"
    );
    u.exec(&["/bin/busybox", "touch", "/written"]).await?;
    let upper =
        u.p.e
            .daemon
            .dir
            .path()
            .join("root/containers")
            .join(&u.id)
            .join("upper/written");
    assert_eq!(std::fs::metadata(&upper)?.uid(), USERNS_HOST_BASE);
    u.remove().await
}

/// Volumes are idmapped: host root's file is root's inside, root's writes are host root's files
/// again (as without a user namespace), a single-file volume is written through; removing the
/// container releases every idmapped mount and leaves the volume whole.
#[tokio::test(flavor = "multi_thread")]
async fn user_namespaced_volumes_are_idmapped_and_released_whole() -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut u = Userns::start("volumes").await?;
    let owner = u
        .exec(&["/bin/busybox", "stat", "-c", "%u", "/data/from-host"])
        .await?;
    assert_eq!(owner.trim(), "0");
    u.exec(&["/bin/busybox", "sh", "-c", "echo pod > /data/from-pod"])
        .await?;
    let m = std::fs::metadata(u.vol.path().join("from-pod"))?;
    assert_eq!((m.uid(), m.gid()), (0, 0));
    u.exec(&[
        "/bin/busybox",
        "sh",
        "-c",
        "echo bye > /dev/termination-log",
    ])
    .await?;
    assert_eq!(std::fs::read(u.log_file.path())?, b"bye\n");

    u.p.c.runtime.remove_container(req::remove(&u.id)).await?;
    assert_eq!(common::mounts_of(&u.p.e.daemon), u.mounts_before);
    assert_eq!(
        std::fs::read(u.vol.path().join("from-host"))?,
        b"host data\n"
    );
    assert_eq!(std::fs::read(u.vol.path().join("from-pod"))?, b"pod\n");
    u.remove().await
}

/// kubelet reads the feature from Status before it sends user namespaces; ids outside the
/// mapping, a container asking for other mappings, and pods that would defeat the namespace
/// are refused before anything is made.
#[tokio::test(flavor = "multi_thread")]
async fn user_namespace_requests_that_defeat_it_are_refused() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let status = c.runtime.status(req::runtime_status()).await?.into_inner();
    let features = status.runtime_handlers[0].features.unwrap();
    assert!(features.user_namespaces && features.recursive_read_only_mounts);

    let top = format!("kelson-userns-refused-{}", std::process::id());
    let logs = tempfile::tempdir()?;
    let cfg = userns_pod(&top, logs.path());
    let pod = common::run_pod(&mut c, &cfg).await?;
    // Ids outside the mapping, or a container asking for other mappings, are refused.
    let mut bad = common::container_config("unmapped", &image, &["/bin/true"]);
    let sc = as_root(&mut bad);
    sc.run_as_user = Some(cri::Int64Value { value: 70000 });
    let err = common::create(&mut c, &pod, &cfg, bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("not mapped"), "{err:?}");
    let mut other = common::container_config("other", &image, &["/bin/true"]);
    as_root(&mut other).namespace_options = Some(userns_options(USERNS_HOST_BASE + 65536));
    let err = common::create(&mut c, &pod, &cfg, other).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    c.runtime.remove_pod_sandbox(req::remove_pod(&pod)).await?;
    assert_eq!(common::mounts_of(&e.daemon), 0, "a pin or mount was left");

    // Pods that would defeat the namespace are refused before anything is made.
    for (name, mutate) in [
        (
            "hostnet",
            (|n: &mut cri::NamespaceOption| n.network = cri::NamespaceMode::Node as i32)
                as fn(&mut cri::NamespaceOption),
        ),
        ("hostroot", |n| {
            n.userns_options.as_mut().unwrap().uids[0].host_id = 0
        }),
        ("nomap", |n| n.userns_options.as_mut().unwrap().gids.clear()),
        ("container-mode", |n| {
            n.userns_options.as_mut().unwrap().mode = cri::NamespaceMode::Container as i32
        }),
    ] {
        let mut cfg = common::pod_config(name, "default", &format!("/{top}/{name}"), logs.path());
        let mut ns = userns_options(USERNS_HOST_BASE);
        mutate(&mut ns);
        cfg.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(ns),
            ..Default::default()
        });
        let err = common::run_pod(&mut c, &cfg).await.unwrap_err();
        let s = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{name}: {s:?}");
    }
    assert_eq!(common::mounts_of(&e.daemon), 0);
    common::remove_cgroup_tree(&top);
    Ok(())
}

/// Owners of every file under `dir`.
fn walk_owners(dir: &std::path::Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if let Ok(m) = e.path().symlink_metadata() {
                out.push(m.uid());
                if m.is_dir() {
                    todo.push(e.path());
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn recursive_read_only_mounts_reach_submounts() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let top = format!("kelson-rro-{}", std::process::id());
    let logs = tempfile::tempdir()?;
    let cfg = common::pod_config("rro", "default", &format!("/{top}/r"), logs.path());
    let pod = common::run_pod(&mut c, &cfg).await?;
    // A host dir with a writable filesystem mounted inside it.
    let vol = tempfile::Builder::new().prefix("kelson-rro-").tempdir()?;
    let sub = vol.path().join("sub");
    std::fs::create_dir(&sub)?;
    nix::mount::mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )?;
    let host = vol.path().display().to_string();
    let mount = |path: &str, rro| cri::Mount {
        container_path: path.into(),
        host_path: host.clone(),
        readonly: true,
        recursive_read_only: rro,
        ..Default::default()
    };
    let mut ctr = common::container_config("c", &image, &["/bin/sleep", "3600"]);
    as_root(&mut ctr);
    ctr.mounts = vec![mount("/ro", false), mount("/rro", true)];
    let result = async {
        let id = common::create_start(&mut c, &pod, &cfg, ctr).await?;
        // Plain read-only: the top is read-only, the submount under it is not (what KEP-3857 fixes).
        exec_fails(&mut c, &id, &["/bin/busybox", "touch", "/ro/x"]).await?;
        exec_out(&mut c, &id, &["/bin/busybox", "touch", "/ro/sub/plain"]).await?;
        // Recursive read-only: read-only all the way down.
        let err = exec_fails(&mut c, &id, &["/bin/busybox", "touch", "/rro/sub/x"]).await?;
        assert!(err.contains("Read-only"), "{err}");
        assert!(sub.join("plain").exists() && !sub.join("x").exists());
        // Asked with a writable mount or with propagation, it is refused by name.
        let mut bad = common::container_config("bad", &image, &["/bin/true"]);
        bad.mounts = vec![cri::Mount {
            readonly: false,
            ..mount("/rro", true)
        }];
        let err = common::create(&mut c, &pod, &cfg, bad).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("recursive_read_only"), "{err:?}");
        let mut bad = common::container_config("bad2", &image, &["/bin/true"]);
        bad.mounts = vec![cri::Mount {
            propagation: cri::MountPropagation::PropagationHostToContainer as i32,
            ..mount("/rro", true)
        }];
        let err = common::create(&mut c, &pod, &cfg, bad).await.unwrap_err();
        assert!(err.message().contains("propagation"), "{err:?}");
        anyhow::Ok(())
    }
    .await;
    c.runtime.remove_pod_sandbox(req::remove_pod(&pod)).await?;
    nix::mount::umount2(&sub, nix::mount::MntFlags::MNT_DETACH)?;
    common::remove_cgroup_tree(&top);
    result
}

#[tokio::test(flavor = "multi_thread")]
async fn image_volumes_stay_inside_the_rootfs() -> anyhow::Result<()> {
    use kelson_testkit::TarBuilder;
    let e = common::env().await?;
    let bait = tempfile::Builder::new().prefix("kelson-bait-").tempdir()?;
    let b = bait.path().display().to_string();
    let traps = TarBuilder::new()
        .link(tar::EntryType::Symlink, "abs", &b)
        .link(
            tar::EntryType::Symlink,
            "up",
            &format!("../../../../../../../..{b}"),
        )
        .finish();
    let push = |tag: &'static str, volumes: serde_json::Value| {
        common::push_with_layer(
            &e,
            "test/volumes",
            tag,
            traps.clone(),
            serde_json::json!({"Cmd": ["/bin/sleep", "3600"], "Env": ["PATH=/bin"], "Volumes": volumes}),
        )
    };
    let image = push(
        "traps",
        serde_json::json!({"/data/cache": {}, "/abs/escape": {}, "/up/escape": {}, "/etc": {}}),
    )
    .await?;
    let hostile = push("dotdot", serde_json::json!({"/../../escape": {}})).await?;
    let mut c = e.daemon.cri().await?;
    let top = format!("kelson-volumes-{}", std::process::id());
    let logs = tempfile::tempdir()?;
    let cfg = common::pod_config("volumes", "default", &format!("/{top}/v"), logs.path());
    let pod = common::run_pod(&mut c, &cfg).await?;
    let mut ctr = common::container_config("c", &image, &["/bin/sleep", "3600"]);
    ctr.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 4242 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = common::create_start(&mut c, &pod, &cfg, ctr).await?;
    // The volume the image declares is there, the container user's; the ones aimed at the host
    // through symlinks (absolute, or `..` past the root) made nothing on the host.
    let owner = exec_out(
        &mut c,
        &id,
        &["/bin/busybox", "stat", "-c", "%u", "/data/cache"],
    )
    .await?;
    assert_eq!(owner.trim(), "4242");
    assert_eq!(
        std::fs::read_dir(bait.path())?.count(),
        0,
        "a volume was made on the host"
    );
    assert!(!std::path::Path::new(&format!("{b}/escape")).exists());
    // An image volume the image already has keeps its content and owner.
    let etc = exec_out(
        &mut c,
        &id,
        &["/bin/busybox", "stat", "-c", "%u", "/etc/passwd"],
    )
    .await?;
    assert_eq!(etc.trim(), "0");
    // A `..` path is refused by name, before anything runs.
    let err = common::create(
        &mut c,
        &pod,
        &cfg,
        common::container_config("dotdot", &hostile, &["/bin/true"]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("image volume"), "{err:?}");
    c.runtime.remove_pod_sandbox(req::remove_pod(&pod)).await?;
    assert_eq!(common::mounts_of(&e.daemon), 0);
    common::remove_cgroup_tree(&top);
    Ok(())
}

/// Lines of this process's mountinfo naming `path`.
fn mounts_on(path: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(path))
        .map(str::to_owned)
        .collect()
}

const DEV_FILES: [&str; 3] = ["null", "console", "ptmx"];
const DEV_DIRS: [&str; 1] = ["dir"];

/// kelsond with the standard image, a pod `devtraps`, and host bait for `/dev` names and mount
/// targets to point at.
async fn dev_traps(test: &str) -> anyhow::Result<(TestPod, String, Bait)> {
    let (e, image) = common::env_standard().await?;
    let bait = Bait::new(&DEV_FILES, &DEV_DIRS)?;
    let p = TestPod::start(e, &format!("kelson-devtraps-{test}"), "devtraps").await?;
    Ok((p, image, bait))
}

/// Remove the pod: no mount left, the bait untouched.
async fn dev_traps_done(mut p: TestPod, bait: Bait) -> anyhow::Result<()> {
    p.c.runtime
        .remove_pod_sandbox(req::remove_pod(&p.pod))
        .await?;
    assert_eq!(common::mounts_of(&p.e.daemon), 0);
    bait.untouched("after the pod", &DEV_FILES, &DEV_DIRS);
    common::remove_cgroup_tree(&p.top);
    Ok(())
}

/// An image whose /dev/null, /dev/console and /dev/pts/ptmx point at host files (runc
/// CVE-2025-31133/52565): the runtime's own /dev hides them, a terminal still works, the masked
/// paths are still masked. Every shim socket is a root-only file, none is abstract
/// (CVE-2020-15257).
#[tokio::test(flavor = "multi_thread")]
async fn image_dev_traps_are_hidden_and_shim_sockets_are_root_only() -> anyhow::Result<()> {
    use kelson_testkit::TarBuilder;
    let (mut p, _, bait) = dev_traps("image").await?;
    let b = &bait.b;
    let traps = TarBuilder::new()
        .dir("dev", 0o755)
        .dir("dev/pts", 0o755)
        .link(tar::EntryType::Symlink, "dev/null", &format!("{b}/null"))
        .link(
            tar::EntryType::Symlink,
            "dev/console",
            &format!("{b}/console"),
        )
        .link(
            tar::EntryType::Symlink,
            "dev/pts/ptmx",
            &format!("{b}/ptmx"),
        )
        .link(tar::EntryType::Symlink, "dev/ptmx", &format!("{b}/ptmx"))
        .finish();
    let trap_image = common::push_with_layer(
        &p.e,
        "test/devtraps",
        "v1",
        traps,
        serde_json::json!({"Cmd": ["/bin/sleep", "3600"], "Env": ["PATH=/bin"]}),
    )
    .await?;
    let mut ctr = common::container_config("img", &trap_image, &["/bin/sleep", "3600"]);
    ctr.tty = true;
    let id = p.run(ctr).await?;
    let keys = exec_out(&mut p.c, &id, &["/bin/busybox", "sh", "-c", "echo x > /dev/null; echo y > /dev/console; /bin/busybox cat /proc/keys; /bin/busybox stat -c %t:%T /dev/null"]).await?;
    assert_eq!(
        keys.trim(),
        "1:3",
        "/proc/keys masked by the real /dev/null: {keys:?}"
    );
    bait.untouched("image /dev traps", &DEV_FILES, &DEV_DIRS);
    let sockets = p.e.daemon.state.join("s");
    let mut seen = 0;
    for entry in std::fs::read_dir(&sockets)? {
        use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
        let m = entry?.metadata()?;
        if m.file_type().is_socket() {
            seen += 1;
            assert_eq!((m.permissions().mode() & 0o777, m.uid()), (0o600, 0));
        }
    }
    assert!(seen >= 1, "no shim socket in {}", sockets.display());
    let unix = std::fs::read_to_string("/proc/net/unix")?;
    assert!(
        !unix
            .lines()
            .any(|l| l.contains(" @") && l.contains(&id[..12])),
        "an abstract socket names the container"
    );
    dev_traps_done(p, bait).await
}

/// A volume mounted over /dev whose device names point at host files (what another container of
/// the pod could leave in a shared emptyDir): creating the container either refuses clearly or
/// leaves the host alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_dev_volume_is_refused_or_leaves_the_host_alone() -> anyhow::Result<()> {
    let (mut p, image, bait) = dev_traps("volume").await?;
    let devdir = tempfile::Builder::new()
        .prefix("kelson-devvol-")
        .tempdir()?;
    std::fs::create_dir(devdir.path().join("pts"))?;
    for (name, target) in [
        ("null", "null"),
        ("console", "console"),
        ("ptmx", "ptmx"),
        ("pts/ptmx", "ptmx"),
    ] {
        std::os::unix::fs::symlink(bait.dir.path().join(target), devdir.path().join(name))?;
    }
    let mut ctr = common::container_config("devvol", &image, &["/bin/sleep", "3600"]);
    ctr.tty = true;
    ctr.mounts = vec![common::bind("/dev", devdir.path())];
    let r = p.run(ctr).await;
    println!(
        "hostile /dev volume: {:?}",
        r.as_ref().map_err(|e| e.to_string())
    );
    if let Err(err) = &r {
        let s = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
        assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
        // It says what failed (it once said only "error:").
        assert!(s.message().contains("tty"), "{s:?}");
    }
    bait.untouched("a hostile /dev volume", &DEV_FILES, &DEV_DIRS);
    dev_traps_done(p, bait).await
}

/// A mount target inside a shared volume swapped for a symlink to the host while the container
/// is made (runc CVE-2021-30465): every attempt either mounts inside the container or fails;
/// none lands on the host.
#[tokio::test(flavor = "multi_thread")]
async fn mount_targets_swapped_for_host_symlinks_never_land_on_the_host() -> anyhow::Result<()> {
    let (mut p, image, bait) = dev_traps("race").await?;
    let b = &bait.b;
    let shared = tempfile::Builder::new()
        .prefix("kelson-shared-")
        .tempdir()?;
    let source = tempfile::Builder::new().prefix("kelson-src-").tempdir()?;
    std::fs::write(source.path().join("payload"), b"payload")?;
    let swap = format!(
        "while :; do /bin/busybox rm -rf /v/t; /bin/busybox mkdir /v/t; /bin/busybox rm -rf /v/t; /bin/busybox ln -s {b}/dir /v/t; /bin/busybox rm -rf /v/t; /bin/busybox ln -s ../../../../../../../..{b}/dir /v/t; done"
    );
    let mut swapper =
        common::container_config("swapper", &image, &["/bin/busybox", "sh", "-c", &swap]);
    swapper.mounts = vec![common::bind("/v", shared.path())];
    p.run(swapper).await?;
    let (mut made, mut refused) = (0, 0);
    for i in 0..24 {
        let mut victim =
            common::container_config(&format!("victim{i}"), &image, &["/bin/sleep", "3600"]);
        victim.mounts = vec![
            common::bind("/mnt", shared.path()),
            common::bind("/mnt/t", source.path()),
        ];
        match common::create(&mut p.c, &p.pod, &p.cfg, victim).await {
            Ok(id) => {
                made += 1;
                p.c.runtime.remove_container(req::remove(&id)).await?;
            }
            Err(s) => {
                assert_ne!(s.code(), tonic::Code::Unknown, "{s:?}");
                refused += 1;
            }
        }
        bait.untouched(&format!("swap race, attempt {i}"), &DEV_FILES, &DEV_DIRS);
    }
    println!("mount-target race: {made} created, {refused} refused");
    dev_traps_done(p, bait).await
}

/// The CRI log file is opened from the pod's log directory down without following a symlink,
/// on create and on ReopenContainerLog: whoever can write the pod's log directory (a log
/// agent, a container with it mounted) swaps the container's log directory for a symlink to a
/// host directory, and the shim creates and appends nothing there; the refusal names the path.
#[tokio::test(flavor = "multi_thread")]
async fn a_log_directory_swapped_for_a_symlink_is_never_followed() -> anyhow::Result<()> {
    let e = common::env().await?;
    let image = common::pull_standard(&e).await?;
    let mut p = TestPod::start(e, "kelson-sectest6", "logs").await?;
    let bait = tempfile::Builder::new().prefix("kelson-bait-").tempdir()?;
    let pod_logs = std::path::PathBuf::from(&p.cfg.log_directory);
    let talk = "i=0; while :; do echo line $i; i=$((i+1)); sleep 0.05; done";
    let mut ctr = common::container_config("talker", &image, &["/bin/sh", "-c", talk]);
    ctr.log_path = "talker/0.log".into();
    let id = p.run(ctr).await?;
    let log = pod_logs.join("talker/0.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("line 1\n")
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no log at {}",
            log.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Rotation as kubelet does it, but the directory swapped for a symlink to the host.
    let moved = pod_logs.join("talker.moved");
    std::fs::rename(pod_logs.join("talker"), &moved)?;
    std::os::unix::fs::symlink(bait.path(), pod_logs.join("talker"))?;
    let err =
        p.c.runtime
            .reopen_container_log(cri::ReopenContainerLogRequest {
                container_id: id.clone(),
            })
            .await
            .expect_err("a symlinked log directory is refused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let named = pod_logs.join("talker").display().to_string();
    assert!(
        err.message().contains(&named) && err.message().contains("symlink"),
        "{err:?}"
    );
    // The container goes on writing: to the file opened before, never to the bait.
    let before = std::fs::metadata(moved.join("0.log"))?.len();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(std::fs::metadata(moved.join("0.log"))?.len() > before);
    assert_eq!(
        std::fs::read_dir(bait.path())?.count(),
        0,
        "a file appeared in the bait"
    );

    // On create: a container whose log directory (below another) is a symlink is refused by
    // name, and nothing is made in the bait.
    std::fs::create_dir(pod_logs.join("deep"))?;
    std::os::unix::fs::symlink(bait.path(), pod_logs.join("deep/second"))?;
    let mut second = common::container_config("second", &image, &["/bin/sleep", "3600"]);
    second.log_path = "deep/second/0.log".into();
    let err = common::create(&mut p.c, &p.pod, &p.cfg, second)
        .await
        .expect_err("a symlinked log directory is refused on create");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let named = pod_logs.join("deep/second").display().to_string();
    assert!(
        err.message().contains(&named) && err.message().contains("symlink"),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read_dir(bait.path())?.count(),
        0,
        "a file appeared in the bait"
    );
    p.remove().await
}

/// Another user of the node, as `setpriv` makes one: uid and gid 65534, no groups. setpriv
/// keeps its capabilities until it execs `cmd[0]` (which must therefore be a plain program,
/// never the path under test); from there on nothing is privileged.
fn as_nobody(cmd: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("setpriv");
    c.args([
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        "--",
    ])
    .args(cmd);
    c
}

/// Every entry below `dir`, not following symlinks nor descending into other mounts
/// (pinned namespaces, /dev/shm, rootfs and volume clones are checked as mount points).
fn walk_tree(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, std::fs::Metadata)>) {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return;
    };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let descend = m.is_dir() && m.dev() == top.dev();
        out.push((p.clone(), m));
        if descend {
            walk_tree(&p, out);
        }
    }
}

/// What of kelsond's root and state trees other users of the node could read: the files in
/// which root finds `secret`, those in which uid 65534 finds it (each file tried by its path,
/// as an attacker who learnt a container's id would), and every mode wider than owner-only
/// — for kelsond's own files and dirs, not for what containers see through them (an image's
/// layers, the container's upper dir, the files bound into containers), which must not be
/// reachable instead.
fn exposure(
    d: &kelson_testkit::Daemon,
    secret: &str,
) -> anyhow::Result<(usize, String, Vec<String>)> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut all = Vec::new();
    for top in [&d.root, &d.state] {
        let m = std::fs::symlink_metadata(top)?;
        all.push((top.clone(), m));
        walk_tree(top, &mut all);
    }
    // What containers see: an image's layers (`snapshots/<id>/fs`), a container's upper and
    // work dirs (`containers/<id>/upper`, `…/work`).
    let (snapshots, containers) = (d.root.join("snapshots"), d.root.join("containers"));
    let image_content = |p: &std::path::Path| {
        p.ancestors().any(|a| {
            let name = a.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let grandparent = a.parent().and_then(|p| p.parent());
            (name == "fs" && grandparent == Some(snapshots.as_path()))
                || (["upper", "work"].contains(&name) && grandparent == Some(containers.as_path()))
        })
    };
    let mut wide = Vec::new();
    let dev_of = |p: &std::path::Path| {
        p.parent()
            .and_then(|p| std::fs::symlink_metadata(p).ok())
            .map(|m| m.dev())
    };
    for (p, m) in &all {
        let mode = m.permissions().mode() & 0o7777;
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let mount_point = dev_of(p).is_some_and(|dev| dev != m.dev());
        if m.file_type().is_symlink() || image_content(p) {
            // An image's own modes; `upper` is the container's `/`. Unreachable (below).
            if name == "upper" && mode != 0o755 {
                wide.push(format!(
                    "{} is {mode:o}: the container's / must be 0755",
                    p.display()
                ));
            }
            continue;
        }
        if mount_point {
            continue; // not kelsond's mode (nsfs, tmpfs, overlay): unreachable (below)
        }
        let allowed = if m.is_dir() {
            // Crossable (never listable) where a user-namespaced pod's root must reach.
            0o711
        } else if ["hostname", "hosts", "resolv.conf"].contains(&name) {
            0o644 // bound into containers; behind the pod's private dir
        } else if p == &d.socket {
            0o660 // the CRI socket: root's group (kubelet)
        } else {
            0o600
        };
        if mode & !allowed != 0 {
            wide.push(format!("{} is {mode:o}", p.display()));
        }
    }
    // Reachable by another user: every dir above it searchable by others.
    let searchable = |p: &std::path::Path| {
        std::fs::symlink_metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
    };
    for (p, m) in &all {
        let reachable = p
            .ancestors()
            .skip(1)
            .take_while(|a| a.starts_with(d.dir.path()))
            .all(searchable);
        let mode = m.permissions().mode();
        if reachable && !m.file_type().is_symlink() && mode & 0o006 != 0 {
            wide.push(format!(
                "{} ({mode:o}) is reachable by other users",
                p.display()
            ));
        }
    }
    let files: Vec<&std::path::PathBuf> = all
        .iter()
        .filter(|(_, m)| m.is_file())
        .map(|(p, _)| p)
        .collect();
    let grep = |mut cmd: std::process::Command| -> anyhow::Result<String> {
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        for f in &files {
            stdin.write_all(f.as_os_str().as_encoded_bytes())?;
            stdin.write_all(b"\0")?;
        }
        drop(stdin);
        Ok(String::from_utf8_lossy(&child.wait_with_output()?.stdout).into_owned())
    };
    let xargs = ["xargs", "-0", "-r", "grep", "-l", "-s", "-F", "-e", secret];
    let mut as_root = std::process::Command::new(xargs[0]);
    as_root.args(&xargs[1..]);
    let root_sees = grep(as_root)?.lines().count();
    let nobody_sees = grep(as_nobody(&xargs))?;
    // The walk itself, as that user: nothing to list, nothing found.
    let walk = as_nobody(&["grep", "-r", "-l", "-s", "-F", "-e", secret])
        .arg(&d.root)
        .arg(&d.state)
        .output()?;
    Ok((
        root_sees,
        nobody_sees + &String::from_utf8_lossy(&walk.stdout),
        wide,
    ))
}

/// `exposure` must show a secret kelsond holds (`at_least` files, as root sees them) and
/// nothing another user can read.
fn assert_private(d: &kelson_testkit::Daemon, secret: &str, at_least: usize, when: &str) {
    let (root_sees, nobody_sees, wide) = exposure(d, secret).expect("walking kelsond's dirs");
    assert!(
        root_sees >= at_least,
        "{when}: root finds the secret in {root_sees} files, expected at least {at_least}: the check is blind"
    );
    assert!(
        nobody_sees.is_empty(),
        "{when}: uid 65534 reads the secret in {nobody_sees}"
    );
    assert!(wide.is_empty(), "{when}: {wide:#?}");
}

fn kelsond_cli(d: &kelson_testkit::Daemon, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(std::process::Command::new(common::KELSOND)
        .arg("--config")
        .arg(&d.config)
        .args(args)
        .output()?)
}

/// Container specs hold env values (Kubernetes secrets) and the store every container's
/// config (CVE-2021-41103's class): with a secret in the env and an annotation of containers
/// in a plain and a user-namespaced pod, no other user of the node reads it anywhere in
/// kelsond's root and state dirs — running, after a restart, after `repair-db` and after
/// `repair-db --rebuild` moved the database aside — and no file or dir kelsond made is wider
/// than owner-only (crossable dirs excepted). The container's own processes keep the OCI
/// umask (0022), and dirs the runtime makes inside the rootfs stay usable by a non-root user.
#[tokio::test(flavor = "multi_thread")]
async fn nothing_of_a_container_is_readable_by_other_users() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let (mut e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let secret = format!("SECRET-{}", std::process::id());
    let (top, logs, plain_cfg, plain) = common::pod_in(&mut c, "kelson-private", "plain").await?;
    let userns_cfg = userns_pod(&top, logs.path());
    let userns = common::run_pod(&mut c, &userns_cfg).await?;
    let secretive = |ctr: &mut cri::ContainerConfig| {
        ctr.envs = vec![cri::KeyValue {
            key: "TOKEN".into(),
            value: secret.clone(),
        }];
        ctr.annotations = [("example.com/token".to_string(), secret.clone())].into();
    };
    // A layer whose archive only implies a directory (`implied/` has no entry of its own).
    let implied = {
        let layer = kelson_testkit::TarBuilder::new()
            .file("implied/by/its/file", 0o644, b"implied\n")
            .finish();
        let img = kelson_testkit::Image::new(
            vec![
                kelson_testkit::TestImages::busybox_layer()?,
                kelson_testkit::TestImages::etc_layer(),
                kelson_testkit::Layer::new(layer, kelson_testkit::Compression::Gzip),
            ],
            "amd64",
            false,
            serde_json::json!({"Env": ["PATH=/bin"]}),
        );
        kelson_testkit::Pusher::new(&e.registry)?
            .image("test/implied", "v1", &img)
            .await?;
        let r = format!("{}/test/implied:v1", e.registry.host);
        common::pull(&e.daemon, &r).await?;
        r
    };
    let vol = tempfile::tempdir()?;
    let mut app = common::container_config("app", &implied, &["/bin/sleep", "3600"]);
    secretive(&mut app);
    req::security(&mut app).run_as_user = Some(cri::Int64Value { value: 65534 });
    app.mounts = vec![common::bind("/made/by/the/runtime", vol.path())];
    let app = common::create_start(&mut c, &plain, &plain_cfg, app).await?;
    let mut root_ctr = common::container_config("c", &image, &["/bin/sleep", "3600"]);
    secretive(&mut root_ctr);
    as_root(&mut root_ctr).namespace_options = Some(userns_options(USERNS_HOST_BASE));
    let in_userns = common::create_start(&mut c, &userns, &userns_cfg, root_ctr).await?;
    // The container's side is unchanged: the OCI umask in its init and in an exec'd process,
    // `/` and the mount point's parents the runtime made traversable by a non-root user.
    let umask = |status: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|u| u.trim().to_owned())
    };
    for id in [&app, &in_userns] {
        let init = init_pid(&mut c, id).await?;
        let host_view = std::fs::read_to_string(format!("/proc/{init}/status"))?;
        assert_eq!(umask(&host_view).as_deref(), Some("0022"), "init of {id}");
        let exec_view = exec_out(&mut c, id, &["/bin/busybox", "cat", "/proc/self/status"]).await?;
        assert_eq!(umask(&exec_view).as_deref(), Some("0022"), "exec in {id}");
    }
    exec_out(
        &mut c,
        &app,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "/bin/busybox ls / /made/by /made/by/the/runtime && /bin/busybox cat /implied/by/its/file",
        ],
    )
    .await?;
    let log = logs.path().join("plain").join("app.log");
    let log_mode = std::fs::metadata(&log)?.permissions().mode() & 0o777;
    assert_eq!(log_mode, 0o600, "{}", log.display());

    // config.json and the store hold the secret, as root sees them.
    assert_private(&e.daemon, &secret, 3, "running");
    // As an older kelsond left them: a restart narrows the secret-bearing files again.
    e.daemon.stop()?;
    for f in [
        e.daemon.root.join("kelson.redb"),
        e.daemon
            .state
            .join("containers")
            .join(&app)
            .join("bundle/config.json"),
        e.daemon.state.join("engine").join(&app).join("state.json"),
    ] {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644))?;
    }
    e.daemon.restart()?;
    let mut c = e.daemon.cri().await?;
    exec_out(&mut c, &app, &["/bin/busybox", "true"]).await?;
    assert_private(&e.daemon, &secret, 3, "after a restart");
    e.daemon.stop()?;
    let out = kelsond_cli(&e.daemon, &["repair-db"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_private(&e.daemon, &secret, 3, "after repair-db");
    // A database repair-db cannot read (its header overwritten, the records still in it): moved
    // aside, and the copy is as private as the original.
    {
        use std::io::{Seek, Write};
        let mut db = std::fs::OpenOptions::new()
            .write(true)
            .open(e.daemon.root.join("kelson.redb"))?;
        db.seek(std::io::SeekFrom::Start(0))?;
        db.write_all(&[0x42; 512])?;
    }
    let out = kelsond_cli(&e.daemon, &["repair-db", "--rebuild"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_private(&e.daemon, &secret, 3, "after repair-db --rebuild");
    // The pods' records are gone with the database: the daemon's teardown reaps what is left.
    drop(c);
    drop(e);
    common::remove_cgroup_tree(&top);
    Ok(())
}

/// kelsond at `trace` for every crate (tonic, h2, hyper, the registry client included) while
/// a private registry is pulled from with credentials (user and password, and docker-config
/// `auth`), and containers with a secret env value and annotation are made, exec'd into,
/// inspected and removed: none of these values reaches the log.
#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_the_log_even_at_trace() -> anyhow::Result<()> {
    use kelson_testkit::{DaemonOptions, Pusher, Registry, RegistryOptions, TestImages};
    let password = format!("pass-{}-word", std::process::id());
    let registry = Registry::start(RegistryOptions {
        tls: true,
        auth: Some(("kelson".into(), password.clone())),
    })?;
    let daemon = kelson_testkit::Daemon::start_opts(
        std::path::Path::new(common::KELSOND),
        "",
        DaemonOptions {
            log_level: Some("trace".into()),
            ..Default::default()
        },
    )?;
    daemon.hosts(&registry.host, &registry.hosts_toml())?;
    Pusher::new(&registry)?
        .image("test/private", "v1", &TestImages::standard("amd64", false)?)
        .await?;
    let image = format!("{}/test/private:v1", registry.host);
    let docker_auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("kelson:{password}"))
    };
    let mut c = daemon.cri().await?;
    for auth in [
        cri::AuthConfig {
            username: "kelson".into(),
            password: password.clone(),
            ..Default::default()
        },
        cri::AuthConfig {
            auth: docker_auth.clone(),
            ..Default::default()
        },
    ] {
        c.image
            .pull_image(cri::PullImageRequest {
                image: req::image(&image),
                auth: Some(auth),
                sandbox_config: None,
            })
            .await?;
    }
    let env_secret = format!("ENV-SECRET-{}", std::process::id());
    let note_secret = format!("NOTE-SECRET-{}", std::process::id());
    let (top, logs, cfg, pod) = common::pod_in(&mut c, "kelson-quiet", "quiet").await?;
    let mut ctr = common::container_config("c", &image, &["/bin/sleep", "3600"]);
    ctr.envs = vec![cri::KeyValue {
        key: "TOKEN".into(),
        value: env_secret.clone(),
    }];
    ctr.annotations = [("example.com/token".to_string(), note_secret.clone())].into();
    let id = common::create_start(&mut c, &pod, &cfg, ctr).await?;
    assert!(
        exec_out(&mut c, &id, &["/bin/busybox", "env"])
            .await?
            .contains(&env_secret)
    );
    let st = c
        .runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: true,
        })
        .await?
        .into_inner();
    assert!(
        st.status
            .is_some_and(|s| s.annotations.values().any(|v| *v == note_secret))
    );
    common::remove_pod(&mut c, &pod, &top).await?;
    drop(logs);
    let log = daemon.log();
    assert!(
        log.lines().count() > 100 && log.contains("TRACE"),
        "the daemon did not log at trace: {log}"
    );
    for (what, secret) in [
        ("the registry password", password.as_str()),
        ("the docker-config auth", docker_auth.as_str()),
        ("an env value", env_secret.as_str()),
        ("an annotation value", note_secret.as_str()),
    ] {
        let leaks: Vec<&str> = log.lines().filter(|l| l.contains(secret)).collect();
        assert!(leaks.is_empty(), "{what} is in the log: {leaks:#?}");
    }
    Ok(())
}

/// A setuid-root binary and a device node made by root in a running container (as an image
/// layer could carry them) are not reachable by another user of the node through any of
/// kelsond's dirs — neither in the container's upper dir nor through its mounted rootfs —
/// and the pod's world-writable /dev/shm cannot be written from the host by that user.
#[tokio::test(flavor = "multi_thread")]
async fn a_containers_setuid_files_devices_and_shm_are_out_of_other_users_reach()
-> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut p = TestPod::start(e, "kelson-unreachable", "unreachable").await?;
    let mut ctr = common::container_config("c", &image, &["/bin/sleep", "3600"]);
    as_root(&mut ctr);
    let id = p.run(ctr).await?;
    exec_out(
        &mut p.c,
        &id,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "/bin/busybox cp /bin/busybox /suid && /bin/busybox chmod 4755 /suid && /bin/busybox mknod -m 666 /null c 1 3",
        ],
    )
    .await?;
    let d = &p.e.daemon;
    let container = d.root.join("containers").join(&id);
    let shm = d.state.join("pods").join(&p.pod).join("shm");
    let mut targets = Vec::new();
    for dir in ["upper", "rootfs"] {
        for f in ["suid", "null"] {
            let t = container.join(dir).join(f);
            assert!(
                std::fs::symlink_metadata(&t).is_ok(),
                "{} missing",
                t.display()
            );
            targets.push(t);
        }
    }
    assert!(shm.is_dir(), "{} missing", shm.display());
    for t in &targets {
        let out = as_nobody(&["/bin/busybox", "stat", "-c", "%a"])
            .arg(t)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Permission denied"),
            "uid 65534 reaches {}: {}{err}",
            t.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // Through a shell: setpriv itself still holds root's capabilities when it execs (they go
    // at that execve), the shell does not.
    let out = as_nobody(&["/bin/sh", "-c", "exec \"$0\" id -u"])
        .arg(&targets[0])
        .output()?;
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "uid 65534 ran the container's setuid binary: {out:?}"
    );
    let out = as_nobody(&["/bin/busybox", "touch"])
        .arg(shm.join("from-the-host"))
        .output()?;
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "uid 65534 wrote into the pod's /dev/shm"
    );
    assert!(!shm.join("from-the-host").exists());
    // The container itself still has them (no nosuid, nodev on its rootfs, as with containerd):
    // the setuid bit holds, the device and /dev/shm are writable.
    exec_out(
        &mut p.c,
        &id,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "/bin/busybox test -u /suid && echo x > /null && echo y > /dev/shm/y",
        ],
    )
    .await?;
    p.remove().await
}
