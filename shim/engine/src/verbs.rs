//! The engine's verbs on one container (create, start, exec, delete): through youki's
//! libcontainer — the only place that imports it — or through the container's OCI runtime
//! (`oci_runtime`). Each runs in a short-lived child process of the shim (`kelson-shim-engine
//! create|start|exec|delete`), so the long-lived shim never carries the library's heap, and the
//! library's forks happen in a single-threaded process. It must never outlive its one verb.

use std::os::fd::AsFd;
use std::path::Path;

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;

use crate::oci_runtime;

/// Longest start report read back from a container's init (one error message).
pub const MAX_START_REPORT: usize = 4096;
/// How long `start` waits for the init to exec its command or say why it could not.
pub const START_REPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs the container's command in its init. The library checks the command (found on PATH,
/// executable) while creating the container; kubelet expects that failure from StartContainer
/// (it applies restart back-off to start failures, and a create failure breaks that loop), as
/// containerd, which makes the task at start, reports it. So the check moves to the moment of
/// exec, and its outcome travels back on `report`: a FIFO the shim reads from, closed without a
/// word when the exec succeeds (the descriptor is close-on-exec) and carrying the reason when
/// it fails.
#[derive(Clone)]
struct Workload {
    report: std::sync::Arc<std::fs::File>,
}

impl Workload {
    fn fail(&self, why: String) -> libcontainer::workload::ExecutorError {
        use std::io::Write;
        let mut msg = why.into_bytes();
        msg.truncate(MAX_START_REPORT);
        let _ = (&*self.report).write_all(&msg);
        libcontainer::workload::ExecutorError::Other(String::from_utf8_lossy(&msg).into_owned())
    }
}

impl libcontainer::workload::Executor for Workload {
    fn validate(
        &self,
        _spec: &oci_spec::runtime::Spec,
    ) -> Result<(), libcontainer::workload::ExecutorValidationError> {
        Ok(())
    }

    fn exec(
        &self,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<(), libcontainer::workload::ExecutorError> {
        let default = libcontainer::workload::default::get_executor();
        // Under the built-in init the command to check is the one after its `--`.
        let mut checked = spec.clone();
        if let Some(p) = checked.process_mut() {
            let args = p.args().clone().unwrap_or_default();
            if args.first().map(String::as_str) == Some(INIT_IN_CONTAINER)
                && args.get(1).map(String::as_str) == Some("--")
            {
                p.set_args(Some(args[2..].to_vec()));
            }
        }
        if let Err(e) = default.validate(&checked) {
            return Err(self.fail(e.to_string()));
        }
        default.exec(spec).map_err(|e| {
            let why = match &e {
                libcontainer::workload::ExecutorError::Execution(inner) => inner.to_string(),
                other => other.to_string(),
            };
            self.fail(why)
        })
    }
}

/// The writing end of the start report FIFO the shim made (and holds the reading end of).
fn open_report(path: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        // Never wait for a reader: the shim opened its end before starting this process.
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(|e| err(&format!("opening start report {}", path.display()), e))
}

/// After the start signal: the init's report. EOF (the exec happened) is success; bytes are the
/// reason it could not start. `report` is the shim's reading end, passed as this process's stdin.
fn await_report(report: std::os::fd::BorrowedFd<'_>) -> Result<(), String> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let deadline = std::time::Instant::now() + START_REPORT_TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            // The init has not exec'd yet (a slow node): the start itself went through.
            return Ok(());
        }
        let ms =
            PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(report, PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(err("waiting for the container to start", e)),
        }
        match nix::unistd::read(report, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() >= MAX_START_REPORT {
                    break;
                }
            }
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(err("reading the start report", e)),
        }
    }
    if got.is_empty() {
        Ok(())
    } else {
        got.truncate(MAX_START_REPORT);
        Err(String::from_utf8_lossy(&got).trim().to_owned())
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// The mode of every file the engine writes for the shim and kelsond (pid files, process
/// specs with the container's env, error reports), whatever the umask.
const PRIVATE_FILE: u32 = 0o600;
/// The mode of the library's state dir of a container.
const PRIVATE_DIR: u32 = 0o700;

/// Write `bytes` to `path`, readable by its owner (root) only.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE))?;
    f.write_all(bytes)
}

/// The library makes its state under the OCI umask like everything else (`main`): narrow it
/// to root's — the dir, its state and config files, and the notify sockets of the container
/// and of exec'd processes (which the library leaves behind). Later saves truncate the files
/// in place and keep the mode.
fn narrow_state(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let private = |p: &Path, mode| {
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    };
    private(dir, PRIVATE_DIR);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| !t.is_symlink()) {
            private(&e.path(), PRIVATE_FILE);
        }
    }
}

/// Hand this process's stdio pipes (soon the process's) to the user the bundle's process runs
/// as (see `stdio_owner`). Before anything joins the pod's user namespace.
fn give_stdio(bundle: &Path) -> Result<(), String> {
    let spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(bundle.join("config.json")).map_err(|e| err("container spec", e))?,
    )
    .map_err(|e| err("container spec", e))?;
    match crate::stdio_owner::host_user(&spec) {
        Some(owner) => crate::stdio_owner::give(owner),
        None => Err("container spec: the process user is not mapped in its user namespace".into()),
    }
}

/// The container's stdio: this process's stdout and stderr (the shim's pipes), stdin /dev/null.
fn stdio() -> Result<(std::fs::File, std::os::fd::OwnedFd, std::os::fd::OwnedFd), String> {
    let out = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| err("dup stdout", e))?;
    let errfd = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| err("dup stderr", e))?;
    let null = std::fs::File::open("/dev/null").map_err(|e| err("open /dev/null", e))?;
    Ok((null, out, errfd))
}

/// Create the container from `bundle/config.json`; its init waits for `start`. The container's
/// stdout and stderr are this process's (the shim passed its pipes); stdin is this process's
/// with `stdin` (the shim's pipe, for attach), else /dev/null. A container whose spec asks for a
/// terminal gets one made inside it by libcontainer, which sends the master to
/// `console_socket` (the shim listens there). Writes the init's pid to `pid_file`.
pub fn create(
    id: &str,
    root: &Path,
    bundle: &Path,
    pid_file: &Path,
    stdin: bool,
    console_socket: Option<&Path>,
    start_report: Option<&Path>,
) -> Result<(), String> {
    give_stdio(bundle)?;
    if let Some(h) = oci_runtime::handler(root, id)? {
        // stdin as the container's: the shim's pipe, else /dev/null; stdout/stderr are ours.
        if !stdin {
            let null = std::fs::File::open("/dev/null").map_err(|e| err("open /dev/null", e))?;
            nix::unistd::dup2_stdin(null).map_err(|e| err("stdin", e))?;
        }
        return h.create(id, pid_file, console_socket);
    }
    let (null, out, errfd) = stdio()?;
    let input: std::os::fd::OwnedFd = if stdin {
        std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| err("dup stdin", e))?
    } else {
        null.into()
    };
    // The systemd cgroup driver: kelsond wrote `<slice>:kelson:<id>`, a transient scope the
    // library asks systemd for over D-Bus (cgroup v2 hosts).
    let systemd = oci_spec::runtime::Spec::load(bundle.join("config.json"))
        .ok()
        .and_then(|s| {
            s.linux()
                .as_ref()
                .and_then(|l| l.cgroups_path().as_ref())
                .map(|p| kelson_cgroups::is_systemd(&p.to_string_lossy()))
        })
        .unwrap_or(false);
    let mut builder = ContainerBuilder::new(id.to_owned(), SyscallType::Linux);
    if let Some(p) = start_report {
        builder = builder.with_executor(Workload {
            report: std::sync::Arc::new(open_report(p)?),
        });
    }
    let container = builder
        .with_root_path(root)
        .map_err(|e| err("root path", e))?
        .with_console_socket(console_socket)
        .with_stdin(input)
        .with_stdout(out)
        .with_stderr(errfd)
        .validate_id()
        .map_err(|e| err("container id", e))?
        .as_init(bundle)
        .with_systemd(systemd)
        .with_detach(true)
        .build()
        .map_err(|e| err("create", e))?;
    narrow_state(&root.join(id));
    let pid = container.pid().ok_or("create: no init pid")?;
    write_private(pid_file, pid.as_raw().to_string().as_bytes())
        .map_err(|e| err("write pid file", e))
}

/// Start the created container. With `report_on_stdin`, stdin is the reading end of the
/// init's start report: the start succeeds once the init has exec'd its command, and fails
/// with the init's reason when it could not.
pub fn start(id: &str, root: &Path, report_on_stdin: bool) -> Result<(), String> {
    if let Some(h) = oci_runtime::handler(root, id)? {
        return h.start(id);
    }
    let mut c = Container::load(root.join(id)).map_err(|e| err("load", e))?;
    c.start().map_err(|e| err("start", e))?;
    if report_on_stdin {
        await_report(std::io::stdin().as_fd())?;
    }
    Ok(())
}

/// Run `args` inside the container and wait; returns its exit code. stdio as this process's.
/// With `stdin`, the command reads this process's stdin (a streaming session's pipe);
/// otherwise /dev/null.
pub fn exec(
    id: &str,
    root: &Path,
    args: Vec<String>,
    pid_file: &Path,
    stdin: bool,
) -> Result<i32, String> {
    // The container's own process spec (user, groups, env, cwd, capabilities, no_new_privs)
    // with these args: an exec runs as the container runs, not as root by default.
    if let Some(h) = oci_runtime::handler(root, id)? {
        give_stdio(&h.bundle)?;
        let process_file = process_spec(id, root, &h.bundle, args, false, false)?;
        if !stdin {
            let null = std::fs::File::open("/dev/null").map_err(|e| err("open /dev/null", e))?;
            nix::unistd::dup2_stdin(null).map_err(|e| err("stdin", e))?;
        }
        let r = h.exec(id, &process_file, pid_file);
        let _ = std::fs::remove_file(&process_file);
        return r;
    }
    let bundle = native_bundle(id, root)?;
    give_stdio(&bundle)?;
    let process_file = process_spec(id, root, &bundle, args, false, true)?;
    let (null, out, errfd) = stdio()?;
    let input: std::os::fd::OwnedFd = if stdin {
        std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| err("dup stdin", e))?
    } else {
        null.into()
    };
    let pid = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
        .with_root_path(root)
        .map_err(|e| err("root path", e))?
        .with_stdin(input)
        .with_stdout(out)
        .with_stderr(errfd)
        .as_tenant()
        .with_process(Some(&process_file))
        .with_detach(false)
        .build();
    let _ = std::fs::remove_file(&process_file);
    let pid = pid.map_err(|e| err("exec", e))?;
    narrow_state(&root.join(id));
    let _ = write_private(pid_file, pid.as_raw().to_string().as_bytes());
    wait_exit(pid.as_raw())
}

/// Wait for `pid` (a child, or re-parented here as a subreaper): its exit code, or 128 + the
/// signal that ended it.
fn wait_exit(pid: i32) -> Result<i32, String> {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(err("wait exec", e)),
        }
    }
}

/// Where the built-in init is mounted in every container (kelsond's `spec::INIT_IN_CONTAINER`).
const INIT_IN_CONTAINER: &str = "/.kelson/init";
/// The variable kelson-init reads an exec'd process's filter from.
const BPF_ENV: &str = "KELSON_SECCOMP_BPF";

/// The container's seccomp profile (OCI JSON) compiled to BPF, as hex of the kernel's
/// `sock_filter` records. libcontainer filters a container's init but not processes exec'd
/// into it; kelson-init loads this in front of each of them.
fn compile_seccomp(profile: &serde_json::Value) -> Result<String, String> {
    use libseccomp::{
        ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
    };
    use std::str::FromStr;
    let bad = |what: &str| format!("seccomp profile: {what}");
    let action = |name: &str, errno: Option<u64>| -> Result<ScmpAction, String> {
        Ok(match name {
            "SCMP_ACT_ALLOW" => ScmpAction::Allow,
            "SCMP_ACT_ERRNO" => ScmpAction::Errno(errno.unwrap_or(1) as i32),
            "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => ScmpAction::KillThread,
            "SCMP_ACT_KILL_PROCESS" => ScmpAction::KillProcess,
            "SCMP_ACT_TRAP" => ScmpAction::Trap,
            "SCMP_ACT_TRACE" => ScmpAction::Trace(errno.unwrap_or(1) as u16),
            "SCMP_ACT_LOG" => ScmpAction::Log,
            other => {
                return Err(bad(&format!(
                    "action {other} cannot apply to an exec'd process"
                )));
            }
        })
    };
    let default = action(
        profile["defaultAction"]
            .as_str()
            .ok_or_else(|| bad("no defaultAction"))?,
        profile["defaultErrnoRet"].as_u64(),
    )?;
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| bad(&e.to_string()))?;
    for a in profile["architectures"].as_array().into_iter().flatten() {
        let arch =
            ScmpArch::from_str(a.as_str().unwrap_or_default()).map_err(|e| bad(&e.to_string()))?;
        ctx.add_arch(arch).map_err(|e| bad(&e.to_string()))?;
    }
    for rule in profile["syscalls"].as_array().into_iter().flatten() {
        let act = action(
            rule["action"].as_str().unwrap_or_default(),
            rule["errnoRet"].as_u64(),
        )?;
        if act == default {
            continue; // redundant, and libseccomp refuses it
        }
        let mut conds = Vec::new();
        let mut indices = std::collections::HashSet::new();
        let mut repeated = false;
        for arg in rule["args"].as_array().into_iter().flatten() {
            let index = arg["index"]
                .as_u64()
                .ok_or_else(|| bad("arg without index"))? as u32;
            let value = arg["value"].as_u64().unwrap_or(0);
            let two = arg["valueTwo"].as_u64().unwrap_or(0);
            let (op, datum) = match arg["op"].as_str().unwrap_or_default() {
                "SCMP_CMP_NE" => (ScmpCompareOp::NotEqual, value),
                "SCMP_CMP_LT" => (ScmpCompareOp::Less, value),
                "SCMP_CMP_LE" => (ScmpCompareOp::LessOrEqual, value),
                "SCMP_CMP_EQ" => (ScmpCompareOp::Equal, value),
                "SCMP_CMP_GE" => (ScmpCompareOp::GreaterEqual, value),
                "SCMP_CMP_GT" => (ScmpCompareOp::Greater, value),
                // OCI: value is the mask, valueTwo what the masked argument must equal.
                "SCMP_CMP_MASKED_EQ" => (ScmpCompareOp::MaskedEqual(value), two),
                other => return Err(bad(&format!("operator {other:?}"))),
            };
            repeated |= !indices.insert(index);
            conds.push(ScmpArgCompare::new(index, op, datum));
        }
        for name in rule["names"].as_array().into_iter().flatten() {
            // Names this libseccomp does not know are skipped, as when the init was filtered.
            let Ok(sc) = ScmpSyscall::from_name(name.as_str().unwrap_or_default()) else {
                continue;
            };
            let r = if conds.is_empty() {
                ctx.add_rule(act, sc).map(drop)
            } else if !repeated {
                ctx.add_rule_conditional(act, sc, &conds).map(drop)
            } else {
                // Several conditions on one argument: one rule each (as runc does).
                conds.iter().try_for_each(|c| {
                    ctx.add_rule_conditional(act, sc, std::slice::from_ref(c))
                        .map(drop)
                })
            };
            r.map_err(|e| bad(&format!("{}: {e}", name.as_str().unwrap_or_default())))?;
        }
    }
    // Exported into an in-memory file (a pipe could fill up with a large profile).
    let fd = nix::sys::memfd::memfd_create("seccomp-bpf", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(|e| bad(&e.to_string()))?;
    ctx.export_bpf(&fd).map_err(|e| bad(&e.to_string()))?;
    let mut file = std::fs::File::from(fd);
    let mut bpf = Vec::new();
    std::io::Seek::rewind(&mut file)
        .and_then(|_| std::io::Read::read_to_end(&mut file, &mut bpf))
        .map_err(|e| bad(&e.to_string()))?;
    Ok(bpf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The bundle of a native container, from the library's state.
fn native_bundle(id: &str, root: &Path) -> Result<std::path::PathBuf, String> {
    let container = Container::load(root.join(id)).map_err(|e| err("load", e))?;
    Ok(container.bundle().to_owned())
}

/// Write the container's process spec with `args` (and `terminal`) for a tenant process;
/// returns its path (the caller removes it). `native`: for the container library, which needs
/// the seccomp filter put in front of the command and the user namespace entered here (an
/// external OCI runtime does both itself).
fn process_spec(
    id: &str,
    root: &Path,
    bundle: &Path,
    args: Vec<String>,
    terminal: bool,
    native: bool,
) -> Result<std::path::PathBuf, String> {
    let spec = oci_spec::runtime::Spec::load(bundle.join("config.json"))
        .map_err(|e| err("container spec", e))?;
    let mut process = spec
        .process()
        .clone()
        .ok_or("container spec without a process")?;
    let mut args = args;
    // A container with a seccomp profile: the exec'd process loads it first, through the
    // built-in init every container has mounted (libcontainer would run it unfiltered).
    let raw: serde_json::Value = serde_json::from_slice(
        &std::fs::read(bundle.join("config.json")).map_err(|e| err("container spec", e))?,
    )
    .map_err(|e| err("container spec", e))?;
    if let (true, Some(profile)) = (native, raw["linux"]["seccomp"].as_object()) {
        let has_init = raw["mounts"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["destination"] == INIT_IN_CONTAINER));
        if !has_init {
            return Err(format!(
                "exec into a container with a seccomp profile needs kelson-init mounted at {INIT_IN_CONTAINER}"
            ));
        }
        let bpf = compile_seccomp(&serde_json::Value::Object(profile.clone()))?;
        let mut env = process.env().clone().unwrap_or_default();
        env.push(format!("{BPF_ENV}={bpf}"));
        process.set_env(Some(env));
        let mut wrapped = vec![
            INIT_IN_CONTAINER.to_owned(),
            "--seccomp-exec".to_owned(),
            "--".to_owned(),
        ];
        wrapped.append(&mut args);
        args = wrapped;
    }
    process.set_args(Some(args)).set_terminal(Some(terminal));
    // Beside the container's state (an OCI runtime's container has no dir of ours).
    let file = root.join(format!("{id}.exec-{}.json", std::process::id()));
    // The container's env is in here.
    write_private(
        &file,
        &serde_json::to_vec(&process).map_err(|e| err("process spec", e))?,
    )
    .map_err(|e| err("writing process spec", e))?;
    if native {
        join_user_namespace(&raw)?;
    }
    Ok(file)
}

/// A container of a user-namespaced pod: enter its user namespace before the library builds
/// the exec'd process. libcontainer 0.7 joins a tenant's ipc/uts/net/pid/mnt/cgroup
/// namespaces but never its user namespace, so an exec'd process would otherwise run as real
/// root on the host inside the pod's other namespaces. Entered first (this process is
/// single-threaded and still host root, the owner of the pod's namespace), every later step
/// happens inside it: the process's ids are the container's ids there and its capabilities
/// only the namespace's. Files this process still reads are host root's, readable as their
/// owner; cgroup files likewise.
fn join_user_namespace(spec: &serde_json::Value) -> Result<(), String> {
    let Some(path) = spec["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["type"] == "user")
        .and_then(|n| n["path"].as_str())
    else {
        return Ok(());
    };
    let ns = std::fs::File::open(path).map_err(|e| err("open user namespace", e))?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(|e| err("enter user namespace", e))
}

/// Run `args` in the container on a terminal of its own (`kubectl exec -it`): the process
/// spec is the container's own (user, env, cwd, capabilities) with these args and
/// `terminal: true`; libcontainer makes the pty inside the container, makes it the process's
/// controlling terminal, and sends the master to `console_socket` (kelsond listens there).
/// Detached as libcontainer requires for a console socket, so this process becomes a child
/// subreaper first: the command is re-parented here, waited for, and its exit status is this
/// process's.
pub fn exec_tty(
    id: &str,
    root: &Path,
    args: Vec<String>,
    pid_file: &Path,
    console_socket: &Path,
) -> Result<i32, String> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| err("child subreaper", e))?;
    if let Some(h) = oci_runtime::handler(root, id)? {
        let process_file = process_spec(id, root, &h.bundle, args, true, false)?;
        let pid = h.exec_detached_tty(id, &process_file, pid_file, console_socket);
        let _ = std::fs::remove_file(&process_file);
        return wait_exit(pid?);
    }
    let bundle = native_bundle(id, root)?;
    let process_file = process_spec(id, root, &bundle, args, true, true)?;
    let (null, out, errfd) = stdio()?;
    let built = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
        .with_root_path(root)
        .map_err(|e| err("root path", e))?
        .with_console_socket(Some(console_socket))
        .with_stdin(null)
        .with_stdout(out)
        .with_stderr(errfd)
        .as_tenant()
        .with_process(Some(&process_file))
        .with_detach(true)
        .build();
    let _ = std::fs::remove_file(&process_file);
    let pid = built.map_err(|e| err("exec", e))?;
    narrow_state(&root.join(id));
    let _ = write_private(pid_file, pid.as_raw().to_string().as_bytes());
    wait_exit(pid.as_raw())
}

/// Remove the container's runtime state and cgroup (it must have stopped; `force` kills first).
pub fn delete(id: &str, root: &Path) -> Result<(), String> {
    if let Some(h) = oci_runtime::handler(root, id)? {
        h.delete(id)?;
        let _ = std::fs::remove_file(oci_runtime::record(root, id));
        return Ok(());
    }
    match Container::load(root.join(id)) {
        Ok(mut c) => c.delete(true).map_err(|e| err("delete", e)),
        Err(_) if !root.join(id).exists() => Ok(()),
        Err(e) => Err(err("load", e)),
    }
}
