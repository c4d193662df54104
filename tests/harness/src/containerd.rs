//! A private containerd daemon (Debian's containerd 1.6) for checking the `hosts.toml` files
//! of `sealer registry mirror-config` against containerd's own resolver: its root, state,
//! socket and configuration in a temporary directory, the CRI plugin off, driven with `ctr`.
//! containerd needs root; [`Containerd::start`] says so when it cannot run.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::process::describe;
use crate::{Result, run_bounded};

/// How long containerd may take to answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `containerd --config DIR/config.toml`. Dropping it kills the daemon and removes
/// its directory (content, snapshots, socket).
#[derive(Debug)]
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    /// Starts the daemon and waits (at most 30 s) until `ctr version` reaches it.
    pub fn start() -> Result<Self> {
        let dir = crate::temp_dir()?;
        let path = |name: &str| dir.path().join(name);
        let config = format!(
            "version = 2\nroot = {root:?}\nstate = {state:?}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = {socket:?}\n",
            root = path("root"),
            state = path("state"),
            socket = path("containerd.sock"),
        );
        std::fs::write(path("config.toml"), config)?;
        let log = std::fs::File::create(path("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(path("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        let mut daemon = Self { dir, child };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = daemon.child.try_wait()? {
                bail!("containerd exited ({status}):\n{}", daemon.log());
            }
            let probe = daemon.run_ctr(&["version"], Duration::from_secs(10))?;
            if probe.status.success() {
                return Ok(daemon);
            }
            if Instant::now() >= deadline {
                bail!(
                    "containerd did not answer within {START_TIMEOUT:?}:\n{}",
                    daemon.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its gRPC socket (`ctr --address`).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs `ctr --address SOCKET ARGS…` (at most `timeout`); fails with its output and the
    /// daemon's log unless it exits 0. Returns stdout.
    pub fn ctr(&self, args: &[&str], timeout: Duration) -> Result<String> {
        let output = self.run_ctr(args, timeout)?;
        if !output.status.success() {
            bail!(
                "{}\ncontainerd's log:\n{}",
                describe("ctr", args, &output),
                self.log()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs `ctr --address SOCKET ARGS…` (at most `timeout`); its exit status is the caller's
    /// to judge.
    fn run_ctr(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        run_bounded(
            Command::new("ctr")
                .arg("--address")
                .arg(self.socket())
                .args(args),
            timeout,
        )
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
