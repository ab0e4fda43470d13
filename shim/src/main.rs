//! kelson-shim: one small process per container. It owns the container's stdio, writes the CRI
//! log file, records the exit status, reaps every child, and answers kelsond on a unix socket.
//! It is detached from kelsond (own session, re-parented), so it outlives kelsond's restarts.
//!
//! Sub-commands: `spawn` (run by kelsond: starts `serve` detached and reports readiness) and
//! `serve` (the long-lived shim). Container operations run in the separate, short-lived
//! `kelson-shim-engine` binary: the library's code and relocations never load into the
//! long-lived shim, which keeps its private memory small. This file only parses arguments and
//! hands over to `serve`; it never does the loop's work itself.
#![forbid(unsafe_code)]

mod attachers;
mod console;
mod cri_log;
mod exit_record;
mod serve;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use cri_log::LogPath;
use serve::{Config, EngineBinary, Shim};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn need(args: &[String], name: &str) -> Result<String, String> {
    arg(args, name).ok_or_else(|| format!("missing {name}"))
}

/// Nothing the shim writes (its log, pid and exit files, sockets) is for other users of the
/// node; the engine sets the OCI default back for the containers it makes.
const UMASK: u32 = 0o077;
/// The mode of every file the shim writes for kelsond.
pub const PRIVATE_FILE: u32 = 0o600;

/// Write a file only its owner (root) can read.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE)
        .open(path)?
        .write_all(bytes)
}

fn main() -> ExitCode {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(UMASK as _));
    let args: Vec<String> = std::env::args().collect();
    let cmd = args.get(1).map(String::as_str).unwrap_or("");
    let result = match cmd {
        "spawn" => spawn(&args),
        "serve" => serve(&args),
        _ => Err(format!(
            "kelson-shim {}: usage: kelson-shim spawn|serve …",
            env!("CARGO_PKG_VERSION")
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Run by kelsond: start `serve` in its own session with the same arguments, wait for its
/// "ready <pid>" line (or its error), print it and exit, so the shim is re-parented away from
/// kelsond at once.
fn spawn(args: &[String]) -> Result<(), String> {
    let dir = PathBuf::from(need(args, "--dir")?);
    let errlog = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(PRIVATE_FILE)
            .open(dir.join("shim.log"))
            .map_err(|e| format!("shim log: {e}"))?
    };
    let mut child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .arg("serve")
        .args(&args[2..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(errlog)
        .spawn()
        .map_err(|e| format!("spawning shim: {e}"))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if let Some(pid) = line.strip_prefix("ready ") {
        println!("{}", pid.trim());
        return Ok(());
    }
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.join("shim.log")).unwrap_or_default();
    Err(if line.trim().is_empty() {
        log.trim().to_owned()
    } else {
        line.trim().to_owned()
    })
}

fn serve(args: &[String]) -> Result<(), String> {
    let _ = nix::unistd::setsid();
    let engine = match EngineBinary::open(arg(args, "--engine").as_deref()) {
        Ok(e) => e,
        Err(e) => {
            println!("error: {e}");
            return Err(e);
        }
    };
    let cfg = Config {
        id: need(args, "--id")?,
        root: PathBuf::from(need(args, "--root")?),
        bundle: PathBuf::from(need(args, "--bundle")?),
        dir: serve::shim_dir(Path::new(&need(args, "--dir")?)),
        socket: PathBuf::from(need(args, "--socket")?),
        log: LogPath {
            dir: PathBuf::from(need(args, "--log-dir")?),
            rel: PathBuf::from(need(args, "--log")?),
        },
        stdin: args.iter().any(|a| a == "--stdin"),
        stdin_once: args.iter().any(|a| a == "--stdin-once"),
        tty: args.iter().any(|a| a == "--tty"),
        engine: Box::new(engine),
    };
    let sigfd = serve::sigchld_fd()?;
    let shim = match Shim::create(cfg) {
        Ok(s) => s,
        Err(e) => {
            println!("error: {e}");
            return Err(e);
        }
    };
    let listener = match shim.bind() {
        Ok(l) => l,
        Err(e) => {
            // The container exists but cannot be controlled: take it down again.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(shim.init_pid()),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = shim
                .engine()
                .command("delete")
                .args([
                    "--id",
                    &need(args, "--id")?,
                    "--root",
                    &need(args, "--root")?,
                ])
                .output();
            println!("error: {e}");
            return Err(e);
        }
    };
    let _ = write_private(
        &Path::new(&need(args, "--dir")?).join("shim.pid"),
        std::process::id().to_string().as_bytes(),
    );
    println!("ready {}", shim.init_pid());
    shim.run(listener, sigfd)
}
