//! A real Debian `docker-registry` (distribution 2.8.2) on a loopback port.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tempfile::TempDir;

use crate::http::http_get;
use crate::token::TokenServer;
use crate::{Result, free_port, path_str, temp_dir};

/// How long a registry may take to answer `/v2/` after its start.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts with a fresh port when another process takes the chosen one first.
const PORT_ATTEMPTS: usize = 5;
/// Marks the harness's own requests (readiness and log-sync probes) so that
/// [`Registry::access_log`] leaves them out.
const PROBE_QUERY: &str = "sealer-harness-probe=";
/// The service name of token-auth registries (the JWT's `aud`).
pub(crate) const DEFAULT_SERVICE: &str = "sealer-test-registry";

/// How clients authenticate to a [`Registry`].
#[derive(Debug, Clone, Copy, Default)]
pub enum RegistryAuth<'a> {
    /// Anonymous: everyone may pull and push.
    #[default]
    None,
    /// HTTP basic auth against an htpasswd file with one bcrypt entry.
    Htpasswd {
        /// User name.
        user: &'a str,
        /// Password.
        password: &'a str,
    },
    /// Bearer tokens from this token server (`auth.token` with its realm, service, issuer
    /// and certificate). The certificate is copied, so the registry outlives the server's
    /// files (not its answers).
    Token(&'a TokenServer),
}

/// The upstream of distribution's own pull-through cache mode (`proxy.remoteurl`).
///
/// distribution 2.8.2 pings the upstream at start and dies when it is unreachable; it sends
/// the credentials only to token realms (its credential store is keyed by realm URL), so an
/// upstream with credentials must use [`RegistryAuth::Token`] (htpasswd upstreams get 401);
/// and it commits a fetched blob after answering, so a second GET right after the first may
/// go upstream again, or get a 500 (`invalid checksum digest format`) while the commit is
/// half done.
#[derive(Debug, Clone, Default)]
pub struct ProxyUpstream {
    /// The upstream registry, e.g. `http://127.0.0.1:5000`.
    pub remote_url: String,
    /// Upstream user name, if any.
    pub username: Option<String>,
    /// Upstream password, if any.
    pub password: Option<String>,
}

/// What [`Registry::start`] configures.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions<'a> {
    /// Client authentication.
    pub auth: RegistryAuth<'a>,
    /// Pull-through mode: `None` for an ordinary registry.
    pub proxy: Option<ProxyUpstream>,
    /// Storage in an S3 bucket (distribution's `s3` driver) instead of a temp directory.
    pub s3: Option<S3Storage>,
}

/// distribution's `s3` storage driver settings, for a bucket on a loopback S3 server (moto).
#[derive(Debug, Clone)]
pub struct S3Storage {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The bucket (it must exist).
    pub bucket: String,
    /// Where in the bucket (`rootdirectory`), e.g. `/distribution`.
    pub root: String,
}

impl<'a> RegistryOptions<'a> {
    /// An anonymous, ordinary registry.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// A registry that wants HTTP basic auth as `user:password`.
    pub fn htpasswd(user: &'a str, password: &'a str) -> Self {
        Self {
            auth: RegistryAuth::Htpasswd { user, password },
            ..Self::default()
        }
    }

    /// A registry that wants bearer tokens from `server`.
    pub fn token(server: &'a TokenServer) -> Self {
        Self {
            auth: RegistryAuth::Token(server),
            ..Self::default()
        }
    }
}

/// One line of the registry's access log (Apache combined format, written by distribution
/// when a response is complete):
/// `127.0.0.1 - - [30/Nov/2026:03:13:44 +0000] "GET /v2/foo/blobs/sha256:… HTTP/1.1" 404 157 "" "curl/7.88.1"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEntry {
    /// Request method.
    pub method: String,
    /// Path, without the query.
    pub path: String,
    /// Query string (without `?`), when there was one.
    pub query: Option<String>,
    /// Response status.
    pub status: u16,
    /// Response body bytes written (0 when the log says `-`).
    pub bytes: u64,
    /// The client's `User-Agent` (empty when the line has none).
    pub user_agent: String,
}

impl AccessEntry {
    /// Parses one combined-format line; `None` for every other line (distribution's logrus
    /// lines start with `time=`).
    pub fn parse(line: &str) -> Option<Self> {
        if line.starts_with("time=") {
            return None;
        }
        let (_client, rest) = line.split_once(" [")?;
        let (_, rest) = rest.split_once("] \"")?;
        let (request, rest) = rest.split_once('"')?;
        let mut request = request.split(' ');
        let method = request.next()?.to_owned();
        let target = request.next()?;
        if !request.next()?.starts_with("HTTP/") {
            return None;
        }
        let mut numbers = rest.split_whitespace();
        let status = numbers.next()?.parse().ok()?;
        let bytes = numbers.next()?.parse().unwrap_or(0);
        // `"referer" "user agent"`: the last quoted field.
        let user_agent = rest
            .trim_end()
            .strip_suffix('"')
            .and_then(|rest| rest.rsplit_once('"'))
            .map(|(_, agent)| agent.to_owned())
            .unwrap_or_default();
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
            None => (target.to_owned(), None),
        };
        Some(Self {
            method,
            path,
            query,
            status,
            bytes,
            user_agent,
        })
    }

    /// Whether this is one of the harness's own probes.
    fn is_probe(&self) -> bool {
        self.query
            .as_deref()
            .is_some_and(|query| query.contains(PROBE_QUERY))
    }
}

/// A running `docker-registry serve CONFIG` on `127.0.0.1:PORT`, with its storage, config and
/// log in a temporary directory. Dropping it kills the process and removes the directory.
#[derive(Debug)]
pub struct Registry {
    dir: TempDir,
    port: u16,
    config: String,
    child: Option<Child>,
    probes: AtomicU64,
}

impl Registry {
    /// Writes the config and starts the registry on a free port; returns once `GET /v2/`
    /// answers (200, or 401 with auth) — at most 10 s. Retries with another port when one is
    /// taken between choosing and binding it.
    pub fn start(options: RegistryOptions<'_>) -> Result<Self> {
        let dir = temp_dir()?;
        let auth = match options.auth {
            RegistryAuth::None => String::new(),
            RegistryAuth::Htpasswd { user, password } => {
                let hash = bcrypt::hash(password, 4).context("bcrypt")?;
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, format!("{user}:{hash}\n"))?;
                format!(
                    "auth:\n  htpasswd:\n    realm: sealer-test\n    path: {}\n",
                    quote(path_str(&path)?)
                )
            }
            RegistryAuth::Token(server) => {
                let path = dir.path().join("token-ca.pem");
                std::fs::copy(server.certificate_path(), &path)?;
                format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    quote(&server.realm()),
                    quote(server.service()),
                    quote(server.issuer()),
                    quote(path_str(&path)?)
                )
            }
        };
        let proxy = match &options.proxy {
            None => String::new(),
            Some(upstream) => {
                let mut proxy = format!("proxy:\n  remoteurl: {}\n", quote(&upstream.remote_url));
                if let Some(username) = &upstream.username {
                    proxy.push_str(&format!("  username: {}\n", quote(username)));
                }
                if let Some(password) = &upstream.password {
                    proxy.push_str(&format!("  password: {}\n", quote(password)));
                }
                proxy
            }
        };
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage)?;
        let driver = match &options.s3 {
            None => format!(
                "  filesystem:\n    rootdirectory: {}\n",
                quote(path_str(&storage)?)
            ),
            // Blobs are served through the registry, as ours are (no redirect to the bucket).
            Some(s3) => format!(
                "  s3:\n    region: us-east-1\n    bucket: {}\n    regionendpoint: {}\n    rootdirectory: {}\n    accesskey: sealer-test\n    secretkey: sealer-test\n    secure: false\n    v4auth: true\n  redirect:\n    disable: true\n",
                quote(&s3.bucket),
                quote(&s3.endpoint),
                quote(&s3.root)
            ),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n{driver}  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:@PORT@\n  secret: sealer-harness-secret\n{auth}{proxy}"
        );
        let mut registry = Self {
            dir,
            port: 0,
            config,
            child: None,
            probes: AtomicU64::new(0),
        };
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            registry.port = free_port()?;
            match registry.launch() {
                Ok(()) => return Ok(registry),
                Err(Launch::PortTaken(error)) => last_error = Some(error),
                Err(Launch::Failed(error)) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no port")))
            .context("docker-registry: every chosen port was taken")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// `127.0.0.1:PORT`, as in image references (`127.0.0.1:PORT/repo:tag`).
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The storage root (distribution's `docker/registry/v2/…` tree).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The log file (stdout and stderr of every run, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The whole log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read(self.log_path())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The process id while it runs (benchmarks read its CPU time from `/proc/<pid>/stat`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Every request the registry has logged (all runs), in order, without the harness's own
    /// probes. distribution logs a request just after its response is complete, so while the
    /// registry runs this first sends a probe and waits (at most 2 s) until the probe is
    /// logged: every request that a caller saw answered before the call is then included.
    pub fn access_log(&self) -> Vec<AccessEntry> {
        if self.child.is_some() {
            let probe = format!("sync-{}", self.probes.fetch_add(1, Ordering::Relaxed));
            let _ = self.probe_and_wait(&probe, Duration::from_secs(2));
        }
        self.log()
            .lines()
            .filter_map(AccessEntry::parse)
            .filter(|entry| !entry.is_probe())
            .collect()
    }

    /// How many logged requests have `method` and a path that satisfies `path`.
    pub fn count(&self, method: &str, path: impl Fn(&str) -> bool) -> usize {
        self.access_log()
            .iter()
            .filter(|entry| entry.method == method && path(&entry.path))
            .count()
    }

    /// How many `GET …/blobs/<digest>` requests were logged (any status); with `None`, of
    /// any blob.
    pub fn blob_gets(&self, digest: Option<&str>) -> usize {
        self.count("GET", |path| match path.split_once("/blobs/") {
            Some((_, blob)) => digest.is_none_or(|digest| blob == digest),
            None => false,
        })
    }

    /// Kills the process (SIGKILL) and waits for it. The storage and port stay reserved for
    /// [`Registry::restart`]. Does nothing when it is not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the registry if it runs, then starts it again on the same port with the same
    /// storage and config (for "upstream down, then back" tests). Waits up to 10 s for the
    /// port to be free again.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(Launch::PortTaken(error)) if Instant::now() >= deadline => {
                    return Err(error.context("docker-registry: the port stayed taken"));
                }
                Err(Launch::PortTaken(_)) => thread::sleep(Duration::from_millis(100)),
                Err(Launch::Failed(error)) => return Err(error),
            }
        }
    }

    /// Starts the process on `self.port` and waits until it answers its readiness probe.
    fn launch(&mut self) -> std::result::Result<(), Launch> {
        let fail = |error: anyhow::Error| Launch::Failed(error);
        let config_path = self.dir.path().join("config.yml");
        std::fs::write(
            &config_path,
            self.config.replace("@PORT@", &self.port.to_string()),
        )
        .map_err(|error| fail(error.into()))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|error| fail(error.into()))?;
        let log_err = log.try_clone().map_err(|error| fail(error.into()))?;
        let log_start = log_len(&log);
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            // Its AWS SDK refuses to start when a CA bundle is named (its transport cannot
            // take one), and loopback S3 is plain HTTP anyway.
            .env_remove("AWS_CA_BUNDLE")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .context("starting docker-registry (is it installed? see require_tool)")
            .map_err(fail)?;
        self.child = Some(child);
        let probe = format!("ready-{}", self.probes.fetch_add(1, Ordering::Relaxed));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log = self.log();
                let tail = tail(&log, log_start);
                let error =
                    anyhow::anyhow!("docker-registry exited ({status}) during start; log:\n{tail}");
                return Err(if tail.contains("address already in use") {
                    Launch::PortTaken(error)
                } else {
                    Launch::Failed(error)
                });
            }
            // Ours answered only if our probe reached our log.
            if self
                .probe_and_wait(&probe, Duration::from_millis(200))
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                let log = self.log();
                return Err(Launch::Failed(anyhow::anyhow!(
                    "docker-registry did not answer /v2/ within {START_TIMEOUT:?}; log:\n{}",
                    tail(&log, log_start)
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `GET /v2/?sealer-harness-probe=NAME` and waits until that request is in the
    /// log.
    fn probe_and_wait(&self, name: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let marker = format!("{PROBE_QUERY}{name} ");
        let response = http_get(&format!("{}/v2/?{PROBE_QUERY}{name}", self.url()), timeout)?;
        if !matches!(response.status, 200 | 401) {
            bail!("/v2/ answered {}", response.status);
        }
        loop {
            if self
                .log()
                .lines()
                .any(|line| !line.starts_with("time=") && line.contains(&marker))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("probe {name} not logged within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why one launch failed.
enum Launch {
    /// The port was taken (retry elsewhere, or later).
    PortTaken(anyhow::Error),
    /// Anything else.
    Failed(anyhow::Error),
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn quote(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// Current length of an open file.
fn log_len(file: &File) -> usize {
    file.metadata()
        .map(|meta| usize::try_from(meta.len()).unwrap_or(0))
        .unwrap_or(0)
}

/// The log written since byte `start`, at most its last 4 KiB.
fn tail(log: &str, start: usize) -> String {
    let since = log.get(start..).unwrap_or(log);
    let cut = since.len().saturating_sub(4096);
    let cut = (cut..since.len())
        .find(|index| since.is_char_boundary(*index))
        .unwrap_or(0);
    since[cut..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_combined_log_lines() {
        let entry = AccessEntry::parse(
            r#"127.0.0.1 - - [30/Nov/2026:03:13:44 +0000] "GET /v2/foo/blobs/sha256:00 HTTP/1.1" 404 157 "" "curl/7.88.1""#,
        )
        .unwrap();
        assert_eq!(entry.method, "GET");
        assert_eq!(entry.path, "/v2/foo/blobs/sha256:00");
        assert_eq!((entry.status, entry.bytes), (404, 157));
        assert_eq!(entry.user_agent, "curl/7.88.1");
        let entry = AccessEntry::parse(
            r#"127.0.0.1 - - [30/Nov/2026:03:13:44 +0000] "HEAD /v2/a/b/manifests/v1?ns=x HTTP/1.1" 200 0 "" "skopeo""#,
        )
        .unwrap();
        assert_eq!(entry.query.as_deref(), Some("ns=x"));
        assert!(
            AccessEntry::parse(
                r#"time="2026-11-30T03:13:44Z" level=info msg="response completed" http.request.uri=/v2/"#
            )
            .is_none()
        );
    }
}
