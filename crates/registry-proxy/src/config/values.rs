//! The scalar values of the configuration (durations, sizes, tag TTLs, hosts, upstream
//! URLs), each parsed from its text with an error that says what was expected.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sealer_registry_client::redact_url;
use serde::Deserialize;

use crate::route::normalise_host;

/// A duration written `500ms`, `2s`, `5m`, `1h` or as a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl FromStr for ConfigDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 2s, 5m, 1h"))?;
        let duration = match unit.trim() {
            "ms" => Duration::from_millis(number),
            "" | "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.saturating_mul(60)),
            "h" => Duration::from_secs(number.saturating_mul(3600)),
            other => {
                return Err(format!(
                    "invalid duration unit {other:?} in {text:?}: use ms, s, m or h"
                ));
            }
        };
        Ok(Self(duration))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = StringOrNumber::deserialize(deserializer)?.0;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A size in bytes written `10GiB`, `512MiB`, `64KiB`, `2GB`, `100MB` or as a number of
/// bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let invalid = || format!("invalid size {text:?}: expected e.g. 10GiB, 512MiB or bytes");
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| invalid())?;
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            other => {
                return Err(format!(
                    "invalid size unit {other:?} in {text:?}: use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB"
                ));
            }
        };
        number
            .checked_mul(multiplier)
            .map(Self)
            .ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = StringOrNumber::deserialize(deserializer)?.0;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How long a cached tag is trusted before it is revalidated upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagTtl {
    /// Revalidated after this long (`0`: on every request).
    After(Duration),
    /// Never revalidated (the cached tag is served as it is).
    Never,
}

impl Default for TagTtl {
    fn default() -> Self {
        Self::After(Duration::ZERO)
    }
}

impl<'de> Deserialize<'de> for TagTtl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = StringOrNumber::deserialize(deserializer)?.0;
        if text.trim() == "never" {
            return Ok(Self::Never);
        }
        text.parse::<ConfigDuration>()
            .map(|duration| Self::After(duration.0))
            .map_err(|error| serde::de::Error::custom(format!("{error}, or never")))
    }
}

/// A scalar read as text (`tag_ttl: 30` and `tag_ttl: "30s"` both work).
struct StringOrNumber(String);

impl<'de> Deserialize<'de> for StringOrNumber {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = StringOrNumber;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 2s or a number of seconds")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(StringOrNumber(value.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Self::Value, E> {
                Ok(StringOrNumber(value.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Self::Value, E> {
                Ok(StringOrNumber(value.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A registry host (`localhost`, `registry.example.com`, `10.0.0.1:5000`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host(pub String);

impl<'de> Deserialize<'de> for Host {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let valid = text.contains('.') || text.contains(':') || text == "localhost";
        match normalise_host(&text) {
            Some(host) if valid => Ok(Self(host)),
            _ => Err(serde::de::Error::custom(format!(
                "{text:?} is not a registry host: it needs a `.` or a port, or is `localhost`"
            ))),
        }
    }
}

/// An upstream URL: `http://` or `https://`, a registry host, no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub host: String,
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)
    }
}

impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        // A password written into the URL stays out of every message.
        let shown = redact_url(&text);
        let invalid =
            |reason: &str| serde::de::Error::custom(format!("upstream url {shown:?}: {reason}"));
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| invalid("expected http://HOST or https://HOST"))?;
        if rest.split('/').next().unwrap_or(rest).contains('@') {
            return Err(invalid(
                "credentials do not belong in the url: give them as `credentials: {username, password}`",
            ));
        }
        if scheme != "http" && scheme != "https" {
            return Err(invalid("the scheme must be http or https"));
        }
        let host = rest.trim_end_matches('/');
        if host.contains('/') {
            return Err(invalid("an upstream is a registry host, without a path"));
        }
        // The host as written (`registry-1.docker.io` is where to connect, not `docker.io`).
        let host = normalise_host(host)
            .map(|_| host.to_owned())
            .ok_or_else(|| invalid("not a valid host[:port]"))?;
        Ok(Self {
            scheme: scheme.to_owned(),
            host,
        })
    }
}
