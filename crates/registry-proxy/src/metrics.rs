//! The pull-through cache's counters and their Prometheus text exposition (`GET /metrics`,
//! format 0.0.4, written by hand). Every series is labelled with the upstream's configured
//! name; the names are listed in ARCHITECTURE.md.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use sealer_registry_client::ClientStats;

use crate::source::CacheStatus;

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
}

/// The Prometheus text of `samples`.
pub(crate) fn render(samples: &[Sample<'_>]) -> String {
    let mut out = String::new();
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
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
                    value as i64,
                )
            })
        }),
    );
    let simple = |out: &mut String,
                  name: &str,
                  kind: &str,
                  help: &str,
                  value: &dyn Fn(&Sample<'_>) -> i64| {
        family(
            out,
            name,
            kind,
            help,
            samples
                .iter()
                .map(|sample| (format!("upstream=\"{}\"", sample.name), value(sample))),
        );
    };
    simple(
        &mut out,
        "sealer_proxy_upstream_requests_total",
        "counter",
        "HTTP requests sent to the upstream (retries and token round trips included).",
        &|sample| sample.client.requests as i64,
    );
    simple(
        &mut out,
        "sealer_proxy_upstream_bytes_total",
        "counter",
        "Manifest and blob bytes received from the upstream.",
        &|sample| load(&sample.metrics.bytes) as i64,
    );
    simple(
        &mut out,
        "sealer_proxy_upstream_token_fetches_total",
        "counter",
        "Bearer tokens fetched for the upstream (cached tokens reused do not count).",
        &|sample| sample.client.token_fetches as i64,
    );
    simple(
        &mut out,
        "sealer_proxy_tag_revalidations_total",
        "counter",
        "Cached tags revalidated with a HEAD to the upstream.",
        &|sample| load(&sample.metrics.revalidations) as i64,
    );
    simple(
        &mut out,
        "sealer_proxy_fills_total",
        "counter",
        "Blob fills started (one upstream GET per digest, shared by every client asking).",
        &|sample| load(&sample.metrics.fills) as i64,
    );
    simple(
        &mut out,
        "sealer_proxy_fills_in_flight",
        "gauge",
        "Blob fills running now.",
        &|sample| sample.metrics.fills_in_flight(),
    );
    simple(
        &mut out,
        "sealer_proxy_fill_followers_total",
        "counter",
        "Clients that joined a blob fill another client started.",
        &|sample| load(&sample.metrics.followers) as i64,
    );
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
                    value as i64,
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
        }]);
        for line in [
            "# TYPE sealer_proxy_requests_total counter",
            "sealer_proxy_requests_total{upstream=\"quay\",cache=\"hit\"} 2",
            "sealer_proxy_requests_total{upstream=\"quay\",cache=\"miss\"} 0",
            "sealer_proxy_requests_total{upstream=\"quay\",cache=\"stale\"} 1",
            "sealer_proxy_upstream_requests_total{upstream=\"quay\"} 7",
            "sealer_proxy_upstream_bytes_total{upstream=\"quay\"} 42",
            "sealer_proxy_upstream_token_fetches_total{upstream=\"quay\"} 1",
            "sealer_proxy_fills_total{upstream=\"quay\"} 2",
            "# TYPE sealer_proxy_fills_in_flight gauge",
            "sealer_proxy_fills_in_flight{upstream=\"quay\"} 1",
            "sealer_proxy_fill_followers_total{upstream=\"quay\"} 1",
            "sealer_proxy_fill_failures_total{upstream=\"quay\",reason=\"digest_mismatch\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
