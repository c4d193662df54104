//! `login` (credentials checked against the registry, then stored) and `logout`.

use std::path::PathBuf;

use reqwest::Method;
use sealer_fs_abstraction::{ErrorChain, error_chain};

use crate::credentials::Credential;

use super::{ClientError, RegistryClient, Request, Scope, normalize_registry, status_error};

impl RegistryClient {
    /// Checks credentials for `registry` (a host, `docker.io` for Docker Hub) by calling
    /// `GET /v2/` with them through the whole auth flow, then stores them in docker's
    /// `config.json` (see [`CredentialStore::save_login`](crate::CredentialStore::save_login)). Returns the file written.
    pub async fn login(
        &self,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<PathBuf, ClientError> {
        let registry = normalize_registry(registry)?;
        let credential = Credential::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        let scope = Scope::default();
        let base = self.base_url(&registry).await?;
        let url = base.join("v2/").map_err(|error| ClientError::Url {
            url: base.to_string(),
            reason: error_chain(&error),
        })?;
        let mut request = Request::new(Method::GET, &registry, url, &scope);
        request.credential = Some(&credential);
        let response = self.send(request).await?;
        if !response.status().is_success() {
            return Err(status_error(Method::GET, response).await);
        }
        tracing::info!(registry, username, "credentials accepted");
        let store = self.inner.credentials.clone();
        let (user, secret) = (username.to_owned(), password.to_owned());
        tokio::task::spawn_blocking(move || store.save_login(&registry, &user, &secret))
            .await
            .map_err(|error| {
                ClientError::Runtime(format!("saving the login: {}", ErrorChain(&error)))
            })?
            .map_err(Into::into)
    }

    /// Removes the stored credentials of `registry`; returns whether there were any.
    pub fn logout(&self, registry: &str) -> Result<bool, ClientError> {
        let registry = normalize_registry(registry)?;
        Ok(self.inner.credentials.remove_login(&registry)?)
    }
}
