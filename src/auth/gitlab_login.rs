//! `repofs login gitlab`: the OAuth 2.0 Device Authorization Grant
//! (RFC 8628) against GitLab's `POST /oauth/authorize_device` and
//! `POST /oauth/token`. Prints where to authorize and the user code, polls
//! at the server's `interval` (5 s more after each `slow_down`, RFC 8628
//! §3.5) until the user approves or denies or the code expires, and writes
//! the grant file. No browser is needed on the machine itself.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::gitlab_oauth::{Grant, write_grant};
use super::oauth_http::{TokenAnswer, http_client, now, post_form, token_answer};

/// What `repofs login gitlab` was given.
pub struct LoginArgs {
    /// GitLab's base URL, `https://gitlab.example.com`.
    pub url: String,
    pub client_id: String,
    pub scope: String,
    pub grant_file: PathBuf,
    pub timeout: Duration,
    /// Certificate authorities trusted beside the system's (`--ca-bundle`).
    pub ca_bundle: Option<PathBuf>,
}

/// The device grant's polling interval when the server names none (RFC 8628 §3.2).
const DEFAULT_INTERVAL: u64 = 5;

/// Runs the device flow; progress for the user goes to `out`.
pub async fn login(args: &LoginArgs, out: &mut dyn Write) -> Result<Grant, String> {
    let base = base_url(&args.url)?;
    if args.client_id.trim().is_empty() {
        return Err(
            "--client-id is empty: give the Application ID shown in GitLab's application settings"
                .into(),
        );
    }
    // Before the user is asked anything: can the grant be written there?
    let dir = match args.grant_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() || args.grant_file.is_dir() {
        return Err(format!(
            "--grant-file {}: the directory {} does not exist, or the path is a directory",
            args.grant_file.display(),
            dir.display()
        ));
    }
    let client = http_client(args.timeout, args.ca_bundle.clone())?;
    let device_url = format!("{base}/oauth/authorize_device");
    let (status, body) = post_form(
        &client,
        &device_url,
        &[("client_id", &args.client_id), ("scope", &args.scope)],
    )
    .await
    .map_err(|e| format!("{device_url}: {e}"))?;
    let text = |k: &str| body.get(k).and_then(|v| v.as_str()).map(str::to_string);
    if status != 200 {
        let why = match text("error") {
            Some(e) if e == "invalid_client" => "GitLab does not know this client id, or the application is confidential: register it as non-confidential with the device flow enabled".to_string(),
            Some(e) if e == "invalid_scope" => format!("the application does not have the scope {:?}: add it in the application's settings", args.scope),
            Some(e) => format!("{e} {}", text("error_description").unwrap_or_default()),
            None => format!("HTTP {status}"),
        };
        return Err(format!(
            "{device_url}: the device authorization was refused: {why}"
        ));
    }
    let (Some(device_code), Some(user_code), Some(uri)) = (
        text("device_code"),
        text("user_code"),
        text("verification_uri"),
    ) else {
        return Err(format!(
            "{device_url}: the answer lacks device_code, user_code or verification_uri"
        ));
    };
    let printable = |s: &str| s.chars().filter(|c| !c.is_control()).collect::<String>();
    let mut interval = body
        .get("interval")
        .and_then(|v| v.as_u64())
        .unwrap_or(DEFAULT_INTERVAL)
        .clamp(1, 60);
    let expires_in = body
        .get("expires_in")
        .and_then(|v| v.as_u64())
        .unwrap_or(300)
        .clamp(1, 3600);
    let deadline = Instant::now() + Duration::from_secs(expires_in);
    let _ = writeln!(
        out,
        "To authorize repofs, open {} and enter the code {}",
        printable(&uri),
        printable(&user_code)
    );
    if let Some(complete) = text("verification_uri_complete") {
        let _ = writeln!(out, "(or open {} directly)", printable(&complete));
    }
    let _ = writeln!(
        out,
        "Waiting for the approval (the code expires in {} min)...",
        expires_in.div_ceil(60)
    );
    let _ = out.flush();
    let token_url = format!("{base}/oauth/token");
    loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        if Instant::now() >= deadline {
            return Err(format!(
                "the code {user_code} expired before it was approved; run the login again"
            ));
        }
        let (status, body) = post_form(
            &client,
            &token_url,
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", &device_code),
                ("client_id", &args.client_id),
            ],
        )
        .await
        .map_err(|e| format!("{token_url}: {e}"))?;
        match token_answer(status, &body).map_err(|e| format!("{token_url}: {e}"))? {
            TokenAnswer::Error { error, .. } if error == "authorization_pending" => {}
            TokenAnswer::Error { error, .. } if error == "slow_down" => {
                interval += 5;
                tracing::debug!(interval, "the server asked to poll more slowly");
            }
            TokenAnswer::Error { error, .. } if error == "expired_token" => {
                return Err(format!(
                    "the code {user_code} expired before it was approved (expired_token); run the login again"
                ));
            }
            TokenAnswer::Error { error, .. } if error == "access_denied" => {
                return Err(
                    "the authorization was denied in GitLab (access_denied); nothing was written"
                        .into(),
                );
            }
            TokenAnswer::Error { error, description } => {
                return Err(format!(
                    "{token_url}: the server refused the device code: {error} {description}"
                ));
            }
            TokenAnswer::Token {
                access_token,
                refresh_token,
                expires_in,
                scope,
            } => {
                let refresh_token = refresh_token.ok_or_else(|| {
                    format!("{token_url}: the answer has no refresh_token, so the daemon could not renew the access; check that the application is a GitLab OAuth application")
                })?;
                let issued = now();
                let grant = Grant {
                    gitlab_url: base.clone(),
                    client_id: args.client_id.clone(),
                    scope: scope.unwrap_or_else(|| args.scope.clone()),
                    access_token,
                    refresh_token,
                    expires_at: issued + expires_in.unwrap_or(7200),
                    obtained_at: issued,
                };
                write_grant(&args.grant_file, &grant)?;
                let _ = writeln!(
                    out,
                    "Authorized. The grant is in {} (access token valid for {}; the daemon renews it).",
                    args.grant_file.display(),
                    super::gitlab_oauth::human(grant.remaining())
                );
                return Ok(grant);
            }
        }
    }
}

/// `https://gitlab.example.com[/prefix]` without a trailing slash; only
/// http(s), no credentials, query or fragment.
fn base_url(url: &str) -> Result<String, String> {
    let u = reqwest::Url::parse(url)
        .map_err(|e| format!("--url {url:?} is not a URL ({e}); give GitLab's address, such as https://gitlab.example.com"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(format!("--url {url:?} must be an http:// or https:// URL"));
    }
    if !u.username().is_empty() || u.password().is_some() || u.query().is_some() {
        return Err(format!(
            "--url {url:?} must be GitLab's base address, without credentials or query"
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn base_urls_are_checked() {
        assert_eq!(
            super::base_url("https://gitlab.example.com/").unwrap(),
            "https://gitlab.example.com"
        );
        assert!(super::base_url("ftp://x").is_err());
        assert!(super::base_url("https://u:p@x").is_err());
        assert!(super::base_url("gitlab.example.com").is_err());
    }
}
