//! `GetContainerEvents` for kubelet's evented PLEG: created, started, stopped and deleted
//! events, each with the pod's status and its containers' statuses at that moment.
//!
//! One broadcast ring shared by every subscriber: publishing never waits for anyone. A
//! subscriber that falls more than the ring's size behind gets `ResourceExhausted` and its
//! stream ends — kubelet then re-lists and subscribes again, which is what it must do anyway
//! after missing events. A stopped event comes from whichever notices first, StopContainer or
//! the per-container exit watcher (a container that exits by itself); it is published once,
//! and never after the container's deleted event.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Mutex;

use futures::Stream;
use k8s_cri::v1 as cri;
use tokio::sync::{broadcast, watch};
use tonic::Status;

use super::Shared;

/// Events kept for subscribers that are behind (kubelet reads them as they come).
pub const DEFAULT_CAPACITY: usize = 1024;

pub type EventStream =
    Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

pub struct EventBus {
    tx: broadcast::Sender<cri::ContainerEventResponse>,
    seen: Mutex<Seen>,
    /// Set at shutdown: every stream ends, so a graceful stop does not wait on subscribers.
    closed: watch::Sender<bool>,
}

/// Containers whose stopped event went out, and the most recently deleted ones (so a late
/// stopped event from an exit watcher cannot follow a deleted event).
#[derive(Default)]
struct Seen {
    stopped: HashSet<String>,
    deleted: HashSet<String>,
    deleted_order: VecDeque<String>,
}

/// Deleted ids remembered for late stopped events.
const DELETED_MEMORY: usize = 4096;

impl Default for EventBus {
    fn default() -> Self {
        EventBus::with_capacity(DEFAULT_CAPACITY)
    }
}

impl EventBus {
    pub fn with_capacity(capacity: usize) -> EventBus {
        let (tx, _) = broadcast::channel(capacity.max(1));
        EventBus {
            tx,
            seen: Mutex::new(Seen::default()),
            closed: watch::Sender::new(false),
        }
    }

    /// Send to every current subscriber; never blocks. Duplicate stopped events are dropped.
    pub fn publish(&self, ev: cri::ContainerEventResponse) {
        if self.admit(&ev.container_id, ev.container_event_type) {
            // An error only means nobody is subscribed.
            let _ = self.tx.send(ev);
        }
    }

    /// Whether an event goes out: a stopped event once per container and never after its
    /// deleted event; everything else always.
    fn admit(&self, id: &str, kind: i32) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match cri::ContainerEventType::try_from(kind) {
            Ok(cri::ContainerEventType::ContainerStoppedEvent) => {
                !seen.deleted.contains(id) && seen.stopped.insert(id.to_owned())
            }
            Ok(cri::ContainerEventType::ContainerDeletedEvent) => {
                seen.stopped.remove(id);
                if seen.deleted.insert(id.to_owned()) {
                    seen.deleted_order.push_back(id.to_owned());
                    if seen.deleted_order.len() > DELETED_MEMORY
                        && let Some(old) = seen.deleted_order.pop_front()
                    {
                        seen.deleted.remove(&old);
                    }
                }
                true
            }
            _ => true,
        }
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// End every stream (kelsond is stopping); later subscribers get an ended stream too.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    pub fn subscribe(&self) -> EventStream {
        let state = (self.tx.subscribe(), self.closed.subscribe());
        Box::pin(futures::stream::unfold(Some(state), |state| async move {
            let (mut rx, mut closed) = state?;
            let got = tokio::select! {
                biased;
                _ = closed.wait_for(|c| *c) => return None,
                got = rx.recv() => got,
            };
            match got {
                Ok(ev) => Some((Ok(ev), Some((rx, closed)))),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    Some((Err(super::status::EdgeError::EventsLagged(n).into()), None))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        }))
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Build and publish an event for `container` of `pod`: the pod's status and the statuses of
/// the containers it has now (a deleted container is no longer among them). Skipped when
/// nobody listens, so the common case costs nothing.
pub async fn emit(rt: &Shared, container: &str, pod: &str, kind: cri::ContainerEventType) {
    if rt.events.subscribers() == 0 {
        if kind == cri::ContainerEventType::ContainerDeletedEvent {
            // Keep the dedup set from growing while nobody listens.
            rt.events.publish(cri::ContainerEventResponse {
                container_id: container.to_owned(),
                container_event_type: kind as i32,
                ..Default::default()
            });
        }
        return;
    }
    let pod_status = rt.pods.find(pod).ok().map(|r| super::pod::to_status(&r));
    let mut statuses = Vec::new();
    if let Ok(all) = rt.containers.list() {
        let of_pod = all.into_iter().filter(|r| r.pod_id == pod).collect();
        for v in rt.containers.views(of_pod).await {
            statuses.push(super::container::to_status(rt, &v));
        }
    }
    rt.events.publish(cri::ContainerEventResponse {
        container_id: container.to_owned(),
        container_event_type: kind as i32,
        created_at: now_ns(),
        pod_sandbox_status: pod_status,
        containers_statuses: statuses,
    });
}

/// Wait in the background for a running container to exit (the shim answers a Wait request at
/// the exit; a vanished shim counts as an exit) and publish its stopped event.
pub fn watch_exit(rt: &Shared, container: String, pod: String) {
    let rt = rt.clone();
    tokio::spawn(async move {
        if rt.containers.wait_until_exited(&container).await {
            emit(
                &rt,
                &container,
                &pod,
                cri::ContainerEventType::ContainerStoppedEvent,
            )
            .await;
        }
    });
}

/// After a (re)start of kelsond: watch every running container again.
pub async fn rearm(rt: &Shared) {
    let Ok(all) = rt.containers.list() else {
        return;
    };
    // All shims asked at once, within one deadline: wedged ones cannot hold start-up.
    for v in rt.containers.views(all).await {
        if v.state == crate::container::RunState::Running {
            watch_exit(rt, v.rec.id, v.rec.pod_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn ev(id: &str, kind: cri::ContainerEventType) -> cri::ContainerEventResponse {
        cri::ContainerEventResponse {
            container_id: id.into(),
            container_event_type: kind as i32,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_event_in_order() {
        let bus = EventBus::with_capacity(16);
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        bus.publish(ev("c1", cri::ContainerEventType::ContainerCreatedEvent));
        bus.publish(ev("c1", cri::ContainerEventType::ContainerStartedEvent));
        for s in [&mut a, &mut b] {
            let first = s.next().await.unwrap().unwrap();
            let second = s.next().await.unwrap().unwrap();
            assert_eq!(first.container_event_type, 0);
            assert_eq!(second.container_event_type, 1);
        }
    }

    #[tokio::test]
    async fn a_slow_subscriber_never_blocks_and_is_told_it_lagged() {
        let bus = EventBus::with_capacity(4);
        let mut slow = bus.subscribe();
        // Far more than the ring holds: publishing must not wait for the reader.
        for i in 0..100 {
            bus.publish(ev(
                &format!("c{i}"),
                cri::ContainerEventType::ContainerCreatedEvent,
            ));
        }
        let err = slow.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message().contains("96 events behind"),
            "{}",
            err.message()
        );
        assert!(
            slow.next().await.is_none(),
            "the stream ends after the lag error"
        );
        // A fresh subscriber works.
        let mut fresh = bus.subscribe();
        bus.publish(ev("x", cri::ContainerEventType::ContainerCreatedEvent));
        assert_eq!(fresh.next().await.unwrap().unwrap().container_id, "x");
    }

    #[tokio::test]
    async fn close_ends_every_stream() {
        let bus = EventBus::with_capacity(16);
        let mut s = bus.subscribe();
        bus.close();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), s.next()).await;
        assert!(matches!(ended, Ok(None)), "stream ends at close");
        assert!(
            bus.subscribe().next().await.is_none(),
            "and so do later ones"
        );
    }

    #[tokio::test]
    async fn stopped_is_published_once_and_never_after_deleted() {
        let bus = EventBus::with_capacity(16);
        let mut s = bus.subscribe();
        bus.publish(ev("c", cri::ContainerEventType::ContainerStoppedEvent));
        bus.publish(ev("c", cri::ContainerEventType::ContainerStoppedEvent));
        bus.publish(ev("c", cri::ContainerEventType::ContainerDeletedEvent));
        // A late one from the exit watcher, after the delete: dropped.
        bus.publish(ev("c", cri::ContainerEventType::ContainerStoppedEvent));
        bus.publish(ev("d", cri::ContainerEventType::ContainerStoppedEvent));
        let mut got = Vec::new();
        for _ in 0..3 {
            let e = s.next().await.unwrap().unwrap();
            got.push((e.container_id, e.container_event_type));
        }
        assert_eq!(got, vec![("c".into(), 2), ("c".into(), 3), ("d".into(), 2)]);
    }
}
