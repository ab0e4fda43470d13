//! Benchmark (not a test): RunPodSandbox with a real bridge + host-local + portmap network,
//! p50/p99, and StopPodSandbox+RemovePodSandbox (CNI DEL). kelsond runs in a network namespace of
//! its own. `cargo build --release --workspace --bins && cargo bench --bench network [-- RUNS]`

use std::path::Path;
use std::time::Instant;

use k8s_cri::v1 as cri;
use kelson_testkit::measure::percentile_ms;
use kelson_testkit::{Daemon, DaemonOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50);
    let ipam = tempfile::tempdir()?;
    let conflist = serde_json::json!({"cniVersion": "1.0.0", "name": "bench", "plugins": [
        {"type": "bridge", "bridge": "kbench0", "isGateway": true, "ipMasq": false,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.78.0.0/16"}]], "dataDir": ipam.path()}},
        {"type": "portmap", "capabilities": {"portMappings": true}},
    ]});
    let opts = DaemonOptions {
        netns: true,
        conflist: Some(conflist.to_string()),
        ..Default::default()
    };
    let d = Daemon::start_opts(Path::new(env!("CARGO_BIN_EXE_kelsond")), "", opts)?;
    let mut c = d.cri().await?;
    let (mut run, mut del) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let cfg = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: format!("p{i}"),
                uid: format!("u{i}"),
                namespace: "bench".into(),
                attempt: 0,
            }),
            hostname: format!("p{i}"),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("/kelson-netbench/p{i}"),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = Instant::now();
        let id = c
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        run.push(t.elapsed());
        let t = Instant::now();
        c.runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
        c.runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await?;
        del.push(t.elapsed());
    }
    println!(
        "RunPodSandbox (bridge+host-local+portmap) p50 {:7.2} ms  p99 {:7.2} ms  ({runs} runs)",
        percentile_ms(&mut run, 0.5),
        percentile_ms(&mut run, 0.99)
    );
    println!(
        "Stop+RemovePodSandbox (CNI DEL)           p50 {:7.2} ms  p99 {:7.2} ms",
        percentile_ms(&mut del, 0.5),
        percentile_ms(&mut del, 0.99)
    );
    kelson_testkit::cgroups::remove_tree("kelson-netbench");
    Ok(())
}
