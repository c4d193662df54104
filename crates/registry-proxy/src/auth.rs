//! HTTP basic authentication against an htpasswd file of bcrypt entries.
//!
//! bcrypt is slow on purpose (tens of milliseconds), and clients send their credentials
//! with every request, so a verified `(user, SHA-256 of password)` pair is remembered for
//! the life of the server; a wrong password is checked with bcrypt every time.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use base64::Engine as _;

use crate::config::{ConfigError, read_text};

/// Users and their bcrypt hashes.
#[derive(Debug)]
pub struct Htpasswd {
    users: HashMap<String, String>,
    verified: Mutex<HashSet<(String, [u8; 32])>>,
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
        Ok(Self {
            users,
            verified: Mutex::new(HashSet::new()),
        })
    }

    /// Whether an `Authorization` header holds valid basic credentials. Blocking (bcrypt):
    /// call it from a blocking task.
    pub fn check(&self, authorization: Option<&str>) -> bool {
        let Some((user, password)) = authorization.and_then(basic_credentials) else {
            return false;
        };
        let Some(hash) = self.users.get(&user) else {
            return false;
        };
        let key = (user, sha256(password.as_bytes()));
        let verified = |this: &Self| {
            this.verified
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&key)
        };
        if verified(self) {
            return true;
        }
        if bcrypt::verify(&password, hash).unwrap_or(false) {
            self.verified
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key);
            return true;
        }
        false
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
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
        let error = Htpasswd::parse("alice:{SHA}abc\n", Path::new("h")).unwrap_err();
        assert!(error.to_string().starts_with("h:1: "), "{error}");
        let error = Htpasswd::parse("\nnocolon\n", Path::new("h")).unwrap_err();
        assert!(error.to_string().starts_with("h:2: "), "{error}");
    }
}
