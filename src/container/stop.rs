//! StopContainer: the image's STOPSIGNAL (or SIGTERM), then SIGKILL to every process at the
//! timeout; signalling the shim and waiting for the exit, which start and remove use too.

use std::path::Path;
use std::time::Duration;

use super::{ContainerError, ContainerService, KILL_GRACE, RunState};
use crate::shim_client::{self, ShimError, msg};
use crate::store::ContainerRecord;

/// The most of a stop's timeout kept for SIGKILL and reaping.
const STOP_KILL_MARGIN: Duration = Duration::from_secs(1);

/// How long a stop waits after the stop signal before SIGKILL: the timeout less a margin
/// (a tenth of it, at most `STOP_KILL_MARGIN`), so that StopContainer returns within the
/// timeout it was given — callers such as critest wait exactly that long.
fn grace_before_kill(timeout: Duration) -> Duration {
    timeout.saturating_sub(STOP_KILL_MARGIN.min(timeout / 10))
}

/// The image's STOPSIGNAL ("SIGQUIT", "QUIT" or a number), SIGTERM when absent or unknown.
pub fn stop_signal(image_config: &serde_json::Value) -> i32 {
    let s = image_config["config"]["StopSignal"]
        .as_str()
        .unwrap_or("")
        .trim();
    if let Ok(n) = s.parse::<i32>() {
        if nix::sys::signal::Signal::try_from(n).is_ok() {
            return n;
        }
    }
    let name = if s.starts_with("SIG") {
        s.to_owned()
    } else {
        format!("SIG{s}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .unwrap_or(nix::libc::SIGTERM)
}

impl ContainerService {
    pub(super) async fn signal(
        &self,
        rec: &ContainerRecord,
        signal: i32,
        all: bool,
    ) -> Result<(), ContainerError> {
        match self
            .client(rec)
            .call(
                msg::request::Kind::Signal(msg::Signal { signal, all }),
                shim_client::CALL_TIMEOUT,
            )
            .await
        {
            Ok(_) | Err(ShimError::Gone { .. }) => Ok(()),
            // The shim exits once the container has exited and its output is drained; a
            // call that raced with that (connection reset or closed) finds the exit recorded.
            Err(ShimError::Call { .. })
                if shim_client::read_exit(&Path::new(&rec.state_dir).join("shim")).is_some() =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Wait for the exit: the shim answers a Wait request when the init exits (no polling);
    /// a vanished shim means the exit record (or its absence) decides.
    pub(super) async fn wait_exit(&self, rec: &ContainerRecord, within: Duration) -> bool {
        let waited = self
            .client(rec)
            .call(msg::request::Kind::Wait(msg::Empty {}), within)
            .await;
        match waited {
            Ok(r) => r
                .state
                .is_some_and(|s| s.status == msg::Status::Exited as i32),
            Err(_) => self.view(rec.clone()).await.state == RunState::Exited,
        }
    }

    /// Block until the container has exited (true), or is gone from the store (false). Holds
    /// one Wait request on the shim, which answers at the exit; a shim that vanishes counts as
    /// an exit (the status then says why).
    pub async fn wait_until_exited(&self, id: &str) -> bool {
        loop {
            let Ok(rec) = self.find(id) else {
                return false;
            };
            if self.wait_exit(&rec, Duration::from_secs(3600)).await {
                return true;
            }
            if self.find(id).is_err() {
                return false;
            }
            // The shim answered without an exit (or was unreachable for a moment): ask again,
            // without spinning.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Stop: STOPSIGNAL (or SIGTERM), SIGKILL to every process after `timeout` (0: at once).
    /// Stopping a stopped or missing container succeeds.
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<(), ContainerError> {
        let rec = match self.find(id) {
            Ok(r) => r,
            Err(ContainerError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let v = self.view(rec.clone()).await;
        if v.state == RunState::Exited {
            // (A shim that died without recording an exit had its cgroup killed by `view`.)
            return Ok(());
        }
        if v.state == RunState::Running && !timeout.is_zero() {
            let img = self
                .images
                .resolve(&rec.image_id)
                .ok()
                .flatten()
                .and_then(|(i, _)| self.images.config_json(&i))
                .unwrap_or_default();
            self.signal(&rec, stop_signal(&img), false).await?;
            if self.wait_exit(&rec, grace_before_kill(timeout)).await {
                return Ok(());
            }
        }
        self.signal(&rec, nix::libc::SIGKILL, true).await?;
        if !self.wait_exit(&rec, KILL_GRACE).await {
            return Err(ContainerError::Unkillable(rec.id));
        }
        tracing::info!(container = %rec.id, "container stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_keeps_time_to_kill_within_its_timeout() {
        let g = grace_before_kill;
        assert_eq!(g(Duration::from_secs(60)), Duration::from_secs(59));
        assert_eq!(g(Duration::from_secs(2)), Duration::from_millis(1800));
        assert_eq!(g(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn stop_signals() {
        let cfg = |s: &str| serde_json::json!({"config": {"StopSignal": s}});
        assert_eq!(stop_signal(&cfg("SIGQUIT")), nix::libc::SIGQUIT);
        assert_eq!(stop_signal(&cfg("QUIT")), nix::libc::SIGQUIT);
        assert_eq!(stop_signal(&cfg("9")), 9);
        assert_eq!(stop_signal(&cfg("bogus")), nix::libc::SIGTERM);
        assert_eq!(stop_signal(&serde_json::json!({})), nix::libc::SIGTERM);
    }
}
