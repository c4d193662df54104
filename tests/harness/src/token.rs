//! A token realm for docker-registry's `auth: token`: answers
//! `GET /token?service=…&scope=…&account=…` (basic credentials or anonymous) and the OAuth2
//! `POST /token` with `grant_type=refresh_token` (docker's identity tokens) with an RS256 JWT
//! that distribution verifies against the certificate this server made at start.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::json;
use tempfile::TempDir;

use crate::process::{describe, run_bounded, run_ok};
use crate::registry::DEFAULT_SERVICE;
use crate::{Result, path_str, temp_dir};

/// The issuer (`iss`) of every token, and the certificate's common name.
const ISSUER: &str = "sealer-test-token";
/// Bound on running openssl once.
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(30);

/// What a request without credentials gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnonymousAccess {
    /// 401: credentials are required.
    Deny,
    /// A token granting only the `pull` action of what was asked.
    PullOnly,
    /// A token granting everything asked (the default: an open registry with token auth).
    #[default]
    Full,
}

/// What [`TokenServer::start`] serves.
#[derive(Debug, Clone)]
pub struct TokenOptions {
    /// Accepted `(user, password)` pairs (HTTP basic auth on the token request). Wrong
    /// credentials always get 401.
    pub users: Vec<(String, String)>,
    /// What requests without credentials get.
    pub anonymous: AnonymousAccess,
    /// Token lifetime (`expires_in`, and `exp` = now + this).
    pub expires_in_secs: u64,
    /// When set, only these repositories are granted; scopes for others get no access.
    pub repositories: Option<Vec<String>>,
    /// The service name (`aud`); the registry is configured with the same.
    pub service: String,
    /// Accepted OAuth2 refresh tokens (docker's `identitytoken`) and the account each one
    /// stands for: `POST /token` with `grant_type=refresh_token`.
    pub refresh_tokens: Vec<(String, String)>,
}

impl Default for TokenOptions {
    fn default() -> Self {
        Self {
            users: Vec::new(),
            anonymous: AnonymousAccess::Full,
            expires_in_secs: 300,
            repositories: None,
            service: DEFAULT_SERVICE.to_owned(),
            refresh_tokens: Vec::new(),
        }
    }
}

impl TokenOptions {
    /// One user, no anonymous access, 300 s tokens.
    pub fn user(user: &str, password: &str) -> Self {
        Self {
            users: vec![(user.to_owned(), password.to_owned())],
            anonymous: AnonymousAccess::Deny,
            ..Self::default()
        }
    }
}

/// One request the token server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// Every `scope` parameter, decoded (`repository:NAME:pull,push`).
    pub scopes: Vec<String>,
    /// The `service` parameter.
    pub service: Option<String>,
    /// The `account` parameter.
    pub account: Option<String>,
    /// The user of valid basic credentials or refresh token, `None` when anonymous or
    /// refused.
    pub user: Option<String>,
    /// `grant_type` of a `POST` (`refresh_token`); `None` for a `GET`.
    pub grant: Option<String>,
    /// The answer's status (200, 401, 404, …).
    pub status: u16,
    /// When it arrived.
    pub at: SystemTime,
}

/// State shared with the connection threads.
#[derive(Debug)]
struct Shared {
    options: TokenOptions,
    key_path: PathBuf,
    x5c: String,
    requests: Mutex<Vec<TokenRequest>>,
    next_jti: AtomicU64,
    stop: AtomicBool,
}

/// A running token realm on `127.0.0.1:PORT` (`/token`). Key, certificate and threads go
/// away on drop.
#[derive(Debug)]
pub struct TokenServer {
    _dir: TempDir,
    certificate: PathBuf,
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Makes an RSA key and a self-signed certificate with the `openssl` CLI, then serves
    /// tokens on a kernel-chosen port. Needs `openssl` on `PATH` (see
    /// [`crate::require_tool`]).
    pub fn start(options: TokenOptions) -> Result<Self> {
        let dir = temp_dir()?;
        let key_path = dir.path().join("key.pem");
        let certificate = dir.path().join("cert.pem");
        let der_path = dir.path().join("cert.der");
        let subject = format!("/CN={ISSUER}");
        run_ok(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                path_str(&key_path)?,
                "-out",
                path_str(&certificate)?,
                "-subj",
                &subject,
                "-days",
                "1",
            ],
            OPENSSL_TIMEOUT,
        )
        .context("making the token signing key")?;
        run_ok(
            "openssl",
            &[
                "x509",
                "-in",
                path_str(&certificate)?,
                "-outform",
                "DER",
                "-out",
                path_str(&der_path)?,
            ],
            OPENSSL_TIMEOUT,
        )?;
        let x5c = STANDARD.encode(std::fs::read(&der_path)?);

        let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            options,
            key_path,
            x5c,
            requests: Mutex::new(Vec::new()),
            next_jti: AtomicU64::new(1),
            stop: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        let acceptor = thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&accepting);
                thread::spawn(move || {
                    let _ = serve(&shared, stream);
                });
            }
        });
        Ok(Self {
            _dir: dir,
            certificate,
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// `http://127.0.0.1:PORT/token`, the registry's `auth.token.realm`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The service (`aud`) tokens are issued for.
    pub fn service(&self) -> &str {
        &self.shared.options.service
    }

    /// The issuer (`iss`) of the tokens.
    pub fn issuer(&self) -> &str {
        ISSUER
    }

    /// The signing certificate (PEM), the registry's `auth.token.rootcertbundle`.
    pub fn certificate_path(&self) -> &Path {
        &self.certificate
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many requests (answered or refused) asked for `scope`, e.g.
    /// `repository:library/app:pull`.
    pub fn count_for_scope(&self, scope: &str) -> usize {
        self.requests()
            .iter()
            .filter(|request| request.scopes.iter().any(|asked| asked == scope))
            .count()
    }

    /// Signs a token for `account` granting `scopes` as asked (no credential check), as the
    /// realm would: for tests that talk to the registry with a ready token.
    pub fn issue(&self, account: &str, scopes: &[&str]) -> Result<String> {
        let scopes: Vec<String> = scopes.iter().map(|scope| (*scope).to_owned()).collect();
        token_for(&self.shared, Some(account), &scopes, false)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Answers one request on `stream` and closes it.
fn serve(shared: &Shared, stream: TcpStream) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = HashMap::new();
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            if name == "content-length" {
                content_length = value.trim().parse().unwrap_or(0);
            }
            headers.insert(name, value.trim().to_owned());
        }
    }
    // Read the body (a POST's form) so that closing does not reset the connection either.
    let mut body = vec![0u8; content_length.min(1 << 20)];
    let _ = reader.read_exact(&mut body);

    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    // A POST carries its parameters as a form body.
    let params = if method == "POST" {
        parse_query(&String::from_utf8_lossy(&body))
    } else {
        parse_query(query)
    };
    let param = |key: &str| {
        params
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.clone())
    };
    let scopes: Vec<String> = params
        .iter()
        .filter(|(name, _)| name == "scope")
        .flat_map(|(_, value)| value.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .filter(|scope| !scope.is_empty())
        .collect();
    let mut record = TokenRequest {
        scopes,
        service: param("service"),
        account: param("account"),
        user: None,
        grant: (method == "POST").then(|| param("grant_type").unwrap_or_default()),
        status: 200,
        at: SystemTime::now(),
    };

    let credentials = headers
        .get("authorization")
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| STANDARD.decode(encoded.trim()).ok())
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .and_then(|pair| {
            pair.split_once(':')
                .map(|(user, password)| (user.to_owned(), password.to_owned()))
        });
    let answer = if path != "/token" || !matches!(method, "GET" | "POST") {
        Err(404)
    } else if method == "POST" {
        let account = (record.grant.as_deref() == Some("refresh_token"))
            .then(|| param("refresh_token"))
            .flatten()
            .and_then(|refresh| {
                shared
                    .options
                    .refresh_tokens
                    .iter()
                    .find(|(token, _)| *token == refresh)
                    .map(|(_, account)| account.clone())
            });
        match account {
            Some(account) => {
                record.user = Some(account);
                Ok(false)
            }
            None => Err(401),
        }
    } else {
        match credentials {
            Some((user, password)) => {
                if shared.options.users.contains(&(user.clone(), password)) {
                    record.user = Some(user);
                    Ok(false)
                } else {
                    Err(401)
                }
            }
            None => match shared.options.anonymous {
                AnonymousAccess::Deny => Err(401),
                AnonymousAccess::PullOnly => Ok(true),
                AnonymousAccess::Full => Ok(false),
            },
        }
    };
    let account = record.user.clone().or_else(|| record.account.clone());
    let response = match answer {
        Ok(pull_only) => match token_for(shared, account.as_deref(), &record.scopes, pull_only) {
            Ok(token) => {
                let body = json!({
                    "token": token,
                    "access_token": token,
                    "expires_in": shared.options.expires_in_secs,
                    "issued_at": rfc3339(now_secs()),
                })
                .to_string();
                response(200, "OK", &[("Content-Type", "application/json")], &body)
            }
            Err(error) => {
                record.status = 500;
                response(500, "Internal Server Error", &[], &format!("{error:#}"))
            }
        },
        Err(401) => {
            record.status = 401;
            response(
                401,
                "Unauthorized",
                &[
                    ("WWW-Authenticate", "Basic realm=\"sealer-test-token\""),
                    ("Content-Type", "application/json"),
                ],
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            )
        }
        Err(status) => {
            record.status = status;
            response(status, "Not Found", &[], "not found")
        }
    };
    shared
        .requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(record);
    let mut stream = stream;
    stream.write_all(response.as_bytes())?;
    stream.flush()?;
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

/// A whole HTTP/1.1 response with `Connection: close`.
fn response(status: u16, reason: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut text = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    text
}

/// The signed JWT for `account` granting `scopes` (only `pull` when `pull_only`; only the
/// allowed repositories when the options list them).
fn token_for(
    shared: &Shared,
    account: Option<&str>,
    scopes: &[String],
    pull_only: bool,
) -> Result<String> {
    let mut access = Vec::new();
    for scope in scopes {
        let Some((kind, rest)) = scope.split_once(':') else {
            continue;
        };
        let Some((name, actions)) = rest.rsplit_once(':') else {
            continue;
        };
        if let Some(allowed) = &shared.options.repositories
            && kind == "repository"
            && !allowed.iter().any(|repository| repository == name)
        {
            continue;
        }
        let actions: Vec<&str> = actions
            .split(',')
            .filter(|action| !action.is_empty() && (!pull_only || *action == "pull"))
            .collect();
        access.push(json!({"type": kind, "name": name, "actions": actions}));
    }
    let now = now_secs();
    let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [shared.x5c]});
    let claims = json!({
        "iss": ISSUER,
        "sub": account.unwrap_or(""),
        "aud": shared.options.service,
        "exp": now + shared.options.expires_in_secs,
        "nbf": now.saturating_sub(5),
        "iat": now,
        "jti": format!("sealer-{}-{now}", shared.next_jti.fetch_add(1, Ordering::Relaxed)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = sign(&shared.key_path, signing_input.as_bytes())?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// The RS256 signature of `data`: `openssl dgst -sha256 -sign KEY` (PKCS#1 v1.5 over SHA-256,
/// raw bytes on stdout).
fn sign(key: &Path, data: &[u8]) -> Result<Vec<u8>> {
    // openssl reads the data from a file: no stdin plumbing next to the bounded runner.
    let input = tempfile::NamedTempFile::new()?;
    std::fs::write(input.path(), data)?;
    let args = [
        "dgst",
        "-sha256",
        "-sign",
        path_str(key)?,
        path_str(input.path())?,
    ];
    let output = run_bounded(
        Command::new("openssl").args(args).stdin(Stdio::null()),
        OPENSSL_TIMEOUT,
    )?;
    if !output.status.success() || output.stdout.is_empty() {
        bail!("{}", describe("openssl", &args, &output));
    }
    Ok(output.stdout)
}

/// Seconds since the epoch.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

use sealer_image_store::model::rfc3339_utc as rfc3339;

/// Decodes `a=b&c=d` (percent escapes and `+`).
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

/// Percent-decoding, `+` as a space.
fn percent_decode(text: &str) -> String {
    let hex = |byte: u8| char::from(byte).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = match bytes.get(index..index + 3) {
            Some([b'%', high, low]) => hex(*high).zip(hex(*low)),
            _ => None,
        };
        match (bytes[index], escaped) {
            (_, Some((high, low))) => {
                out.push((high * 16 + low) as u8);
                index += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                index += 1;
            }
            (byte, None) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_queries_and_formats_dates() {
        assert_eq!(
            parse_query("service=reg&scope=repository%3Aa%2Fb%3Apull%2Cpush&scope=x+y"),
            vec![
                ("service".to_owned(), "reg".to_owned()),
                ("scope".to_owned(), "repository:a/b:pull,push".to_owned()),
                ("scope".to_owned(), "x y".to_owned()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_803_957_224), "2027-03-02T03:13:44Z");
    }
}
