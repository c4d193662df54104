//! Where the bucket is and how to sign requests to it.

use std::path::{Path, PathBuf};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use sealer_fs_abstraction::{Fs as _, RealFs, error_chain};
use serde::Deserialize;

/// Errors of [`BucketConfig::build`].
#[derive(Debug, thiserror::Error)]
pub enum BucketConfigError {
    /// The object store refused the settings (bad endpoint URL, no credentials…).
    #[error("storage.s3 (bucket {bucket:?})")]
    Invalid {
        /// The configured bucket.
        bucket: String,
        /// What the object store said.
        #[source]
        source: object_store::Error,
    },
    /// An AWS credentials or config file could not be read.
    #[error("storage.s3: reading {path}: {reason}")]
    AwsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The `storage: { s3: … }` section: an S3-compatible bucket.
///
/// Credentials, first found wins: `access_key_id`/`secret_access_key` here, the `AWS_*`
/// environment variables, then the profile (`profile`, else `AWS_PROFILE`, else `default`) of
/// the AWS files (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`; `AWS_CONFIG_FILE`,
/// else `~/.aws/config`, which may also give the region).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct BucketConfig {
    /// The bucket name.
    pub bucket: String,
    /// A key prefix for every object (several registries may share a bucket).
    #[serde(default)]
    pub prefix: Option<String>,
    /// The endpoint of an S3-compatible server, e.g. `http://127.0.0.1:9000`; AWS when unset.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The region (default: environment, AWS config file, else `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), which most S3-compatible servers need;
    /// virtual-hosted style (`bucket.endpoint/key`) when false.
    #[serde(default = "default_true")]
    pub path_style: bool,
    /// Allows a plain `http://` endpoint (loopback test servers).
    #[serde(default)]
    pub allow_http: bool,
    /// The access key id (prefer the environment or the AWS files for secrets).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// The secret access key.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// The AWS files' profile to read.
    #[serde(default)]
    pub profile: Option<String>,
}

fn default_true() -> bool {
    true
}

impl BucketConfig {
    /// The S3 client for this configuration (no request is sent).
    pub fn build(&self) -> Result<AmazonS3, BucketConfigError> {
        // object_store builds its reqwest client on the process-default rustls provider
        // (reqwest has no provider of its own here): ring, the project's only one. An error
        // means a default is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&self.bucket)
            .with_virtual_hosted_style_request(!self.path_style)
            .with_allow_http(self.allow_http);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let from_env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let env_has_keys = from_env("AWS_ACCESS_KEY_ID").is_some();
        let profile = self
            .profile
            .clone()
            .or_else(|| from_env("AWS_PROFILE"))
            .unwrap_or_else(|| "default".to_owned());
        let home = from_env("HOME").map(PathBuf::from);
        let aws_file = |variable: &str, name: &str| {
            from_env(variable)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|home| home.join(".aws").join(name)))
        };
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(id), Some(secret)) => {
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
            }
            _ if env_has_keys => {}
            _ => {
                if let Some(path) = aws_file("AWS_SHARED_CREDENTIALS_FILE", "credentials") {
                    let section = read_profile(&path, &profile)?;
                    for (key, value) in section {
                        builder = match key.as_str() {
                            "aws_access_key_id" => builder.with_access_key_id(value),
                            "aws_secret_access_key" => builder.with_secret_access_key(value),
                            "aws_session_token" => builder.with_token(value),
                            _ => builder,
                        };
                    }
                }
            }
        }
        let region = match &self.region {
            Some(region) => Some(region.clone()),
            None => match from_env("AWS_REGION").or_else(|| from_env("AWS_DEFAULT_REGION")) {
                Some(region) => Some(region),
                None => match aws_file("AWS_CONFIG_FILE", "config") {
                    // The config file names profiles `[profile NAME]`, except `[default]`.
                    Some(path) => {
                        let section = if profile == "default" {
                            profile.clone()
                        } else {
                            format!("profile {profile}")
                        };
                        read_profile(&path, &section)?
                            .into_iter()
                            .find(|(key, _)| key == "region")
                            .map(|(_, value)| value)
                    }
                    None => None,
                },
            },
        };
        builder = builder.with_region(region.unwrap_or_else(|| "us-east-1".to_owned()));
        builder
            .build()
            .map_err(|source| BucketConfigError::Invalid {
                bucket: self.bucket.clone(),
                source,
            })
    }
}

/// The `key = value` lines of section `[name]` of an INI-style AWS file; empty when the file
/// or the section does not exist.
fn read_profile(path: &Path, name: &str) -> Result<Vec<(String, String)>, BucketConfigError> {
    let failed = |reason: String| BucketConfigError::AwsFile {
        path: path.to_owned(),
        reason,
    };
    let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
        return Ok(Vec::new());
    };
    let fs = match RealFs::open_root(dir) {
        Ok(fs) => fs,
        Err(error) if error.is_not_found() => return Ok(Vec::new()),
        Err(error) => return Err(failed(error_chain(&error))),
    };
    let bytes = match fs.read(Path::new(file)) {
        Ok(bytes) => bytes,
        Err(error) if error.is_not_found() => return Ok(Vec::new()),
        Err(error) => return Err(failed(error_chain(&error))),
    };
    let text = String::from_utf8(bytes).map_err(|_| failed("not UTF-8".to_owned()))?;
    Ok(parse_profile(&text, name))
}

/// See [`read_profile`].
fn parse_profile(text: &str, name: &str) -> Vec<(String, String)> {
    let mut in_section = false;
    let mut pairs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            in_section = section.trim() == name;
        } else if in_section && let Some((key, value)) = line.split_once('=') {
            pairs.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_read_by_section() {
        let text = "[default]\naws_access_key_id = A\n# note\n[profile ci]\nregion=eu-west-1\n";
        assert_eq!(
            parse_profile(text, "default"),
            vec![("aws_access_key_id".to_owned(), "A".to_owned())]
        );
        assert_eq!(
            parse_profile(text, "profile ci"),
            vec![("region".to_owned(), "eu-west-1".to_owned())]
        );
        assert!(parse_profile(text, "other").is_empty());
    }
}
