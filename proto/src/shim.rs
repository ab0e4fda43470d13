//! The shim's control messages.

/// What the daemon asks.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(oneof = "request::Kind", tags = "1, 2, 3, 4, 5, 6, 7, 8")]
    pub kind: Option<request::Kind>,
}

pub mod request {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// Start the created container's process.
        #[prost(message, tag = "1")]
        Start(super::Empty),
        /// Send a signal to the container's init (all: to every process in it).
        #[prost(message, tag = "2")]
        Signal(super::Signal),
        /// Report the container's state.
        #[prost(message, tag = "3")]
        State(super::Empty),
        /// Reopen the log file (after kubelet rotated it).
        #[prost(message, tag = "4")]
        ReopenLog(super::Empty),
        /// Run a process in the container and return its output (ExecSync).
        #[prost(message, tag = "5")]
        Exec(super::Exec),
        /// Delete the container (it must have exited) and exit.
        #[prost(message, tag = "6")]
        Shutdown(super::Empty),
        /// Answer (with the state) once the container has exited.
        #[prost(message, tag = "7")]
        Wait(super::Empty),
        /// Join the running container's stdio. After the (empty) answer the connection carries
        /// `AttachFrame`s both ways until the container exits or either side leaves.
        #[prost(message, tag = "8")]
        Attach(super::Attach),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Attach {
    /// Send stdin (the container must have been created with stdin; otherwise it is ignored).
    #[prost(bool, tag = "1")]
    pub stdin: bool,
    #[prost(bool, tag = "2")]
    pub stdout: bool,
    #[prost(bool, tag = "3")]
    pub stderr: bool,
}

/// One message on an attach connection.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttachFrame {
    #[prost(oneof = "attach_frame::Kind", tags = "1, 2, 3, 4, 5")]
    pub kind: Option<attach_frame::Kind>,
}

pub mod attach_frame {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// Attacher → shim: bytes for the container's stdin.
        #[prost(bytes = "vec", tag = "1")]
        Stdin(Vec<u8>),
        /// Attacher → shim: no more stdin from this attacher.
        #[prost(message, tag = "2")]
        StdinClose(super::Empty),
        /// Attacher → shim: the terminal's new size (containers with a terminal).
        #[prost(message, tag = "3")]
        Resize(super::Resize),
        /// Shim → attacher: container output (on a terminal, everything is stdout).
        #[prost(bytes = "vec", tag = "4")]
        Stdout(Vec<u8>),
        #[prost(bytes = "vec", tag = "5")]
        Stderr(Vec<u8>),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Resize {
    #[prost(uint32, tag = "1")]
    pub width: u32,
    #[prost(uint32, tag = "2")]
    pub height: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Signal {
    #[prost(int32, tag = "1")]
    pub signal: i32,
    #[prost(bool, tag = "2")]
    pub all: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Exec {
    #[prost(string, repeated, tag = "1")]
    pub args: Vec<String>,
    /// 0 = no timeout.
    #[prost(uint64, tag = "2")]
    pub timeout_ms: u64,
    /// Output beyond this many bytes per stream is dropped (probes cannot exhaust memory).
    #[prost(uint64, tag = "3")]
    pub max_output: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum Status {
    Created = 0,
    Running = 1,
    Exited = 2,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct State {
    #[prost(enumeration = "Status", tag = "1")]
    pub status: i32,
    #[prost(uint32, tag = "2")]
    pub pid: u32,
    #[prost(int32, tag = "3")]
    pub exit_code: i32,
    /// Unix nanoseconds; 0 when not yet.
    #[prost(int64, tag = "4")]
    pub started_at: i64,
    #[prost(int64, tag = "5")]
    pub finished_at: i64,
    #[prost(bool, tag = "6")]
    pub oom_killed: bool,
}

/// An exec's outcome. The output follows the response on the same connection as `ExecOutput`
/// frames of at most `MAX_EXEC_CHUNK` bytes, `stdout_len` and `stderr_len` bytes in all: a
/// single frame could not carry what the output cap allows (`MAX_FRAME_LEN`). A shim from
/// before this sends the output inline (`stdout`, `stderr`) and no lengths.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecResult {
    #[prost(int32, tag = "1")]
    pub exit_code: i32,
    #[prost(bytes = "vec", tag = "2")]
    pub stdout: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub stderr: Vec<u8>,
    #[prost(bool, tag = "4")]
    pub timed_out: bool,
    #[prost(uint64, tag = "5")]
    pub stdout_len: u64,
    #[prost(uint64, tag = "6")]
    pub stderr_len: u64,
    /// Bytes the command wrote past the output cap, read and dropped.
    #[prost(uint64, tag = "7")]
    pub stdout_dropped: u64,
    #[prost(uint64, tag = "8")]
    pub stderr_dropped: u64,
}

/// Most output bytes in one `ExecOutput` frame.
pub const MAX_EXEC_CHUNK: usize = 1 << 20;

/// A piece of an exec's output, after its `ExecResult`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecOutput {
    #[prost(oneof = "exec_output::Kind", tags = "1, 2")]
    pub kind: Option<exec_output::Kind>,
}

pub mod exec_output {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(bytes = "vec", tag = "1")]
        Stdout(Vec<u8>),
        #[prost(bytes = "vec", tag = "2")]
        Stderr(Vec<u8>),
    }
}

/// What kind of failure a response's `error` reports, so the daemon decides by kind and never
/// by the wording of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum ErrorKind {
    /// Not classified (a shim from before kinds existed): a failure of the call.
    Unspecified = 0,
    /// The request itself is malformed (an unknown signal, an empty command, a bad frame).
    BadRequest = 1,
    /// The container is not in the state the request needs (start: created; exec, attach:
    /// running).
    WrongState = 2,
    /// The container's command could not be started (missing, not executable, …).
    StartFailed = 3,
    /// The shim failed at what was asked (a helper it could not spawn, a system call).
    Internal = 4,
    /// What the request would act on is refused as it is on disk (a log directory replaced by
    /// a symlink): the request was fine, the node's state is not.
    Refused = 5,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    /// Empty on success.
    #[prost(string, tag = "1")]
    pub error: String,
    /// With `error`: what kind of failure it is.
    #[prost(enumeration = "ErrorKind", tag = "4")]
    pub error_kind: i32,
    #[prost(message, optional, tag = "2")]
    pub state: Option<State>,
    #[prost(message, optional, tag = "3")]
    pub exec: Option<ExecResult>,
}
