//! `GET /metrics` (Prometheus text format 0.0.4, written by hand): the server's own
//! [`ServerMetrics`] (every request by method, route kind and status, latencies, bytes sent,
//! `process_*`, `sealer_build_info`), served whatever the [`crate::ContentSource`], followed
//! by the source's (the pull-through cache's counters per upstream, labelled with the
//! upstream's configured name).
//!
//! In every mode: `sealer_registry_requests_total{method,route,status}`,
//! `sealer_registry_response_bytes_total{method,route,status}` (`route`: base, manifest,
//! blob, blob_upload, tags, referrers, metrics, healthz, readyz, invalid, other; methods
//! outside the API count as `OTHER`, so clients cannot grow the series),
//! `sealer_registry_request_duration_seconds{method,route}` (a histogram, to the end of the
//! body), `sealer_registry_requests_in_flight`, `sealer_build_info{version}` and `process_*`
//! (CPU seconds, resident and virtual memory, threads, open and max fds, start time).
//!
//! With upstreams (label `upstream`): `sealer_proxy_requests_total{upstream,cache}` (reads
//! answered `hit`, `miss` or `stale`), `sealer_proxy_upstream_requests_total` (HTTP requests
//! sent upstream, retries and token round trips included), `sealer_proxy_upstream_bytes_total`,
//! `sealer_proxy_upstream_token_fetches_total`, `sealer_proxy_tag_revalidations_total`,
//! `sealer_proxy_upstream_failing` (the breaker, a gauge), `sealer_proxy_fills_total` (upstream
//! GETs), `sealer_proxy_peer_fills_total` (fills streamed from another replica),
//! `sealer_proxy_fills_in_flight`, `sealer_proxy_fill_followers_total` and
//! `sealer_proxy_fill_failures_total{upstream,reason}` (`digest_mismatch`, `upstream`,
//! `store`). With upstreams over a local store, the backend's part
//! (`RegistryBackend::metrics`): `sealer_cache_size_bytes`, `sealer_cache_blobs`,
//! `sealer_cache_limit_bytes` (only with `cache.max_size`), `sealer_cache_evictions_total`
//! and `sealer_cache_evicted_bytes_total`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use axum::http::Method;
use sealer_fs_abstraction::{ErrorChain, Fs, RealFs};
use sealer_registry_client::ClientStats;

use crate::route::{Route, RouteError, RouteParser};
use crate::source::CacheStatus;

/// Upper bounds (seconds) of the request latency buckets: from a manifest answered from the
/// store (milliseconds) to a multi-GiB blob on a slow link (minutes).
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// What a request asked for (the `route` label): a small fixed set whatever clients send,
/// so that no client can grow the series without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum RouteKind {
    /// `/v2/`.
    Base,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest,
    /// `/v2/<name>/blobs/<digest>`.
    Blob,
    /// `/v2/<name>/blobs/uploads/…`.
    BlobUpload,
    /// `/v2/<name>/tags/list`.
    Tags,
    /// `/v2/_catalog`.
    Catalog,
    /// `/v2/<name>/referrers/<digest>`.
    Referrers,
    /// `/metrics`.
    Metrics,
    /// `/healthz`.
    Healthz,
    /// `/readyz`.
    Readyz,
    /// A `/v2/…` request the parser refuses (bad name, digest or method).
    Invalid,
    /// Anything else (answered 404).
    Other,
}

impl RouteKind {
    /// The kind of a request, by the same parser that dispatches it.
    pub(crate) fn classify(
        parser: &RouteParser,
        method: &Method,
        path: &str,
        query: Option<&str>,
    ) -> Self {
        match path {
            "/metrics" => return Self::Metrics,
            "/healthz" => return Self::Healthz,
            "/readyz" => return Self::Readyz,
            _ => {}
        }
        match parser.parse(method, path, query) {
            Ok(Route::Base) => Self::Base,
            Ok(Route::Manifest { .. }) => Self::Manifest,
            Ok(Route::Blob { .. }) => Self::Blob,
            Ok(Route::StartUpload { .. } | Route::Upload { .. }) => Self::BlobUpload,
            Ok(Route::Tags { .. }) => Self::Tags,
            Ok(Route::Catalog { .. }) => Self::Catalog,
            Ok(Route::Referrers { .. }) => Self::Referrers,
            Err(RouteError::NotFound(_)) => Self::Other,
            Err(_) => Self::Invalid,
        }
    }

    /// The label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Base => "base",
            Self::Manifest => "manifest",
            Self::Blob => "blob",
            Self::BlobUpload => "blob_upload",
            Self::Tags => "tags",
            Self::Catalog => "catalog",
            Self::Referrers => "referrers",
            Self::Metrics => "metrics",
            Self::Healthz => "healthz",
            Self::Readyz => "readyz",
            Self::Invalid => "invalid",
            Self::Other => "other",
        }
    }
}

/// The `method` label: the methods of the distribution API, every other one as `OTHER`.
pub(crate) fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Counts and bytes of the requests answered with one (method, route, status).
#[derive(Debug, Default)]
struct Answered {
    requests: u64,
    bytes: u64,
}

/// Latencies of one (method, route): requests per bucket (not cumulative), sum and count.
#[derive(Debug, Default)]
struct Latencies {
    buckets: [u64; LATENCY_BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Recorded {
    answered: BTreeMap<(&'static str, RouteKind, u16), Answered>,
    latencies: BTreeMap<(&'static str, RouteKind), Latencies>,
}

/// The server's own metrics: every request it answered, whatever the content source, and
/// the process's resources.
#[derive(Debug)]
pub(crate) struct ServerMetrics {
    recorded: Mutex<Recorded>,
    in_flight: AtomicI64,
    /// `/proc`, for `process_*` (`None` where there is none).
    proc: Option<RealFs>,
}

impl ServerMetrics {
    /// Empty counters; opens `/proc` for the process metrics where there is one.
    pub(crate) fn new() -> Self {
        let proc = if cfg!(target_os = "linux") {
            RealFs::open_root("/proc")
                .inspect_err(
                    |error| tracing::warn!(error = %ErrorChain(&error), "no process metrics"),
                )
                .ok()
        } else {
            None
        };
        Self {
            recorded: Mutex::default(),
            in_flight: AtomicI64::new(0),
            proc,
        }
    }

    /// A request arrived.
    pub(crate) fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request that [`Self::started`] ended: its response was sent (`bytes` of body) or
    /// abandoned, `elapsed` after it arrived.
    pub(crate) fn finished(
        &self,
        method: &'static str,
        route: RouteKind,
        status: u16,
        bytes: u64,
        elapsed: Duration,
    ) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        let mut recorded = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
        let answered = recorded
            .answered
            .entry((method, route, status))
            .or_default();
        answered.requests += 1;
        answered.bytes += bytes;
        let latencies = recorded.latencies.entry((method, route)).or_default();
        if let Some(bucket) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            latencies.buckets[bucket] += 1;
        }
        latencies.sum += seconds;
        latencies.count += 1;
    }

    /// The Prometheus text of the server's metrics. Reads `/proc`: call it where blocking
    /// is allowed.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        {
            let recorded = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
            let labels = |method: &str, route: RouteKind, status: u16| {
                format!(
                    "method=\"{method}\",route=\"{}\",status=\"{status}\"",
                    route.label()
                )
            };
            family(
                &mut out,
                "sealer_registry_requests_total",
                "counter",
                "Requests answered, by method, route kind and status.",
                recorded
                    .answered
                    .iter()
                    .map(|((method, route, status), answered)| {
                        (labels(method, *route, *status), answered.requests as i64)
                    }),
            );
            family(
                &mut out,
                "sealer_registry_response_bytes_total",
                "counter",
                "Response body bytes sent, by method, route kind and status.",
                recorded
                    .answered
                    .iter()
                    .map(|((method, route, status), answered)| {
                        (labels(method, *route, *status), answered.bytes as i64)
                    }),
            );
            let name = "sealer_registry_request_duration_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} Time from a request's arrival to the end of its response body."
            );
            let _ = writeln!(out, "# TYPE {name} histogram");
            for ((method, route), latencies) in &recorded.latencies {
                let labels = format!("method=\"{method}\",route=\"{}\"", route.label());
                let mut cumulative = 0;
                for (bound, count) in LATENCY_BUCKETS.iter().zip(latencies.buckets) {
                    cumulative += count;
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
                    latencies.count
                );
                let _ = writeln!(out, "{name}_sum{{{labels}}} {}", latencies.sum);
                let _ = writeln!(out, "{name}_count{{{labels}}} {}", latencies.count);
            }
        }
        unlabelled(
            &mut out,
            "sealer_registry_requests_in_flight",
            "gauge",
            "Requests arrived whose response has not ended yet.",
            self.in_flight.load(Ordering::Relaxed) as f64,
        );
        family(
            &mut out,
            "sealer_build_info",
            "gauge",
            "Always 1; the version of the sealer registry serving.",
            std::iter::once((format!("version=\"{}\"", env!("CARGO_PKG_VERSION")), 1)),
        );
        if let Some(proc) = &self.proc {
            for (name, kind, help, value) in process_metrics(proc) {
                unlabelled(&mut out, name, kind, help, value);
            }
        }
        out
    }
}

/// One unlabelled metric of `kind` (`gauge`, `counter`) with its HELP and TYPE lines.
pub(crate) fn unlabelled(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    value: impl std::fmt::Display,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// `process_*` as the Prometheus client libraries name them, read from `/proc/self`
/// (`proc` is rooted at `/proc`); each one that cannot be read is left out.
fn process_metrics(proc: &RealFs) -> Vec<(&'static str, &'static str, &'static str, f64)> {
    let mut metrics = Vec::new();
    let read = |path: &str| {
        proc.read(Path::new(path))
            .ok()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    };
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    // The fields after the command name, which may itself hold spaces and parentheses;
    // `fields[n - 3]` is field n of proc(5).
    if let Some(stat) = read("self/stat")
        && let Some(end) = stat.rfind(')')
    {
        let fields: Vec<&str> = stat[end + 1..].split_whitespace().collect();
        let field = |n: usize| {
            fields
                .get(n - 3)
                .and_then(|value| value.parse::<u64>().ok())
        };
        if let (Some(user), Some(system)) = (field(14), field(15)) {
            metrics.push((
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time spent, in seconds.",
                (user + system) as f64 / ticks,
            ));
        }
        if let Some(rss) = field(24) {
            metrics.push((
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                (rss * rustix::param::page_size() as u64) as f64,
            ));
        }
        if let Some(vsize) = field(23) {
            metrics.push((
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                vsize as f64,
            ));
        }
        if let Some(threads) = field(20) {
            metrics.push((
                "process_threads",
                "gauge",
                "Threads of the process.",
                threads as f64,
            ));
        }
        let boot = read("stat").and_then(|stat| {
            stat.lines()
                .find_map(|line| line.strip_prefix("btime "))
                .and_then(|seconds| seconds.trim().parse::<u64>().ok())
        });
        if let (Some(boot), Some(start)) = (boot, field(22)) {
            metrics.push((
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch, in seconds.",
                boot as f64 + start as f64 / ticks,
            ));
        }
    }
    if let Ok(fds) = proc.read_dir(Path::new("self/fd")) {
        metrics.push((
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            fds.len() as f64,
        ));
    }
    if let Some(limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        metrics.push((
            "process_max_fds",
            "gauge",
            "The limit on open file descriptors.",
            limit as f64,
        ));
    }
    metrics
}

/// Why a fill failed, for `sealer_proxy_fill_failures_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureReason {
    /// The bytes did not hash to the digest.
    DigestMismatch,
    /// The upstream refused or broke off (after the resumes).
    Upstream,
    /// Writing to the store failed.
    Store,
}

/// Counters of one upstream.
#[derive(Debug, Default)]
pub(crate) struct UpstreamMetrics {
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    bytes: AtomicU64,
    revalidations: AtomicU64,
    fills: AtomicU64,
    peer_fills: AtomicU64,
    fills_in_flight: AtomicI64,
    followers: AtomicU64,
    digest_mismatches: AtomicU64,
    upstream_failures: AtomicU64,
    store_failures: AtomicU64,
}

impl UpstreamMetrics {
    /// One read answered with `status`.
    pub(crate) fn answered(&self, status: CacheStatus) {
        let counter = match status {
            CacheStatus::Hit => &self.hits,
            CacheStatus::Miss => &self.misses,
            CacheStatus::Stale => &self.stale,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes received from the upstream (manifest and blob bodies).
    pub(crate) fn received(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A tag revalidated with `HEAD`.
    pub(crate) fn revalidated(&self) {
        self.revalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// A fill started.
    pub(crate) fn fill_started(&self) {
        self.fills.fetch_add(1, Ordering::Relaxed);
        self.fills_in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A fill started that streams from another replica's fill (the lease holder's), not
    /// from the upstream.
    pub(crate) fn peer_fill_started(&self) {
        self.peer_fills.fetch_add(1, Ordering::Relaxed);
        self.fills_in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A fill ended, committed (`None`) or failed.
    pub(crate) fn fill_ended(&self, failure: Option<FailureReason>) {
        self.fills_in_flight.fetch_sub(1, Ordering::Relaxed);
        let counter = match failure {
            None => return,
            Some(FailureReason::DigestMismatch) => &self.digest_mismatches,
            Some(FailureReason::Upstream) => &self.upstream_failures,
            Some(FailureReason::Store) => &self.store_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A client joined a fill another one started.
    pub(crate) fn follower_joined(&self) {
        self.followers.fetch_add(1, Ordering::Relaxed);
    }

    /// Fills running now.
    pub(crate) fn fills_in_flight(&self) -> i64 {
        self.fills_in_flight.load(Ordering::Relaxed)
    }
}

/// One upstream's view for [`render`].
pub(crate) struct Sample<'a> {
    /// The upstream's name (the label value).
    pub(crate) name: &'a str,
    /// Its counters.
    pub(crate) metrics: &'a UpstreamMetrics,
    /// Its client's counters.
    pub(crate) client: ClientStats,
    /// Whether it is failing (its last revalidation failed: cached tags are served STALE
    /// without asking it until a probe succeeds).
    pub(crate) failing: bool,
}

/// A family with one value per upstream: name, type, help, and the value of a sample.
type PerUpstream = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Sample<'_>) -> i64,
);

/// The families of [`render`] with one value per upstream, in the order they are written.
const PER_UPSTREAM: &[PerUpstream] = &[
    (
        "sealer_proxy_upstream_requests_total",
        "counter",
        "HTTP requests sent to the upstream (retries and token round trips included).",
        |sample| sample.client.requests as i64,
    ),
    (
        "sealer_proxy_upstream_failing",
        "gauge",
        "1 while the upstream is failing (its last revalidation failed): cached tags are \
         served STALE without asking it, one request per probe interval asks it.",
        |sample| i64::from(sample.failing),
    ),
    (
        "sealer_proxy_upstream_bytes_total",
        "counter",
        "Manifest and blob bytes received from the upstream.",
        |sample| load(&sample.metrics.bytes),
    ),
    (
        "sealer_proxy_upstream_token_fetches_total",
        "counter",
        "Bearer tokens fetched for the upstream (cached tokens reused do not count).",
        |sample| sample.client.token_fetches as i64,
    ),
    (
        "sealer_proxy_tag_revalidations_total",
        "counter",
        "Cached tags revalidated with a HEAD to the upstream.",
        |sample| load(&sample.metrics.revalidations),
    ),
    (
        "sealer_proxy_fills_total",
        "counter",
        "Blob fills started (one upstream GET per digest, shared by every client asking).",
        |sample| load(&sample.metrics.fills),
    ),
    (
        "sealer_proxy_peer_fills_total",
        "counter",
        "Blob fills streamed from another replica holding the digest's fill lease, instead of \
         from the upstream.",
        |sample| load(&sample.metrics.peer_fills),
    ),
    (
        "sealer_proxy_fills_in_flight",
        "gauge",
        "Blob fills running now.",
        |sample| sample.metrics.fills_in_flight(),
    ),
    (
        "sealer_proxy_fill_followers_total",
        "counter",
        "Clients that joined a blob fill another client started.",
        |sample| load(&sample.metrics.followers),
    ),
];

/// A counter's value as a sample.
fn load(counter: &AtomicU64) -> i64 {
    counter.load(Ordering::Relaxed) as i64
}

/// The Prometheus text of `samples`.
pub(crate) fn render(samples: &[Sample<'_>]) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "sealer_proxy_requests_total",
        "counter",
        "Reads (manifests and blobs) answered for an upstream's namespace, by X-Cache outcome.",
        samples.iter().flat_map(|sample| {
            [
                ("hit", load(&sample.metrics.hits)),
                ("miss", load(&sample.metrics.misses)),
                ("stale", load(&sample.metrics.stale)),
            ]
            .map(|(cache, value)| {
                (
                    format!("upstream=\"{}\",cache=\"{cache}\"", sample.name),
                    value,
                )
            })
        }),
    );
    for (name, kind, help, value) in PER_UPSTREAM {
        family(
            &mut out,
            name,
            kind,
            help,
            samples
                .iter()
                .map(|sample| (format!("upstream=\"{}\"", sample.name), value(sample))),
        );
    }
    family(
        &mut out,
        "sealer_proxy_fill_failures_total",
        "counter",
        "Blob fills that failed and committed nothing, by reason.",
        samples.iter().flat_map(|sample| {
            [
                ("digest_mismatch", load(&sample.metrics.digest_mismatches)),
                ("upstream", load(&sample.metrics.upstream_failures)),
                ("store", load(&sample.metrics.store_failures)),
            ]
            .map(|(reason, value)| {
                (
                    format!("upstream=\"{}\",reason=\"{reason}\"", sample.name),
                    value,
                )
            })
        }),
    );
    out
}

/// One metric family: `# HELP`, `# TYPE`, then a line per labelled value.
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    values: impl Iterator<Item = (String, i64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in values {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = UpstreamMetrics::default();
        metrics.answered(CacheStatus::Hit);
        metrics.answered(CacheStatus::Hit);
        metrics.answered(CacheStatus::Stale);
        metrics.fill_started();
        metrics.fill_ended(Some(FailureReason::DigestMismatch));
        metrics.fill_started();
        metrics.follower_joined();
        metrics.received(42);
        let text = render(&[Sample {
            name: "quay",
            metrics: &metrics,
            client: ClientStats {
                requests: 7,
                token_fetches: 1,
            },
            failing: true,
        }]);
        for line in [
            "# TYPE sealer_proxy_requests_total counter",
            "sealer_proxy_requests_total{upstream=\"quay\",cache=\"hit\"} 2",
            "sealer_proxy_requests_total{upstream=\"quay\",cache=\"miss\"} 0",
            "sealer_proxy_requests_total{upstream=\"quay\",cache=\"stale\"} 1",
            "sealer_proxy_upstream_requests_total{upstream=\"quay\"} 7",
            "sealer_proxy_upstream_bytes_total{upstream=\"quay\"} 42",
            "# TYPE sealer_proxy_upstream_failing gauge",
            "sealer_proxy_upstream_failing{upstream=\"quay\"} 1",
            "sealer_proxy_upstream_token_fetches_total{upstream=\"quay\"} 1",
            "sealer_proxy_fills_total{upstream=\"quay\"} 2",
            "sealer_proxy_peer_fills_total{upstream=\"quay\"} 0",
            "# TYPE sealer_proxy_fills_in_flight gauge",
            "sealer_proxy_fills_in_flight{upstream=\"quay\"} 1",
            "sealer_proxy_fill_followers_total{upstream=\"quay\"} 1",
            "sealer_proxy_fill_failures_total{upstream=\"quay\",reason=\"digest_mismatch\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
