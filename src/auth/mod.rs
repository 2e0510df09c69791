//! Credentials that are not a plain token: GitHub App installation tokens
//! (here) and GitLab OAuth application grants ([`gitlab_oauth`], with the
//! device-flow login in [`gitlab_login`]).
//!
//! repofs signs a JWT (RS256) with the app's private key, exchanges it at
//! `POST <api>/app/installations/<id>/access_tokens` for an installation
//! token, uses that token for git and LFS, and asks for a new one before it
//! expires. The key and tokens never reach a log or an error message.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;

use crate::config::Secret;

pub mod gitlab_login;
pub mod gitlab_oauth;
mod oauth_http;
pub use gitlab_oauth::{GitlabAppConfig, GitlabGrant, GrantError};

/// `github_app = { app_id, installation_id, private_key_file }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubAppConfig {
    pub app_id: u64,
    pub installation_id: u64,
    pub private_key_file: PathBuf,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppError {
    #[error("GitHub App: cannot read the private key {path}: {cause}")]
    KeyFile { path: String, cause: String },
    #[error(
        "GitHub App: {path} is not an RSA private key in PEM form (BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY); download a new key from the app's settings"
    )]
    BadKey { path: String },
    #[error(
        "GitHub App: the API at {api} rejected the app's JWT (HTTP {status}): the app_id {app_id} is wrong, or private_key_file does not belong to that app"
    )]
    Rejected {
        api: String,
        status: u16,
        app_id: u64,
    },
    #[error(
        "GitHub App: installation {installation_id} was not found for app {app_id} (HTTP 404): check installation_id (Settings > Integrations > the app's URL ends with it)"
    )]
    NoInstallation { installation_id: u64, app_id: u64 },
    #[error("GitHub App: asking {api} for an installation token failed: {cause}")]
    Api { api: String, cause: String },
}

struct Cached {
    token: Secret,
    /// When to ask for a new one (before it expires).
    renew_at: SystemTime,
}

/// An app installation that hands out short-lived tokens.
pub struct GithubApp {
    config: GithubAppConfig,
    api: String,
    key: aws_lc_rs::rsa::KeyPair,
    client: reqwest::Client,
    cached: tokio::sync::Mutex<Option<Cached>>,
    issued: Mutex<u64>,
}

impl GithubApp {
    /// `api`: `https://api.github.com`, or `https://HOST/api/v3` for Enterprise.
    pub fn new(
        config: &GithubAppConfig,
        api: String,
        timeout: Duration,
        ca_bundle: Option<std::path::PathBuf>,
    ) -> Result<GithubApp, AppError> {
        let key = load_key(&config.private_key_file)?;
        let client = crate::fetch::http::client(crate::fetch::http::ClientOptions {
            connect_timeout: timeout,
            read_timeout: timeout,
            redirects: true,
            ca_bundle,
        })
        .map_err(|cause| AppError::Api {
            api: api.clone(),
            cause,
        })?;
        Ok(GithubApp {
            config: config.clone(),
            api,
            key,
            client,
            cached: tokio::sync::Mutex::new(None),
            issued: Mutex::new(0),
        })
    }

    /// How many installation tokens this process obtained (for tests/status).
    pub fn tokens_issued(&self) -> u64 {
        *self.issued.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current installation token, fetching a new one when needed.
    pub async fn token(&self) -> Result<Secret, AppError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            if SystemTime::now() < c.renew_at {
                return Ok(c.token.clone());
            }
        }
        let fresh = self.exchange().await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        *self.issued.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        Ok(token)
    }

    /// Forgets the cached token (after the server refused it).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    /// A JWT for the app: RS256, issued a minute in the past (clock drift),
    /// valid for nine minutes (GitHub allows ten).
    pub fn jwt(&self) -> Result<String, AppError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = b64.encode(
            serde_json::json!({"iat": now.saturating_sub(60), "exp": now + 540, "iss": self.config.app_id.to_string()})
                .to_string(),
        );
        let signing_input = format!("{header}.{claims}");
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| AppError::BadKey {
                path: self.config.private_key_file.display().to_string(),
            })?;
        Ok(format!("{signing_input}.{}", b64.encode(sig)))
    }

    async fn exchange(&self) -> Result<Cached, AppError> {
        let url = format!(
            "{}/app/installations/{}/access_tokens",
            self.api, self.config.installation_id
        );
        let api_err = |cause: String| AppError::Api {
            api: self.api.clone(),
            cause,
        };
        let resp = self
            .client
            .post(&url)
            .header(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", self.jwt()?),
            )
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header(
                reqwest::header::USER_AGENT,
                concat!("repofs/", env!("CARGO_PKG_VERSION")),
            )
            .header("X-GitHub-Api-Version", "2022-11-28")
            .send()
            .await
            .map_err(|e| api_err(e.without_url().to_string()))?;
        let status = resp.status().as_u16();
        match status {
            200 | 201 => {}
            401 | 403 => {
                return Err(AppError::Rejected {
                    api: self.api.clone(),
                    status,
                    app_id: self.config.app_id,
                });
            }
            404 => {
                return Err(AppError::NoInstallation {
                    installation_id: self.config.installation_id,
                    app_id: self.config.app_id,
                });
            }
            s => return Err(api_err(format!("HTTP {s}"))),
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| api_err(e.without_url().to_string()))?;
        let body: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| api_err(format!("the answer is not JSON: {e}")))?;
        let token = body
            .get("token")
            .and_then(|t| t.as_str())
            .ok_or_else(|| api_err("the answer has no token".into()))?;
        let now = SystemTime::now();
        let expires = body
            .get("expires_at")
            .and_then(|e| e.as_str())
            .and_then(crate::source::git::lfs::parse_rfc3339)
            .unwrap_or(now + Duration::from_secs(3600));
        // Renew with a fifth of the lifetime left (GitHub: 12 of 60 minutes).
        let life = expires.duration_since(now).unwrap_or_default();
        let renew_at = now + life * 4 / 5;
        tracing::info!(app_id = self.config.app_id, installation_id = self.config.installation_id, valid_for = ?life, "GitHub App installation token obtained");
        Ok(Cached {
            token: Secret::new(token),
            renew_at,
        })
    }
}

/// Reads a PEM RSA key (PKCS#1 as GitHub issues it, or PKCS#8).
fn load_key(path: &Path) -> Result<aws_lc_rs::rsa::KeyPair, AppError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| AppError::KeyFile {
        path: shown.clone(),
        cause: e.to_string(),
    })?;
    let bad = || AppError::BadKey {
        path: shown.clone(),
    };
    let (label, body) = pem_body(&text).ok_or_else(bad)?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| bad())?;
    match label.as_str() {
        "RSA PRIVATE KEY" => aws_lc_rs::rsa::KeyPair::from_der(&der).map_err(|_| bad()),
        "PRIVATE KEY" => aws_lc_rs::rsa::KeyPair::from_pkcs8(&der).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// The label and the base64 body of the first PEM block. Whatever the
/// file holds, only `split_once` takes it apart (no index arithmetic): the
/// END marker is looked for after the BEGIN line, so markers with nothing
/// or each other between them give an empty body or `None`, never a panic.
fn pem_body(text: &str) -> Option<(String, String)> {
    let (_, rest) = text.split_once("-----BEGIN ")?;
    let (label, after) = rest.split_once("-----")?;
    let (body, _) = after.split_once(&format!("-----END {label}-----"))?;
    let body: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    Some((label.to_string(), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openssl(args: &[&str]) -> bool {
        std::process::Command::new("openssl")
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    #[test]
    fn signs_a_jwt_that_openssl_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("app.pem");
        let k = key.to_str().unwrap();
        assert!(
            openssl(&["genrsa", "-traditional", "-out", k, "2048"])
                || openssl(&["genrsa", "-out", k, "2048"])
        );
        let cfg = GithubAppConfig {
            app_id: 42,
            installation_id: 7,
            private_key_file: key.clone(),
        };
        let app = GithubApp::new(
            &cfg,
            "http://127.0.0.1:1".into(),
            Duration::from_secs(1),
            None,
        )
        .unwrap();
        let jwt = app.jwt().unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "42");
        assert!(claims["exp"].as_u64().unwrap() > claims["iat"].as_u64().unwrap());
        // Verify the signature with openssl and the public half of the key.
        let pubkey = dir.path().join("pub.pem");
        assert!(openssl(&[
            "rsa",
            "-in",
            k,
            "-pubout",
            "-out",
            pubkey.to_str().unwrap()
        ]));
        let msg = dir.path().join("msg");
        let sig = dir.path().join("sig");
        std::fs::write(&msg, format!("{}.{}", parts[0], parts[1])).unwrap();
        std::fs::write(&sig, b64.decode(parts[2]).unwrap()).unwrap();
        assert!(openssl(&[
            "dgst",
            "-sha256",
            "-verify",
            pubkey.to_str().unwrap(),
            "-signature",
            sig.to_str().unwrap(),
            msg.to_str().unwrap()
        ]));
    }

    #[test]
    fn bad_keys_are_reported_without_contents() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(
            &key,
            "-----BEGIN RSA PRIVATE KEY-----\nbm90IGEga2V5\n-----END RSA PRIVATE KEY-----\n",
        )
        .unwrap();
        let cfg = GithubAppConfig {
            app_id: 1,
            installation_id: 1,
            private_key_file: key,
        };
        let e = GithubApp::new(&cfg, "x".into(), Duration::from_secs(1), None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("not an RSA private key") && !e.contains("bm90"),
            "{e}"
        );
        let cfg = GithubAppConfig {
            app_id: 1,
            installation_id: 1,
            private_key_file: dir.path().join("missing"),
        };
        assert!(GithubApp::new(&cfg, "x".into(), Duration::from_secs(1), None).is_err());
    }

    #[test]
    fn pem_markers_with_nothing_between_them_are_a_bad_key() {
        for text in [
            "-----BEGIN RSA PRIVATE KEY----------END RSA PRIVATE KEY-----",
            "-----BEGIN RSA PRIVATE KEY-----END RSA PRIVATE KEY-----",
            "-----BEGIN RSA PRIVATE KEY-----\n-----END RSA PRIVATE KEY-----\n",
            "-----BEGIN -----END -----",
            "-----BEGIN ----------END -----",
            "-----BEGIN ",
            "-----BEGIN é-----",
        ] {
            if let Some((_, body)) = pem_body(text) {
                assert!(body.is_empty(), "{text:?}: {body:?}");
            }
            let dir = tempfile::tempdir().unwrap();
            let key = dir.path().join("k.pem");
            std::fs::write(&key, text).unwrap();
            let cfg = GithubAppConfig {
                app_id: 1,
                installation_id: 1,
                private_key_file: key,
            };
            let e = GithubApp::new(&cfg, "x".into(), Duration::from_secs(1), None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("not an RSA private key"), "{text:?}: {e}");
        }
    }
}
