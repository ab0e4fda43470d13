//! GetContainerEvents when the pod takes its containers down: StopPodSandbox and
//! RemovePodSandbox report each container's stopped and deleted events, as the container verbs
//! do, with every container's status in each event.

mod common;

use std::time::Duration;

use futures::StreamExt;
use k8s_cri::v1 as cri;
use k8s_cri::v1::ContainerEventType as T;
use kelson_testkit::cri as req;

async fn next(
    s: &mut tonic::Streaming<cri::ContainerEventResponse>,
) -> cri::ContainerEventResponse {
    tokio::time::timeout(Duration::from_secs(20), s.next())
        .await
        .expect("an event within 20 s")
        .expect("stream open")
        .expect("no stream error")
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_stop_and_remove_report_their_containers() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let mut s = c
        .runtime
        .get_container_events(cri::GetEventsRequest {})
        .await?
        .into_inner();
    let top = format!("kelson-events-{}", std::process::id());
    let logs = tempfile::tempdir()?;
    let cfg = common::pod_config("events", "default", &format!("/{top}/p"), logs.path());
    let pod = common::run_pod(&mut c, &cfg).await?;
    let mut ids = Vec::new();
    for name in ["one", "two"] {
        let ctr = common::container_config(name, &image, &["/bin/sleep", "3600"]);
        ids.push(common::create_start(&mut c, &pod, &cfg, ctr).await?);
    }
    // Created and started, in order; the second's events carry the first's status too.
    for (i, id) in ids.iter().enumerate() {
        for want in [T::ContainerCreatedEvent, T::ContainerStartedEvent] {
            let ev = next(&mut s).await;
            assert_eq!(
                (&ev.container_id, ev.container_event_type),
                (id, want as i32)
            );
            let listed: Vec<&str> = ev
                .containers_statuses
                .iter()
                .map(|s| s.id.as_str())
                .collect();
            assert_eq!(listed.len(), i + 1, "{want:?} of {id}: {listed:?}");
        }
    }
    c.runtime.stop_pod_sandbox(req::stop_pod(&pod)).await?;
    c.runtime.remove_pod_sandbox(req::remove_pod(&pod)).await?;
    let mut stopped = Vec::new();
    let mut deleted = Vec::new();
    while stopped.len() + deleted.len() < 4 {
        let ev = next(&mut s).await;
        let ps = ev.pod_sandbox_status.as_ref().expect("the pod's status");
        assert_eq!(
            ps.metadata.as_ref().map(|m| m.uid.as_str()),
            Some("uid-events")
        );
        let own = ev
            .containers_statuses
            .iter()
            .find(|st| st.id == ev.container_id);
        if ev.container_event_type == T::ContainerStoppedEvent as i32 {
            assert!(!deleted.contains(&ev.container_id), "stopped after deleted");
            let st = own.expect("a stopped container's status");
            assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
            stopped.push(ev.container_id);
        } else {
            assert_eq!(ev.container_event_type, T::ContainerDeletedEvent as i32);
            assert!(own.is_none(), "a deleted container has no status");
            assert!(stopped.contains(&ev.container_id), "deleted before stopped");
            deleted.push(ev.container_id);
        }
    }
    stopped.sort();
    deleted.sort();
    ids.sort();
    assert_eq!(
        (&stopped, &deleted),
        (&ids, &ids),
        "one stopped and one deleted each"
    );
    // Nothing follows: no second stopped event from an exit watcher.
    let late = tokio::time::timeout(Duration::from_secs(2), s.next()).await;
    assert!(late.is_err(), "a late event: {late:?}");
    assert_eq!(common::mounts_of(&e.daemon), 0);
    common::remove_cgroup_tree(&top);
    Ok(())
}
