//! kelson-init: PID 1 inside a container when the operator opts in (`kelson.io/init: "true"`).
//! It starts the real process, forwards the signals a process manager forwards, and reaps every
//! child it inherits, so orphaned grandchildren never pile up as zombies. It exits with the real
//! process's status. No dependencies on the image: it is a static binary.
//!
//! `kelson-init --seccomp-exec -- COMMAND…`: the first step of a process exec'd into a container
//! with a seccomp profile. The container library does not filter exec'd processes, so the
//! engine compiles the container's profile to BPF and passes it in `KELSON_SECCOMP_BPF`; this
//! loads it (with no_new_privs, which loading needs without CAP_SYS_ADMIN) and becomes the
//! command.
#![forbid(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

const FORWARDED: [Signal; 8] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
];

/// `kelson-init --pause`: a sandbox's placeholder process for runtimes that need one (the
/// benchmark's containerd pause image is built from it). Sleeps, reaps whatever it inherits, and
/// exits 0 on SIGTERM or SIGINT, as Kubernetes' pause does.
fn pause() -> ExitCode {
    let sigs = [
        Signal::SIGTERM as i32,
        Signal::SIGINT as i32,
        Signal::SIGCHLD as i32,
    ];
    let mut signals = match signal_hook::iterator::Signals::new(sigs) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kelson-init: installing signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    for raw in signals.forever() {
        if raw != Signal::SIGCHLD as i32 {
            return ExitCode::SUCCESS;
        }
        while let Ok(s) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if s == WaitStatus::StillAlive {
                break;
            }
        }
    }
    ExitCode::from(1)
}

/// The variable carrying the filter: hex of `struct sock_filter` records (8 bytes each, in the
/// machine's byte order, as libseccomp exports them).
const BPF_ENV: &str = "KELSON_SECCOMP_BPF";

fn parse_bpf(hex: &str) -> Option<Vec<seccompiler::sock_filter>> {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    if bytes.is_empty() || !bytes.len().is_multiple_of(8) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(8)
            .map(|c| seccompiler::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    )
}

fn seccomp_exec() -> ExitCode {
    let args: Vec<String> = std::env::args().skip_while(|a| a != "--").skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("kelson-init: usage: kelson-init --seccomp-exec -- COMMAND [ARGS…]");
        return ExitCode::from(126);
    };
    let Some(filter) = std::env::var(BPF_ENV).ok().as_deref().and_then(parse_bpf) else {
        eprintln!("kelson-init: no valid seccomp filter in {BPF_ENV}");
        return ExitCode::from(126);
    };
    if let Err(e) = seccompiler::apply_filter(&filter) {
        eprintln!("kelson-init: loading the container's seccomp filter: {e}");
        return ExitCode::from(126);
    }
    let e = Command::new(cmd).args(rest).env_remove(BPF_ENV).exec();
    eprintln!("kelson-init: {cmd}: {e}");
    ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("--pause") => return pause(),
        Some("--seccomp-exec") => return seccomp_exec(),
        _ => {}
    }
    let args: Vec<String> = std::env::args().skip_while(|a| a != "--").skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("kelson-init: usage: kelson-init -- COMMAND [ARGS…]");
        return ExitCode::from(2);
    };
    // Handlers, not a blocked mask: a mask would be inherited by the child (std does not reset
    // it), while handlers revert to the default at exec. Installed before the spawn, so no
    // signal is lost; as PID 1 only handled signals reach us at all.
    let mut sigs: Vec<i32> = FORWARDED.iter().map(|s| *s as i32).collect();
    sigs.push(Signal::SIGCHLD as i32);
    let mut signals = match signal_hook::iterator::Signals::new(&sigs) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kelson-init: installing signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let child = match Command::new(cmd).args(rest).spawn() {
        Ok(c) => Pid::from_raw(c.id() as i32),
        Err(e) => {
            eprintln!("kelson-init: {cmd}: {e}");
            return ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    for raw in signals.forever() {
        let Ok(sig) = Signal::try_from(raw) else {
            continue;
        };
        if sig != Signal::SIGCHLD {
            let _ = kill(child, sig);
            continue;
        }
        let mut status = None;
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, code)) if p == child => status = Some(code),
                Ok(WaitStatus::Signaled(p, s, _)) if p == child => status = Some(128 + s as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if let Some(code) = status {
            return ExitCode::from(code.clamp(0, 255) as u8);
        }
    }
    ExitCode::from(1)
}
