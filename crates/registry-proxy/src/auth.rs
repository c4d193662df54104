//! HTTP basic authentication against an htpasswd file of bcrypt entries.
//!
//! bcrypt is slow on purpose (tens of milliseconds), and clients send their credentials
//! with every request, so a verified `(user, SHA-256 of password)` pair is remembered for
//! the life of the server; a wrong password is checked with bcrypt every time. An unknown
//! user is checked with bcrypt too (against a dummy hash of the file's cost), so that the
//! answer's timing does not tell which user names exist.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use base64::Engine as _;

use crate::config::{ConfigError, read_text};

/// Users and their bcrypt hashes.
#[derive(Debug)]
pub struct Htpasswd {
    users: HashMap<String, String>,
    verified: Mutex<HashSet<(String, [u8; 32])>>,
    /// A well-formed hash no password matches, at the highest cost of the file's entries.
    dummy_hash: String,
    /// bcrypt verifications run (for tests: every miss pays one).
    bcrypt_runs: AtomicU64,
}

/// The bcrypt cost of an unknown-user check when the file has no entries.
const DEFAULT_COST: u32 = 10;

/// The cost field of a `$2y$NN$…` hash.
fn bcrypt_cost(hash: &str) -> Option<u32> {
    hash.get(4..6)?.parse().ok()
}

impl Htpasswd {
    /// Reads an htpasswd file (`user:$2y$…` lines; blank lines and `#` comments skipped).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_text(path)?;
        Self::parse(&text, path)
    }

    /// Parses htpasswd text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut users = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let invalid = |message: &str| ConfigError::Invalid {
                path: path.to_path_buf(),
                line: Some(number + 1),
                message: message.to_owned(),
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| invalid("expected user:hash"))?;
            if !["$2y$", "$2b$", "$2a$"]
                .iter()
                .any(|prefix| hash.starts_with(prefix))
            {
                return Err(invalid(
                    "only bcrypt entries are supported (create them with `htpasswd -B`)",
                ));
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        let cost = users
            .values()
            .filter_map(|hash| bcrypt_cost(hash))
            .max()
            .unwrap_or(DEFAULT_COST)
            .clamp(4, 31);
        // 22 salt and 31 hash characters of bcrypt's base64, all zero bits.
        let dummy_hash = format!("$2b${cost:02}${}", ".".repeat(53));
        Ok(Self {
            users,
            verified: Mutex::new(HashSet::new()),
            dummy_hash,
            bcrypt_runs: AtomicU64::new(0),
        })
    }

    fn bcrypt_verify(&self, password: &str, hash: &str) -> bool {
        self.bcrypt_runs.fetch_add(1, Ordering::Relaxed);
        bcrypt::verify(password, hash).unwrap_or(false)
    }

    /// Whether an `Authorization` header holds valid basic credentials. Blocking (bcrypt):
    /// call it from a blocking task.
    pub fn check(&self, authorization: Option<&str>) -> bool {
        self.authenticate(authorization).is_some()
    }

    /// The user whose valid basic credentials an `Authorization` header holds. Blocking
    /// (bcrypt): call it from a blocking task.
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<String> {
        let (user, password) = authorization.and_then(basic_credentials)?;
        let Some(hash) = self.users.get(&user) else {
            // As slow as a wrong password, so that timing tells no user names.
            self.bcrypt_verify(&password, &self.dummy_hash);
            return None;
        };
        let key = (user, sha256(password.as_bytes()));
        let verified = |this: &Self| {
            this.verified
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&key)
        };
        if verified(self) {
            return Some(key.0);
        }
        if self.bcrypt_verify(&password, hash) {
            self.verified
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key.clone());
            return Some(key.0);
        }
        None
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

/// Whether an `Authorization` header is basic credentials with an empty user and password
/// (`Basic Og==`): what skopeo and podman send without credentials after a basic challenge,
/// which means anonymous.
pub(crate) fn empty_credentials(header: &str) -> bool {
    basic_credentials(header).is_some_and(|(user, password)| user.is_empty() && password.is_empty())
}

/// `Basic base64(user:password)` → (user, password).
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> String {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}")
    }

    #[test]
    fn bcrypt_entries_verify_and_others_are_refused() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let file = Htpasswd::parse(&format!("# users\n\nalice:{hash}\n"), Path::new("h")).unwrap();
        assert!(file.check(Some(&header("alice", "secret"))));
        assert!(file.check(Some(&header("alice", "secret"))), "cached");
        assert!(!file.check(Some(&header("alice", "wrong"))));
        assert!(!file.check(Some(&header("bob", "secret"))));
        assert!(!file.check(Some("Bearer x")));
        assert!(!file.check(Some("Basic !!!")));
        assert!(!file.check(None));
        assert!(empty_credentials(&header("", "")));
        assert!(!empty_credentials(&header("alice", "")));
        assert!(!empty_credentials("Bearer x"));
        assert_eq!(
            file.authenticate(Some(&header("alice", "secret"))),
            Some("alice".to_owned())
        );
        let error = Htpasswd::parse("alice:{SHA}abc\n", Path::new("h")).unwrap_err();
        assert!(error.to_string().starts_with("h:1: "), "{error}");
        let error = Htpasswd::parse("\nnocolon\n", Path::new("h")).unwrap_err();
        assert!(error.to_string().starts_with("h:2: "), "{error}");
    }

    #[test]
    fn unknown_users_cost_a_bcrypt_verification_like_wrong_passwords() {
        let hash = bcrypt::hash("secret", 5).unwrap();
        let file = Htpasswd::parse(&format!("alice:{hash}\n"), Path::new("h")).unwrap();
        assert!(
            file.dummy_hash.starts_with("$2b$05$"),
            "{}",
            file.dummy_hash
        );
        // The dummy is a hash bcrypt accepts (an error would return at once, cheaply).
        assert!(!bcrypt::verify("secret", &file.dummy_hash).unwrap());
        let runs = || file.bcrypt_runs.load(Ordering::Relaxed);
        assert!(!file.check(Some(&header("alice", "wrong"))));
        assert_eq!(runs(), 1);
        assert!(!file.check(Some(&header("mallory", "secret"))));
        assert_eq!(runs(), 2, "an unknown user runs bcrypt too");
        assert!(file.check(Some(&header("alice", "secret"))));
        assert!(file.check(Some(&header("alice", "secret"))));
        assert_eq!(runs(), 3, "a remembered password runs no bcrypt");
        let empty = Htpasswd::parse("", Path::new("h")).unwrap();
        assert!(empty.dummy_hash.starts_with("$2b$10$"));
    }
}
