//! The one way a step downloads an `http(s)://` source (ADD and APP/CNI/CSI): the file name
//! it gets, the download through [`BuildOptions::fetch`](crate::engine::BuildOptions::fetch),
//! and the URL and content digest added to the step's cache input (so the download happens
//! on every build).

use sealer_image_store::Digest;
use sealer_layer_cache::InputHasher;

use crate::engine::{BuildError, FetchFn, HookError, Result};
use crate::kubefile::Span;

/// The step that downloads, for its error messages.
pub(super) enum Requester<'a> {
    /// An ADD step.
    Add,
    /// An APP, CNI or CSI step (`keyword`) defining `app`.
    App { keyword: &'a str, app: &'a str },
}

impl Requester<'_> {
    fn names_no_file(&self, url: &str) -> String {
        match self {
            Self::Add => format!("ADD {url} names no file"),
            Self::App { keyword, app } => format!("{keyword} {app}: {url} names no file"),
        }
    }

    fn cannot_download(&self, url: &str) -> String {
        match self {
            Self::Add => format!("ADD {url}: this build cannot download"),
            Self::App { keyword, app } => format!(
                "{keyword} {app}: remote sources ({url}) cannot be downloaded by this build"
            ),
        }
    }

    fn downloading(&self, url: &str) -> String {
        match self {
            Self::Add => format!("ADD downloading {url}"),
            Self::App { keyword, app } => format!("{keyword} {app}: downloading {url}"),
        }
    }
}

/// Downloads `url` for the step at `span`: `download` streams it through the fetch hook
/// into whatever holds it and returns that holder with the content's digest (an outer error
/// is the build's own, an inner one the download's). Returns the file name the source gets
/// and the holder; the URL and the digest go into `input`.
pub(super) fn fetch_remote<T>(
    fetch: Option<FetchFn<'_>>,
    span: &Span,
    requester: &Requester<'_>,
    url: &str,
    input: &mut InputHasher,
    download: impl FnOnce(FetchFn<'_>) -> Result<std::result::Result<(T, Digest), HookError>>,
) -> Result<(String, T)> {
    let name =
        remote_file_name(url).ok_or_else(|| BuildError::at(span, requester.names_no_file(url)))?;
    let fetch = fetch.ok_or_else(|| BuildError::at(span, requester.cannot_download(url)))?;
    let (held, digest) = download(fetch)?.map_err(|source| BuildError::Download {
        span: span.clone(),
        what: requester.downloading(url),
        source,
    })?;
    input.add_bytes("remote", url.as_bytes());
    input.add_bytes("content", digest.to_string().as_bytes());
    Ok((name, held))
}

/// The file name a downloaded source gets: the last segment of the URL's path.
fn remote_file_name(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = rest.split(['?', '#']).next().unwrap_or("");
    let (_, path) = path.split_once('/')?;
    let name = path.rsplit('/').next()?;
    (!name.is_empty() && name != "." && name != "..").then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::remote_file_name;

    #[test]
    fn remote_file_names() {
        assert_eq!(
            remote_file_name("https://x.io/a/calico.yaml?x=1#f").as_deref(),
            Some("calico.yaml")
        );
        assert_eq!(remote_file_name("https://x.io/").as_deref(), None);
        assert_eq!(remote_file_name("https://x.io").as_deref(), None);
        assert_eq!(remote_file_name("http://x.io/a/..").as_deref(), None);
    }
}
