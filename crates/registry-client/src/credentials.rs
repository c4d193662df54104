//! Registry credentials: where they are read from and where `sealer login` writes them.
//!
//! Lookup order for a registry (first hit wins):
//! 1. docker's `config.json` (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`):
//!    `credHelpers[<registry>]`, then `credsStore`, both through
//!    `docker-credential-<helper> get` (stdin: the server URL, stdout: JSON), then the
//!    `auths` entry (`auth` = base64 `user:password`, or `username`/`password`, or
//!    `identitytoken`);
//! 2. containers' `auth.json` (`$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//!    `~/.config/containers/auth.json`), whose keys may also name a namespace
//!    (`quay.io/team`), the longest matching key winning.
//!
//! Keys are compared by host: `https://index.docker.io/v1/`, `index.docker.io`,
//! `registry-1.docker.io` and `docker.io` all mean Docker Hub. A helper that is missing,
//! fails or does not answer within the timeout is skipped with a warning.
//!
//! Files are read and written through [`RealFs`] handles rooted at their directories;
//! `config.json` is replaced atomically with mode 0600 and every other entry preserved.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sealer_fs_abstraction::{AtomicFile, ErrorChain, Fs, FsError, RealFs, error_chain};
use serde_json::{Map, Value};

/// The key and helper server URL docker uses for Docker Hub.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";
/// How long a credential helper may take by default.
pub const DEFAULT_HELPER_TIMEOUT: Duration = Duration::from_secs(30);
const CONFIG_JSON: &str = "config.json";

/// Why credentials could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A credentials file could not be read or written.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A credentials file is not valid.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A credential helper failed.
    #[error("credential helper docker-credential-{helper}: {reason}")]
    Helper {
        /// The helper's name.
        helper: String,
        /// What went wrong.
        reason: String,
    },
    /// There is nowhere to write credentials.
    #[error("no docker config directory: set DOCKER_CONFIG or HOME")]
    NoConfigDir,
}

/// Credentials for one registry. `Debug` does not show secrets.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user name and password (or personal access token).
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token server.
    IdentityToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

impl Credential {
    /// Who these credentials are, for cache keys: the user name and a hash of the secret
    /// (never the secret itself).
    pub fn identity(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        match self {
            Self::Basic { username, password } => {
                password.hash(&mut hasher);
                format!("basic:{username}:{:x}", hasher.finish())
            }
            Self::IdentityToken(token) => {
                token.hash(&mut hasher);
                format!("identity:{:x}", hasher.finish())
            }
        }
    }

    /// The `Authorization: Basic …` value, for basic credentials.
    pub fn basic_header(&self) -> Option<String> {
        match self {
            Self::Basic { username, password } => Some(format!(
                "Basic {}",
                BASE64.encode(format!("{username}:{password}"))
            )),
            Self::IdentityToken(_) => None,
        }
    }
}

/// Where credentials come from; see the module documentation. Lookups are cached for the
/// store's lifetime (credential helpers are slow).
#[derive(Debug)]
pub struct CredentialStore {
    docker_config_dir: Option<PathBuf>,
    auth_files: Vec<PathBuf>,
    helper_timeout: Duration,
    helper_path: Option<std::ffi::OsString>,
    /// Credentials given directly, by registry: answered before any file is read.
    fixed: HashMap<String, Credential>,
    cache: Mutex<HashMap<String, Option<Credential>>>,
}

impl Default for CredentialStore {
    fn default() -> Self {
        Self::from_env()
    }
}

impl CredentialStore {
    /// The standard locations, from the environment (`DOCKER_CONFIG`, `HOME`,
    /// `REGISTRY_AUTH_FILE`, `XDG_RUNTIME_DIR`).
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        };
        let home = var("HOME");
        let docker_config_dir =
            var("DOCKER_CONFIG").or_else(|| home.as_ref().map(|h| h.join(".docker")));
        let mut auth_files = Vec::new();
        auth_files.extend(var("REGISTRY_AUTH_FILE"));
        auth_files.extend(var("XDG_RUNTIME_DIR").map(|dir| dir.join("containers/auth.json")));
        auth_files.extend(home.map(|home| home.join(".config/containers/auth.json")));
        Self {
            docker_config_dir,
            auth_files,
            helper_timeout: DEFAULT_HELPER_TIMEOUT,
            helper_path: None,
            fixed: HashMap::new(),
            cache: Mutex::default(),
        }
    }

    /// No credentials at all: every request is anonymous.
    pub fn anonymous() -> Self {
        Self {
            docker_config_dir: None,
            auth_files: Vec::new(),
            helper_timeout: DEFAULT_HELPER_TIMEOUT,
            helper_path: None,
            fixed: HashMap::new(),
            cache: Mutex::default(),
        }
    }

    /// Only the docker config in `dir` (`dir/config.json`), which `login` writes.
    pub fn with_docker_config_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            docker_config_dir: Some(dir.into()),
            ..Self::anonymous()
        }
    }

    /// Answers `credential` for every repository of `registry` (as in a normalised
    /// reference: `docker.io` for Docker Hub), before any file or helper is consulted: for
    /// credentials that come from elsewhere (a server's configuration).
    pub fn with_credential(mut self, registry: &str, credential: Credential) -> Self {
        self.fixed.insert(registry.to_owned(), credential);
        self
    }

    /// Adds containers `auth.json` files to read (after the docker config).
    pub fn with_auth_files(mut self, files: impl IntoIterator<Item = PathBuf>) -> Self {
        self.auth_files.extend(files);
        self
    }

    /// How long a credential helper may run.
    pub fn with_helper_timeout(mut self, timeout: Duration) -> Self {
        self.helper_timeout = timeout;
        self
    }

    /// The `PATH` credential helpers are looked up in and run with (default: this
    /// process's).
    pub fn with_helper_path(mut self, path: impl Into<std::ffi::OsString>) -> Self {
        self.helper_path = Some(path.into());
        self
    }

    /// The docker `config.json` that `login` writes, if there is a place for it.
    pub fn docker_config_path(&self) -> Option<PathBuf> {
        self.docker_config_dir
            .as_ref()
            .map(|dir| dir.join(CONFIG_JSON))
    }

    /// The credentials for `repository` on `registry` (as in a normalised
    /// [`sealer_image_store::Reference`]: `docker.io` for Docker Hub), or `None`. Blocking:
    /// it may run a credential helper.
    pub fn get(
        &self,
        registry: &str,
        repository: &str,
    ) -> Result<Option<Credential>, CredentialError> {
        if let Some(credential) = self.fixed.get(registry) {
            return Ok(Some(credential.clone()));
        }
        let key = format!("{registry}/{repository}");
        if let Some(cached) = self.cache().get(&key) {
            return Ok(cached.clone());
        }
        let found = self.lookup(registry, repository)?;
        tracing::debug!(
            registry,
            found = found.is_some(),
            "looked up registry credentials"
        );
        self.cache().insert(key, found.clone());
        Ok(found)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Credential>>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lookup(
        &self,
        registry: &str,
        repository: &str,
    ) -> Result<Option<Credential>, CredentialError> {
        if let Some(path) = self.docker_config_path()
            && let Some(config) = read_json(&path)?
        {
            for helper in helpers_for(&config, registry) {
                match self.helper_get(helper, registry) {
                    Ok(Some(credential)) => return Ok(Some(credential)),
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(error = %ErrorChain(&error), "skipping a credential helper")
                    }
                }
            }
            if let Some(credential) = from_auths(&config, &path, registry, repository, false)? {
                return Ok(Some(credential));
            }
        }
        for path in &self.auth_files {
            if let Some(auth) = read_json(path)?
                && let Some(credential) = from_auths(&auth, path, registry, repository, true)?
            {
                return Ok(Some(credential));
            }
        }
        Ok(None)
    }

    fn helper_get(
        &self,
        helper: &str,
        registry: &str,
    ) -> Result<Option<Credential>, CredentialError> {
        let server = server_url(registry);
        let Some(output) = self.run_helper(helper, "get", server.as_bytes())? else {
            return Ok(None);
        };
        let answer: Value =
            serde_json::from_slice(&output).map_err(|error| CredentialError::Helper {
                helper: helper.to_owned(),
                reason: format!("its answer is not JSON: {}", ErrorChain(&error)),
            })?;
        let field = |name: &str| answer.get(name).and_then(Value::as_str).unwrap_or("");
        let (username, secret) = (field("Username"), field("Secret"));
        Ok(match (username, secret) {
            (_, "") => None,
            ("<token>", token) => Some(Credential::IdentityToken(token.to_owned())),
            (username, password) => Some(Credential::Basic {
                username: username.to_owned(),
                password: password.to_owned(),
            }),
        })
    }

    /// Stores `username`/`password` for `registry` in docker's `config.json` (created with
    /// mode 0600 when missing; replaced atomically, other entries kept), or in the
    /// credential helper the config names for it. Returns the file written.
    pub fn save_login(
        &self,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<PathBuf, CredentialError> {
        let dir = self
            .docker_config_dir
            .as_ref()
            .ok_or(CredentialError::NoConfigDir)?;
        let fs = RealFs::create_root(dir)?;
        let path = dir.join(CONFIG_JSON);
        let mut config = read_config(&fs, &path)?;
        let key = existing_key(&config, registry).unwrap_or_else(|| login_key(registry));
        let entry = match helper_for(&config, registry) {
            Some(helper) => {
                let input = serde_json::json!({
                    "ServerURL": server_url(registry),
                    "Username": username,
                    "Secret": password,
                });
                let input =
                    serde_json::to_vec(&input).map_err(|error| CredentialError::Helper {
                        helper: helper.clone(),
                        reason: error_chain(&error),
                    })?;
                self.run_helper(&helper, "store", &input)?.ok_or_else(|| {
                    CredentialError::Helper {
                        helper: helper.clone(),
                        reason: "it did not store the credentials".to_owned(),
                    }
                })?;
                Value::Object(Map::new())
            }
            None => serde_json::json!({ "auth": BASE64.encode(format!("{username}:{password}")) }),
        };
        auths_mut(&mut config, &path)?.insert(key, entry);
        write_config(&fs, &path, &config)?;
        self.cache().clear();
        Ok(path)
    }

    /// Removes the entries for `registry` from docker's `config.json` (and asks its
    /// credential helper to erase them). Returns whether anything was removed.
    pub fn remove_login(&self, registry: &str) -> Result<bool, CredentialError> {
        let Some(dir) = self.docker_config_dir.as_ref() else {
            return Ok(false);
        };
        let path = dir.join(CONFIG_JSON);
        let fs = match RealFs::open_root(dir) {
            Ok(fs) => fs,
            Err(error) if error.is_not_found() => return Ok(false),
            Err(error) => return Err(error.into()),
        };
        let mut config = read_config(&fs, &path)?;
        let mut removed = false;
        if let Some(helper) = helper_for(&config, registry) {
            match self.run_helper(&helper, "erase", server_url(registry).as_bytes()) {
                Ok(Some(_)) => removed = true,
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(error = %ErrorChain(&error), "the credential helper did not erase")
                }
            }
        }
        let auths = auths_mut(&mut config, &path)?;
        let before = auths.len();
        auths.retain(|key, _| key_host(key) != registry);
        removed |= auths.len() != before;
        if removed {
            write_config(&fs, &path, &config)?;
        }
        self.cache().clear();
        Ok(removed)
    }

    fn run_helper(
        &self,
        helper: &str,
        action: &str,
        input: &[u8],
    ) -> Result<Option<Vec<u8>>, CredentialError> {
        run_helper(
            helper,
            action,
            input,
            self.helper_timeout,
            self.helper_path.as_deref(),
        )
    }
}

/// The server URL docker's helpers know a registry by.
fn server_url(registry: &str) -> String {
    if registry == "docker.io" {
        DOCKER_HUB_KEY.to_owned()
    } else {
        registry.to_owned()
    }
}

/// The key `login` writes for a registry.
fn login_key(registry: &str) -> String {
    server_url(registry)
}

/// The registry host a config key names: scheme and path dropped, Docker Hub aliases
/// folded into `docker.io`.
fn key_host(key: &str) -> String {
    key_parts(key).0
}

/// A key's host and namespace path (kept only for scheme-less keys, as containers tools
/// write them).
fn key_parts(key: &str) -> (String, String) {
    let (rest, had_scheme) = match key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
    {
        Some(rest) => (rest, true),
        None => (key, false),
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = match host.to_ascii_lowercase().as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        other => other.to_owned(),
    };
    let path = if had_scheme {
        String::new()
    } else {
        path.trim_end_matches('/').to_owned()
    };
    (host, path)
}

fn existing_key(config: &Value, registry: &str) -> Option<String> {
    config
        .get("auths")?
        .as_object()?
        .keys()
        .find(|key| key_parts(key) == (registry.to_owned(), String::new()))
        .cloned()
}

/// The credential helpers of `config` for `registry`, in the order to ask them: its
/// `credHelpers` entry, then `credsStore`.
fn helpers_for<'c>(config: &'c Value, registry: &str) -> impl Iterator<Item = &'c str> {
    let specific = config
        .get("credHelpers")
        .and_then(Value::as_object)
        .and_then(|helpers| {
            helpers
                .iter()
                .find(|(key, _)| key_host(key) == registry)
                .and_then(|(_, helper)| helper.as_str())
        });
    let store = config.get("credsStore").and_then(Value::as_str);
    specific.into_iter().chain(store)
}

/// The helper that stores `registry`'s credentials (the first of [`helpers_for`]).
fn helper_for(config: &Value, registry: &str) -> Option<String> {
    helpers_for(config, registry)
        .next()
        .filter(|helper| !helper.is_empty())
        .map(str::to_owned)
}

/// The best `auths` entry for `registry`/`repository`: the longest key that matches
/// (namespaced keys only when `namespaces`).
fn from_auths(
    config: &Value,
    path: &Path,
    registry: &str,
    repository: &str,
    namespaces: bool,
) -> Result<Option<Credential>, CredentialError> {
    let Some(auths) = config.get("auths").and_then(Value::as_object) else {
        return Ok(None);
    };
    let mut best: Option<(usize, &Value)> = None;
    for (key, entry) in auths {
        let (host, namespace) = key_parts(key);
        if host != registry {
            continue;
        }
        let matches = namespace.is_empty()
            || (namespaces
                && (repository == namespace || repository.starts_with(&format!("{namespace}/"))));
        if matches && best.is_none_or(|(length, _)| namespace.len() > length) {
            best = Some((namespace.len(), entry));
        }
    }
    match best {
        Some((_, entry)) => parse_entry(entry, path),
        None => Ok(None),
    }
}

fn parse_entry(entry: &Value, path: &Path) -> Result<Option<Credential>, CredentialError> {
    let field = |name: &str| {
        entry
            .get(name)
            .and_then(Value::as_str)
            .filter(|value| !value.is_empty())
    };
    if let Some(token) = field("identitytoken") {
        return Ok(Some(Credential::IdentityToken(token.to_owned())));
    }
    if let Some(auth) = field("auth") {
        let invalid = |reason: &str| CredentialError::Invalid {
            path: path.to_path_buf(),
            reason: format!("an `auth` entry {reason}"),
        };
        let decoded = BASE64
            .decode(auth.trim())
            .map_err(|_| invalid("is not base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| invalid("is not UTF-8"))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| invalid("is not user:password"))?;
        return Ok(Some(Credential::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        }));
    }
    match (field("username"), field("password")) {
        (Some(username), Some(password)) => Ok(Some(Credential::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        })),
        _ => Ok(None),
    }
}

/// Reads a JSON file through a [`RealFs`] rooted at its directory; `None` when absent.
fn read_json(path: &Path) -> Result<Option<Value>, CredentialError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(None);
    };
    let fs = match RealFs::open_root(dir) {
        Ok(fs) => fs,
        Err(error) if error.is_not_found() => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    match fs.read(Path::new(name)) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|error| CredentialError::Invalid {
                    path: path.to_path_buf(),
                    reason: format!("not valid JSON: {}", ErrorChain(&error)),
                })
        }
        Err(error) if error.is_not_found() => Ok(None),
        Err(error) => Err(error.into()),
    }
}

fn read_config(fs: &RealFs, path: &Path) -> Result<Value, CredentialError> {
    let bytes = match fs.read(Path::new(CONFIG_JSON)) {
        Ok(bytes) => bytes,
        Err(error) if error.is_not_found() => return Ok(Value::Object(Map::new())),
        Err(error) => return Err(error.into()),
    };
    let config: Value =
        serde_json::from_slice(&bytes).map_err(|error| CredentialError::Invalid {
            path: path.to_path_buf(),
            reason: format!("not valid JSON (left as it is): {}", ErrorChain(&error)),
        })?;
    if !config.is_object() {
        return Err(CredentialError::Invalid {
            path: path.to_path_buf(),
            reason: "not a JSON object (left as it is)".to_owned(),
        });
    }
    Ok(config)
}

fn auths_mut<'c>(
    config: &'c mut Value,
    path: &Path,
) -> Result<&'c mut Map<String, Value>, CredentialError> {
    let invalid = || CredentialError::Invalid {
        path: path.to_path_buf(),
        reason: "`auths` is not an object (left as it is)".to_owned(),
    };
    let object = config.as_object_mut().ok_or_else(invalid)?;
    object
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(invalid)
}

fn write_config(fs: &RealFs, path: &Path, config: &Value) -> Result<(), CredentialError> {
    let mut bytes =
        serde_json::to_vec_pretty(config).map_err(|error| CredentialError::Invalid {
            path: path.to_path_buf(),
            reason: error_chain(&error),
        })?;
    bytes.push(b'\n');
    let mut file = AtomicFile::create(fs, Path::new(CONFIG_JSON))?;
    file.set_permissions(0o600)?;
    file.write_all(&bytes)
        .map_err(|source| FsError::io("write", path.to_path_buf(), source))?;
    file.commit()?;
    Ok(())
}

/// Runs `docker-credential-<helper> <action>` with `input` on stdin. Returns its stdout, or
/// `None` when it reports that it has no credentials.
fn run_helper(
    helper: &str,
    action: &str,
    input: &[u8],
    timeout: Duration,
    search_path: Option<&std::ffi::OsStr>,
) -> Result<Option<Vec<u8>>, CredentialError> {
    let failed = |reason: String| CredentialError::Helper {
        helper: helper.to_owned(),
        reason,
    };
    if helper.is_empty()
        || !helper
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(failed("not a valid helper name".to_owned()));
    }
    let program = format!("docker-credential-{helper}");
    let mut command = Command::new(&program);
    if let Some(search_path) = search_path {
        command.env("PATH", search_path);
    }
    let mut child = command
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| failed(format!("cannot run {program}: {}", ErrorChain(&error))))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading its input is judged by its exit status.
        let _ = stdin.write_all(input);
    }
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut data = Vec::new();
            if let Some(pipe) = pipe {
                let _ = pipe.take(1 << 20).read_to_end(&mut data);
            }
            data
        })
    };
    let stdout = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!("no answer within {timeout:?}")));
            }
            Err(error) => return Err(failed(error_chain(&error))),
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if status.success() {
        return Ok(Some(stdout));
    }
    let message = String::from_utf8_lossy(if stdout.is_empty() { &stderr } else { &stdout })
        .trim()
        .to_owned();
    if message
        .to_ascii_lowercase()
        .contains("credentials not found")
    {
        return Ok(None);
    }
    Err(failed(format!("{status}: {message}")))
}

#[cfg(test)]
// Scratch directories from `tempfile` (clippy.toml bans it outside fs-abstraction).
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn write(path: &Path, content: &str) {
        let fs = RealFs::create_root(path.parent().unwrap()).unwrap();
        fs.write_atomic(Path::new(path.file_name().unwrap()), content.as_bytes())
            .unwrap();
    }

    fn basic(username: &str, password: &str) -> Option<Credential> {
        Some(Credential::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        })
    }

    #[test]
    fn reads_docker_config_auths() {
        let dir = tempfile::tempdir().unwrap();
        let auth = BASE64.encode("hubuser:hubpass");
        write(
            &dir.path().join("config.json"),
            &format!(
                r#"{{"auths": {{
                    "{DOCKER_HUB_KEY}": {{"auth": "{auth}"}},
                    "https://quay.io": {{"username": "q", "password": "qp"}},
                    "ghcr.io": {{"identitytoken": "refresh"}},
                    "127.0.0.1:5000": {{"auth": "{}"}}
                }}, "HttpHeaders": {{"X": "y"}}}}"#,
                BASE64.encode("local:pw:with:colons")
            ),
        );
        let store = CredentialStore::with_docker_config_dir(dir.path());
        assert_eq!(
            store.get("docker.io", "library/nginx").unwrap(),
            basic("hubuser", "hubpass")
        );
        assert_eq!(store.get("quay.io", "a/b").unwrap(), basic("q", "qp"));
        assert_eq!(
            store.get("ghcr.io", "a").unwrap(),
            Some(Credential::IdentityToken("refresh".to_owned()))
        );
        assert_eq!(
            store.get("127.0.0.1:5000", "x").unwrap(),
            basic("local", "pw:with:colons")
        );
        assert_eq!(store.get("example.com", "x").unwrap(), None);
        assert!(!format!("{:?}", store.get("quay.io", "a").unwrap()).contains("qp"));
    }

    #[test]
    fn reads_containers_auth_json_with_namespaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        write(
            &path,
            &format!(
                r#"{{"auths": {{"quay.io": {{"auth": "{}"}}, "quay.io/team": {{"auth": "{}"}}}}}}"#,
                BASE64.encode("all:1"),
                BASE64.encode("team:2")
            ),
        );
        let store = CredentialStore::anonymous().with_auth_files([path]);
        assert_eq!(
            store.get("quay.io", "team/app").unwrap(),
            basic("team", "2")
        );
        assert_eq!(
            store.get("quay.io", "teamx/app").unwrap(),
            basic("all", "1")
        );
        assert_eq!(store.get("quay.io", "other").unwrap(), basic("all", "1"));
        // Missing files and directories are no credentials, not errors.
        let missing = CredentialStore::with_docker_config_dir(dir.path().join("nope"))
            .with_auth_files([dir.path().join("nope/auth.json")]);
        assert_eq!(missing.get("quay.io", "x").unwrap(), None);
    }

    #[test]
    fn login_writes_0600_keeps_other_entries_and_logout_removes() {
        let dir = tempfile::tempdir().unwrap();
        let config_dir = dir.path().join("docker");
        write(
            &config_dir.join("config.json"),
            r#"{"auths": {"other.io": {"auth": "b3RoZXI6cA=="}}, "psFormat": "table"}"#,
        );
        let store = CredentialStore::with_docker_config_dir(&config_dir);
        let path = store.save_login("127.0.0.1:5000", "me", "secret").unwrap();
        assert_eq!(path, config_dir.join("config.json"));
        let fs = RealFs::open_root(&config_dir).unwrap();
        assert_eq!(
            fs.metadata(Path::new("config.json")).unwrap().mode & 0o777,
            0o600
        );
        assert_eq!(
            store.get("127.0.0.1:5000", "a").unwrap(),
            basic("me", "secret")
        );
        let text = String::from_utf8(fs.read(Path::new("config.json")).unwrap()).unwrap();
        assert!(
            text.contains("other.io") && text.contains("psFormat"),
            "{text}"
        );

        store.save_login("docker.io", "hub", "pw").unwrap();
        let text = String::from_utf8(fs.read(Path::new("config.json")).unwrap()).unwrap();
        assert!(text.contains(DOCKER_HUB_KEY), "{text}");
        assert_eq!(
            store.get("docker.io", "library/x").unwrap(),
            basic("hub", "pw")
        );

        assert!(store.remove_login("127.0.0.1:5000").unwrap());
        assert!(!store.remove_login("127.0.0.1:5000").unwrap());
        assert_eq!(store.get("127.0.0.1:5000", "a").unwrap(), None);
        assert_eq!(store.get("other.io", "a").unwrap(), basic("other", "p"));

        // A fresh directory is created; a broken config is never overwritten.
        let fresh = CredentialStore::with_docker_config_dir(dir.path().join("new/dir"));
        fresh.save_login("r.io", "u", "p").unwrap();
        assert_eq!(fresh.get("r.io", "x").unwrap(), basic("u", "p"));
        write(&config_dir.join("config.json"), "{broken");
        assert!(matches!(
            store.save_login("r.io", "u", "p"),
            Err(CredentialError::Invalid { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn credential_helpers_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let fs = RealFs::create_root(&bin).unwrap();
        let store_file = dir.path().join("helper-store");
        let script = format!(
            r#"#!/bin/sh
read server
case "$1" in
  get)
    case "$server" in
      helped.io) echo '{{"ServerURL":"helped.io","Username":"hu","Secret":"hs"}}' ;;
      {DOCKER_HUB_KEY}) echo '{{"ServerURL":"x","Username":"<token>","Secret":"idt"}}' ;;
      slow.io) sleep 5 ;;
      *) echo "credentials not found in native keychain"; exit 1 ;;
    esac ;;
  store) printf '%s\n' "$server" > {store} ;;
  erase) echo "$server" >> {store}.erased ;;
esac
"#,
            store = store_file.display()
        );
        fs.write_atomic(Path::new("docker-credential-test"), script.as_bytes())
            .unwrap();
        fs.set_permissions(Path::new("docker-credential-test"), 0o755)
            .unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let config_dir = dir.path().join("docker");
        write(
            &config_dir.join("config.json"),
            r#"{"credsStore": "test", "credHelpers": {"slow.io": "test"}, "auths": {"plain.io": {"auth": "cDp3"}}}"#,
        );
        let store = CredentialStore::with_docker_config_dir(&config_dir)
            .with_helper_timeout(Duration::from_millis(500))
            .with_helper_path(path);
        {
            assert_eq!(store.get("helped.io", "a").unwrap(), basic("hu", "hs"));
            assert_eq!(
                store.get("docker.io", "a").unwrap(),
                Some(Credential::IdentityToken("idt".to_owned()))
            );
            // Not found in the helper: the auths entry.
            assert_eq!(store.get("plain.io", "a").unwrap(), basic("p", "w"));
            // A helper that hangs is killed and skipped.
            let started = Instant::now();
            assert_eq!(store.get("slow.io", "a").unwrap(), None);
            assert!(started.elapsed() < Duration::from_secs(4));
            // Login stores through the helper and leaves only a marker in config.json.
            store.save_login("new.io", "u", "secret").unwrap();
        }
        let read = |path: &Path| {
            let fs = RealFs::open_root(path.parent().unwrap()).unwrap();
            String::from_utf8(fs.read(Path::new(path.file_name().unwrap())).unwrap()).unwrap()
        };
        let stored = read(&store_file);
        assert!(stored.contains("\"Secret\":\"secret\""), "{stored}");
        let config = read(&config_dir.join("config.json"));
        assert!(
            !config.contains("secret") && config.contains("new.io"),
            "{config}"
        );
        assert!(store.remove_login("new.io").unwrap());
        assert!(read(&store_file.with_extension("erased")).contains("new.io"));
    }
}
