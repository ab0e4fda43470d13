//! Pod namespaces without a pause container: a short-lived helper (`kelsond pin-ns`, this same
//! binary) unshares the network, IPC and UTS namespaces, sets the hostname, brings `lo` up and
//! bind-mounts `/proc/self/ns/*` onto files in the pod's state dir, then exits. The bind mounts
//! keep the namespaces alive; containers join them by path. (CRI-O's pinns model.) The daemon
//! itself never unshares: it is multi-threaded, and namespaces belong to a whole process here.

use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

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
        a
    }
}

/// Run the helper (this binary) and wait for it. On failure nothing stays mounted.
pub fn pin(req: &PinRequest) -> Result<(), NsError> {
    let exe =
        std::env::current_exe().map_err(|e| NsError::Helper(format!("locating kelsond: {e}")))?;
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
        // Until CNI configures the pod network, loopback is the whole of it.
        let st = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .map_err(|e| NsError::Helper(format!("ip link set lo up: {e}")))?;
        if !st.success() {
            return Err(NsError::Helper(format!("ip link set lo up: {st}")));
        }
    }
    for (kind, target) in [("net", &req.net), ("ipc", &req.ipc), ("uts", &req.uts)] {
        if let Some(t) = target {
            bind_ns(&format!("/proc/self/ns/{kind}"), t)?;
        }
    }
    if let Some(t) = &req.pid {
        // A new PID namespace applies to children: the holder started now is its PID 1.
        unshare(CloneFlags::CLONE_NEWPID).map_err(|errno| NsError::Sys {
            op: "unshare pid",
            path: t.clone(),
            errno,
        })?;
        let exe = std::env::current_exe()
            .map_err(|e| NsError::Helper(format!("locating kelsond: {e}")))?;
        let holder = Command::new(exe)
            .arg("pod-holder")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| NsError::Helper(format!("starting the pid namespace holder: {e}")))?;
        let pid = holder.id();
        bind_ns(&format!("/proc/{pid}/ns/pid"), t)?;
        std::fs::write(holder_file(t), pid.to_string())
            .map_err(|e| NsError::Helper(format!("recording holder pid: {e}")))?;
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
    cmdline
        .windows(10)
        .any(|w| w == b"pod-holder")
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

/// `kelsond pod-holder`: PID 1 of a pod's shared PID namespace. It does nothing but reap the
/// orphans the pod's processes leave (with SIGCHLD handled, so the kernel delivers it to PID 1).
pub fn hold() -> ! {
    let _ = nix::unistd::setsid();
    let mut signals = match signal_hook::iterator::Signals::new([nix::libc::SIGCHLD]) {
        Ok(s) => s,
        Err(_) => std::process::exit(1),
    };
    loop {
        for _ in signals.wait() {
            while let Ok(s) = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(-1),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            ) {
                if s == nix::sys::wait::WaitStatus::StillAlive {
                    break;
                }
            }
        }
    }
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

fn unpin_all(req: &PinRequest) {
    if let Some(p) = &req.pid {
        stop_holder(p);
    }
    for p in [&req.net, &req.ipc, &req.uts, &req.pid]
        .into_iter()
        .flatten()
    {
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

/// Mount the pod's /dev/shm: a size-limited tmpfs.
pub fn mount_shm(path: &Path, bytes: u64) -> Result<(), NsError> {
    std::fs::create_dir_all(path)
        .map_err(|e| NsError::Helper(format!("creating {}: {e}", path.display())))?;
    let opts = format!("mode=1777,size={bytes}");
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
