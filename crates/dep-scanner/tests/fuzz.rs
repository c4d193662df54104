//! Property test: arbitrary bytes and arbitrary YAML (anchors, aliases, bombs, templates,
//! broken documents) never make the scanner panic or abort, and memory stays bounded. The
//! cases are generated from fixed seeds (reproducible), bounded in count and in time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use sealer_dep_scanner::{ScanOptions, scan, scan_file};
use sealer_fs_abstraction::{Fs, MemFs};

/// xorshift64*: enough randomness for generating inputs, without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const CASES: u64 = 150;
/// The whole test stops generating after this long (a slow machine runs fewer cases).
const TIME_BOUND: Duration = Duration::from_secs(10);

/// Bytes biased towards YAML's syntax, with some invalid UTF-8.
fn arbitrary_bytes(rng: &mut Rng) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ab:-[]{}&*!|>'\"#%@`,?. \n\n\t{{}}$()\\/=0123456789image";
    let len = rng.below(4096);
    (0..len)
        .map(|_| match rng.below(10) {
            0 => rng.next() as u8,
            _ => ALPHABET[rng.below(ALPHABET.len())],
        })
        .collect()
}

/// YAML-looking text: documents of nested mappings and sequences with anchors, aliases to
/// anchors defined before (and not), templates, runtime-image shapes and broken lines.
fn arbitrary_yaml(rng: &mut Rng) -> String {
    const KEYS: &[&str] = &[
        "image",
        "args",
        "command",
        "env",
        "name",
        "value",
        "kind",
        "data",
        "repository",
        "tag",
        "digest",
        "registry",
        "engineImage",
        "CSI_IMAGE",
        "containers",
        "spec",
        "template",
        "<<",
    ];
    const VALUES: &[&str] = &[
        "quay.io/a/b:1",
        "nginx",
        "\"\"",
        "--engine-image=x.io/e:v1",
        "--image-pull-policy=Always",
        "{{ .Values.image.repository }}",
        "{{ include \"x\" . }}",
        "${IMAGE}",
        "Deployment",
        "ConfigMap",
        "Pod",
        "'0.0.0.0:8080'",
        "|\n    a: x.io/b:2\n    --flag y.io/c@sha256:0000000000000000000000000000000000000000000000000000000000000001",
        "~",
        "[",
        "}",
        "\"unterminated",
    ];
    let mut text = String::new();
    let mut anchors = 0usize;
    for _ in 0..=rng.below(4) {
        if rng.below(2) == 0 {
            text.push_str("---\n");
        }
        let mut depth = 0usize;
        for _ in 0..rng.below(60) {
            let indent = "  ".repeat(depth);
            let line = match rng.below(9) {
                0 if anchors > 0 => {
                    format!("{indent}{}: *a{}\n", rng.pick(KEYS), rng.below(anchors + 1))
                }
                1 => {
                    anchors += 1;
                    depth += 1;
                    format!("{indent}{}: &a{}\n", rng.pick(KEYS), anchors - 1)
                }
                2 => {
                    depth += 1;
                    format!("{indent}{}:\n", rng.pick(KEYS))
                }
                3 => {
                    depth = depth.saturating_sub(rng.below(3));
                    format!("{indent}- {}\n", rng.pick(VALUES))
                }
                4 if anchors > 0 => {
                    let items: Vec<String> = (0..rng.below(12))
                        .map(|_| format!("*a{}", rng.below(anchors)))
                        .collect();
                    anchors += 1;
                    format!(
                        "{indent}{}: &a{} [{}]\n",
                        rng.pick(KEYS),
                        anchors - 1,
                        items.join(", ")
                    )
                }
                5 => {
                    depth = depth.saturating_sub(1);
                    format!("{indent}{}\n", rng.pick(VALUES))
                }
                _ => format!("{indent}{}: {}\n", rng.pick(KEYS), rng.pick(VALUES)),
            };
            text.push_str(&line);
            depth = depth.min(12);
        }
    }
    text
}

/// An alias bomb of random fan-out and depth.
fn bomb(rng: &mut Rng) -> String {
    let fan_out = 2 + rng.below(15);
    let mut text = String::from("a0: &a0 [lol]\n");
    for level in 1..=(2 + rng.below(30)) {
        let items = vec![format!("*a{}", level - 1); fan_out].join(",");
        text.push_str(&format!("a{level}: &a{level} [{items}]\n"));
    }
    text.push_str("---\nkind: Pod\nspec: {containers: [{image: x.io/after:1}]}\n");
    text
}

/// The peak resident set of this test binary, from /proc (Linux).
fn peak_rss_kib() -> Option<u64> {
    let fs = sealer_fs_abstraction::RealFs::open_root("/proc/self").ok()?;
    let status = String::from_utf8(fs.read(Path::new("status")).ok()?).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

#[test]
fn arbitrary_input_never_panics_and_memory_stays_bounded() {
    let started = Instant::now();
    let mut cases = 0;
    for seed in 0..CASES {
        if started.elapsed() > TIME_BOUND {
            break;
        }
        let mut rng = Rng::new(seed);
        let fs = MemFs::new();
        fs.create_dir_all(Path::new("manifests")).unwrap();
        fs.write_atomic(
            Path::new("manifests/bytes.yaml"),
            &arbitrary_bytes(&mut rng),
        )
        .unwrap();
        fs.write_atomic(
            Path::new("manifests/yaml.yaml"),
            arbitrary_yaml(&mut rng).as_bytes(),
        )
        .unwrap();
        fs.write_atomic(Path::new("manifests/bomb.yaml"), bomb(&mut rng).as_bytes())
            .unwrap();
        fs.write_atomic(Path::new("manifests/chart.tgz"), &arbitrary_bytes(&mut rng))
            .unwrap();
        fs.write_atomic(Path::new("imageList"), &arbitrary_bytes(&mut rng))
            .unwrap();
        let report = scan(&fs, &ScanOptions::default()).unwrap();
        // The document after each bomb is always scanned.
        assert!(
            report
                .images
                .iter()
                .any(|finding| finding.reference.to_string() == "x.io/after:1"),
            "seed {seed}: {report:?}"
        );
        // A chart whose templates and values are arbitrary.
        let chart = MemFs::new();
        chart.create_dir_all(Path::new("templates")).unwrap();
        chart
            .write_atomic(Path::new("Chart.yaml"), arbitrary_yaml(&mut rng).as_bytes())
            .unwrap();
        chart
            .write_atomic(
                Path::new("values.yaml"),
                arbitrary_yaml(&mut rng).as_bytes(),
            )
            .unwrap();
        chart
            .write_atomic(
                Path::new("templates/a.yaml"),
                arbitrary_yaml(&mut rng).as_bytes(),
            )
            .unwrap();
        scan(&chart, &ScanOptions::default()).unwrap();
        scan_file(
            &fs,
            Path::new("manifests/yaml.yaml"),
            &ScanOptions::default(),
        )
        .unwrap();
        cases += 1;
    }
    assert!(cases > 0);
    eprintln!("{cases} cases in {:?}", started.elapsed());
    if let Some(peak) = peak_rss_kib() {
        // Alias expansion is bounded per document (4 MiB): nothing near a bomb's gigabytes.
        assert!(peak < 512 * 1024, "peak RSS {peak} KiB after {cases} cases");
    }
}
