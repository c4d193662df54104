//! Upload sessions: `POST …/blobs/uploads/` starts one, `PATCH` appends, `PUT ?digest=`
//! commits, `DELETE` cancels. Each holds its backend's upload ([`BackendUpload`]: a file in
//! the local store's `uploads/`, or state in a bucket). Sessions live in memory: a restarted
//! server over the local store has none, and the files a crashed one left are removed when
//! the next one opens the store; an upload whose state lives in a bucket is found there
//! again by any process ([`Uploads::get`]). Bounded by
//! [`UploadLimits`]: sessions at once, all clients together and per client, and how long
//! one may stay idle before it is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::header;

use crate::backend::{BackendUpload, RegistryBackend};
use crate::config::UploadLimits;
use crate::error::{ApiError, ErrorCode};

/// One upload session.
#[derive(Debug)]
pub struct Session {
    /// The store name (`registry/repository`) it was started for.
    pub name: String,
    /// The upload; `None` after a store error made it unusable.
    pub upload: Option<Box<dyn BackendUpload>>,
    /// When it was last used.
    pub touched: Instant,
}

impl Session {
    /// Bytes received so far; an error when a failure made the upload unusable (the client
    /// starts again).
    pub fn size(&self, id: &str) -> Result<u64, ApiError> {
        match &self.upload {
            Some(upload) => Ok(upload.size()),
            None => Err(broken_upload(id)),
        }
    }
}

/// The error of a session whose upload a failure made unusable.
pub fn broken_upload(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::BlobUploadUnknown,
        format!("upload {id} failed earlier; start again"),
    )
}

/// An upload [`Uploads::insert`] refused, with the upload to cancel.
pub type UploadRefused = Box<(ApiError, Box<dyn BackendUpload>)>;

/// A session, locked while a request works on it.
pub type SharedSession = Arc<tokio::sync::Mutex<Session>>;

/// A live session and the client it counts against.
#[derive(Debug)]
struct Entry {
    owner: String,
    session: SharedSession,
}

/// Every live session by id.
#[derive(Debug)]
pub struct Uploads {
    sessions: Mutex<HashMap<String, Entry>>,
    limits: UploadLimits,
}

impl Uploads {
    /// No sessions yet, bounded by `limits`.
    pub fn new(limits: UploadLimits) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            limits,
        }
    }

    /// The bounds in force.
    pub fn limits(&self) -> &UploadLimits {
        &self.limits
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new session for `name`, counted against `owner` (the client: its user or
    /// its address); returns its id (the upload's shared id, else a random UUID). Over the
    /// global or the owner's limit: 429 with `Retry-After`; the upload is handed back for
    /// the caller to cancel.
    pub fn insert(
        &self,
        name: String,
        owner: String,
        upload: Box<dyn BackendUpload>,
    ) -> Result<String, UploadRefused> {
        let id = match upload.shared_id() {
            Some(id) => id.to_owned(),
            None => match random_uuid() {
                Ok(id) => id,
                Err(error) => return Err(Box::new((error, upload))),
            },
        };
        let mut sessions = self.sessions();
        let limit = &self.limits;
        let refused = if sessions.len() >= limit.max_sessions {
            Some(format!(
                "{} uploads are in progress; finish or cancel some",
                limit.max_sessions
            ))
        } else if sessions
            .values()
            .filter(|entry| entry.owner == owner)
            .count()
            >= limit.max_sessions_per_client
        {
            Some(format!(
                "this client has {} uploads in progress; finish or cancel some",
                limit.max_sessions_per_client
            ))
        } else {
            None
        };
        if let Some(message) = refused {
            // Idle sessions are dropped after the idle timeout: a slot frees by then at most.
            let retry = limit.idle_timeout.0.as_secs().clamp(1, 60);
            let error = ApiError::new(ErrorCode::TooManyRequests, message)
                .with_header(header::RETRY_AFTER, &retry.to_string());
            return Err(Box::new((error, upload)));
        }
        let session = Session {
            name,
            upload: Some(upload),
            touched: Instant::now(),
        };
        sessions.insert(
            id.clone(),
            Entry {
                owner,
                session: Arc::new(tokio::sync::Mutex::new(session)),
            },
        );
        Ok(id)
    }

    /// The session `id`, if it exists and was started for `name`: in this process's memory,
    /// else an upload another process started that `backend` finds in shared storage
    /// (registered here for `name`: its id is a random 128-bit secret of the client's).
    pub async fn get(
        &self,
        id: &str,
        name: &str,
        backend: &dyn RegistryBackend,
    ) -> Result<SharedSession, ApiError> {
        let unknown = || {
            ApiError::new(
                ErrorCode::BlobUploadUnknown,
                format!("upload {id} is not in progress"),
            )
        };
        let known = self.sessions().get(id).map(|entry| entry.session.clone());
        let session = match known {
            Some(session) => session,
            None => {
                let upload = backend
                    .resume_upload(id.to_owned(), name)
                    .await?
                    .ok_or_else(unknown)?;
                let session = Arc::new(tokio::sync::Mutex::new(Session {
                    name: name.to_owned(),
                    upload: Some(upload),
                    touched: Instant::now(),
                }));
                self.sessions()
                    .entry(id.to_owned())
                    .or_insert_with(|| Entry {
                        owner: String::new(),
                        session,
                    })
                    .session
                    .clone()
            }
        };
        if session.lock().await.name != name {
            return Err(unknown());
        }
        Ok(session)
    }

    /// Forgets session `id`.
    pub fn remove(&self, id: &str) {
        self.sessions().remove(id);
    }

    /// Takes out the sessions idle for longer than the idle timeout (not those in use), for
    /// the caller to release ([`BackendUpload::release`]).
    pub fn reap(&self) -> Vec<SharedSession> {
        let idle = self.limits.idle_timeout.0;
        let mut reaped = Vec::new();
        self.sessions().retain(|_, entry| {
            let keep = match entry.session.try_lock() {
                Ok(session) => session.touched.elapsed() <= idle,
                Err(_) => true,
            };
            if !keep {
                reaped.push(entry.session.clone());
            }
            keep
        });
        reaped
    }

    /// How often [`Self::reap`] should run: often enough that a session lives at most a
    /// little longer than the idle timeout.
    pub fn reap_interval(&self) -> Duration {
        (self.limits.idle_timeout.0 / 4).clamp(Duration::from_millis(50), Duration::from_secs(30))
    }
}

/// A random version-4 UUID.
fn random_uuid() -> Result<String, ApiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|error| ApiError::internal("random upload id", error))?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuids_and_unique() {
        let a = random_uuid().unwrap();
        let b = random_uuid().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
