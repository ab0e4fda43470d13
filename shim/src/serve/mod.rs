//! The long-lived shim process (`kelson-shim serve`) of one container: its state, shared by
//! the files that each own one of its jobs (`poll_loop`, `control`, `reaper`, `exec_session`,
//! `creator`, `container_io`; the engine behind `engine_command`). One thread, one poll loop; container operations run in
//! short-lived `kelson-shim-engine` children. It never links the container library and never
//! blocks the loop on a container or a client.

mod config;
mod container_cgroup;
mod container_io;
mod control;
mod creator;
mod engine_command;
mod exec_session;
#[cfg(test)]
mod fake_engine;
mod pipes;
mod poll_loop;
mod reaper;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::SystemTime;

use bytes::BytesMut;
use kelson_proto::shim as msg;

use crate::attachers::Attacher;
use crate::cri_log::{LogFile, Splitter, Stream};
use crate::exit_record::Exit;

pub use config::{Config, EngineBinary, shim_dir};
pub use engine_command::EngineCommand;
pub use reaper::sigchld_fd;

use exec_session::ExecSession;

pub struct Shim {
    cfg: Config,
    log: LogFile,
    init: i32,
    status: msg::Status,
    started_at: i64,
    exit: Option<Exit>,
    outputs: Vec<(Stream, OwnedFd, Splitter)>,
    execs: Vec<ExecSession>,
    reaped: HashMap<i32, i32>,
    exec_seq: u64,
    /// Connections waiting for the container to exit.
    waiters: Vec<UnixStream>,
    attachers: Vec<Attacher>,
    /// The container's stdin (a pipe, or the terminal) when it was created with stdin.
    stdin: Option<OwnedFd>,
    /// Attachers' stdin not yet taken by the container (bounded by `STDIN_BUFFER`).
    stdin_buf: BytesMut,
    /// Close stdin once `stdin_buf` is written (`stdin_once`).
    stdin_eof: bool,
    /// The terminal's master, for resizes (containers with a terminal).
    term: Option<OwnedFd>,
    /// The reading end of the init's start report (see the engine's `Workload`), until start.
    start_report: Option<OwnedFd>,
}

impl Shim {
    pub fn init_pid(&self) -> i32 {
        self.init
    }

    /// The engine this shim runs its short-lived children from.
    pub fn engine(&self) -> &dyn EngineCommand {
        self.cfg.engine.as_ref()
    }

    fn state(&self) -> msg::State {
        let e = self.exit.unwrap_or_default();
        msg::State {
            status: self.status as i32,
            pid: self.init as u32,
            exit_code: e.code,
            started_at: self.started_at,
            finished_at: e.finished_at,
            oom_killed: e.oom_killed,
        }
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
