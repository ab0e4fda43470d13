//! Pod namespaces without a pause container: a short-lived helper (`kelsond pin-ns`, this same
//! binary) unshares the network, IPC and UTS namespaces, sets the hostname, brings `lo` up and
//! bind-mounts `/proc/self/ns/*` onto files in the pod's state dir, then exits. The bind mounts
//! keep the namespaces alive; containers join them by path. (CRI-O's pinns model.) The daemon
//! itself never unshares: it is multi-threaded, and namespaces belong to a whole process here.
//!
//! A pod with a user namespace: the helper's child (`kelsond userns-child`) makes the user
//! namespace, the helper writes its id maps, and the child then makes the other namespaces
//! inside it, so that they belong to it (sysfs, mqueue and net sysctls in the pod need that).
//! The helper — still root on the host — pins them all from `/proc/<child>/ns/*`.
//!
//! Neither helper is ever seen from the pod: both stay in the host's PID namespace, where no
//! process of a pod (but one with the host's PID namespace, which sees everything anyway) can
//! name them, and both are gone before RunPodSandbox answers. The one process that lives on in
//! a pod, the holder of a shared PID namespace, gives everything up before that (`holder`);
//! the helper that starts it runs from kelsond's sealed copy, which the holder inherits.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use super::holder;
use super::userns::{self, UserNs};

/// The running binary, whatever file or sealed copy it was started from: the helpers start
/// their children from it, never from a path on disk that may have changed since.
pub(super) const SELF_EXE: &str = "/proc/self/exe";

#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("namespace helper: {0}")]
    Helper(String),
    #[error("{op} {path}: {errno}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        errno: nix::errno::Errno,
    },
}

/// What to pin, and where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PinRequest {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    /// A shared PID namespace: its holder (PID 1 there) writes its host pid to `<pid>.holder`.
    pub pid: Option<PathBuf>,
    pub hostname: Option<String>,
    /// A user namespace with these mappings, pinned here; the others are made inside it.
    pub user: Option<(PathBuf, UserNs)>,
}

impl PinRequest {
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec!["pin-ns".to_owned()];
        for (flag, p) in [
            ("--net", &self.net),
            ("--ipc", &self.ipc),
            ("--uts", &self.uts),
            ("--pid", &self.pid),
        ] {
            if let Some(p) = p {
                a.push(flag.into());
                a.push(p.display().to_string());
            }
        }
        if let Some(h) = &self.hostname {
            a.push("--hostname".into());
            a.push(h.clone());
        }
        if let Some((p, maps)) = &self.user {
            a.extend([
                "--user".into(),
                p.display().to_string(),
                "--uid-map".into(),
                userns::to_arg(&maps.uids),
                "--gid-map".into(),
                userns::to_arg(&maps.gids),
            ]);
        }
        a
    }

    fn files(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.net, &self.ipc, &self.uts, &self.pid]
            .into_iter()
            .flatten()
            .chain(self.user.as_ref().map(|(p, _)| p))
    }
}

/// Run the helper from `exe` (kelsond's file or its sealed copy) and wait for it. On failure
/// nothing stays mounted.
pub fn pin(req: &PinRequest, exe: &Path) -> Result<(), NsError> {
    let out = Command::new(exe)
        .args(req.to_args())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .map_err(|e| NsError::Helper(format!("spawning: {e}")))?;
    if !out.status.success() {
        unpin_all(req);
        return Err(NsError::Helper(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

/// In the helper process (single-threaded, before any runtime starts).
pub fn pin_here(req: &PinRequest) -> Result<(), NsError> {
    if let Some((user, maps)) = &req.user {
        return pin_in_userns(req, user, maps);
    }
    let mut flags = CloneFlags::empty();
    if req.net.is_some() {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if req.ipc.is_some() {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if req.uts.is_some() {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    unshare(flags).map_err(|errno| NsError::Sys {
        op: "unshare",
        path: PathBuf::new(),
        errno,
    })?;
    if let (Some(_), Some(h)) = (&req.uts, &req.hostname) {
        nix::unistd::sethostname(h).map_err(|errno| NsError::Sys {
            op: "sethostname",
            path: PathBuf::new(),
            errno,
        })?;
    }
    if req.net.is_some() {
        loopback_up()?;
    }
    for (kind, target) in [("net", &req.net), ("ipc", &req.ipc), ("uts", &req.uts)] {
        if let Some(t) = target {
            bind_ns(&format!("/proc/self/ns/{kind}"), t)?;
        }
    }
    if let Some(t) = &req.pid {
        unshare_pid()?;
        pin_holder(holder::start()?, t)?;
    }
    Ok(())
}

/// Unshare a PID namespace: it applies to the children started after it, the first of which
/// (the holder) is PID 1 there.
fn unshare_pid() -> Result<(), NsError> {
    unshare(CloneFlags::CLONE_NEWPID).map_err(|errno| NsError::Sys {
        op: "unshare pid",
        path: PathBuf::new(),
        errno,
    })
}

fn pin_holder(pid: u32, target: &Path) -> Result<(), NsError> {
    bind_ns(&format!("/proc/{pid}/ns/pid"), target)?;
    crate::owner_only::write(&holder_file(target), pid.to_string().as_bytes())
        .map_err(|e| NsError::Helper(format!("recording holder pid: {e}")))
}

/// What the child tells the helper, one line each.
const CHILD_UNSHARED: &str = "unshared";
const CHILD_READY: &str = "ready";
/// What the helper tells the child once the maps are written.
const HELPER_MAPPED: &str = "mapped";

fn read_line(r: &mut impl BufRead, what: &str) -> Result<String, NsError> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(n) if n > 0 => Ok(line.trim_end().to_owned()),
        Ok(_) => Err(NsError::Helper(format!(
            "user namespace child exited before {what}"
        ))),
        Err(e) => Err(NsError::Helper(format!(
            "reading from the user namespace child: {e}"
        ))),
    }
}

/// The user-namespace case of `pin_here`: the namespaces are made by a child (which must be in
/// the user namespace to own them), and pinned by this process (which must not be, to mount).
fn pin_in_userns(req: &PinRequest, user: &Path, maps: &UserNs) -> Result<(), NsError> {
    let mut args = vec!["userns-child".to_owned()];
    for (flag, on) in [
        ("--net", req.net.is_some()),
        ("--ipc", req.ipc.is_some()),
        ("--uts", req.uts.is_some()),
        ("--pid", req.pid.is_some()),
    ] {
        if on {
            args.push(flag.into());
        }
    }
    if let (Some(_), Some(h)) = (&req.uts, &req.hostname) {
        args.extend(["--hostname".to_owned(), h.clone()]);
    }
    let mut child = Command::new(SELF_EXE)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| NsError::Helper(format!("starting the user namespace child: {e}")))?;
    let pid = child.id();
    let (Some(mut to_child), Some(from_child)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(NsError::Helper("user namespace child without pipes".into()));
    };
    let mut from_child = std::io::BufReader::new(from_child);
    let result = (|| -> Result<(), NsError> {
        if read_line(&mut from_child, "unsharing")? != CHILD_UNSHARED {
            return Err(NsError::Helper(
                "user namespace child: unexpected answer".into(),
            ));
        }
        // Root on the host may write any mapping for its child (setgroups stays allowed: the
        // pod's processes may set their supplementary groups within the mapped range).
        for (file, map) in [("uid_map", &maps.uids), ("gid_map", &maps.gids)] {
            let path = PathBuf::from(format!("/proc/{pid}/{file}"));
            std::fs::write(&path, userns::map_file(map))
                .map_err(|e| NsError::Helper(format!("writing {}: {e}", path.display())))?;
        }
        writeln!(to_child, "{HELPER_MAPPED}")
            .map_err(|e| NsError::Helper(format!("user namespace child: {e}")))?;
        let ready = read_line(&mut from_child, "making the pod namespaces")?;
        let holder = ready
            .strip_prefix(CHILD_READY)
            .and_then(|r| r.trim().parse::<u32>().ok())
            .ok_or_else(|| NsError::Helper(format!("user namespace child: {ready}")))?;
        bind_ns(&format!("/proc/{pid}/ns/user"), user)?;
        for (kind, target) in [("net", &req.net), ("ipc", &req.ipc), ("uts", &req.uts)] {
            if let Some(t) = target {
                bind_ns(&format!("/proc/{pid}/ns/{kind}"), t)?;
            }
        }
        if let Some(t) = &req.pid {
            pin_holder(holder, t)?;
        }
        Ok(())
    })();
    // Closing its stdin lets the child exit; the pins keep the namespaces.
    drop(to_child);
    if result.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    result
}

/// `kelsond userns-child`: unshare a user namespace, wait for the helper to map it, become
/// root in it, then make the pod's other namespaces (owned by it). Single-threaded.
pub fn userns_child(
    net: bool,
    ipc: bool,
    uts: bool,
    pid: bool,
    hostname: Option<&str>,
) -> Result<(), NsError> {
    let sys = |op: &'static str| {
        move |errno| NsError::Sys {
            op,
            path: PathBuf::new(),
            errno,
        }
    };
    unshare(CloneFlags::CLONE_NEWUSER).map_err(sys("unshare user"))?;
    let mut out = std::io::stdout().lock();
    let mut input = std::io::stdin().lock();
    writeln!(out, "{CHILD_UNSHARED}")
        .and_then(|()| out.flush())
        .map_err(|e| NsError::Helper(format!("writing to the helper: {e}")))?;
    if read_line(&mut input, "mapping")? != HELPER_MAPPED {
        return Err(NsError::Helper("helper: unexpected answer".into()));
    }
    // Root in the namespace, so that `ip` (exec'd) keeps its capabilities there.
    nix::unistd::setgroups(&[]).map_err(sys("setgroups"))?;
    let root_g = nix::unistd::Gid::from_raw(0);
    let root_u = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresgid(root_g, root_g, root_g).map_err(sys("setresgid"))?;
    nix::unistd::setresuid(root_u, root_u, root_u).map_err(sys("setresuid"))?;
    let mut flags = CloneFlags::empty();
    for (on, f) in [
        (net, CloneFlags::CLONE_NEWNET),
        (ipc, CloneFlags::CLONE_NEWIPC),
        (uts, CloneFlags::CLONE_NEWUTS),
    ] {
        if on {
            flags |= f;
        }
    }
    unshare(flags).map_err(sys("unshare"))?;
    if let (true, Some(h)) = (uts, hostname) {
        nix::unistd::sethostname(h).map_err(sys("sethostname"))?;
    }
    if net {
        loopback_up()?;
    }
    let holder = if pid {
        unshare_pid()?;
        holder::start()?
    } else {
        0
    };
    writeln!(out, "{CHILD_READY} {holder}")
        .and_then(|()| out.flush())
        .map_err(|e| NsError::Helper(format!("writing to the helper: {e}")))?;
    // Hold the namespaces until the helper has pinned them (it closes our stdin).
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut input, &mut rest);
    Ok(())
}

/// Until CNI configures the pod network, loopback is the whole of it.
fn loopback_up() -> Result<(), NsError> {
    let st = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .map_err(|e| NsError::Helper(format!("ip link set lo up: {e}")))?;
    if !st.success() {
        return Err(NsError::Helper(format!("ip link set lo up: {st}")));
    }
    Ok(())
}

pub fn holder_file(pidns: &Path) -> PathBuf {
    pidns.with_extension("holder")
}

/// The holder of a pod's PID namespace, if it is still running.
pub fn holder_pid(pidns: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(holder_file(pidns))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let word = holder::SUBCOMMAND.as_bytes();
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == word)
        .then_some(pid)
}

/// Stop a pod's PID namespace: killing its PID 1 makes the kernel kill every process in it.
pub fn stop_holder(pidns: &Path) {
    if let Some(pid) = holder_pid(pidns) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = std::fs::remove_file(holder_file(pidns));
}

fn bind_ns(src: &str, target: &Path) -> Result<(), NsError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)
        .map_err(|e| NsError::Helper(format!("creating {}: {e}", target.display())))?;
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|errno| NsError::Sys {
        op: "bind mount",
        path: target.to_owned(),
        errno,
    })
}

/// Unmount and remove a pinned namespace file. Absent is fine (idempotent).
pub fn unpin(path: &Path) -> Result<(), NsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(errno) => {
            return Err(NsError::Sys {
                op: "unmount",
                path: path.to_owned(),
                errno,
            });
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(NsError::Helper(format!("removing {}: {e}", path.display())))
        }
        _ => Ok(()),
    }
}

pub fn unpin_all(req: &PinRequest) {
    if let Some(p) = &req.pid {
        stop_holder(p);
    }
    for p in req.files() {
        let _ = unpin(p);
    }
}

/// Whether `path` is a live pinned namespace (an nsfs mount).
pub fn is_pinned(path: &Path) -> bool {
    pinned_namespaces().contains(&path.display().to_string())
}

/// Every nsfs mount point (pinned namespaces), from one read of mountinfo: the kernel formats
/// every mount of the node for each read, so checks over many pods share one.
pub fn pinned_namespaces() -> std::collections::HashSet<String> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Default::default();
    };
    nsfs_mount_points(&text)
}

fn nsfs_mount_points(mountinfo: &str) -> std::collections::HashSet<String> {
    mountinfo
        .lines()
        .filter(|l| l.contains(" - nsfs "))
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .collect()
}

/// A TCP connection to `port` on the loopback of the network namespace pinned at `netns`
/// (IPv4, then IPv6), as port-forwarding needs. A short-lived thread enters the namespace
/// (`setns` changes only the calling thread); the socket stays in the namespace it was made
/// in when the thread ends.
pub fn connect_tcp_in(netns: &Path, port: u16) -> std::io::Result<std::net::TcpStream> {
    let ns = std::fs::File::open(netns)?;
    std::thread::Builder::new()
        .name("netns-connect".into())
        .spawn(move || -> std::io::Result<std::net::TcpStream> {
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            let timeout = std::time::Duration::from_secs(10);
            let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            std::net::TcpStream::connect_timeout(&v4, timeout).or_else(|e| {
                let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
                std::net::TcpStream::connect_timeout(&v6, timeout).map_err(|_| e)
            })
        })?
        .join()
        .map_err(|_| std::io::Error::other("netns connect thread panicked"))?
}

/// Mount the pod's /dev/shm: a size-limited tmpfs, owned by `owner` (the host ids of a
/// user-namespaced pod's root) when given.
pub fn mount_shm(path: &Path, bytes: u64, owner: Option<(u32, u32)>) -> Result<(), NsError> {
    // World-writable inside the pod, as /dev/shm is: its mount point sits in the pod's private
    // dir, so no other user of the node can reach it.
    crate::owner_only::create_dir_all(path)
        .map_err(|e| NsError::Helper(format!("creating {}: {e}", path.display())))?;
    let mut opts = format!("mode=1777,size={bytes}");
    if let Some((uid, gid)) = owner {
        opts.push_str(&format!(",uid={uid},gid={gid}"));
    }
    mount(
        Some("shm"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(opts.as_str()),
    )
    .map_err(|errno| NsError::Sys {
        op: "mount tmpfs",
        path: path.to_owned(),
        errno,
    })
}

pub fn unmount_dir(path: &Path) -> Result<(), NsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(errno) => Err(NsError::Sys {
            op: "unmount",
            path: path.to_owned(),
            errno,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsfs_mount_points_are_found_and_nothing_else() {
        let text = "\
42 27 0:39 / /run/kelson/pods/p1/shm rw,nosuid - tmpfs shm rw,size=65536k
44 27 0:4 net:[4026532179] /run/kelson/pods/p1/netns rw - nsfs nsfs rw
45 27 0:4 ipc:[4026532178] /run/kelson/pods/p1/ipcns rw - nsfs nsfs rw
54 27 0:42 / /var/lib/kelson/containers/c1/rootfs rw - overlay overlay rw,lowerdir=/a
";
        let set = nsfs_mount_points(text);
        assert_eq!(set.len(), 2);
        assert!(set.contains("/run/kelson/pods/p1/netns"));
        assert!(set.contains("/run/kelson/pods/p1/ipcns"));
        assert!(!set.contains("/run/kelson/pods/p1/shm"));
    }
}
