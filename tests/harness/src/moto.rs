//! A real S3 server: moto's `moto_server` on a loopback port, from the virtual environment
//! that `scripts/install-moto.sh` makes.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tempfile::TempDir;

use crate::http::{http_get, http_request};
use crate::{Result, free_port, temp_dir};

/// Runs moto's app as `moto_server` does, but serving one request at a time. moto checks
/// `If-None-Match`/`If-Match` and then writes, without a lock (moto/s3/responses.py,
/// `put_object`), so on the threaded `moto_server` two racing conditional writes can both
/// win (seen: two `If-None-Match: *` creates of one key both answered 200). S3 makes them
/// atomic; a serialized moto does too. Non-threaded werkzeug answers HTTP/1.0 and closes each
/// connection, so no idle client connection blocks the others.
const SERIALIZED_SERVER: &str = r#"
import os, sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app)
port = int(sys.argv[1])
os.environ.setdefault("MOTO_PORT", str(port))
run_simple("127.0.0.1", port, DomainDispatcherApplication(create_backend_app),
           threaded=False, request_handler=MotoRequestHandler)
"#;

/// How moto serves requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MotoMode {
    /// One request at a time: conditional writes are atomic, as on S3 (the default; every
    /// test of races needs it).
    #[default]
    Serialized,
    /// `moto_server -H 127.0.0.1 -p PORT` itself: a thread per request, faster for bulk data
    /// (benchmarks), but racing conditional writes may both succeed.
    Threaded,
}

/// How long moto (a Python program) may take to answer after its start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts with a fresh port when another process takes the chosen one first.
const PORT_ATTEMPTS: usize = 5;

/// The `moto_server` of the virtual environment: `$MOTO_VENV/bin/moto_server`, else
/// `.venv-moto/bin/moto_server` at the workspace root (where `scripts/install-moto.sh` puts
/// it).
pub fn moto_server_path() -> PathBuf {
    let venv = std::env::var_os("MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(".venv-moto")
        });
    venv.join("bin").join("moto_server")
}

/// Whether `moto_server` is installed; like [`crate::require_tool`] otherwise (a
/// `SKIPPED: moto_server not installed` line, or a panic under `CI=true`).
pub fn require_moto() -> bool {
    if moto_server_path().is_file() {
        return true;
    }
    crate::tool_missing("moto_server", "./scripts/install-moto.sh installs it")
}

/// A running `moto_server -H 127.0.0.1 -p PORT` (in-memory S3) with one bucket created.
/// Dropping it kills the process and removes its log directory.
#[derive(Debug)]
pub struct Moto {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
    bucket: String,
}

impl Moto {
    /// [`Moto::start_with`] in [`MotoMode::Serialized`].
    pub fn start() -> Result<Self> {
        Self::start_with(MotoMode::Serialized)
    }

    /// Starts moto on a free port, waits (at most 30 s) until it answers, and creates the
    /// bucket `sealer-test`. See [`require_moto`] for a missing server.
    pub fn start_with(mode: MotoMode) -> Result<Self> {
        let program = moto_server_path();
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let dir = temp_dir()?;
            let port = free_port()?.to_string();
            let log = File::create(dir.path().join("moto.log"))?;
            let mut command = match mode {
                MotoMode::Threaded => {
                    let mut command = Command::new(&program);
                    command.args(["-H", "127.0.0.1", "-p", &port]);
                    command
                }
                MotoMode::Serialized => {
                    // The venv's interpreter, next to moto_server.
                    let mut command = Command::new(program.with_file_name("python"));
                    command.args(["-c", SERIALIZED_SERVER, &port]);
                    command
                }
            };
            let child = command
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {} (see require_moto)", program.display()))?;
            let mut moto = Self {
                dir,
                port: port.parse()?,
                child: Some(child),
                bucket: "sealer-test".to_owned(),
            };
            match moto.wait_ready() {
                Ok(()) => {
                    moto.create_bucket()?;
                    return Ok(moto);
                }
                Err(error) => {
                    moto.stop();
                    let taken = moto.log().contains("Address already in use");
                    if !taken {
                        return Err(error);
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no port")))
            .context("moto_server: every chosen port was taken")
    }

    /// `http://127.0.0.1:PORT`, the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bucket created at start.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Creates another bucket (moto accepts the unsigned `PUT /<bucket>`).
    pub fn create_bucket_named(&self, bucket: &str) -> Result<()> {
        let url = format!("{}/{bucket}", self.endpoint());
        let response = http_request("PUT", &url, &[], &[], Duration::from_secs(10))?;
        if response.status != 200 {
            bail!(
                "PUT {url}: {} {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            );
        }
        Ok(())
    }

    /// moto's output so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read(self.dir.path().join("moto.log"))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Kills the server (SIGKILL) and waits for it; does nothing when it is not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn create_bucket(&self) -> Result<()> {
        self.create_bucket_named(&self.bucket)
            .with_context(|| format!("moto log:\n{}", self.log()))
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                bail!(
                    "moto_server exited ({status}) during start; log:\n{}",
                    self.log()
                );
            }
            if http_get(&format!("{}/", self.endpoint()), Duration::from_millis(500))
                .is_ok_and(|response| response.status == 200)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "moto_server did not answer within {START_TIMEOUT:?}; log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}
