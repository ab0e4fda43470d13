//! ExecSync: a command run to completion in a running container by its shim, with bounded
//! output (streaming exec is `exec.rs`).

use std::time::Duration;

use super::{ContainerError, ContainerService};
use crate::shim_client::{self, RemoteKind, ShimError, msg};

impl ContainerService {
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
        max_output: u64,
    ) -> Result<msg::ExecResult, ContainerError> {
        let rec = self.find(id)?;
        let wait = if timeout.is_zero() {
            shim_client::CALL_TIMEOUT * 10
        } else {
            timeout + Duration::from_secs(10)
        };
        let r = self
            .client(&rec)
            .exec(
                msg::Exec {
                    args: cmd,
                    timeout_ms: timeout.as_millis() as u64,
                    max_output,
                },
                wait,
            )
            .await
            .map_err(|e| match e {
                ShimError::Gone { .. } => ContainerError::WrongState {
                    id: rec.id.clone(),
                    state: "exited",
                    op: "exec",
                },
                ShimError::Remote {
                    kind: RemoteKind::WrongState,
                    ..
                } => ContainerError::WrongState {
                    id: rec.id.clone(),
                    state: "not running",
                    op: "exec",
                },
                e => e.into(),
            })?;
        if r.stdout_dropped > 0 || r.stderr_dropped > 0 {
            // As containerd does: the answer carries the output up to the cap, the rest was
            // read and dropped (the command never blocks on it).
            tracing::warn!(
                container = %rec.id,
                stdout_dropped = r.stdout_dropped,
                stderr_dropped = r.stderr_dropped,
                cap = max_output,
                "exec output truncated at the cap per stream"
            );
        }
        Ok(r)
    }
}
