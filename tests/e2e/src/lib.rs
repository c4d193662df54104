//! Workspace-level end-to-end tests (in `tests/`): whole user journeys through the `sealer`
//! binary with real registries (`sealer-test-harness`) and real clients (skopeo). This
//! library holds what those journeys need beyond the harness: the `sealer` binary itself,
//! and a [`Tripwire`] that counts connections to an address that must stay unused.

// Test code: it drives real processes and sockets directly.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, bail};
use sealer_test_harness::run_bounded;

/// The journeys' result type.
pub type Result<T> = anyhow::Result<T>;

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
