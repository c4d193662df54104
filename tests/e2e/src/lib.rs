//! Workspace-level end-to-end tests (in `tests/`): whole user journeys through the `sealer`
//! binary with real registries (`sealer-test-harness`) and real clients (skopeo). This
//! library holds what those journeys need beyond the harness: the `sealer` binary itself,
//! and a [`Tripwire`] that counts connections to an address that must stay unused.

// Test code: it drives real processes and sockets directly.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sealer_test_harness::{free_port, http_get, run_bounded};

/// The journeys' result type.
pub type Result<T> = anyhow::Result<T>;

/// Bound on one `sealer` command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// Bound on a registry server's start (it imports the carried images first).
const SERVE_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Bound on building the binary (a no-op when `cargo test --workspace` built it already).
const BUILD_TIMEOUT: Duration = Duration::from_secs(1800);

/// The repository's root (where `examples/` is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `sealer` binary of this workspace, built once per test process with the cargo that
/// runs the tests (in the same profile), so it is never stale.
pub fn sealer_binary() -> Result<PathBuf> {
    static BINARY: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| build_sealer().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_sealer() -> Result<PathBuf> {
    // target/<profile>/deps/<test binary>
    let test_binary = std::env::current_exe().context("locating the test binary")?;
    let profile_dir = test_binary
        .parent()
        .and_then(Path::parent)
        .context("the test binary is not in target/<profile>/deps")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(workspace_root()).args([
        "build",
        "--quiet",
        "-p",
        "sealer-cli",
        "--bin",
        "sealer",
    ]);
    if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        command.arg("--release");
    }
    let output = run_bounded(&mut command, BUILD_TIMEOUT)?;
    if !output.status.success() {
        bail!(
            "cargo build -p sealer-cli failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let binary = profile_dir.join("sealer");
    if !binary.is_file() {
        bail!("{} was not built", binary.display());
    }
    Ok(binary)
}

/// A listener on an address nothing may connect to (an upstream registry that was
/// stopped): it accepts and counts every connection until dropped.
#[derive(Debug)]
pub struct Tripwire {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Tripwire {
    /// Listens on `addr` (a port just released by a stopped process: std sets
    /// `SO_REUSEADDR`, so lingering connections of the old one do not block it).
    pub fn arm(addr: SocketAddr) -> Result<Self> {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("arming a tripwire on {addr}"))?;
        listener.set_nonblocking(true)?;
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let connections = connections.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok(_) => {
                            connections.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Ok(Self {
            addr,
            connections,
            stop,
            thread: Some(thread),
        })
    }

    /// The address watched.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Tripwire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Copies the example directory `from` into `to`, replacing its placeholder registries
/// (`upstream-a.invalid`, …) in every file with the addresses of real ones.
pub fn render_example(from: &Path, to: &Path, replacements: &[(&str, String)]) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            render_example(&entry.path(), &target, replacements)?;
        } else {
            let mut text = std::fs::read_to_string(entry.path())?;
            for (placeholder, value) in replacements {
                text = text.replace(placeholder, value);
            }
            std::fs::write(target, text)?;
        }
    }
    Ok(())
}

/// Runs `sealer --root ROOT ARGS…` (bounded) and returns its stdout; fails with both
/// outputs unless it succeeds.
pub fn run_sealer(root: &Path, args: &[&str]) -> Result<String> {
    let mut command = Command::new(sealer_binary()?);
    command
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("SEALER_ROOT")
        .env_remove("RUST_LOG");
    let output = run_bounded(&mut command, COMMAND_TIMEOUT)?;
    if !output.status.success() {
        bail!(
            "sealer {}\nstdout:\n{}\nstderr:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// A running `sealer --root ROOT registry serve ARGS… --listen 127.0.0.1:PORT`, its log
/// in a file; killed when dropped.
#[derive(Debug)]
pub struct Served {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Served {
    /// Starts it on a free port, its stderr in `log`; returns once `/v2/` answers 200.
    pub fn start(root: &Path, args: &[&str], log: &Path) -> Result<Self> {
        Self::start_on(free_port()?, root, args, log)
    }

    /// [`Served::start`] on `port` (a configuration that names its own address, such as a
    /// replica's advertised URL, needs the port first).
    pub fn start_on(port: u16, root: &Path, args: &[&str], log: &Path) -> Result<Self> {
        let child = Command::new(sealer_binary()?)
            .arg("--root")
            .arg(root)
            .args(["registry", "serve"])
            .args(args)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env_remove("SEALER_ROOT")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(File::create(log)?)
            .spawn()?;
        let mut served = Self {
            child,
            port,
            log: log.to_owned(),
        };
        let deadline = Instant::now() + SERVE_START_TIMEOUT;
        let base = format!("http://127.0.0.1:{port}/v2/");
        loop {
            if http_get(&base, Duration::from_secs(2)).is_ok_and(|answer| answer.status == 200) {
                return Ok(served);
            }
            if let Some(status) = served.child.try_wait()? {
                bail!("the registry exited ({status}):\n{}", served.log());
            }
            if Instant::now() >= deadline {
                bail!("the registry did not start:\n{}", served.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills it at once (SIGKILL: no shutdown, as a crash) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_tripwire_counts_connections() {
        let port = free_port().unwrap();
        let wire = Tripwire::arm(format!("127.0.0.1:{port}").parse().unwrap()).unwrap();
        assert_eq!(wire.connections(), 0);
        let _first = std::net::TcpStream::connect(wire.addr()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while wire.connections() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(wire.connections(), 1);
    }
}
