//! A container's live state (ContainerStatus, ListContainers): the shim's answer, else its exit
//! record, else "exited, unknown" with its leftover processes killed; and its stats sample.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::{
    ContainerService, EXIT_UNKNOWN, REASON_SHIM_GONE, REASON_START_ERROR, RunState,
    START_ERROR_EXIT, StatsSample, View, now_ns, shim_alive,
};
use crate::shim_client::{self, ShimError, msg};
use crate::store::{ContainerRecord, ExitInfo};

/// How long a state query may wait for its shim. Queries made together (a listing, start-up)
/// share one deadline this far ahead, so wedged shims (stopped, swapped out) cost a listing
/// this once, not once each — with twenty of them, one after another, kelsond would miss
/// systemd's start timeout.
pub const STATE_DEADLINE: Duration = Duration::from_secs(5);
/// Shims asked for their state at once: each query holds a connection.
pub const MAX_STATE_QUERIES: usize = 64;

impl ContainerService {
    /// Live state: the shim's answer, else its exit record, else "exited, unknown".
    pub async fn view(&self, rec: ContainerRecord) -> View {
        self.view_by(rec, Instant::now() + STATE_DEADLINE).await
    }

    /// Live states of `recs`, in their order: the shims asked concurrently (at most
    /// `MAX_STATE_QUERIES` at a time), all within one `STATE_DEADLINE`. A shim that has not
    /// answered by then, alive, keeps its last known state.
    pub async fn views(&self, recs: Vec<ContainerRecord>) -> Vec<View> {
        let deadline = Instant::now() + STATE_DEADLINE;
        futures::stream::iter(recs)
            .map(|rec| self.view_by(rec, deadline))
            .buffered(MAX_STATE_QUERIES)
            .collect()
            .await
    }

    /// `view`, the shim's answer waited for until `deadline`.
    async fn view_by(&self, rec: ContainerRecord, deadline: Instant) -> View {
        let mut v = View {
            rec,
            state: RunState::Created,
            pid: 0,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
        };
        let client = self.client(&v.rec);
        let left = || deadline.saturating_duration_since(Instant::now());
        let mut answer = client.state(left()).await;
        // A shim that answers with an error is alive: ask again before concluding anything
        // from it (an unreachable or silent shim is not asked twice).
        for _ in 0..2 {
            match &answer {
                Err(e @ ShimError::Remote { .. }) => {
                    tracing::debug!(container = %v.rec.id, error = %e, "shim state: asking again");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    answer = client.state(left()).await;
                }
                _ => break,
            }
        }
        match answer {
            Ok(s) => {
                v.pid = s.pid;
                v.started_at = s.started_at;
                v.state = match msg::Status::try_from(s.status) {
                    Ok(msg::Status::Running) => RunState::Running,
                    Ok(msg::Status::Exited) => RunState::Exited,
                    _ => RunState::Created,
                };
                if v.state == RunState::Exited {
                    self.fill_exit(
                        &mut v,
                        ExitInfo {
                            exit_code: s.exit_code,
                            started_at: s.started_at,
                            finished_at: s.finished_at,
                            oom_killed: s.oom_killed,
                        },
                    );
                }
            }
            Err(err) => {
                let exit = v.rec.exit.or_else(|| {
                    shim_client::read_exit(&Path::new(&v.rec.state_dir).join("shim")).map(|e| {
                        ExitInfo {
                            exit_code: e.exit_code,
                            started_at: e.started_at,
                            finished_at: e.finished_at,
                            oom_killed: e.oom_killed,
                        }
                    })
                });
                match exit {
                    Some(e) => self.fill_exit(&mut v, e),
                    None if shim_alive(&v.rec) => {
                        // Alive but not answering in time (a loaded node): the last known
                        // state stands. Concluding "exited" here would make kubelet restart a
                        // healthy container, and killing it would be worse.
                        tracing::warn!(container = %v.rec.id, error = %err, "shim alive but not answering; reporting the last known state");
                        if v.rec.started_at > 0 {
                            v.state = RunState::Running;
                            v.started_at = v.rec.started_at;
                        }
                    }
                    None => {
                        // The shim died without recording an exit: nobody watches the
                        // container's processes any more, so they are killed (the whole
                        // cgroup) rather than left running unobserved beside a container
                        // reported exited.
                        self.kill_cgroup(&v.rec);
                        v.state = RunState::Exited;
                        v.exit_code = EXIT_UNKNOWN;
                        v.started_at = v.rec.started_at;
                        v.reason = REASON_SHIM_GONE.into();
                        v.message = "the container's shim was killed or crashed without recording an exit status; kelsond killed the container's remaining processes".into();
                    }
                }
            }
        }
        v
    }

    fn fill_exit(&self, v: &mut View, e: ExitInfo) {
        if !v.rec.start_error.is_empty() {
            let recorded = v.rec.exit.unwrap_or(e);
            v.state = RunState::Exited;
            v.exit_code = START_ERROR_EXIT;
            v.started_at = 0;
            v.finished_at = recorded.finished_at;
            v.reason = REASON_START_ERROR.into();
            v.message = v.rec.start_error.clone();
            return;
        }
        v.state = RunState::Exited;
        v.exit_code = e.exit_code;
        v.started_at = if e.started_at > 0 {
            e.started_at
        } else {
            v.rec.started_at
        };
        v.finished_at = e.finished_at;
        v.reason = if e.oom_killed {
            "OOMKilled"
        } else if e.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
        .into();
        if v.rec.exit.is_none() {
            let mut rec = v.rec.clone();
            rec.exit = Some(e);
            if self.store.update(&rec).is_ok() {
                v.rec = rec;
            }
        }
    }

    /// A stats sample of a running container (None once it exited) and the bytes and inodes
    /// its writable layer uses.
    /// Also the CPU rate in nano-cores since the previous call for this container (None on the
    /// first call), as kubelet's summary API expects.
    pub fn stats(&self, rec: &ContainerRecord) -> (Option<StatsSample>, (u64, u64)) {
        let now = now_ns();
        let sample = self.pods.find(&rec.pod_id).ok().and_then(|pod| {
            crate::cgroups::read::read(self.pods.cgroups(), &self.cgroup_of(&pod, rec))
        });
        let sample = sample.map(|s| (s, self.cpu_prev.update(&rec.id, now, s.cpu_ns)));
        let upper = crate::image::snapshot::disk_usage(&Path::new(&rec.root_dir).join("upper"));
        (sample, upper)
    }

    /// SIGKILL every process left in the container's cgroup (no-op once it is empty).
    fn kill_cgroup(&self, rec: &ContainerRecord) {
        let Ok(pod) = self.pods.find(&rec.pod_id) else {
            return;
        };
        let mut killed = 0;
        for pid in crate::cgroups::read::procs(self.pods.cgroups(), &self.cgroup_of(&pod, rec)) {
            if nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
            {
                killed += 1;
            }
        }
        if killed > 0 {
            tracing::warn!(container = %rec.id, killed, "shim gone: killed the container's remaining processes");
        }
    }
}
