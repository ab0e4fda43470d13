//! StartContainer: the shim starts the created container's command; a command that cannot
//! start is recorded as exited with its reason, as kubelet expects of a start failure.

use super::{ContainerError, ContainerService, KILL_GRACE, RunState, START_ERROR_EXIT, now_ns};
use crate::shim_client::{self, RemoteKind, ShimError, msg};
use crate::store::ExitInfo;

impl ContainerService {
    pub async fn start(&self, id: &str) -> Result<(), ContainerError> {
        let began = std::time::Instant::now();
        let mut rec = self.find(id)?;
        let v = self.view(rec.clone()).await;
        if v.state != RunState::Created {
            return Err(ContainerError::WrongState {
                id: rec.id,
                state: v.state.as_str(),
                op: "start",
            });
        }
        let r = match self
            .client(&rec)
            .call(
                msg::request::Kind::Start(msg::Empty {}),
                shim_client::CALL_TIMEOUT,
            )
            .await
        {
            Ok(r) => r,
            Err(ShimError::Remote {
                kind: RemoteKind::StartFailed,
                message: reason,
            }) => {
                // The command could not be started (missing, not executable, …): the init
                // gave up. Whatever is left of the container goes, and it is recorded as
                // exited with the reason, as kubelet expects of a start failure.
                let _ = self.signal(&rec, nix::libc::SIGKILL, true).await;
                let _ = self.wait_exit(&rec, KILL_GRACE).await;
                rec.start_error = reason.clone();
                rec.exit = Some(ExitInfo {
                    exit_code: START_ERROR_EXIT,
                    started_at: 0,
                    finished_at: now_ns(),
                    oom_killed: false,
                });
                self.store.update(&rec)?;
                tracing::info!(container = %rec.id, reason = %reason, "container failed to start");
                return Err(ContainerError::StartFailed { id: rec.id, reason });
            }
            // Refused because the container is no longer created (a concurrent start, an
            // exit): a wrong state, the container left as it is.
            Err(ShimError::Remote {
                kind: RemoteKind::WrongState,
                message,
            }) => {
                tracing::debug!(container = %rec.id, %message, "start refused by the shim");
                return Err(ContainerError::WrongState {
                    id: rec.id,
                    state: "not created",
                    op: "start",
                });
            }
            Err(e) => return Err(e.into()),
        };
        let shim_ms = began.elapsed().as_secs_f64() * 1e3;
        rec.started_at = r.state.map(|s| s.started_at).unwrap_or_else(now_ns);
        self.store.update(&rec)?;
        tracing::info!(
            container = %rec.id,
            shim_ms,
            total_ms = began.elapsed().as_secs_f64() * 1e3,
            "container started"
        );
        Ok(())
    }
}
