//! Upload sessions: `POST …/blobs/uploads/` starts one, `PATCH` appends, `PUT ?digest=`
//! commits, `DELETE` cancels. Each holds a [`BlobUpload`] (its bytes are in the store's
//! `uploads/`). Sessions live in memory: a restarted server has none, and `gc` removes the
//! files they left. Sessions idle for longer than an hour are dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sealer_image_store::BlobUpload;

use crate::error::{ApiError, ErrorCode};

/// Sessions idle longer than this are dropped (their file removed).
pub const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// At most this many sessions at once (each holds two open files); more get 429.
pub const MAX_SESSIONS: usize = 1024;

/// One upload session.
#[derive(Debug)]
pub struct Session {
    /// The store name (`registry/repository`) it was started for.
    pub name: String,
    /// The upload; `None` after a store error made it unusable.
    pub upload: Option<BlobUpload>,
    /// When it was last used.
    pub touched: Instant,
}

/// A session, locked while a request works on it.
pub type SharedSession = Arc<tokio::sync::Mutex<Session>>;

/// Every live session by id.
#[derive(Debug, Default)]
pub struct Uploads {
    sessions: Mutex<HashMap<String, SharedSession>>,
}

impl Uploads {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, SharedSession>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new session for `name`; returns its id (a random UUID).
    pub fn insert(&self, name: String, upload: BlobUpload) -> Result<String, ApiError> {
        let id = random_uuid()?;
        let mut sessions = self.sessions();
        if sessions.len() >= MAX_SESSIONS {
            return Err(ApiError::new(
                ErrorCode::TooManyRequests,
                format!("{MAX_SESSIONS} uploads are in progress; finish or cancel some"),
            ));
        }
        let session = Session {
            name,
            upload: Some(upload),
            touched: Instant::now(),
        };
        sessions.insert(id.clone(), Arc::new(tokio::sync::Mutex::new(session)));
        Ok(id)
    }

    /// The session `id`, if it exists and was started for `name`.
    pub async fn get(&self, id: &str, name: &str) -> Result<SharedSession, ApiError> {
        let unknown = || {
            ApiError::new(
                ErrorCode::BlobUploadUnknown,
                format!("upload {id} is not in progress"),
            )
        };
        let session = self.sessions().get(id).cloned().ok_or_else(unknown)?;
        if session.lock().await.name != name {
            return Err(unknown());
        }
        Ok(session)
    }

    /// Forgets session `id`.
    pub fn remove(&self, id: &str) {
        self.sessions().remove(id);
    }

    /// Drops sessions idle for longer than `idle` (not those in use); returns how many.
    pub fn reap(&self, idle: Duration) -> usize {
        let mut sessions = self.sessions();
        let before = sessions.len();
        sessions.retain(|_, session| match session.try_lock() {
            Ok(session) => session.touched.elapsed() <= idle,
            Err(_) => true,
        });
        before - sessions.len()
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
