//! Content digests (`sha256:<hex>`, `sha512:<hex>`) and the hasher that produces them.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// A digest algorithm the store accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algorithm {
    /// SHA-256, the default.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    /// The name used in digests and blob paths.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha512 => 128,
        }
    }
}

/// A validated content digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {input:?}: {reason}")]
pub struct DigestError {
    /// The rejected input.
    pub input: String,
    /// What was expected.
    pub reason: &'static str,
}

impl Digest {
    /// The digest of `data` with `algorithm`.
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Self {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(data);
        hasher.finish()
    }

    /// The SHA-256 digest of `data`.
    pub fn sha256(data: &[u8]) -> Self {
        Self::of(Algorithm::Sha256, data)
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex encoding of the hash.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The blob's path inside an OCI image layout: `blobs/<algorithm>/<hex>`.
    pub fn blob_path(&self) -> PathBuf {
        PathBuf::from("blobs")
            .join(self.algorithm.name())
            .join(&self.hex)
    }

    /// The first 12 hex characters, as image listings show.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }

    /// The name of a file named after the digest, `<algorithm>-<hex>` (a `:` is not
    /// portable in file names): quarantined, staged and marked blobs are named so.
    pub fn file_name(&self) -> String {
        format!("{}-{}", self.algorithm.name(), self.hex)
    }

    /// The digest a [`file_name`](Self::file_name) names; `None` for any other name.
    pub fn from_file_name(name: &str) -> Option<Self> {
        let (algorithm, hex) = name.split_once('-')?;
        format!("{algorithm}:{hex}").parse().ok()
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| DigestError {
            input: input.to_owned(),
            reason,
        };
        let (algorithm, hex) = input
            .split_once(':')
            .ok_or_else(|| invalid("expected <algorithm>:<hex>"))?;
        let algorithm = match algorithm {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(invalid("the algorithm must be sha256 or sha512")),
        };
        if hex.len() != algorithm.hex_len() {
            return Err(invalid(
                "the hex part has the wrong length for its algorithm",
            ));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid("the hex part must be lowercase hexadecimal"));
        }
        Ok(Self {
            algorithm,
            hex: hex.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental hasher for one [`Algorithm`].
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256 state.
    Sha256(Sha256),
    /// SHA-512 state.
    Sha512(Sha512),
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Self::Sha256(Sha256::new()),
            Algorithm::Sha512 => Self::Sha512(Sha512::new()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(state) => state.update(data),
            Self::Sha512(state) => state.update(data),
        }
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Self::Sha256(state) => (Algorithm::Sha256, hex::encode(state.finalize())),
            Self::Sha512(state) => (Algorithm::Sha512, hex::encode(state.finalize())),
        };
        Digest { algorithm, hex }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(Digest::sha256(b"").to_string(), empty);
        assert_eq!(empty.parse::<Digest>().unwrap(), Digest::sha256(b""));
        let sha512 = Digest::of(Algorithm::Sha512, b"abc");
        assert_eq!(sha512.to_string().parse::<Digest>().unwrap(), sha512);
        assert!(sha512.hex().starts_with("ddaf35a193617aba"));
        for bad in [
            "",
            "sha256",
            "sha256:abc",
            "md5:00",
            &empty.to_uppercase(),
            "sha256:../../etc/passwd",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn file_names_round_trip() {
        let digest = Digest::sha256(b"");
        assert_eq!(digest.file_name(), format!("sha256-{}", digest.hex()));
        assert_eq!(Digest::from_file_name(&digest.file_name()), Some(digest));
        let sha512 = Digest::of(Algorithm::Sha512, b"abc");
        assert_eq!(Digest::from_file_name(&sha512.file_name()), Some(sha512));
        for bad in ["", "sha256", "sha256-abc", "sha256:00", "tmp-upload-1"] {
            assert_eq!(Digest::from_file_name(bad), None, "{bad} accepted");
        }
    }
}
