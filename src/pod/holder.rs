//! The holder of a pod's shared PID namespace (`kelsond pod-holder`): PID 1 there, it reaps the
//! orphans the pod's processes leave, and does nothing else. Every process of the pod sees it,
//! and one with `SYS_PTRACE` passes the kernel's checks on its `/proc/1/root`, `cwd`, `exe`,
//! `environ` and `mountinfo`; so before the pod has any process it gives up all that leads
//! anywhere: a mount namespace of its own whose root is an empty read-only tmpfs (the host's
//! mounts detached), a cgroup namespace of its own, no environment, no descriptor of its
//! parent's, no capability in any set, an unprivileged id mapped in its user namespace,
//! no_new_privs, not dumpable. It runs from kelsond's sealed copy (`sealed_binary`), so its exe
//! is not the host's file. Reaping needs none of it. It must never open anything once ready.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{Gid, Uid};
use rustix::thread::{CapabilitySet, CapabilitySets};

use super::namespaces::{NsError, SELF_EXE};
use super::userns;

/// The holder's sub-command, which also tells it apart in `/proc/<pid>/cmdline`.
pub(super) const SUBCOMMAND: &str = "pod-holder";
/// What the holder says on stdout once it has given everything up.
const READY: &str = "ready";
/// Where the empty root is mounted before the holder pivots into it, in its own mount namespace
/// only: a directory every host (and any container kelsond runs in) has, and that the root of
/// a user-namespaced pod may look up.
const EMPTY_ROOT_AT: &str = "/dev";
/// The empty root: read-only, so the limits only keep it small.
const EMPTY_ROOT_OPTIONS: &str = "size=4k,nr_inodes=4,mode=0555";
/// The longest id map the holder reads from its /proc (340 lines of three padded numbers).
const MAX_MAP_BYTES: u64 = 16 << 10;
/// The most of a failed holder's report the starter reads.
const MAX_REPORT_BYTES: u64 = 4 << 10;
/// Bits of the kernel's capability sets; those past `CAP_LAST_CAP` are refused and skipped.
const CAP_BITS: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    #[error("pod holder: {step}: {errno}")]
    Step { step: &'static str, errno: Errno },
    #[error("pod holder: {what}: {err}")]
    Io {
        what: &'static str,
        err: std::io::Error,
    },
    #[error("pod holder: {path} is not an id map")]
    Map { path: &'static str },
}

fn step(step: &'static str) -> impl FnOnce(Errno) -> HolderError {
    move |errno| HolderError::Step { step, errno }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> HolderError {
    move |err| HolderError::Io { what, err }
}

/// Start the holder from the process that has just unshared the PID namespace (so the holder
/// is PID 1 in it): its host pid, once it has given everything up and before anything of the
/// pod can see it.
pub(super) fn start() -> Result<u32, NsError> {
    let mut holder = Command::new(SELF_EXE)
        .arg0("kelsond")
        .arg(SUBCOMMAND)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NsError::Helper(format!("starting the pid namespace holder: {e}")))?;
    let pid = holder.id();
    let mut said = String::new();
    if let Some(out) = holder.stdout.take() {
        let bound = READY.len() as u64 + 1;
        let _ = BufReader::new(out.take(bound)).read_line(&mut said);
    }
    if said.trim_end() == READY {
        return Ok(pid);
    }
    let _ = holder.kill();
    let mut report = String::new();
    if let Some(err) = holder.stderr.take() {
        let _ = err.take(MAX_REPORT_BYTES).read_to_string(&mut report);
    }
    let _ = holder.wait();
    Err(NsError::Helper(format!(
        "the pid namespace holder did not start: {}",
        report.trim()
    )))
}

/// `kelsond pod-holder`: give everything up, say so, then reap until killed.
pub fn hold() -> ! {
    match give_everything_up() {
        Ok(signals) => reap(signals),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    }
}

/// In order: what is inherited goes first; the ids are read while /proc is still there; the
/// root goes while the capabilities to change it are held; the capabilities last but the
/// signal handler and the word to the starter, which need none.
fn give_everything_up() -> Result<signal_hook::iterator::Signals, HolderError> {
    crate::sys::close_inherited_fds().map_err(io("closing inherited descriptors"))?;
    let _ = nix::unistd::setsid();
    // Started as /proc/self/exe, it would show as "exe" in ps.
    let _ = nix::sys::prctl::set_name(c"kelsond");
    let uid = unprivileged_id("/proc/self/uid_map")?;
    let gid = unprivileged_id("/proc/self/gid_map")?;
    empty_root()?;
    drop_privileges(Uid::from_raw(uid), Gid::from_raw(gid))?;
    // The kernel delivers to a namespace's PID 1 only the signals it handles.
    let signals = signal_hook::iterator::Signals::new([nix::libc::SIGCHLD])
        .map_err(io("handling SIGCHLD"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{READY}")
        .and_then(|()| out.flush())
        .map_err(io("telling the starter"))?;
    drop(out);
    crate::sys::close_stdio().map_err(io("closing stdio"))?;
    Ok(signals)
}

/// The id to drop to in the holder's user namespace (the host's, or a pod's).
fn unprivileged_id(path: &'static str) -> Result<u32, HolderError> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_MAP_BYTES).read_to_string(&mut text))
        .map_err(io(path))?;
    let maps = userns::parse_map_file(&text).ok_or(HolderError::Map { path })?;
    Ok(userns::unprivileged_id(&maps))
}

/// A mount namespace of its own with an empty read-only root, nothing of the host's under it,
/// and a cgroup namespace of its own (its /proc/1/cgroup names no host path).
fn empty_root() -> Result<(), HolderError> {
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWCGROUP)
        .map_err(step("unsharing the mount and cgroup namespaces"))?;
    // Nothing below reaches the host's mount namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step("making the mounts private"))?;
    mount(
        Some("none"),
        EMPTY_ROOT_AT,
        Some("tmpfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(EMPTY_ROOT_OPTIONS),
    )
    .map_err(step("mounting the empty root"))?;
    nix::unistd::chdir(EMPTY_ROOT_AT).map_err(step("entering the empty root"))?;
    // pivot_root(2)'s own idiom: the old root ends up stacked on "." and is detached whole,
    // which a user namespace's locked mounts allow too (the lock moves to the new root).
    nix::unistd::pivot_root(".", ".").map_err(step("pivoting into the empty root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step("detaching the host's mounts"))?;
    nix::unistd::chdir("/").map_err(step("entering the empty root"))
}

/// No capability in any set, no supplementary group, `uid`/`gid`, no way back. The bounding
/// set needs CAP_SETPCAP and the ids CAP_SETUID/CAP_SETGID, so those go before the
/// capabilities themselves (a change of uid from 0 clears the permitted and effective sets;
/// the inheritable one and a uid of 0 need the explicit capset).
fn drop_privileges(uid: Uid, gid: Gid) -> Result<(), HolderError> {
    let errno = |e: rustix::io::Errno| Errno::from_raw(e.raw_os_error());
    for bit in 0..CAP_BITS {
        let cap = CapabilitySet::from_bits_retain(1 << bit);
        match rustix::thread::remove_capability_from_bounding_set(cap) {
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(e) => return Err(step("dropping the bounding set")(errno(e))),
        }
    }
    rustix::thread::clear_ambient_capability_set()
        .map_err(|e| step("clearing the ambient set")(errno(e)))?;
    nix::unistd::setgroups(&[]).map_err(step("dropping supplementary groups"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(step("setting the gid"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(step("setting the uid"))?;
    let none = CapabilitySet::empty();
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: none,
            permitted: none,
            inheritable: none,
        },
    )
    .map_err(|e| step("clearing the capability sets")(errno(e)))?;
    nix::sys::prctl::set_no_new_privs().map_err(step("setting no_new_privs"))?;
    nix::sys::prctl::set_dumpable(false).map_err(step("clearing dumpable"))
}

/// Reap every child the namespace hands PID 1, on each SIGCHLD.
fn reap(mut signals: signal_hook::iterator::Signals) -> ! {
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
