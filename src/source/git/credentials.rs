//! How one repository's requests are authenticated: a static token (as
//! each host takes it over git), a GitHub App installation token, or a
//! GitLab OAuth grant's access token; the `Authorization` header for git
//! and LFS requests and the `Bearer` one for host APIs. The transport
//! decides where they may be sent (trusted origins only).

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderValue;

use crate::config::{Provider, RepoConfig, Secret};

use super::origin::{basic, origin};
use super::transport::RemoteError;

/// How requests are authenticated.
pub(super) enum Auth {
    None,
    Static(HeaderValue),
    App(Arc<crate::auth::GithubApp>),
    Gitlab(Arc<crate::auth::GitlabGrant>),
}

/// A GitLab grant that cannot give a token: a network problem (retried),
/// else an authentication failure (EACCES) with what to do.
pub(super) fn grant_error(e: crate::auth::GrantError) -> RemoteError {
    match e {
        crate::auth::GrantError::Server { .. } => RemoteError::Connect {
            url: "GitLab token endpoint".into(),
            cause: e.to_string(),
        },
        other => RemoteError::Auth {
            url: "GitLab application".into(),
            status: 0,
            message: other
                .to_string()
                .trim_start_matches("GitLab application: ")
                .to_string(),
        },
    }
}

impl Auth {
    /// The credentials `repo` names; a GitLab grant only for its own GitLab.
    pub(super) fn new(
        repo: &RepoConfig,
        clone_url: &str,
        timeout: Duration,
    ) -> Result<Auth, String> {
        Ok(match (&repo.token, &repo.github_app) {
            _ if repo.gitlab_app.is_some() => {
                let app = repo.gitlab_app.as_ref().ok_or("no gitlab_app")?;
                let grant = crate::auth::GitlabGrant::shared(app, timeout, repo.ca_bundle.clone())
                    .map_err(|e| e.to_string())?;
                // The grant's credentials go only to its own GitLab.
                if origin(&grant.gitlab_url()) != origin(clone_url) {
                    return Err(format!(
                        "the GitLab grant in {} is for {}, but the repository is at {}; log in to that GitLab",
                        app.grant_file.display(),
                        crate::redact::url(&grant.gitlab_url()),
                        crate::redact::url(clone_url)
                    ));
                }
                Auth::Gitlab(grant)
            }
            (_, Some(app)) => {
                let api =
                    super::origin::api_root(repo.provider, clone_url, repo.api_url.as_deref())
                        .unwrap_or_else(|| "https://api.github.com".into());
                Auth::App(Arc::new(
                    crate::auth::GithubApp::new(app, api, timeout, repo.ca_bundle.clone())
                        .map_err(|e| e.to_string())?,
                ))
            }
            (None, None) => Auth::None,
            (Some(t), None) => {
                let secret = t.secret.expose();
                let value = match (repo.provider, &repo.username) {
                    (Provider::Github | Provider::GithubEnterprise, _) => {
                        basic("x-access-token", secret)
                    }
                    (Provider::Gitlab | Provider::GitlabEnterprise, _) => basic("oauth2", secret),
                    (Provider::BitbucketServer, _) => format!("Bearer {secret}"),
                    (Provider::Git | Provider::S3, Some(user)) => basic(user, secret),
                    (Provider::Git | Provider::S3, None) => format!("Bearer {secret}"),
                };
                let mut v = HeaderValue::from_str(&value).map_err(|_| {
                        format!(
                            "the token from {} contains characters that cannot be sent in an HTTP header",
                            t.origin
                        )
                    })?;
                v.set_sensitive(true);
                Auth::Static(v)
            }
        })
    }

    /// The `Authorization` header for git and LFS requests (`None`:
    /// anonymous); an app token or a grant's access token is fetched or
    /// refreshed here when due.
    pub(super) async fn git_header(&self) -> Result<Option<HeaderValue>, RemoteError> {
        Ok(match self {
            Auth::None => None,
            Auth::Static(v) => Some(v.clone()),
            Auth::App(app) => {
                let token = app.token().await.map_err(|e| match e {
                    crate::auth::AppError::Api { .. } => RemoteError::Connect {
                        url: "GitHub API".into(),
                        cause: e.to_string(),
                    },
                    other => RemoteError::Auth {
                        url: "GitHub App".into(),
                        status: 401,
                        message: other.to_string(),
                    },
                })?;
                let mut v = HeaderValue::from_str(&basic("x-access-token", token.expose()))
                    .map_err(|_| {
                        RemoteError::Protocol("the GitHub API issued an unusable token".into())
                    })?;
                v.set_sensitive(true);
                Some(v)
            }
            Auth::Gitlab(grant) => {
                let token = grant.token().await.map_err(grant_error)?;
                // GitLab takes an OAuth token over git as `oauth2:<token>`.
                let mut v =
                    HeaderValue::from_str(&basic("oauth2", token.expose())).map_err(|_| {
                        RemoteError::Protocol("GitLab issued an unusable access token".into())
                    })?;
                v.set_sensitive(true);
                Some(v)
            }
        })
    }

    /// The `Bearer` header for a host API call (`api_token`: the static token).
    pub(super) async fn api_header(
        &self,
        api_token: Option<&Secret>,
    ) -> Result<Option<HeaderValue>, RemoteError> {
        Ok(match self {
            Auth::None => None,
            Auth::Static(_) | Auth::App(_) | Auth::Gitlab(_) => {
                let token = match (self, api_token) {
                    (Auth::Gitlab(g), _) => {
                        g.token().await.map_err(grant_error)?.expose().to_string()
                    }
                    (Auth::App(app), _) => app
                        .token()
                        .await
                        .map_err(|e| RemoteError::Protocol(e.to_string()))?
                        .expose()
                        .to_string(),
                    (_, Some(t)) => t.expose().to_string(),
                    _ => String::new(),
                };
                let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                    RemoteError::Protocol("the token cannot be sent in an HTTP header".into())
                })?;
                v.set_sensitive(true);
                Some(v)
            }
        })
    }
}
