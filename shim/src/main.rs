//! kelson-shim: the per-container process (stdio, CRI log file, exit status, reaping). It is built
//! with issue #3; until then this binary only says so, so nothing can mistake it for a working shim.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    eprintln!(
        "kelson-shim {}: containers are not supported by this build yet",
        env!("CARGO_PKG_VERSION")
    );
    std::process::ExitCode::from(2)
}
