//! The streaming server as kubectl reaches it: `Exec` returns a URL, a WebSocket client speaks
//! the channel protocols to it. Round trips of stdin/stdout/stderr, exit codes as kubectl reads
//! them, large transfers with checksums, single-use and expiring URLs, and a client that
//! vanishes mid-session leaving no process behind.

mod common;

use std::time::{Duration, Instant};

use anyhow::Context;

use k8s_cri::v1 as cri;
use kelson_conformance::stream;
use kelson_testkit::cri as req;
use kelson_testkit::daemon::Cri;
use sha2::{Digest, Sha256};

const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";
const V4B64: &str = "v4.base64.channel.k8s.io";

async fn running(c: &mut Cri, image: &str, top: &str) -> anyhow::Result<(String, String)> {
    let logs = tempfile::tempdir()?.keep();
    let cfg = common::pod_config("stream", "default", &format!("/{top}/stream"), &logs);
    let pod = common::run_pod(c, &cfg).await?;
    let ctr = common::container_config("main", image, &["/bin/sleep", "3600"]);
    let id = common::create_start(c, &pod, &cfg, ctr).await?;
    Ok((pod, id))
}

async fn exec_url(
    c: &mut Cri,
    id: &str,
    cmd: &[&str],
    stdin: bool,
) -> Result<String, tonic::Status> {
    Ok(c.runtime
        .exec(cri::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: false,
            stdin,
            stdout: true,
            stderr: true,
        })
        .await?
        .into_inner()
        .url)
}

/// Processes whose command line contains `needle` (the exec'd command, or its engine).
fn procs_with(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(needle).then_some(pid)
        })
        .collect()
}

/// kelsond with the standard image and a running container (`sleep`) in a pod of the test's
/// cgroup tree `kelson-stest-<test>-<pid>`.
struct Running {
    e: common::Env,
    image: String,
    c: Cri,
    top: String,
    pod: String,
    id: String,
}

impl Running {
    async fn start(test: &str) -> anyhow::Result<Running> {
        let (e, image) = common::env_standard().await?;
        let mut c = e.daemon.cri().await?;
        let top = format!("kelson-stest-{test}-{}", std::process::id());
        let (pod, id) = running(&mut c, &image, &top).await?;
        Ok(Running {
            e,
            image,
            c,
            top,
            pod,
            id,
        })
    }

    async fn exec_url(&mut self, cmd: &[&str], stdin: bool) -> Result<String, tonic::Status> {
        exec_url(&mut self.c, &self.id, cmd, stdin).await
    }

    async fn remove(mut self) -> anyhow::Result<()> {
        common::remove_pod(&mut self.c, &self.pod, &self.top).await
    }
}

/// Exec requests that cannot work (no command, no stream, a terminal with stderr, an unknown
/// container) are refused by name before any URL is handed out.
#[tokio::test(flavor = "multi_thread")]
async fn exec_requests_that_cannot_work_are_refused_before_a_url() -> anyhow::Result<()> {
    let mut r = Running::start("refused").await?;
    let id = r.id.clone();
    for (req, want) in [
        (
            cri::ExecRequest {
                container_id: id.clone(),
                cmd: vec![],
                stdout: true,
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
        ),
        (
            cri::ExecRequest {
                container_id: id.clone(),
                cmd: vec!["/bin/true".into()],
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
        ),
        (
            cri::ExecRequest {
                container_id: id.clone(),
                cmd: vec!["/bin/true".into()],
                tty: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
        ),
        (
            cri::ExecRequest {
                container_id: "0".repeat(64),
                cmd: vec!["/bin/true".into()],
                stdout: true,
                ..Default::default()
            },
            tonic::Code::NotFound,
        ),
    ] {
        let err = r.c.runtime.exec(req).await.expect_err("refused");
        assert_eq!(err.code(), want, "{err:?}");
    }
    r.remove().await
}

/// v5 over WebSocket: stdin → the command → stdout, stderr apart, the exit code on the error
/// channel as kubectl reads it; the URL was single-use and a forged one is refused; v4 with
/// base64 framing, where success reads as exit code 0.
#[tokio::test(flavor = "multi_thread")]
async fn exec_over_websocket_round_trips_streams_and_exit_codes() -> anyhow::Result<()> {
    let mut r = Running::start("ws").await?;
    let url = r
        .exec_url(&["/bin/sh", "-c", "cat; echo oops >&2; exit 3"], true)
        .await?;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let mut s = stream::connect(&url, &[V5, V4]).await?;
    assert_eq!(s.protocol, V5);
    s.send(stream::STDIN, b"hello ").await?;
    s.send(stream::STDIN, b"kelson\n").await?;
    s.close_stdin().await?;
    let out = s.collect(Duration::from_secs(30)).await?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello kelson\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert_eq!(
        out.exit_code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.error)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.error)?;
    assert_eq!(status["reason"], "NonZeroExitCode");

    // The URL was single-use.
    let err = stream::connect(&url, &[V5])
        .await
        .err()
        .expect("used URL refused");
    assert!(err.to_string().contains("404"), "{err}");
    // A forged one too.
    let forged = format!(
        "{}/exec/{}",
        url.rsplitn(3, '/').nth(2).unwrap(),
        "ab".repeat(32)
    );
    let err = stream::connect(&forged, &[V5])
        .await
        .err()
        .expect("forged URL refused");
    assert!(err.to_string().contains("404"), "{err}");

    // v4 with base64 framing.
    let url = r.exec_url(&["/bin/echo", "-n", "b64 works"], false).await?;
    let s = stream::connect(&url, &[V4B64]).await?;
    assert_eq!(s.protocol, V4B64);
    let out = s.collect(Duration::from_secs(30)).await?;
    assert_eq!(out.stdout, b"b64 works");
    assert_eq!(out.exit_code(), Some(0));
    r.remove().await
}

/// 100 MiB both ways through `cat` over WebSocket, checked end to end.
#[tokio::test(flavor = "multi_thread")]
async fn exec_over_websocket_carries_100_mib_both_ways() -> anyhow::Result<()> {
    let mut r = Running::start("big").await?;
    const BIG: usize = 100 << 20;
    let url = r.exec_url(&["/bin/cat"], true).await?;
    let s = stream::connect(&url, &[V5]).await?;
    let data: Vec<u8> = (0..BIG).map(|i| (i * 7 % 251) as u8).collect();
    let sent = Sha256::digest(&data);
    let began = Instant::now();
    // Send and receive at once (cat's pipes would fill otherwise).
    let (mut tx, mut rx) = (s.tx, s.rx);
    let sender = tokio::spawn(async move {
        for ch in data.chunks(64 * 1024) {
            tx.send(stream::STDIN, ch).await?;
        }
        tx.close_stdin().await?;
        anyhow::Ok(tx)
    });
    let (mut n, mut got) = (0usize, Sha256::new());
    while let Some((ch, d)) = rx.recv().await? {
        if ch == stream::STDOUT {
            n += d.len();
            got.update(&d);
        }
    }
    let _tx = sender.await??;
    let reader = (n, got.finalize());
    let secs = began.elapsed().as_secs_f64();
    assert_eq!(reader.0, BIG);
    assert_eq!(reader.1, sent, "what came back is what went in");
    println!("{} MiB through cat both ways in {secs:.2} s", BIG >> 20);
    r.remove().await
}

/// A WebSocket client that vanishes mid-session: the command is killed, nothing stays behind.
#[tokio::test(flavor = "multi_thread")]
async fn exec_client_vanishing_over_websocket_kills_the_command() -> anyhow::Result<()> {
    let mut r = Running::start("vanish").await?;
    let marker = "4242.5";
    let url = r.exec_url(&["/bin/sleep", marker], true).await?;
    let s = stream::connect(&url, &[V5]).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while procs_with(marker).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!procs_with(marker).is_empty(), "the command runs");
    s.abandon();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !procs_with(marker).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        procs_with(marker).is_empty(),
        "command and engine gone after the client vanished: {:?}\n{}",
        procs_with(marker)
            .iter()
            .map(|p| std::fs::read_to_string(format!("/proc/{p}/status"))
                .unwrap_or_default()
                .lines()
                .take(8)
                .collect::<Vec<_>>()
                .join(" | "))
            .collect::<Vec<_>>(),
        r.e.daemon
            .log()
            .lines()
            .filter(|l| l.contains("exec"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    r.remove().await
}

/// The same over SPDY/3.1, the protocol the API server and kubelet speak to the runtime.
#[tokio::test(flavor = "multi_thread")]
async fn exec_over_spdy_as_the_api_server_speaks_it() -> anyhow::Result<()> {
    use stream::spdy;
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let top = format!("kelson-stest3-{}", std::process::id());
    let (pod, id) = running(&mut c, &image, &top).await?;

    let url = exec_url(
        &mut c,
        &id,
        &["/bin/sh", "-c", "cat; echo oops >&2; exit 3"],
        true,
    )
    .await?;
    let mut s = spdy::connect(
        &url,
        &["v4.channel.k8s.io", "v3.channel.k8s.io"],
        true,
        true,
        true,
    )
    .await?;
    assert_eq!(s.version, "v4.channel.k8s.io");
    s.stdin(b"over ", false).await?;
    s.stdin(b"spdy\n", true).await?;
    let out = s.collect(Duration::from_secs(30)).await?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over spdy\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert_eq!(
        out.exit_code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.error)
    );

    // An older client (v3): success is an empty error stream, failure a message.
    let url = exec_url(&mut c, &id, &["/bin/echo", "-n", "v3"], false).await?;
    let s = spdy::connect(&url, &["v3.channel.k8s.io"], false, true, true).await?;
    assert_eq!(s.version, "v3.channel.k8s.io");
    let out = s.collect(Duration::from_secs(30)).await?;
    assert_eq!(out.stdout, b"v3");
    assert!(out.error.is_empty(), "{:?}", out.error);

    // Nothing spoken in common: refused before any session starts.
    let url = exec_url(&mut c, &id, &["/bin/true"], false).await?;
    let err = spdy::connect(&url, &["v9.channel.k8s.io"], false, true, true)
        .await
        .err()
        .expect("unknown version refused");
    assert!(err.to_string().contains("403"), "{err}");

    // Large transfer both ways, checked end to end.
    const BIG: usize = 100 << 20;
    let url = exec_url(&mut c, &id, &["/bin/cat"], true).await?;
    let mut s = spdy::connect(&url, &["v4.channel.k8s.io"], true, true, true).await?;
    let mut w = s.take_writer().expect("writer");
    let data: Vec<u8> = (0..BIG).map(|i| (i * 13 % 253) as u8).collect();
    let sent = Sha256::digest(&data);
    let sender = tokio::spawn(async move {
        for ch in data.chunks(32 * 1024) {
            w.stdin(ch, false).await?;
        }
        w.stdin(&[], true).await?;
        anyhow::Ok(w)
    });
    let out = s.collect(Duration::from_secs(120)).await?;
    let _w = sender.await??;
    assert_eq!(out.stdout.len(), BIG);
    assert_eq!(Sha256::digest(&out.stdout), sent);
    assert_eq!(out.exit_code(), Some(0));

    // A client that vanishes: the command is killed.
    let marker = "4343.5";
    let url = exec_url(&mut c, &id, &["/bin/sleep", marker], true).await?;
    let s = spdy::connect(&url, &["v4.channel.k8s.io"], true, true, true).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while procs_with(marker).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !procs_with(marker).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(procs_with(marker).is_empty(), "killed with its client gone");

    common::remove_pod(&mut c, &pod, &top).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_urls_expire_sessions_are_bounded_and_garbage_ends_them() -> anyhow::Result<()> {
    let e = common::env_config("[streaming]\ntoken_ttl = \"1s\"\nmax_sessions = 1\n").await?;
    let image = format!("{}/test/standard:v1", e.registry.host);
    common::pull(&e.daemon, &image).await?;
    let mut c = e.daemon.cri().await?;
    let top = format!("kelson-stest2-{}", std::process::id());
    let (pod, id) = running(&mut c, &image, &top).await?;
    let url = exec_url(&mut c, &id, &["/bin/true"], false).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = stream::connect(&url, &[V5])
        .await
        .err()
        .expect("expired URL refused");
    assert!(err.to_string().contains("404"), "{err}");
    // A fresh one works.
    let url = exec_url(&mut c, &id, &["/bin/true"], false).await?;
    let out = stream::connect(&url, &[V5])
        .await?
        .collect(Duration::from_secs(30))
        .await?;
    assert_eq!(out.exit_code(), Some(0));

    // One session at a time here: a second is refused with 503 while the first runs.
    let marker = "4444.5";
    let url = exec_url(&mut c, &id, &["/bin/sleep", marker], true).await?;
    let mut first = stream::connect(&url, &[V5]).await?;
    let url2 = exec_url(&mut c, &id, &["/bin/true"], false).await?;
    let err = stream::connect(&url2, &[V5])
        .await
        .err()
        .expect("second session refused");
    assert!(err.to_string().contains("503"), "{err}");
    // Garbage (a text message on a binary protocol) ends the session; the command dies.
    let deadline = Instant::now() + Duration::from_secs(10);
    while procs_with(marker).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!procs_with(marker).is_empty(), "the command runs");
    first.tx.send_raw_text("not a channel frame").await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !procs_with(marker).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(procs_with(marker).is_empty(), "garbage ended the session");
    drop(first);
    // The slot is free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let url = exec_url(&mut c, &id, &["/bin/true"], false).await?;
        match stream::connect(&url, &[V5]).await {
            Ok(s) => break s.collect(Duration::from_secs(30)).await?,
            Err(e) if Instant::now() < deadline && e.to_string().contains("503") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    };
    assert_eq!(out.exit_code(), Some(0));
    common::remove_pod(&mut c, &pod, &top).await?;
    Ok(())
}

/// Two servers in `pod`, each in a container of its own: "hello from the pod" on 8080, an echo
/// (`cat`) on 8081.
async fn serve_hello_and_echo(c: &mut Cri, pod: &str, image: &str) -> anyhow::Result<()> {
    for (name, cmd) in [
        (
            "hello",
            vec![
                "/bin/nc",
                "-ll",
                "-p",
                "8080",
                "-e",
                "/bin/echo",
                "hello from the pod",
            ],
        ),
        (
            "echo",
            vec!["/bin/nc", "-ll", "-p", "8081", "-e", "/bin/cat"],
        ),
    ] {
        let id = c
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.to_owned(),
                config: Some(cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: name.into(),
                        attempt: 0,
                    }),
                    image: common::spec(image),
                    command: cmd.iter().map(|s| s.to_string()).collect(),
                    log_path: format!("{name}.log"),
                    ..Default::default()
                }),
                sandbox_config: None,
            })
            .await?
            .into_inner()
            .container_id;
        c.runtime.start_container(req::start(&id)).await?;
    }
    Ok(())
}

/// A running container and the two servers of `serve_hello_and_echo` in its pod.
async fn serving(test: &str) -> anyhow::Result<Running> {
    let mut r = Running::start(test).await?;
    serve_hello_and_echo(&mut r.c, &r.pod, &r.image).await?;
    Ok(r)
}

/// Port-forward over SPDY (`portforward.k8s.io`): connections to servers listening on the
/// pod's loopback, one pair of streams each; ports not asked for and ports nobody listens on
/// are reported on the error stream; requests that cannot work are refused before any URL.
#[tokio::test(flavor = "multi_thread")]
async fn port_forward_over_spdy_reaches_servers_in_the_pod() -> anyhow::Result<()> {
    use stream::spdy;
    let mut r = serving("pf-spdy").await?;
    // Refused by name before any URL: a port out of range, an unknown pod.
    for (req, want) in [
        (
            cri::PortForwardRequest {
                pod_sandbox_id: r.pod.clone(),
                port: vec![70000],
            },
            tonic::Code::InvalidArgument,
        ),
        (
            cri::PortForwardRequest {
                pod_sandbox_id: "0".repeat(64),
                port: vec![8080],
            },
            tonic::Code::NotFound,
        ),
    ] {
        let err = r.c.runtime.port_forward(req).await.expect_err("refused");
        assert_eq!(err.code(), want, "{err:?}");
    }

    let url =
        r.c.runtime
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: r.pod.clone(),
                port: vec![8080, 8081, 8099],
            })
            .await?
            .into_inner()
            .url;
    let mut s = spdy::connect_portforward(&url).await?;
    // The servers take a moment to listen: retry the first connection.
    let deadline = Instant::now() + Duration::from_secs(15);
    let hello = loop {
        let f = s.forward(8080, b"", Duration::from_secs(10)).await?;
        if !f.data.is_empty() || Instant::now() > deadline {
            break f;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(String::from_utf8_lossy(&hello.data), "hello from the pod\n");
    // A second connection in the same session, both directions.
    let deadline = Instant::now() + Duration::from_secs(15);
    let echo = loop {
        let f = s
            .forward(8081, b"ping through the tunnel", Duration::from_secs(10))
            .await?;
        if !f.data.is_empty() || Instant::now() > deadline {
            break f;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(echo.data, b"ping through the tunnel");
    // Nobody listens on 8099; 9999 was not asked for.
    let f = s.forward(8099, b"", Duration::from_secs(20)).await?;
    assert!(
        String::from_utf8_lossy(&f.error).contains("connecting to port 8099"),
        "{:?}",
        String::from_utf8_lossy(&f.error)
    );
    let f = s.forward(9999, b"", Duration::from_secs(20)).await?;
    assert!(
        String::from_utf8_lossy(&f.error).contains("not requested"),
        "{:?}",
        String::from_utf8_lossy(&f.error)
    );
    drop(s);
    r.remove().await
}

/// Port-forward over WebSocket (kubelet's portforward.k8s.io): ports in the query, channels 2i
/// (data) and 2i+1 (error), each opening with its port number.
#[tokio::test(flavor = "multi_thread")]
async fn port_forward_over_websocket_reaches_servers_in_the_pod() -> anyhow::Result<()> {
    let mut r = serving("pf-ws").await?;
    let url =
        r.c.runtime
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: r.pod.clone(),
                port: vec![8080, 8081],
            })
            .await?
            .into_inner()
            .url;
    let mut ws = stream::connect(
        &format!("{url}?port=8080&port=8081"),
        &["portforward.k8s.io"],
    )
    .await?;
    assert_eq!(ws.protocol, "portforward.k8s.io");
    ws.send(2, b"ws ping").await?;
    let mut got: std::collections::HashMap<u8, Vec<u8>> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let done = got
            .get(&0)
            .is_some_and(|d| d.ends_with(b"hello from the pod\n"))
            && got.get(&2).is_some_and(|d| d.ends_with(b"ws ping"));
        if done {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(5), ws.recv()).await {
            Ok(Ok(Some((ch, data)))) => got.entry(ch).or_default().extend_from_slice(&data),
            _ => break,
        }
    }
    for (ch, port) in [(0u8, 8080u16), (1, 8080), (2, 8081), (3, 8081)] {
        assert!(
            got.get(&ch)
                .is_some_and(|d| d.starts_with(&port.to_le_bytes())),
            "channel {ch} opens with port {port}: {got:?}"
        );
    }
    assert!(got[&0].ends_with(b"hello from the pod\n"), "{got:?}");
    assert!(got[&2].ends_with(b"ws ping"), "{got:?}");
    drop(ws);
    r.remove().await
}

/// Port-forward as crictl and kubectl speak it since Kubernetes 1.30 (KEP-4006): SPDY/3.1
/// tunnelled in the binary messages of a WebSocket (`SPDY/3.1+portforward.k8s.io`), every
/// frame split into messages as client-go's framer writes it. Two connections in one session,
/// bytes both ways (64 KiB through the echo, more than one frame back), a SPDY ping answered
/// through the tunnel, and a normal close answered by the server's close.
#[tokio::test(flavor = "multi_thread")]
async fn port_forward_over_spdy_in_websocket_as_client_go_speaks_it() -> anyhow::Result<()> {
    use kelson_proto::spdy::frame::Frame;
    use stream::spdy;
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let top = format!("kelson-stest9-{}", std::process::id());
    let (pod, _) = running(&mut c, &image, &top).await?;
    serve_hello_and_echo(&mut c, &pod, &image).await?;
    // crictl asks without ports: the ports come in the SPDY streams' headers.
    let forward_url = |c: &mut Cri| {
        let mut rt = c.runtime.clone();
        let pod = pod.clone();
        async move {
            anyhow::Ok(
                rt.port_forward(cri::PortForwardRequest {
                    pod_sandbox_id: pod,
                    port: vec![],
                })
                .await?
                .into_inner()
                .url,
            )
        }
    };
    let url = forward_url(&mut c).await?;
    let mut s = spdy::connect_portforward_websocket(&url).await?;
    assert_eq!(s.version, "portforward.k8s.io");

    // The servers take a moment to listen: retry the first connection.
    let deadline = Instant::now() + Duration::from_secs(15);
    let hello = loop {
        let f = s.forward(8080, b"", Duration::from_secs(10)).await?;
        if !f.data.is_empty() || Instant::now() > deadline {
            break f;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(String::from_utf8_lossy(&hello.data), "hello from the pod\n");
    let sent: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    let echo = loop {
        let f = s.forward(8081, &sent, Duration::from_secs(20)).await?;
        if !f.data.is_empty() || Instant::now() > deadline {
            break f;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        Sha256::digest(&echo.data),
        Sha256::digest(&sent),
        "{} bytes back, error {:?}",
        echo.data.len(),
        String::from_utf8_lossy(&echo.error)
    );
    // client-go keeps the tunnel alive with SPDY pings (every 10 s); they come back.
    s.send(&Frame::Ping { id: 7 }).await?;
    let pong = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.next().await? {
                Some(Frame::Ping { id }) => break anyhow::Ok(id),
                Some(_) => {}
                None => anyhow::bail!("tunnel closed before the ping came back"),
            }
        }
    })
    .await
    .context("no ping back")??;
    assert_eq!(pong, 7);
    // A normal close ends the session; the server answers with its own close.
    s.close().await?;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while s.next().await?.is_some() {}
        anyhow::Ok(())
    })
    .await;
    assert!(matches!(end, Ok(Ok(()))), "{end:?}");

    // The tunnel is a byte stream of binary messages: a text message ends the session.
    let url = forward_url(&mut c).await?;
    let mut ws = stream::connect(&url, &[spdy::TUNNEL_PORTFORWARD]).await?;
    assert_eq!(ws.protocol, spdy::TUNNEL_PORTFORWARD);
    ws.tx.send_raw_text("not SPDY").await?;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while ws.recv().await?.is_some() {}
        anyhow::Ok(())
    })
    .await;
    assert!(end.is_ok(), "the server kept a session that sent text");

    common::remove_pod(&mut c, &pod, &top).await?;
    Ok(())
}

/// `kubectl exec -it`: a terminal of the container's own — resize reaches it, it is the
/// command's controlling terminal (^C interrupts the foreground job), stdin and output go
/// through it, the exit code comes back.
#[tokio::test(flavor = "multi_thread")]
async fn exec_with_a_terminal() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let top = format!("kelson-stest5-{}", std::process::id());
    let (pod, id) = running(&mut c, &image, &top).await?;
    let tty_url = |c: &mut Cri, cmd: &[&str]| {
        let req = cri::ExecRequest {
            container_id: id.clone(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: true,
            stdin: true,
            stdout: true,
            stderr: false,
        };
        let mut rt = c.runtime.clone();
        async move { anyhow::Ok(rt.exec(req).await?.into_inner().url) }
    };

    // The size set by a resize message, and a real terminal device.
    let url = tty_url(
        &mut c,
        &[
            "/bin/sh",
            "-c",
            "sleep 0.5; /bin/busybox stty size; /bin/busybox tty",
        ],
    )
    .await?;
    let mut s = stream::connect(&url, &[V5]).await?;
    s.send(stream::RESIZE, br#"{"Width":123,"Height":45}"#)
        .await?;
    let out = s.collect(Duration::from_secs(30)).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("45 123"), "{text:?}");
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert_eq!(out.exit_code(), Some(0));

    // An interactive shell: input echoed by the terminal, the exit code returned.
    let url = tty_url(&mut c, &["/bin/sh"]).await?;
    let mut s = stream::connect(&url, &[V5]).await?;
    s.send(stream::STDIN, b"echo hi-$((40+2))\n").await?;
    s.send(stream::STDIN, b"exit 7\n").await?;
    let out = s.collect(Duration::from_secs(30)).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hi-42"), "{text:?}");
    assert_eq!(out.exit_code(), Some(7), "{text:?}");

    // ^C reaches the foreground job through the terminal (it is the controlling one).
    let url = tty_url(
        &mut c,
        &["/bin/sh", "-c", "sleep 300; echo not-interrupted"],
    )
    .await?;
    let mut s = stream::connect(&url, &[V5]).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.send(stream::STDIN, b"\x03").await?;
    let out = s.collect(Duration::from_secs(30)).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("not-interrupted"), "{text:?}");
    assert_eq!(out.exit_code(), Some(130), "{text:?}");

    common::remove_pod(&mut c, &pod, &top).await?;
    Ok(())
}

/// Stdout and stderr of a WebSocket session until `needle` has appeared in stdout.
async fn read_until(
    s: &mut stream::Session,
    needle: &str,
    within: Duration,
) -> anyhow::Result<(String, String)> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    tokio::time::timeout(within, async {
        while !String::from_utf8_lossy(&out).contains(needle) {
            match s.recv().await? {
                Some((stream::STDOUT, d)) => out.extend_from_slice(&d),
                Some((stream::STDERR, d)) => err.extend_from_slice(&d),
                Some(_) => {}
                None => anyhow::bail!("session ended before {needle:?}"),
            }
        }
        anyhow::Ok(())
    })
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "no {needle:?} within {within:?}; stdout so far {:?}",
            String::from_utf8_lossy(&out)
        )
    })??;
    Ok((
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    ))
}

async fn attach_url(
    c: &mut Cri,
    id: &str,
    stdin: bool,
    stderr: bool,
    tty: bool,
) -> Result<String, tonic::Status> {
    Ok(c.runtime
        .attach(cri::AttachRequest {
            container_id: id.into(),
            stdin,
            tty,
            stdout: true,
            stderr,
        })
        .await?
        .into_inner()
        .url)
}

async fn container_state(c: &mut Cri, id: &str) -> anyhow::Result<(i32, i32)> {
    let s = c
        .runtime
        .container_status(req::status(id))
        .await?
        .into_inner()
        .status
        .ok_or_else(|| anyhow::anyhow!("no status"))?;
    Ok((s.state, s.exit_code))
}

async fn wait_exited(c: &mut Cri, id: &str) -> anyhow::Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (state, code) = container_state(c, id).await?;
        if state == cri::ContainerState::ContainerExited as i32 {
            return Ok(code);
        }
        anyhow::ensure!(Instant::now() < deadline, "container {id} did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// kelsond with the standard image and a pod `attach` (logs in `logs/attach`) for containers
/// with a stdin to attach to.
struct Attach {
    p: common::TestPod,
    image: String,
}

impl Attach {
    async fn start(test: &str) -> anyhow::Result<Attach> {
        let (e, image) = common::env_standard().await?;
        let prefix = format!("kelson-stest6-{test}");
        let p = common::TestPod::start(e, &prefix, "attach").await?;
        Ok(Attach { p, image })
    }

    /// Create and start `name` running `cmd` with a stdin (closed at the first attacher's end
    /// with `stdin_once`), on a terminal with `tty`: the container's id.
    async fn run(
        &mut self,
        name: &str,
        cmd: &[&str],
        stdin_once: bool,
        tty: bool,
    ) -> anyhow::Result<String> {
        let mut ctr = common::container_config(name, &self.image, cmd);
        ctr.stdin = true;
        ctr.stdin_once = stdin_once;
        ctr.tty = tty;
        self.p.run(ctr).await
    }

    /// The CRI log of container `name`.
    fn log(&self, name: &str) -> anyhow::Result<String> {
        let path = self.p.logs.path().join(format!("attach/{name}.log"));
        Ok(std::fs::read_to_string(path)?)
    }
}

/// `kubectl attach` / `crictl attach` to a shell reading lines: bad requests are refused;
/// several attachers at once on both transports; detaching (by leaving, or by closing stdin
/// without `stdin_once`) keeps the container running; its exit ends every session after its
/// last output; the log has everything, whoever was attached; an exited container refuses.
#[tokio::test(flavor = "multi_thread")]
async fn attachers_come_and_go_and_the_container_exit_ends_them_all() -> anyhow::Result<()> {
    let mut t = Attach::start("reader").await?;
    let c = &mut t.p.c.clone();
    let script = r#"echo ready; while read l; do [ "$l" = quit ] && break; echo "got:$l"; echo "err:$l" >&2; done; echo bye; exit 3"#;
    let id = t
        .run("reader", &["/bin/sh", "-c", script], false, false)
        .await?;

    // Bad requests first.
    let none = c
        .runtime
        .attach(cri::AttachRequest {
            container_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(none.code(), tonic::Code::InvalidArgument, "{none:?}");
    let missing = attach_url(c, "0123456789abcdef", true, true, false)
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");

    // Attacher A (WebSocket, all streams) and attacher B (SPDY, output only) at once.
    let mut a = stream::connect(&attach_url(c, &id, true, true, false).await?, &[V5]).await?;
    let b_url = attach_url(c, &id, false, false, false).await?;
    let mut b = stream::spdy::connect(&b_url, &["v4.channel.k8s.io"], false, true, false).await?;
    let b_writer = b.take_writer();
    // Let both join before the first line (output from before an attach is in the log only).
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.send(stream::STDIN, b"one\n").await?;
    let (out, _) = read_until(&mut a, "got:one", Duration::from_secs(20)).await?;
    assert!(out.contains("got:one"), "{out:?}");
    // A leaves without a word: the container keeps running, stdin stays open for the next.
    a.abandon();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        container_state(c, &id).await?.0,
        cri::ContainerState::ContainerRunning as i32
    );
    let mut a2 = stream::connect(&attach_url(c, &id, true, true, false).await?, &[V5]).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    a2.send(stream::STDIN, b"two\n").await?;
    let (out, err) = read_until(&mut a2, "got:two", Duration::from_secs(20)).await?;
    assert!(
        out.contains("got:two") && !out.contains("got:one"),
        "{out:?}"
    );
    // Closing stdin without stdin_once detaches this session (Success), the container runs on.
    a2.close_stdin().await?;
    let rest = a2.collect(Duration::from_secs(20)).await.context("a2")?;
    assert_eq!(
        rest.exit_code(),
        Some(0),
        "{:?}",
        String::from_utf8_lossy(&rest.error)
    );
    let all_err = format!("{err}{}", String::from_utf8_lossy(&rest.stderr));
    assert!(all_err.contains("err:two"), "{all_err:?}");
    assert_eq!(
        container_state(c, &id).await?.0,
        cri::ContainerState::ContainerRunning as i32
    );
    // The container's exit ends every session, after its last output.
    let mut a3 = stream::connect(&attach_url(c, &id, true, false, false).await?, &[V4]).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    a3.send(stream::STDIN, b"quit\n").await?;
    let end = a3.collect(Duration::from_secs(20)).await.context("a3")?;
    assert!(String::from_utf8_lossy(&end.stdout).contains("bye"));
    assert_eq!(
        end.exit_code(),
        Some(0),
        "attach reports Success, not the container's code"
    );
    let seen_by_b = b.collect(Duration::from_secs(20)).await.context("b")?;
    drop(b_writer);
    let text = String::from_utf8_lossy(&seen_by_b.stdout);
    for want in ["got:one", "got:two", "bye"] {
        assert!(text.contains(want), "B missed {want}: {text:?}");
    }
    assert!(seen_by_b.stderr.is_empty(), "B did not ask for stderr");
    assert_eq!(wait_exited(c, &id).await?, 3);
    let log = t.log("reader")?;
    for want in [
        "stdout F ready",
        "stdout F got:one",
        "stderr F err:two",
        "stdout F bye",
    ] {
        assert!(log.contains(want), "log lacks {want:?}: {log}");
    }
    let gone = attach_url(c, &id, false, true, false).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::FailedPrecondition, "{gone:?}");
    t.p.remove().await
}

/// `stdin_once`: the first attacher's end of stdin is the container's.
#[tokio::test(flavor = "multi_thread")]
async fn attach_with_stdin_once_hands_its_end_of_stdin_to_the_container() -> anyhow::Result<()> {
    let mut t = Attach::start("once").await?;
    let id = t.run("once", &["/bin/busybox", "cat"], true, false).await?;
    let url = attach_url(&mut t.p.c, &id, true, true, false).await?;
    let mut s = stream::connect(&url, &[V5]).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.send(stream::STDIN, b"abc\n").await?;
    s.close_stdin().await?;
    let out = s.collect(Duration::from_secs(20)).await.context("s")?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "abc\n");
    assert_eq!(
        wait_exited(&mut t.p.c, &id).await?,
        0,
        "cat saw EOF and ended"
    );
    t.p.remove().await
}

/// A container on a terminal: resize, TERM, the terminal's echo; leaving keeps it running, its
/// exit ends the session.
#[tokio::test(flavor = "multi_thread")]
async fn attach_to_a_terminal_resizes_it_and_leaving_keeps_it_running() -> anyhow::Result<()> {
    let mut a = Attach::start("term").await?;
    let id = a.run("term", &["/bin/sh"], false, true).await?;
    let c = &mut a.p.c.clone();
    let mut t = stream::connect(&attach_url(c, &id, true, false, true).await?, &[V5]).await?;
    t.send(stream::RESIZE, br#"{"Width":100,"Height":33}"#)
        .await?;
    t.send(
        stream::STDIN,
        b"echo size=$(/bin/busybox stty size) term=$TERM\n",
    )
    .await?;
    let (out, _) = read_until(&mut t, "term=xterm", Duration::from_secs(20)).await?;
    assert!(out.contains("size=33 100"), "{out:?}");
    t.abandon();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        container_state(c, &id).await?.0,
        cri::ContainerState::ContainerRunning as i32
    );
    let mut t = stream::connect(&attach_url(c, &id, true, false, true).await?, &[V5]).await?;
    t.send(stream::STDIN, b"exit 5\n").await?;
    let out = t.collect(Duration::from_secs(20)).await.context("t")?;
    assert_eq!(out.exit_code(), Some(0), "{out:?}");
    assert_eq!(wait_exited(c, &id).await?, 5);
    let log = a.log("term")?;
    assert!(log.contains("term=xterm"), "{log}");
    a.p.remove().await
}

/// The streaming server over TLS (`streaming.tls_cert_file` / `tls_key_file`): URLs are
/// `https://`, exec works over `wss://` for a client trusting the CA, and a plain-HTTP client
/// gets nothing.
#[tokio::test(flavor = "multi_thread")]
async fn streaming_over_tls() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let (ca, cert, key) = kelson_testkit::registry::self_signed(certs.path())?;
    let e = common::env_config(&format!(
        "[streaming]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    ))
    .await?;
    let image = format!("{}/test/standard:v1", e.registry.host);
    common::pull(&e.daemon, &image).await?;
    let mut c = e.daemon.cri().await?;
    let top = format!("kelson-stest7-{}", std::process::id());
    let (pod, id) = running(&mut c, &image, &top).await?;

    let url = exec_url(
        &mut c,
        &id,
        &["/bin/sh", "-c", "echo over-tls; exit 4"],
        false,
    )
    .await?;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let out = stream::connect_tls(&url, &[V5], &ca)
        .await?
        .collect(Duration::from_secs(30))
        .await?;
    assert_eq!(out.stdout, b"over-tls\n");
    assert_eq!(out.exit_code(), Some(4));
    // Plain HTTP to the TLS port: no upgrade, no session.
    let url = exec_url(&mut c, &id, &["/bin/true"], false).await?;
    let plain = url.replacen("https://", "http://", 1);
    assert!(stream::connect(&plain, &[V5]).await.is_err());
    // A client that does not trust the certificate gets no session either.
    let other = tempfile::tempdir()?;
    let (other_ca, _, _) = kelson_testkit::registry::self_signed(other.path())?;
    assert!(stream::connect_tls(&url, &[V5], &other_ca).await.is_err());

    common::remove_pod(&mut c, &pod, &top).await?;
    Ok(())
}

/// Concurrent sessions: 16 exec sessions at once, each pushing its own 2 MiB through `cat`,
/// every one gets exactly its own bytes back and its exit code.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_exec_sessions() -> anyhow::Result<()> {
    let (e, image) = common::env_standard().await?;
    let mut c = e.daemon.cri().await?;
    let top = format!("kelson-stest8-{}", std::process::id());
    let (pod, id) = running(&mut c, &image, &top).await?;
    let mut sessions = Vec::new();
    for n in 0..16u8 {
        let url = exec_url(
            &mut c,
            &id,
            &["/bin/sh", "-c", &format!("/bin/busybox cat; exit {n}")],
            true,
        )
        .await?;
        sessions.push(tokio::spawn(async move {
            let payload: Vec<u8> = (0..2 << 20).map(|i: usize| (i as u8) ^ n).collect();
            let s = stream::connect(&url, &[V5]).await?;
            let (mut tx, rx) = (s.tx, s.rx);
            let data = payload.clone();
            let writer = tokio::spawn(async move {
                for chunk in data.chunks(64 * 1024) {
                    tx.send(stream::STDIN, chunk).await?;
                }
                tx.close_stdin().await?;
                anyhow::Ok(tx)
            });
            let out = rx.collect(Duration::from_secs(120)).await?;
            let _tx = writer.await??;
            anyhow::ensure!(
                Sha256::digest(&out.stdout) == Sha256::digest(&payload),
                "session {n}: {} bytes back, not its own {}",
                out.stdout.len(),
                payload.len()
            );
            anyhow::ensure!(
                out.exit_code() == Some(n as i32),
                "session {n}: {:?}",
                out.exit_code()
            );
            anyhow::Ok(())
        }));
    }
    for s in sessions {
        s.await??;
    }
    common::remove_pod(&mut c, &pod, &top).await?;
    Ok(())
}

/// Half-sent request heads cannot keep a valid URL out: 150 connections that sent part of a
/// head and hold it (more than the 144 connections the server used to serve at once, each for
/// a head timeout of 10 s), and a real exec over its URL still connects at once and runs.
#[tokio::test(flavor = "multi_thread")]
async fn half_sent_request_heads_cannot_keep_a_valid_url_out() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut r = Running::start("heads").await?;
    let url = r.exec_url(&["/bin/echo", "through"], false).await?;
    let addr = url
        .strip_prefix("http://")
        .and_then(|u| u.split('/').next())
        .context("streaming URL")?
        .to_owned();
    let mut held = Vec::new();
    for _ in 0..150 {
        let mut s = tokio::net::TcpStream::connect(&addr).await?;
        s.write_all(b"GET /exec/").await?;
        held.push(s);
    }
    // Let the server take them all in before the real client comes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let began = Instant::now();
    let s = stream::connect(&url, &[V5]).await?;
    let connected = began.elapsed();
    let out = s.collect(Duration::from_secs(30)).await?;
    assert_eq!(
        (out.stdout.as_slice(), out.exit_code()),
        (&b"through\n"[..], Some(0))
    );
    assert!(
        connected < Duration::from_secs(3),
        "the exec connected {connected:?} after the held heads: it waited for them to time out"
    );
    // Nobody was evicted for it: the pool of pending heads has room for all of them.
    let mut byte = [0u8; 1];
    let first = tokio::time::timeout(Duration::from_millis(50), held[0].read(&mut byte)).await;
    assert!(
        first.is_err(),
        "the oldest held head is still pending: {first:?}"
    );
    drop(held);
    r.remove().await
}
