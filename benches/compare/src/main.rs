//! kelson-bench: the CRI benchmark driver.
//!
//! - `kelson-bench run --endpoint SOCK --image REF --big-image REF …` runs the named scenarios
//!   against any CRI runtime and writes its figures as JSON.
//! - `kelson-bench compare` (run by `benches/compare.sh`, inside a network namespace of its
//!   own) starts a registry with the project's images, kelsond and containerd side by side,
//!   runs the conformance suite and every scenario against both, alternating, and writes
//!   `docs/bench/results.json`, the SVG charts and the table in `docs/benchmarks.md`.
//! - `kelson-bench report` regenerates the table and charts from a results file.

mod containerd;
mod procs;
mod report;
mod scenarios;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use k8s_cri::v1 as cri;
use kelson_testkit::{Daemon, DaemonOptions, Pusher, Registry, RegistryOptions, TestImages};

use report::{KELSON, REFERENCE, Results};
use scenarios::Target;

#[derive(Parser)]
#[command(
    name = "kelson-bench",
    about = "CRI benchmarks: any runtime, or kelson beside containerd"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum, Debug)]
enum Scenario {
    /// Pod start, container create+start, stop+remove (10 in sequence per round).
    Lifecycle,
    /// 20 pods concurrently, with daemon and shim memory measured while they run.
    Pods20,
    /// 50 pods concurrently.
    Pods50,
    /// 20 ExecSync round trips per round.
    Exec,
    /// 100 MB to stdout until the CRI log holds it all.
    Log,
    /// Pull + unpack of the ~160 MB image, then remove it.
    Pull,
    /// 100 pods running: ListContainerStats / ListPodSandboxStats latency, and the daemon's
    /// restart-to-ready time (when the driver can restart it).
    Scale100,
    /// Exec over the streaming server (SPDY): round trips, and 100 MB through `cat`.
    Stream,
}

const ALL: [Scenario; 8] = [
    Scenario::Lifecycle,
    Scenario::Pods20,
    Scenario::Pods50,
    Scenario::Exec,
    Scenario::Log,
    Scenario::Pull,
    Scenario::Scale100,
    Scenario::Stream,
];

#[derive(clap::Args, Clone)]
struct Common {
    /// Rounds; every figure is a median (min–max) over all of them.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Scenarios to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the scenarios against one CRI endpoint.
    Run {
        #[arg(long)]
        endpoint: PathBuf,
        /// A name for the runtime in the results.
        #[arg(long, default_value = "runtime")]
        name: String,
        /// Image with busybox at /bin (the project's test image), already pullable.
        #[arg(long)]
        image: String,
        /// Image for the pull scenario.
        #[arg(long)]
        big_image: String,
        /// The daemon's PID, for its RSS.
        #[arg(long)]
        daemon_pid: Option<u32>,
        /// `comm` of the runtime's shims, and a string in their command lines.
        #[arg(long, default_value = "kelson-shim")]
        shim_comm: String,
        #[arg(long, default_value = "")]
        shim_marker: String,
        #[arg(long, default_value = "/tmp/kelson-bench-logs")]
        log_root: PathBuf,
        #[arg(long)]
        json: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// kelson and containerd side by side (run under `unshare --net`; see benches/compare.sh).
    Compare {
        /// kelsond to run (kelson-shim, kelson-shim-engine and kelson-init next to it).
        #[arg(long)]
        kelsond: Option<PathBuf>,
        /// Where results.json and the charts go; docs/benchmarks.md is next to it.
        #[arg(long, default_value = "docs/bench")]
        out: PathBuf,
        #[arg(long)]
        skip_conformance: bool,
        /// Merge into the existing results.json: the scenarios run replace theirs, the
        /// others stay (each merged figure names its run).
        #[arg(long)]
        merge: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Regenerate docs/benchmarks.md's table and the charts from a results file.
    Report {
        #[arg(long, default_value = "docs/bench")]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Run {
            endpoint,
            name,
            image,
            big_image,
            daemon_pid,
            shim_comm,
            shim_marker,
            log_root,
            json,
            common,
        } => rt.block_on(async {
            let cri = kelson_conformance::connect(&endpoint).await?;
            let target = Target::new(
                &name,
                cri,
                daemon_pid,
                procs::Matcher {
                    shim_comm,
                    marker: shim_marker,
                    helper_comm: None,
                },
                image,
                big_image,
                log_root,
            )
            .with_socket(endpoint.clone());
            scenarios::prepare(&target).await?;
            let mut results = new_results(common.runs);
            results
                .runtimes
                .insert(name.clone(), version(&target).await);
            // No way to restart an arbitrary runtime's daemon from here.
            let mut no_restart = |_: &str, _: Ctl| -> anyhow::Result<Option<u32>> { Ok(None) };
            for _ in 0..common.runs {
                round(
                    &mut results,
                    &[&target],
                    &scenarios_of(&common),
                    &mut no_restart,
                )
                .await?;
            }
            std::fs::write(&json, serde_json::to_vec_pretty(&results)?)?;
            for m in &results.metrics {
                if let Some(s) = m.summary(&name) {
                    println!(
                        "{:14} median {:10.2} {} (min {:.2}, max {:.2}, n {})",
                        m.id, s.median, m.unit, s.min, s.max, s.n
                    );
                }
            }
            Ok(())
        }),
        Cmd::Compare {
            kelsond,
            out,
            skip_conformance,
            merge,
            common,
        } => rt.block_on(compare(kelsond, &out, skip_conformance, merge, &common)),
        Cmd::Report { out } => write_report(&load(&out)?, &out),
    }
}

fn scenarios_of(c: &Common) -> Vec<Scenario> {
    if c.scenarios.is_empty() {
        ALL.to_vec()
    } else {
        c.scenarios.clone()
    }
}

fn new_results(runs: usize) -> Results {
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    Results {
        date,
        machine: format!("{cores} cores, Linux {}", kernel.trim()),
        runs,
        ..Default::default()
    }
}

async fn version(t: &Target) -> String {
    match t
        .cri
        .runtime
        .clone()
        .version(cri::VersionRequest::default())
        .await
    {
        Ok(v) => {
            let v = v.into_inner();
            format!(
                "{} {} (CRI {})",
                v.runtime_name, v.runtime_version, v.runtime_api_version
            )
        }
        Err(e) => format!("unknown ({})", e.message()),
    }
}

const THIRD: Option<f64> = Some(1.0 / 3.0);

/// What the driver can do to a target's daemon.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ctl {
    /// Ask whether it can stop and start it (answers without doing anything).
    Can,
    Stop,
    Start,
}

/// Stop or start the daemon of the named target: `Ok(None)` when the driver cannot, else
/// `Some(pid)` of the daemon afterwards (0 when stopped or unknown).
type RestartFn<'a> = dyn FnMut(&str, Ctl) -> anyhow::Result<Option<u32>> + 'a;

/// One round: every scenario, on every target in turn.
async fn round(
    r: &mut Results,
    targets: &[&Target],
    which: &[Scenario],
    restart: &mut RestartFn<'_>,
) -> anyhow::Result<()> {
    for s in which {
        for t in targets {
            let n = t.name.as_str();
            match s {
                Scenario::Lifecycle => {
                    let l = scenarios::lifecycle(t, 10).await?;
                    r.add(
                        "pod_start",
                        "Pod start with network (RunPodSandbox; bridge, host-local, portmap)",
                        "ms",
                        THIRD,
                        n,
                        &l.pod_start,
                    );
                    r.add(
                        "create_start",
                        "Container create + start",
                        "ms",
                        THIRD,
                        n,
                        &l.create_start,
                    );
                    r.add(
                        "stop_remove",
                        "Container stop + remove",
                        "ms",
                        None,
                        n,
                        &l.stop_remove,
                    );
                }
                Scenario::Pods20 => {
                    let (total, mem) = scenarios::concurrent(t, 20, true).await?;
                    r.add(
                        "pods_20",
                        "20 pods × 1 container, concurrently",
                        "ms",
                        THIRD,
                        n,
                        &[total],
                    );
                    if let Some(m) = mem {
                        r.add(
                            "daemon_rss",
                            "Daemon RSS with 20 pods running",
                            "KiB",
                            Some(0.25),
                            n,
                            &[m.daemon_rss_kib as f64],
                        );
                        let uss: Vec<f64> = m.shims.iter().map(|s| s.0 as f64).collect();
                        let pss: Vec<f64> = m.shims.iter().map(|s| s.1 as f64).collect();
                        r.add(
                            "shim_uss",
                            "Shim private memory (USS), per shim",
                            "KiB",
                            Some(0.1),
                            n,
                            &uss,
                        );
                        r.add("shim_pss", "Shim PSS, per shim", "KiB", None, n, &pss);
                        r.add(
                            "pod_overhead",
                            "Runtime's per-pod processes (shims, pause), USS per pod",
                            "KiB",
                            Some(0.1),
                            n,
                            &[m.per_pod_uss_kib],
                        );
                    }
                }
                Scenario::Pods50 => {
                    let (total, _) = scenarios::concurrent(t, 50, false).await?;
                    r.add(
                        "pods_50",
                        "50 pods × 1 container, concurrently",
                        "ms",
                        THIRD,
                        n,
                        &[total],
                    );
                }
                Scenario::Exec => {
                    let v = scenarios::exec_sync(t, 20).await?;
                    r.add(
                        "exec_sync",
                        "ExecSync round trip (/bin/true)",
                        "ms",
                        None,
                        n,
                        &v,
                    );
                }
                Scenario::Log => {
                    let v = scenarios::log_throughput(t).await?;
                    r.add(
                        "log_100mb",
                        "100 MB to stdout, until the CRI log file holds it all",
                        "ms",
                        None,
                        n,
                        &[v],
                    );
                }
                Scenario::Scale100 => {
                    let can = restart(n, Ctl::Can).ok().flatten().is_some();
                    let mut hook = |start: bool| -> anyhow::Result<u32> {
                        let ctl = if start { Ctl::Start } else { Ctl::Stop };
                        restart(n, ctl)?.ok_or_else(|| anyhow::anyhow!("cannot restart {n}"))
                    };
                    let s = scenarios::scale(
                        t,
                        100,
                        10,
                        if can {
                            Some(&mut hook as scenarios::Restart<'_>)
                        } else {
                            None
                        },
                    )
                    .await?;
                    r.add(
                        "stats_100",
                        "ListContainerStats, 100 containers running",
                        "ms",
                        None,
                        n,
                        &s.container_stats,
                    );
                    if !s.pod_stats.is_empty() {
                        r.add(
                            "pod_stats_100",
                            "ListPodSandboxStats, 100 pods running",
                            "ms",
                            None,
                            n,
                            &s.pod_stats,
                        );
                    }
                    if let Some(v) = s.restart_ready {
                        r.add(
                            "restart_100",
                            "Daemon restart to ready, 100 containers running",
                            "ms",
                            None,
                            n,
                            &[v],
                        );
                    }
                }
                Scenario::Stream => {
                    let (trips, transfer) = scenarios::exec_stream(t, 20).await?;
                    r.add(
                        "exec_stream",
                        "Exec round trip over SPDY (/bin/true: Exec, upgrade, streams, exit)",
                        "ms",
                        None,
                        n,
                        &trips,
                    );
                    r.add(
                        "exec_stream_100mb",
                        "Exec stream: 100 MB through cat, both ways (SPDY)",
                        "ms",
                        None,
                        n,
                        &[transfer],
                    );
                }
                Scenario::Pull => {
                    let v = scenarios::pull(t).await?;
                    r.add(
                        "pull_160mb",
                        "Pull + unpack, 161 MB in 4 layers",
                        "ms",
                        Some(0.5),
                        n,
                        &[v],
                    );
                }
            }
            eprintln!("{n}: {s:?} done");
        }
    }
    Ok(())
}

/// The bridge network each runtime's pods get: same plugins, own bridge, subnet and IPAM store.
fn conflist(name: &str, bridge: &str, subnet: &str, ipam_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": format!("bench-{name}"),
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "dataDir": ipam_dir.join(name),
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

/// True in a fresh network namespace: no interface but loopback (read from /proc/self/net,
/// which follows the caller's namespace; another process's namespace link may be unreadable).
fn own_netns() -> bool {
    std::fs::read_to_string("/proc/self/net/dev").is_ok_and(|dev| {
        dev.lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .all(|name| name.trim() == "lo")
    })
}

async fn compare(
    kelsond: Option<PathBuf>,
    out: &Path,
    skip_conformance: bool,
    merge: bool,
    common: &Common,
) -> anyhow::Result<()> {
    if !own_netns() {
        bail!(
            "kelson-bench compare creates bridges and pod networks: run it in a network namespace of its own (benches/compare.sh does)"
        );
    }
    let kelsond = match kelsond {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("kelsond"),
    };
    let init = kelsond.with_file_name("kelson-init");
    let work = tempfile::Builder::new().prefix("kelson-bench-").tempdir()?;

    let registry = Registry::start(RegistryOptions::default())?;
    let pusher = Pusher::new(&registry)?;
    pusher
        .image(
            "bench/busybox",
            "v1",
            &TestImages::standard("amd64", false)?,
        )
        .await?;
    if scenarios_of(common).contains(&Scenario::Pull) {
        pusher.image("bench/big", "v1", &TestImages::big()?).await?;
    }
    pusher
        .image("bench/pause", "v1", &TestImages::pause(&init)?)
        .await?;
    let image = format!("{}/bench/busybox:v1", registry.host);
    let big = format!("{}/bench/big:v1", registry.host);
    let pause = format!("{}/bench/pause:v1", registry.host);

    let ipam = work.path().join("ipam");
    let mut daemon = Daemon::start_opts(
        &kelsond,
        "",
        DaemonOptions {
            conflist: Some(conflist(KELSON, "kb0", "10.88.0.0/16", &ipam)),
            log_level: Some("info".into()),
            ..Default::default()
        },
    )?;
    daemon.hosts(&registry.host, &registry.hosts_toml())?;
    let mut ctrd =
        containerd::Containerd::start(&pause, &conflist(REFERENCE, "cb0", "10.89.0.0/16", &ipam))?;
    ctrd.plain_http_registry(&registry.host)?;

    let kelson = Target::new(
        KELSON,
        daemon.cri().await?,
        daemon.pid(),
        procs::Matcher {
            shim_comm: "kelson-shim".into(),
            marker: daemon.state.to_string_lossy().into_owned(),
            helper_comm: None,
        },
        image.clone(),
        big.clone(),
        work.path().join("logs/kelson"),
    )
    .with_socket(daemon.socket.clone());
    let reference = Target::new(
        REFERENCE,
        kelson_conformance::connect(&ctrd.socket).await?,
        ctrd.pid(),
        procs::Matcher {
            shim_comm: "containerd-shim".into(),
            marker: ctrd.socket.to_string_lossy().into_owned(),
            helper_comm: Some("pause".into()),
        },
        image.clone(),
        big.clone(),
        work.path().join("logs/containerd"),
    )
    .with_socket(ctrd.socket.clone());
    let result = async {
        scenarios::prepare(&kelson).await?;
        scenarios::prepare(&reference).await?;
        // kubelet pulls the sandbox image before it starts pods; so do we.
        kelson_conformance::suite::pull(&reference.cri, &pause).await?;

        let mut results = new_results(common.runs);
        for t in [&kelson, &reference] {
            results.runtimes.insert(t.name.clone(), version(t).await);
        }
        if !skip_conformance {
            for t in [&kelson, &reference] {
                let logs = work.path().join(format!("conformance-{}", t.name));
                std::fs::create_dir_all(&logs)?;
                let rep = kelson_conformance::suite::run(
                    &t.cri,
                    &kelson_conformance::suite::Options {
                        image: image.clone(),
                        missing_image: format!("{}/bench/nothing-here:v1", registry.host),
                        log_dir: logs,
                    },
                    None,
                )
                .await;
                eprintln!("conformance on {}: {}", t.name, rep.summary());
                results.conformance.push(report::Conformance {
                    runtime: t.name.clone(),
                    passed: rep.passed.iter().map(|s| s.to_string()).collect(),
                    failed: rep
                        .failed
                        .iter()
                        .map(|(n, e)| (n.to_string(), e.clone()))
                        .collect(),
                });
            }
        }
        // Warm-up, untimed: first pod of each runtime pays one-off costs (page cache, plugins).
        let _ = scenarios::lifecycle(&kelson, 2).await?;
        let _ = scenarios::lifecycle(&reference, 2).await?;
        results.baseline.insert(
            "moving a process into a new cgroup".into(),
            scenarios::cgroup_migration(20)?,
        );
        let which = scenarios_of(common);
        let (daemon, ctrd) = (&mut daemon, &mut ctrd);
        let mut restart = |name: &str, ctl: Ctl| -> anyhow::Result<Option<u32>> {
            match (name == KELSON, ctl) {
                (_, Ctl::Can) => {}
                (true, Ctl::Stop) => {
                    daemon.stop()?;
                }
                (true, Ctl::Start) => daemon.restart()?,
                (false, Ctl::Stop) => ctrd.stop()?,
                (false, Ctl::Start) => ctrd.start_again()?,
            }
            Ok(Some(
                if name == KELSON {
                    daemon.pid()
                } else {
                    ctrd.pid()
                }
                .unwrap_or(0),
            ))
        };
        for i in 0..common.runs {
            let order: [&Target; 2] = if i % 2 == 0 {
                [&kelson, &reference]
            } else {
                [&reference, &kelson]
            };
            round(&mut results, &order, &which, &mut restart).await?;
            eprintln!("round {} of {} done", i + 1, common.runs);
        }
        for l in daemon
            .log()
            .lines()
            .filter(|l| l.contains("state recovered"))
        {
            eprintln!("kelsond: {l}");
        }
        anyhow::Ok(results)
    }
    .await;
    let results = match result {
        Ok(r) => r,
        Err(e) => {
            let tail = |s: String| s.lines().rev().take(30).collect::<Vec<_>>().join("\n");
            bail!(
                "{e:#}\n--- kelsond log (last lines, newest first) ---\n{}\n--- containerd log ---\n{}",
                tail(daemon.log()),
                tail(ctrd.log())
            );
        }
    };
    drop(ctrd);
    drop(daemon);
    kelson_testkit::cgroups::remove_tree(scenarios::CGROUP_TOP);
    std::fs::create_dir_all(out)?;
    let results = if merge {
        load(out)?.merge(results)
    } else {
        results
    };
    std::fs::write(
        out.join("results.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    write_report(&results, out)
}

fn load(out: &Path) -> anyhow::Result<Results> {
    let p = out.join("results.json");
    serde_json::from_slice(&std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
        .with_context(|| format!("parsing {}", p.display()))
}

fn write_report(results: &Results, out: &Path) -> anyhow::Result<()> {
    report::charts(results, out)?;
    let md = out.parent().unwrap_or(Path::new(".")).join("benchmarks.md");
    let doc = std::fs::read_to_string(&md).unwrap_or_else(|_| "# Benchmarks\n".into());
    std::fs::write(&md, report::splice(&doc, &report::markdown(results)))?;
    print!("{}", report::markdown(results));
    Ok(())
}
