//! kelson-shim-engine: the short-lived children through which the shim drives the container
//! library — `create`, `start`, `exec`, `delete`. A separate binary so that the long-lived shim
//! never maps the library (see verbs.rs). A crate of its own: the shim's crate does not even
//! depend on the library.
#![forbid(unsafe_code)]

mod oci_runtime;
mod stdio_owner;
mod verbs;

use std::path::Path;
use std::process::ExitCode;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn need(args: &[String], name: &str) -> Result<String, String> {
    arg(args, name).ok_or_else(|| format!("missing {name}"))
}

/// The OCI default umask. The container's init and exec'd processes inherit it (CRI has no
/// umask, and libcontainer keeps the caller's when the spec names none), and so do the
/// directories the library makes inside the rootfs as mount points — under the shim's 077 they
/// would be 0700 and shut a non-root container user out of them. The engine's own files get
/// explicit modes (`verbs::write_private`).
const OCI_UMASK: u32 = 0o022;

fn main() -> ExitCode {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(OCI_UMASK as _));
    let args: Vec<String> = std::env::args().collect();
    let cmd = args.get(1).map(String::as_str).unwrap_or("");
    let result = match cmd {
        "create" => {
            let r = (|| {
                let id = need(&args, "--id")?;
                verbs::create(
                    &id,
                    Path::new(&need(&args, "--root")?),
                    Path::new(&need(&args, "--bundle")?),
                    Path::new(&need(&args, "--pid-file")?),
                    args.iter().any(|a| a == "--stdin"),
                    arg(&args, "--console-socket").as_deref().map(Path::new),
                    arg(&args, "--start-report").as_deref().map(Path::new),
                )
            })();
            if let (Err(e), Some(f)) = (&r, arg(&args, "--error-file")) {
                let _ = verbs::write_private(Path::new(&f), e.as_bytes());
            }
            r
        }
        "start" => need(&args, "--id").and_then(|id| {
            verbs::start(
                &id,
                Path::new(&need(&args, "--root")?),
                args.iter().any(|a| a == "--report-on-stdin"),
            )
        }),
        "delete" => need(&args, "--id")
            .and_then(|id| verbs::delete(&id, Path::new(&need(&args, "--root")?))),
        "exec" => {
            let r = (|| {
                // Options come before `--`; the command after it is never read as options.
                let opts: Vec<String> = args.iter().take_while(|a| *a != "--").cloned().collect();
                let rest: Vec<String> = args
                    .iter()
                    .skip_while(|a| *a != "--")
                    .skip(1)
                    .cloned()
                    .collect();
                let id = need(&opts, "--id")?;
                let root = need(&opts, "--root")?;
                let pid_file = need(&opts, "--pid-file")?;
                match arg(&opts, "--console-socket") {
                    Some(sock) => verbs::exec_tty(
                        &id,
                        Path::new(&root),
                        rest,
                        Path::new(&pid_file),
                        Path::new(&sock),
                    ),
                    None => verbs::exec(
                        &id,
                        Path::new(&root),
                        rest,
                        Path::new(&pid_file),
                        opts.iter().any(|a| a == "--stdin"),
                    ),
                }
            })();
            return match r {
                Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(126)
                }
            };
        }
        _ => Err(format!(
            "kelson-shim-engine {}: usage: kelson-shim-engine create|start|exec|delete …",
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
