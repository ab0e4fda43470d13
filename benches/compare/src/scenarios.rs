//! The named scenarios. Each speaks only CRI to the runtime under test (plus /proc for memory
//! and the CRI log file kubelet would read), so the same code measures kelson and containerd.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::future::join_all;
use k8s_cri::v1 as cri;
use kelson_conformance::Cri;

use crate::procs;

/// One runtime under test.
pub struct Target {
    /// "kelson" or "containerd": also the prefix of every pod name it gets.
    pub name: String,
    pub cri: Cri,
    /// 0 when unknown; changes when a scenario restarts the daemon.
    pub daemon_pid: std::sync::atomic::AtomicU32,
    /// How this runtime's per-pod processes are recognised in /proc.
    pub procs: procs::Matcher,
    /// The small image containers run (busybox).
    pub image: String,
    /// The image the pull scenario pulls and removes.
    pub big_image: String,
    /// Pod log directories go under here.
    pub log_root: PathBuf,
    /// The CRI socket (to connect again after a restart).
    pub socket: PathBuf,
    serial: AtomicUsize,
}

/// Bytes the log scenario's container writes to stdout.
pub const LOG_BYTES: u64 = 100_000_000;
/// The cgroup parent every benchmark pod goes under (removed at the end).
pub const CGROUP_TOP: &str = "kelson-bench";

impl Target {
    pub fn new(
        name: &str,
        cri: Cri,
        daemon_pid: Option<u32>,
        procs: procs::Matcher,
        image: String,
        big_image: String,
        log_root: PathBuf,
    ) -> Target {
        Target {
            name: name.to_owned(),
            cri,
            daemon_pid: std::sync::atomic::AtomicU32::new(daemon_pid.unwrap_or(0)),
            procs,
            image,
            big_image,
            log_root,
            socket: PathBuf::new(),
            serial: AtomicUsize::new(0),
        }
    }

    /// The CRI socket, for scenarios that connect again (after a restart).
    pub fn with_socket(mut self, socket: PathBuf) -> Target {
        self.socket = socket;
        self
    }

    fn pod_name(&self, what: &str) -> String {
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        format!("{}-{what}-{n}", self.name)
    }

    fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "bench".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.log_root.join(name).to_string_lossy().into_owned(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("/{CGROUP_TOP}/{name}"),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: cri::NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            labels: HashMap::from([("bench".to_owned(), "kelson".to_owned())]),
            ..Default::default()
        }
    }

    fn container_config(&self, command: Vec<String>) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "c".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command,
            log_path: "c/0.log".into(),
            ..Default::default()
        }
    }

    /// RunPodSandbox; returns (pod id, config, time taken).
    async fn run_pod(
        &self,
        what: &str,
    ) -> anyhow::Result<(String, cri::PodSandboxConfig, Duration)> {
        let name = self.pod_name(what);
        let config = self.pod_config(&name);
        // kubelet creates the pod's log directory and the container's directory in it.
        std::fs::create_dir_all(self.log_root.join(&name).join("c"))?;
        let t = Instant::now();
        let id = self
            .cri
            .runtime
            .clone()
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("{}: RunPodSandbox {name}", self.name))?
            .into_inner()
            .pod_sandbox_id;
        Ok((id, config, t.elapsed()))
    }

    async fn create(
        &self,
        pod: &str,
        config: &cri::PodSandboxConfig,
        command: Vec<String>,
    ) -> anyhow::Result<String> {
        Ok(self
            .cri
            .runtime
            .clone()
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(self.container_config(command)),
                sandbox_config: Some(config.clone()),
            })
            .await
            .with_context(|| format!("{}: CreateContainer", self.name))?
            .into_inner()
            .container_id)
    }

    async fn start(&self, id: &str) -> anyhow::Result<()> {
        self.cri
            .runtime
            .clone()
            .start_container(cri::StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .with_context(|| format!("{}: StartContainer", self.name))?;
        Ok(())
    }

    /// A pod with one `sleep` container: (pod, container, pod start, create+start).
    async fn pod_with_sleeper(
        &self,
        what: &str,
    ) -> anyhow::Result<(String, String, Duration, Duration)> {
        let (pod, config, run) = self.run_pod(what).await?;
        let t = Instant::now();
        let id = self
            .create(&pod, &config, vec!["/bin/sleep".into(), "3600".into()])
            .await?;
        self.start(&id).await?;
        Ok((pod, id, run, t.elapsed()))
    }

    async fn remove_container(&self, id: &str) -> anyhow::Result<()> {
        let mut rt = self.cri.runtime.clone();
        rt.stop_container(cri::StopContainerRequest {
            container_id: id.into(),
            timeout: 0,
        })
        .await
        .with_context(|| format!("{}: StopContainer", self.name))?;
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: id.into(),
        })
        .await
        .with_context(|| format!("{}: RemoveContainer", self.name))?;
        Ok(())
    }

    async fn remove_pod(&self, pod: &str) -> anyhow::Result<()> {
        let mut rt = self.cri.runtime.clone();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        })
        .await
        .with_context(|| format!("{}: StopPodSandbox", self.name))?;
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        })
        .await
        .with_context(|| format!("{}: RemovePodSandbox", self.name))?;
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Pod start, container create+start and container stop+remove, `n` times in sequence.
pub struct Lifecycle {
    pub pod_start: Vec<f64>,
    pub create_start: Vec<f64>,
    pub stop_remove: Vec<f64>,
}

pub async fn lifecycle(t: &Target, n: usize) -> anyhow::Result<Lifecycle> {
    let mut out = Lifecycle {
        pod_start: Vec::new(),
        create_start: Vec::new(),
        stop_remove: Vec::new(),
    };
    for _ in 0..n {
        let (pod, id, run, start) = t.pod_with_sleeper("seq").await?;
        let s = Instant::now();
        t.remove_container(&id).await?;
        out.stop_remove.push(ms(s.elapsed()));
        t.remove_pod(&pod).await?;
        out.pod_start.push(ms(run));
        out.create_start.push(ms(start));
    }
    Ok(out)
}

/// Memory with the pods of a concurrent start running.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    pub daemon_rss_kib: u64,
    /// Per shim process: (USS, PSS).
    pub shims: Vec<(u64, u64)>,
    /// Private memory of every per-pod process the runtime adds (shims, pause), per pod.
    pub per_pod_uss_kib: f64,
}

/// `n` pods with one container each, started concurrently: total time in ms, and memory
/// measured while they all run (when `measure`).
pub async fn concurrent(
    t: &Target,
    n: usize,
    measure: bool,
) -> anyhow::Result<(f64, Option<Memory>)> {
    let started = Instant::now();
    let results = futures_join(t, n).await;
    let total = ms(started.elapsed());
    let mut running = Vec::new();
    let mut first_err = None;
    for r in results {
        match r {
            Ok((pod, id)) => running.push((pod, id)),
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    let memory = if measure && first_err.is_none() {
        // Let start-up allocations settle, as a node would after a burst.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some(measure_memory(t, n))
    } else {
        None
    };
    let teardown: Vec<_> = running
        .iter()
        .map(|(pod, id)| async move {
            t.remove_container(id).await?;
            t.remove_pod(pod).await
        })
        .collect();
    for r in join_all(teardown).await {
        r?;
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok((total, memory))
}

async fn futures_join(t: &Target, n: usize) -> Vec<anyhow::Result<(String, String)>> {
    let starts: Vec<_> = (0..n)
        .map(|_| async move {
            let (pod, id, _, _) = t.pod_with_sleeper("par").await?;
            Ok((pod, id))
        })
        .collect();
    join_all(starts).await
}

fn measure_memory(t: &Target, pods: usize) -> Memory {
    let found = t.procs.find();
    let shims: Vec<(u64, u64)> = found
        .shims
        .iter()
        .map(|p| kelson_testkit::measure::uss_pss_kib(*p))
        .collect();
    let extra: u64 = found
        .others
        .iter()
        .map(|p| kelson_testkit::measure::uss_pss_kib(*p).0)
        .sum();
    let shim_total: u64 = shims.iter().map(|s| s.0).sum();
    Memory {
        daemon_rss_kib: match t.daemon_pid.load(Ordering::Relaxed) {
            0 => 0,
            pid => kelson_testkit::measure::rss_kib(pid),
        },
        shims,
        per_pod_uss_kib: (shim_total + extra) as f64 / pods.max(1) as f64,
    }
}

/// ExecSync of `/bin/true` in a running container, `n` times: round trips in ms.
pub async fn exec_sync(t: &Target, n: usize) -> anyhow::Result<Vec<f64>> {
    let (pod, id, _, _) = t.pod_with_sleeper("exec").await?;
    let mut out = Vec::new();
    let mut result = Ok(());
    for _ in 0..n {
        let s = Instant::now();
        match t
            .cri
            .runtime
            .clone()
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["/bin/true".into()],
                timeout: 10,
            })
            .await
        {
            Ok(r) if r.get_ref().exit_code == 0 => out.push(ms(s.elapsed())),
            Ok(r) => {
                result = Err(anyhow::anyhow!(
                    "{}: ExecSync exited {}",
                    t.name,
                    r.get_ref().exit_code
                ));
                break;
            }
            Err(e) => {
                result = Err(anyhow::anyhow!("{}: ExecSync: {e}", t.name));
                break;
            }
        }
    }
    t.remove_container(&id).await?;
    t.remove_pod(&pod).await?;
    result.map(|_| out)
}

/// Bytes pushed through `cat` in the stream throughput measurement.
pub const STREAM_BYTES: usize = 100_000_000;

/// Exec over the streaming server, as kubectl does it through the API server (SPDY/3.1,
/// `v4.channel.k8s.io`): `n` round trips of `/bin/true` (Exec RPC, upgrade, streams, exit
/// status), then `STREAM_BYTES` through `cat` both ways. Returns (round trips in ms, the
/// transfer in ms).
pub async fn exec_stream(t: &Target, n: usize) -> anyhow::Result<(Vec<f64>, f64)> {
    use kelson_conformance::stream::spdy;
    let (pod, id, _, _) = t.pod_with_sleeper("stream").await?;
    let url = |cmd: &str, stdin: bool| {
        let mut rt = t.cri.runtime.clone();
        let id = id.clone();
        let cmd = cmd.to_owned();
        async move {
            anyhow::Ok(
                rt.exec(cri::ExecRequest {
                    container_id: id,
                    cmd: vec![cmd],
                    tty: false,
                    stdin,
                    stdout: true,
                    stderr: true,
                })
                .await?
                .into_inner()
                .url,
            )
        }
    };
    let result = async {
        let mut trips = Vec::new();
        for _ in 0..n {
            let s = Instant::now();
            let u = url("/bin/true", false).await?;
            let out = spdy::connect(&u, &["v4.channel.k8s.io"], false, true, true)
                .await?
                .collect(Duration::from_secs(30))
                .await?;
            if out.exit_code() != Some(0) {
                bail!(
                    "{}: exec /bin/true: {:?}",
                    t.name,
                    String::from_utf8_lossy(&out.error)
                );
            }
            trips.push(ms(s.elapsed()));
        }
        let data = vec![0x5au8; 64 * 1024];
        let s = Instant::now();
        let u = url("/bin/cat", true).await?;
        let mut sess = spdy::connect(&u, &["v4.channel.k8s.io"], true, true, true).await?;
        let mut w = sess.take_writer().context("writer")?;
        let sender = tokio::spawn(async move {
            let mut left = STREAM_BYTES;
            while left > 0 {
                let n = left.min(data.len());
                w.stdin(&data[..n], false).await?;
                left -= n;
            }
            w.stdin(&[], true).await?;
            anyhow::Ok(w)
        });
        let out = sess.collect(Duration::from_secs(300)).await?;
        let _w = sender.await??;
        if out.stdout.len() != STREAM_BYTES {
            bail!(
                "{}: cat returned {} of {STREAM_BYTES} bytes",
                t.name,
                out.stdout.len()
            );
        }
        anyhow::Ok((trips, ms(s.elapsed())))
    }
    .await;
    t.remove_container(&id).await?;
    t.remove_pod(&pod).await?;
    result
}

/// Counts the bytes a container wrote, from a CRI log file read incrementally: the content of
/// every complete line, plus its newline when the tag is `F` (a `P` line is a split line).
#[derive(Default)]
pub struct LogCounter {
    pending: Vec<u8>,
    pub bytes: u64,
    pub lines: u64,
}

impl LogCounter {
    pub fn feed(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let line = &rest[..nl];
            if self.pending.is_empty() {
                self.count(line)?;
            } else {
                let mut whole = std::mem::take(&mut self.pending);
                whole.extend_from_slice(line);
                self.count(&whole)?;
            }
            rest = &rest[nl + 1..];
        }
        self.pending.extend_from_slice(rest);
        Ok(())
    }

    fn count(&mut self, line: &[u8]) -> anyhow::Result<()> {
        // TIMESTAMP SP STREAM SP TAG SP CONTENT
        let mut fields = line.splitn(4, |&b| b == b' ');
        let (Some(_), Some(stream), Some(tag)) = (fields.next(), fields.next(), fields.next())
        else {
            bail!(
                "malformed CRI log line: {:?}",
                String::from_utf8_lossy(line)
            );
        };
        if stream != b"stdout" && stream != b"stderr" {
            bail!("unknown stream {:?}", String::from_utf8_lossy(stream));
        }
        let content = fields.next().unwrap_or_default();
        self.bytes += content.len() as u64 + u64::from(tag == b"F");
        self.lines += 1;
        Ok(())
    }
}

/// A container writes `LOG_BYTES` to stdout (100-byte lines); the time from StartContainer
/// until the CRI log file holds every byte, in ms.
pub async fn log_throughput(t: &Target) -> anyhow::Result<f64> {
    use std::io::Read;
    let (pod, config, _) = t.run_pod("log").await?;
    let script = format!(
        "/bin/busybox yes {} | /bin/head -c {LOG_BYTES}",
        "x".repeat(99)
    );
    let id = t
        .create(&pod, &config, vec!["/bin/sh".into(), "-c".into(), script])
        .await?;
    let path = PathBuf::from(&config.log_directory).join("c/0.log");
    let started = Instant::now();
    t.start(&id).await?;
    let mut counter = LogCounter::default();
    let mut file = None;
    let mut buf = vec![0u8; 1 << 20];
    let deadline = started + Duration::from_secs(300);
    while counter.bytes < LOG_BYTES {
        if Instant::now() > deadline {
            bail!(
                "{}: log holds {} of {LOG_BYTES} bytes after 300 s",
                t.name,
                counter.bytes
            );
        }
        if file.is_none() {
            file = std::fs::File::open(&path).ok();
        }
        let n = match file.as_mut() {
            Some(f) => f.read(&mut buf)?,
            None => 0,
        };
        if n == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        counter.feed(&buf[..n])?;
    }
    let took = ms(started.elapsed());
    t.remove_container(&id).await?;
    t.remove_pod(&pod).await?;
    Ok(took)
}

/// Pull the big image and remove it again (by id, so its layers go and the next pull is cold):
/// the pull's time in ms.
pub async fn pull(t: &Target) -> anyhow::Result<f64> {
    let mut img = t.cri.image.clone();
    let s = Instant::now();
    let image_ref = img
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: t.big_image.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .with_context(|| format!("{}: PullImage {}", t.name, t.big_image))?
        .into_inner()
        .image_ref;
    let took = ms(s.elapsed());
    img.remove_image(cri::RemoveImageRequest {
        image: Some(cri::ImageSpec {
            image: image_ref,
            ..Default::default()
        }),
    })
    .await
    .with_context(|| format!("{}: RemoveImage", t.name))?;
    Ok(took)
}

/// Pull the small image the scenarios run (once, before timing anything).
pub async fn prepare(t: &Target) -> anyhow::Result<()> {
    kelson_conformance::suite::pull(&t.cri, &t.image)
        .await
        .with_context(|| format!("{}: pulling {}", t.name, t.image))?;
    Ok(())
}

/// The kernel's price for moving a process into a fresh cgroup (ms, `n` samples): every
/// container start pays it once per process placed (kelson: the container; containerd: pause and
/// container), whatever the runtime. On cgroup v1 it waits for an RCU grace period.
pub fn cgroup_migration(n: usize) -> anyhow::Result<Vec<f64>> {
    let base = if std::path::Path::new("/sys/fs/cgroup/freezer").is_dir() {
        PathBuf::from("/sys/fs/cgroup/freezer")
    } else {
        PathBuf::from("/sys/fs/cgroup")
    };
    let top = base.join(CGROUP_TOP).join("migration-baseline");
    std::fs::create_dir_all(&top)?;
    let mut out = Vec::new();
    for i in 0..n {
        let dir = top.join(i.to_string());
        std::fs::create_dir_all(&dir)?;
        let mut child = std::process::Command::new("sleep").arg("30").spawn()?;
        let t = Instant::now();
        let moved = std::fs::write(dir.join("cgroup.procs"), child.id().to_string());
        out.push(ms(t.elapsed()));
        let _ = child.kill();
        let _ = child.wait();
        moved.with_context(|| format!("moving a process into {}", dir.display()))?;
        std::thread::sleep(Duration::from_millis(20));
        let _ = std::fs::remove_dir(&dir);
    }
    let _ = std::fs::remove_dir(&top);
    Ok(out)
}

/// What the scale scenario measured.
pub struct Scale {
    /// ListContainerStats round trips with every container running, ms.
    pub container_stats: Vec<f64>,
    /// ListPodSandboxStats round trips, ms (empty when the runtime does not implement it).
    pub pod_stats: Vec<f64>,
    /// From starting the stopped daemon again until it reports ready and lists every
    /// container running, ms (None without a way to restart the daemon).
    pub restart_ready: Option<f64>,
}

/// Stops (`false`) or starts (`true`) the target's daemon; returns its pid afterwards.
pub type Restart<'a> = &'a mut dyn FnMut(bool) -> anyhow::Result<u32>;

/// `n` pods with one running container each (started 10 at a time): stats latency over
/// `polls` polls, then restart-to-ready with all of them running.
pub async fn scale(
    t: &Target,
    n: usize,
    polls: usize,
    restart: Option<Restart<'_>>,
) -> anyhow::Result<Scale> {
    let mut running = Vec::new();
    let mut result = async {
        for _ in 0..n.div_ceil(10) {
            let batch: Vec<_> = (0..10.min(n - running.len()))
                .map(|_| t.pod_with_sleeper("scale"))
                .collect();
            for r in join_all(batch).await {
                let (pod, id, _, _) = r?;
                running.push((pod, id));
            }
        }
        let mut out = Scale {
            container_stats: Vec::new(),
            pod_stats: Vec::new(),
            restart_ready: None,
        };
        let mut rt = t.cri.runtime.clone();
        for _ in 0..polls {
            let s = Instant::now();
            let got = rt
                .list_container_stats(cri::ListContainerStatsRequest { filter: None })
                .await
                .with_context(|| format!("{}: ListContainerStats", t.name))?
                .into_inner()
                .stats
                .len();
            out.container_stats.push(ms(s.elapsed()));
            if got < n {
                bail!("{}: ListContainerStats gave {got} of {n}", t.name);
            }
            let s = Instant::now();
            if rt
                .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
                .await
                .is_ok()
            {
                out.pod_stats.push(ms(s.elapsed()));
            }
        }
        if let Some(restart) = restart {
            restart(false)?;
            let s = Instant::now();
            let pid = restart(true)?;
            let socket_ms = ms(s.elapsed());
            t.daemon_pid
                .store(pid, std::sync::atomic::Ordering::Relaxed);
            let c = kelson_conformance::connect(&t.socket).await?;
            let mut rt = c.runtime.clone();
            loop {
                let ready = rt
                    .status(cri::StatusRequest { verbose: false })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().status)
                    .is_some_and(|st| st.conditions.iter().all(|c| c.status));
                let listed = rt
                    .list_containers(cri::ListContainersRequest {
                        filter: Some(cri::ContainerFilter {
                            state: Some(cri::ContainerStateValue {
                                state: cri::ContainerState::ContainerRunning as i32,
                            }),
                            ..Default::default()
                        }),
                    })
                    .await
                    .map(|r| r.into_inner().containers.len())
                    .unwrap_or(0);
                if ready && listed >= n {
                    break;
                }
                if s.elapsed() > Duration::from_secs(120) {
                    bail!("{}: not ready with {n} containers 2 minutes after restart ({listed} listed)", t.name);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            out.restart_ready = Some(ms(s.elapsed()));
            eprintln!(
                "{}: restart: socket accepts after {socket_ms:.1} ms, ready with {n} containers after {:.1} ms",
                t.name,
                ms(s.elapsed())
            );
        }
        anyhow::Ok(out)
    }
    .await;
    // Tear down through a fresh connection (the old one may have died with the daemon).
    let c = kelson_conformance::connect(&t.socket).await?;
    let fresh = Target::new(
        &t.name,
        c,
        None,
        t.procs.clone(),
        t.image.clone(),
        t.big_image.clone(),
        t.log_root.clone(),
    )
    .with_socket(t.socket.clone());
    for chunk in running.chunks(10) {
        let teardown: Vec<_> = chunk
            .iter()
            .map(|(pod, id)| {
                let fresh = &fresh;
                async move {
                    fresh.remove_container(id).await?;
                    fresh.remove_pod(pod).await
                }
            })
            .collect();
        for r in join_all(teardown).await {
            if let Err(e) = r
                && result.is_ok()
            {
                result = Err(e);
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_counter_counts_content_and_full_line_newlines() {
        let mut c = LogCounter::default();
        let log = b"2026-11-22T10:00:00.000000000Z stdout F hello\n\
                    2026-11-22T10:00:00.000000001Z stdout P par\n\
                    2026-11-22T10:00:00.000000002Z stdout F tial\n\
                    2026-11-22T10:00:00.000000003Z stderr F \n";
        // Fed in awkward pieces: the counter must join lines split across reads.
        for chunk in log.chunks(7) {
            c.feed(chunk).unwrap();
        }
        assert_eq!(c.bytes, "hello\npartial\n\n".len() as u64);
        assert_eq!(c.lines, 4);
    }

    #[test]
    fn log_counter_rejects_garbage() {
        let mut c = LogCounter::default();
        assert!(c.feed(b"nonsense\n").is_err());
        assert!(c.feed(b"ts weird F x\n").is_err());
    }
}
