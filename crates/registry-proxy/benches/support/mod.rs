//! What the registry benches share. Our registry runs as a child process of the bench binary
//! (so that its CPU time is its own): the binary re-executed with
//! `SEALER_BENCH_SERVE=<config file>`, which runs `sealer_registry_proxy::run` with info logs,
//! as `sealer registry serve` runs it. A bench's `main` calls [`child_or_usage`] first.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sealer_fs_abstraction::{Fs, RealFs};
use sealer_registry_proxy::ServerConfig;
use sealer_test_harness::{http_get, temp_dir};

/// A bench's result: any error ends it with its message.
pub type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Set in the child that serves our registry: the configuration file.
const SERVE_ENV: &str = "SEALER_BENCH_SERVE";
/// How long a started child may take to answer `GET /v2/`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// What a bench's `main` does first. In the child: serves the configuration of
/// `SEALER_BENCH_SERVE` until killed, and returns how that ended. Not run by `cargo bench`
/// (which passes `--bench`; `cargo test --benches` does not): prints how to run bench `name`
/// and returns `Ok`, so that tests spend no minutes here. `None`: run the bench.
pub fn child_or_usage(name: &str) -> Option<BenchResult> {
    if let Some(config) = std::env::var_os(SERVE_ENV) {
        return Some(serve(Path::new(&config)));
    }
    if !std::env::args().any(|arg| arg == "--bench") {
        println!(
            "{name} benchmark: run it with `cargo bench -p sealer-registry-proxy --bench {name}`"
        );
        return Some(Ok(()));
    }
    // reqwest here has no TLS provider of its own: the project's one, ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    None
}

/// The benches' HTTP client: HTTP/1.1 (as registry clients speak it), many idle connections
/// kept per host, and a bound on any one exchange.
pub fn http_client() -> BenchResult<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(600))
        .build()?)
}

/// Prints one target line: `value op target` (`>=`, `<=` or `==`) and whether it holds.
pub fn verdict(label: &str, value: Option<f64>, op: &str, target: f64) {
    match value {
        None => println!("  {label:<32} n/a      (target {op} {target})"),
        Some(value) => {
            let met = match op {
                ">=" => value >= target,
                "<=" => value <= target,
                _ => (value - target).abs() < f64::EPSILON,
            };
            println!(
                "  {label:<32} {value:>7.2}  (target {op} {target}) {}",
                if met { "MET" } else { "MISSED" }
            );
        }
    }
}

/// Our registry's process, serving on `127.0.0.1:<port>`; killed when dropped.
pub struct OursChild {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl OursChild {
    /// Checks `config` (YAML; it must listen on `127.0.0.1:<port>`), so that a configuration
    /// error reads as one, then starts the child and waits until it answers `GET /v2/`.
    pub fn start(config: &str, port: u16) -> BenchResult<Self> {
        ServerConfig::parse(config, Path::new("registry.yaml"))?;
        let dir = temp_dir()?;
        let fs = RealFs::open_root(dir.path())?;
        fs.write_atomic(Path::new("registry.yaml"), config.as_bytes())?;
        let child = spawn_logged(
            Command::new(std::env::current_exe()?)
                .env(SERVE_ENV, dir.path().join("registry.yaml"))
                .env_remove("RUST_LOG"),
            &dir.path().join("serve.log"),
        )?;
        let mut ours = Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
            dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = ours.child.try_wait()? {
                return Err(format!("it exited ({status}): {}", ours.log_tail()).into());
            }
            let ready = http_get(&format!("{}/v2/", ours.url), Duration::from_secs(1))
                .is_ok_and(|response| response.status == 200);
            if ready {
                return Ok(ours);
            }
            if Instant::now() >= deadline {
                return Err(
                    format!("no answer within {READY_TIMEOUT:?}: {}", ours.log_tail()).into(),
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    #[allow(dead_code, reason = "not every bench reads its CPU time")]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last error-looking line of its log (or the last line).
    pub fn log_tail(&self) -> String {
        let text = RealFs::open_root(self.dir.path())
            .and_then(|fs| fs.read(Path::new("serve.log")))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        text.lines()
            .rev()
            .find(|line| line.contains("error") || line.contains("Error"))
            .or_else(|| text.lines().last())
            .unwrap_or("no log")
            .trim()
            .to_owned()
    }
}

impl Drop for OursChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` with stdout and stderr appended to `log`.
// A child's output must go to a real file descriptor: `Stdio` takes a `std::fs::File`, which
// the `Fs` abstraction does not hand out.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
fn spawn_logged(command: &mut Command, log: &Path) -> BenchResult<Child> {
    let file = std::fs::File::create(log)?;
    Ok(command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()?)
}

/// The child: our registry, as `sealer registry serve` runs it (info logs to stderr).
fn serve(config: &Path) -> BenchResult {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .init();
    let config = ServerConfig::load(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(sealer_registry_proxy::run(
        &config,
        sealer_registry_proxy::shutdown_signal(),
    ))?;
    Ok(())
}
