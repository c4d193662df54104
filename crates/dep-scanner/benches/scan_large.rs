//! A 50 MB multi-document manifest file, scanned once: prints the throughput (MB per second
//! of CPU time, on one core: the scan is single threaded; and by the wall clock) and the peak memory against the file size (VmHWM from
//! /proc/self/status). Targets (issue 11): at least 10 MB/s, at most 3x the file size.
//!
//! `cargo bench -p sealer-dep-scanner --bench scan_large` (SIZE_MB=… to change the size).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Scratch directories from `tempfile` (clippy.toml bans it outside fs-abstraction).
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use sealer_dep_scanner::{ScanOptions, scan_file};
use sealer_fs_abstraction::{Fs, RealFs};

/// One realistic document: a Deployment with two containers, args, env and probes.
fn document(index: usize) -> String {
    let app = index % 200;
    format!(
        r#"---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app-{index}
  namespace: team-{app}
  labels:
    app.kubernetes.io/name: app-{app}
    app.kubernetes.io/version: "1.{app}.0"
spec:
  replicas: 2
  selector:
    matchLabels:
      app.kubernetes.io/name: app-{app}
  template:
    metadata:
      labels:
        app.kubernetes.io/name: app-{app}
    spec:
      serviceAccountName: app-{app}
      containers:
        - name: main
          image: registry.example.com/team-{app}/app:1.{app}.0
          args:
            - --listen=0.0.0.0:8080
            - --sidecar-image=registry.example.com/team-{app}/sidecar:2.{app}
            - --log-level=info
          env:
            - name: HELPER_IMAGE
              value: "quay.io/example/helper:{app}"
            - name: POD_NAMESPACE
              valueFrom:
                fieldRef: {{fieldPath: metadata.namespace}}
          ports:
            - containerPort: 8080
              name: http
          resources:
            limits: {{cpu: 500m, memory: 256Mi}}
            requests: {{cpu: 100m, memory: 128Mi}}
          readinessProbe:
            httpGet: {{path: /healthz, port: http}}
        - name: proxy
          image: "quay.io/brancz/kube-rbac-proxy:v0.13.{app}"
          args: ["--secure-listen-address=:8443", "--upstream=http://127.0.0.1:8080/"]
"#
    )
}

fn peak_rss_bytes() -> u64 {
    let fs = RealFs::open_root("/proc/self").unwrap();
    let status = String::from_utf8(fs.read(Path::new("status")).unwrap()).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// CPU time this thread has run, in seconds (`/proc/thread-self/schedstat`): on a loaded
/// machine the wall clock also counts time spent waiting for a core.
fn cpu_seconds() -> f64 {
    let fs = RealFs::open_root("/proc/thread-self").unwrap();
    let stat = String::from_utf8(fs.read(Path::new("schedstat")).unwrap()).unwrap();
    let nanos: u64 = stat.split_whitespace().next().unwrap().parse().unwrap();
    nanos as f64 / 1e9
}

fn main() {
    let size_mb: u64 = std::env::var("SIZE_MB")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(50);
    let target = size_mb << 20;
    let dir = tempfile::tempdir().unwrap();
    let fs = RealFs::open_root(dir.path()).unwrap();
    // Written document by document: the file is never in memory.
    let mut file = fs.create(Path::new("all.yaml")).unwrap();
    let (mut written, mut documents) = (0u64, 0usize);
    while written < target {
        let text = document(documents);
        file.write_all(text.as_bytes()).unwrap();
        written += text.len() as u64;
        documents += 1;
    }
    file.sync_all().unwrap();
    drop(file);
    let before = peak_rss_bytes();

    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let report = scan_file(&fs, Path::new("all.yaml"), &ScanOptions::default()).unwrap();
    let cpu = cpu_seconds() - cpu_before;
    let elapsed = started.elapsed();
    let peak = peak_rss_bytes();

    let mb = written as f64 / 1e6;
    println!(
        "scanned {mb:.1} MB ({documents} documents): {} images, {} warnings",
        report.images.len(),
        report.warnings.len()
    );
    println!(
        "throughput: {:.1} MB/s of CPU time on one core ({cpu:.2} s; target >= 10 MB/s), \
         {:.1} MB/s by the wall clock ({:.2} s)",
        mb / cpu,
        mb / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "peak memory: {:.1} MB = {:.2}x the file size (before the scan {:.1} MB; target <= 3x)",
        peak as f64 / 1e6,
        peak as f64 / written as f64,
        before as f64 / 1e6
    );
}
