//! Benchmark (not a test): pod and container lifecycle through kelsond's CRI socket.
//! `cargo build --release --workspace --bins && cargo bench --bench lifecycle [-- RUNS]`
//! Prints p50/p99 of RunPodSandbox, create+start, stop+remove over RUNS runs; 20 pods × 1
//! container started concurrently; the shims' private memory (USS, PSS from smaps_rollup) and
//! kelsond's RSS with 20 containers running; ExecSync round trip and the shim's memory across
//! 100 probes; create+start in a user-namespaced pod and under the runc handler against the
//! native default, interleaved in one run (ratios, not absolute limits).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use kelson_testkit::daemon::Cri;
use kelson_testkit::measure::{percentile_ms, rss_kib, uss_pss_kib};
use kelson_testkit::{Daemon, Pusher, Registry, RegistryOptions, TestImages};

fn pod_cfg(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: name.into(),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: format!("/tmp/kelson-bench-logs/{name}"),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("/kelson-bench/{name}"),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        labels: HashMap::new(),
        ..Default::default()
    }
}

fn ctr_cfg(image: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["/bin/sleep".into(), "3600".into()],
        log_path: "c/0.log".into(),
        ..Default::default()
    }
}

/// How a pod of the variant comparison runs: its handler and whether it has a user namespace.
#[derive(Clone, Copy)]
struct Variant {
    label: &'static str,
    handler: &'static str,
    userns: bool,
}

const VARIANTS: [Variant; 3] = [
    Variant {
        label: "native",
        handler: "",
        userns: false,
    },
    Variant {
        label: "native, user namespace",
        handler: "",
        userns: true,
    },
    Variant {
        label: "runc handler",
        handler: "runc",
        userns: false,
    },
];

async fn run_one(
    c: &mut Cri,
    name: &str,
    image: &str,
) -> anyhow::Result<(String, String, Duration, Duration)> {
    run_variant(c, name, image, VARIANTS[0]).await
}

async fn run_variant(
    c: &mut Cri,
    name: &str,
    image: &str,
    v: Variant,
) -> anyhow::Result<(String, String, Duration, Duration)> {
    let mut pod_config = pod_cfg(name);
    let mut ctr = ctr_cfg(image);
    if v.userns {
        let sc = pod_config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .expect("pod_cfg sets a security context");
        sc.namespace_options = Some(kelson_testkit::pod_userns(65536 * 60));
        ctr.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(kelson_testkit::pod_userns(65536 * 60)),
                run_as_user: Some(cri::Int64Value { value: 0 }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let t = Instant::now();
    let pod = c
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config),
            runtime_handler: v.handler.into(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let run = t.elapsed();
    let t = Instant::now();
    let id = c
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(ctr),
            sandbox_config: None,
        })
        .await?
        .into_inner()
        .container_id;
    c.runtime
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;
    Ok((pod, id, run, t.elapsed()))
}

async fn teardown(c: &mut Cri, pod: &str, id: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    c.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: id.into(),
            timeout: 0,
        })
        .await?;
    c.runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.into(),
        })
        .await?;
    let d = t.elapsed();
    c.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        })
        .await?;
    c.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        })
        .await?;
    Ok(d)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50);
    let bin = Path::new(env!("CARGO_BIN_EXE_kelsond"));
    anyhow::ensure!(
        bin.with_file_name("kelson-shim").exists(),
        "build the shim first: cargo build --release --workspace --bins"
    );
    let registry = Registry::start(RegistryOptions::default())?;
    Pusher::new(&registry)?
        .image(
            "bench/busybox",
            "v1",
            &TestImages::standard("amd64", false)?,
        )
        .await?;
    let runc = Path::new("/usr/sbin/runc");
    let handlers = if runc.exists() {
        "[runtimes.runc]\ntype = \"oci\"\npath = \"/usr/sbin/runc\"\n"
    } else {
        ""
    };
    let daemon = Daemon::start(bin, handlers)?;
    daemon.hosts(&registry.host, &registry.hosts_toml())?;
    let image = format!("{}/bench/busybox:v1", registry.host);
    let mut c = daemon.cri().await?;
    c.image
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await?;

    let (mut run, mut start, mut stop) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let (pod, id, r, s) = run_one(&mut c, &format!("seq{i}"), &image).await?;
        run.push(r);
        start.push(s);
        stop.push(teardown(&mut c, &pod, &id).await?);
    }
    println!(
        "RunPodSandbox          p50 {:7.2} ms  p99 {:7.2} ms  ({runs} runs)",
        percentile_ms(&mut run, 0.5),
        percentile_ms(&mut run, 0.99)
    );
    println!(
        "create+start container p50 {:7.2} ms  p99 {:7.2} ms",
        percentile_ms(&mut start, 0.5),
        percentile_ms(&mut start, 0.99)
    );
    println!(
        "stop+remove container  p50 {:7.2} ms  p99 {:7.2} ms",
        percentile_ms(&mut stop, 0.5),
        percentile_ms(&mut stop, 0.99)
    );

    let t = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let mut c = c.clone();
            let image = image.clone();
            tokio::spawn(async move { run_one(&mut c, &format!("par{i}"), &image).await })
        })
        .collect();
    let mut started = Vec::new();
    for t in tasks {
        let (pod, id, _, _) = t.await??;
        started.push((pod, id));
    }
    println!(
        "20 pods x 1 container, concurrently: {:.0} ms total",
        t.elapsed().as_secs_f64() * 1000.0
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut uss = Vec::new();
    let mut pss = Vec::new();
    for (_, id) in &started {
        if let Some(pid) = std::fs::read_to_string(
            daemon
                .state
                .join("containers")
                .join(id)
                .join("shim/shim.pid"),
        )
        .ok()
        .and_then(|s| s.trim().parse().ok())
        {
            let (u, p) = uss_pss_kib(pid);
            uss.push(u);
            pss.push(p);
        }
    }
    uss.sort();
    pss.sort();
    if !uss.is_empty() {
        println!(
            "shim memory per container: USS median {} KiB (min {}, max {}), PSS median {} KiB",
            uss[uss.len() / 2],
            uss[0],
            uss[uss.len() - 1],
            pss[pss.len() / 2]
        );
    }
    if let Some(pid) = daemon.pid() {
        println!("kelsond RSS with 20 containers: {} KiB", rss_kib(pid));
    }
    // ExecSync: round trip, and the shim's memory before and after 100 probes.
    if let Some((_, id)) = started.first() {
        let shim_pid: Option<u32> = std::fs::read_to_string(
            daemon
                .state
                .join("containers")
                .join(id)
                .join("shim/shim.pid"),
        )
        .ok()
        .and_then(|s| s.trim().parse().ok());
        let before = shim_pid.map(|p| uss_pss_kib(p).0).unwrap_or(0);
        let mut rtt = Vec::new();
        for _ in 0..100 {
            let t = Instant::now();
            c.runtime
                .exec_sync(cri::ExecSyncRequest {
                    container_id: id.clone(),
                    cmd: vec!["/bin/true".into()],
                    timeout: 10,
                })
                .await?;
            rtt.push(t.elapsed());
        }
        let after = shim_pid.map(|p| uss_pss_kib(p).0).unwrap_or(0);
        println!(
            "ExecSync round trip    p50 {:7.2} ms  p99 {:7.2} ms (100 runs); shim USS {before} KiB before, {after} KiB after",
            percentile_ms(&mut rtt, 0.5),
            percentile_ms(&mut rtt, 0.99)
        );
    }
    for (pod, id) in started {
        teardown(&mut c, &pod, &id).await?;
    }

    // Variants, round-robin so each sees the same machine: RunPodSandbox and create+start.
    let variants: Vec<Variant> = VARIANTS
        .into_iter()
        .filter(|v| v.handler.is_empty() || runc.exists())
        .collect();
    let mut times: Vec<(Vec<Duration>, Vec<Duration>)> = vec![Default::default(); variants.len()];
    for i in 0..runs {
        for (k, v) in variants.iter().enumerate() {
            let (pod, id, r, s) = run_variant(&mut c, &format!("var{k}-{i}"), &image, *v).await?;
            times[k].0.push(r);
            times[k].1.push(s);
            teardown(&mut c, &pod, &id).await?;
        }
    }
    let base = percentile_ms(&mut times[0].1.clone(), 0.5);
    for (v, (run, start)) in variants.iter().zip(times.iter_mut()) {
        let p50 = percentile_ms(start, 0.5);
        println!(
            "{:<24} RunPodSandbox p50 {:6.2} ms; create+start p50 {:6.2} ms p99 {:6.2} ms ({:.2}x native)",
            v.label,
            percentile_ms(run, 0.5),
            p50,
            percentile_ms(start, 0.99),
            p50 / base
        );
    }
    kelson_testkit::cgroups::remove_tree("kelson-bench");
    Ok(())
}
