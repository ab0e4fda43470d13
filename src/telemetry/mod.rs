//! kelsond's own metrics for Prometheus (`prometheus-client`, the Prometheus project's Rust
//! client): CRI call latency and errors (`layer.rs`, a tower layer on the gRPC server), image
//! pulls, garbage collection, and counts of pods, containers and shims taken at scrape time.
//! `http.rs` serves them on the address in `[metrics]` (off by default).

pub mod http;
pub mod layer;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::container::{ContainerService, RunState};
use crate::image::ImageService;
use crate::pod::PodService;
use crate::store::PodState;

/// What a scrape reads, handed over at start-up: the services whose running totals and
/// counts become the scrape-time figures.
pub struct Sources {
    pub images: Arc<ImageService>,
    pub pods: Arc<PodService>,
    pub containers: Arc<ContainerService>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// From 0.5 ms doubling to about 65 s.
fn rpc_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// From 50 ms doubling to about 27 minutes.
fn pull_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 16))
}

pub struct Telemetry {
    registry: Registry,
    rpc_duration: HistogramFamily<MethodLabels>,
    rpc_errors: Family<ErrorLabels, Counter>,
    pull_duration: HistogramFamily<ResultLabels>,
    pulled_bytes: Counter,
    gc_removed: Family<KindLabels, Counter>,
    containers: Family<StateLabels, Gauge>,
    pods: Family<StateLabels, Gauge>,
    shims: Gauge,
    images: Gauge,
    cpu_readings: Family<KindLabels, Gauge>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let mut registry = Registry::with_prefix("kelson");
        let rpc_duration =
            HistogramFamily::<MethodLabels>::new_with_constructor(rpc_histogram as _);
        registry.register(
            "cri_request_duration_seconds",
            "Time to answer a CRI call (until response headers), by method",
            rpc_duration.clone(),
        );
        let rpc_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "cri_request_errors",
            "CRI calls answered with an error, by method and gRPC code",
            rpc_errors.clone(),
        );
        let pull_duration =
            HistogramFamily::<ResultLabels>::new_with_constructor(pull_histogram as _);
        registry.register(
            "image_pull_duration_seconds",
            "Image pulls (download and unpack) by result",
            pull_duration.clone(),
        );
        let pulled_bytes = Counter::default();
        registry.register(
            "image_pull_bytes",
            "Layer bytes received from registries",
            pulled_bytes.clone(),
        );
        let gc_removed = Family::<KindLabels, Counter>::default();
        registry.register(
            "image_gc_removed",
            "Image content removed by garbage collection (snapshot, blob, image)",
            gc_removed.clone(),
        );
        let containers = Family::<StateLabels, Gauge>::default();
        registry.register("containers", "Containers by state", containers.clone());
        let pods = Family::<StateLabels, Gauge>::default();
        registry.register("pod_sandboxes", "Pod sandboxes by state", pods.clone());
        let shims = Gauge::default();
        registry.register(
            "shims",
            "Running kelson-shim processes (live sockets)",
            shims.clone(),
        );
        let images = Gauge::default();
        registry.register("images", "Images in the store", images.clone());
        let cpu_readings = Family::<KindLabels, Gauge>::default();
        registry.register(
            "cpu_readings_kept",
            "Pods and containers whose last CPU reading is kept for stats' rates (follows what exists)",
            cpu_readings.clone(),
        );
        Telemetry {
            registry,
            rpc_duration,
            rpc_errors,
            pull_duration,
            pulled_bytes,
            gc_removed,
            containers,
            pods,
            shims,
            images,
            cpu_readings,
        }
    }

    /// One CRI call: its latency, and an error count unless `code` is OK.
    pub fn rpc(&self, method: &'static str, code: tonic::Code, took: Duration) {
        self.rpc_duration
            .get_or_create(&MethodLabels { method })
            .observe(took.as_secs_f64());
        if code != tonic::Code::Ok {
            self.rpc_errors
                .get_or_create(&ErrorLabels {
                    method,
                    code: code_name(code),
                })
                .inc();
        }
    }

    pub fn pull(&self, ok: bool, took: Duration) {
        let result = if ok { "success" } else { "failure" };
        self.pull_duration
            .get_or_create(&ResultLabels { result })
            .observe(took.as_secs_f64());
    }

    /// Bring the scrape-time figures up to date and render the text exposition.
    pub async fn render(&self, src: &Sources) -> String {
        self.refresh(src).await;
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }

    async fn refresh(&self, src: &Sources) {
        let c = &src.images.counters;
        set_counter(&self.pulled_bytes, c.pulled_bytes.load(Relaxed));
        for (kind, v) in [
            ("snapshot", c.gc_snapshots.load(Relaxed)),
            ("blob", c.gc_blobs.load(Relaxed)),
            ("image", c.gc_images.load(Relaxed)),
        ] {
            set_counter(&self.gc_removed.get_or_create(&KindLabels { kind }), v);
        }
        let (mut created, mut running, mut exited) = (0, 0, 0);
        if let Ok(all) = src.containers.list() {
            for v in src.containers.views(all).await {
                match v.state {
                    RunState::Created => created += 1,
                    RunState::Running => running += 1,
                    RunState::Exited => exited += 1,
                }
            }
        }
        for (state, n) in [
            ("created", created),
            ("running", running),
            ("exited", exited),
        ] {
            self.containers.get_or_create(&StateLabels { state }).set(n);
        }
        let (mut ready, mut not_ready) = (0, 0);
        for p in src.pods.list().unwrap_or_default() {
            match p.state {
                PodState::Ready => ready += 1,
                PodState::NotReady => not_ready += 1,
            }
        }
        self.pods
            .get_or_create(&StateLabels { state: "ready" })
            .set(ready);
        self.pods
            .get_or_create(&StateLabels { state: "notready" })
            .set(not_ready);
        self.shims.set(src.containers.live_shims() as i64);
        for (kind, n) in [
            ("pod", src.pods.rates_kept()),
            ("container", src.containers.rates_kept()),
        ] {
            self.cpu_readings
                .get_or_create(&KindLabels { kind })
                .set(n as i64);
        }
        self.images
            .set(src.images.list(None).map(|l| l.len()).unwrap_or(0) as i64);
    }
}

/// Counters only go up: add what a running total gained since the last scrape.
fn set_counter(c: &Counter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_latency_and_errors_are_exposed() {
        let t = Telemetry::new();
        t.rpc("Version", tonic::Code::Ok, Duration::from_millis(2));
        t.rpc(
            "PullImage",
            tonic::Code::NotFound,
            Duration::from_millis(40),
        );
        t.pull(true, Duration::from_secs(1));
        set_counter(&t.pulled_bytes, 1000);
        set_counter(&t.pulled_bytes, 1500);
        set_counter(&t.pulled_bytes, 1500);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &t.registry).unwrap();
        assert!(
            out.contains("kelson_cri_request_duration_seconds_count{method=\"Version\"} 1"),
            "{out}"
        );
        assert!(
            out.contains(
                "kelson_cri_request_errors_total{method=\"PullImage\",code=\"NotFound\"} 1"
            ),
            "{out}"
        );
        assert!(
            !out.contains("method=\"Version\",code"),
            "OK is not an error"
        );
        assert!(out.contains("kelson_image_pull_bytes_total 1500"), "{out}");
        assert!(out.contains("kelson_image_pull_duration_seconds_count{result=\"success\"} 1"));
        assert!(out.ends_with("# EOF\n"));
    }
}
