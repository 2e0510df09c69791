//! GitLab OAuth application grants: the grant file `repofs login gitlab`
//! writes, and the shared in-memory grant the daemon refreshes.
//!
//! GitLab's access tokens live two hours (`expires_in`), and every refresh
//! (`POST /oauth/token`, `grant_type=refresh_token`) answers a new refresh
//! token and revokes the old one. So the new grant is written to the grant
//! file (temp file, fsync, rename, fsync of the directory) before the new
//! access token is handed to anyone: whenever the process dies, the file
//! holds the newest refresh token the server may still accept. Every
//! repository naming one grant file shares one [`GitlabGrant`]; its lock is
//! held across a refresh, so one refresh serves every waiter. A grant file
//! changed on disk (a new `repofs login`) is read again. Tokens never reach
//! a log, an error message or the `Debug` output.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Secret;

use super::oauth_http::{TokenAnswer, http_client, now, post_form, token_answer};

/// `gitlab_app = { client_id = "...", grant_file = "/path" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitlabAppConfig {
    pub client_id: String,
    pub grant_file: PathBuf,
}

/// The most of a grant file that is read.
const MAX_FILE: usize = 64 * 1024;
/// GitLab's access token lifetime, when an answer has no `expires_in`.
const DEFAULT_LIFETIME: u64 = 7200;

/// What the grant file holds (JSON, 0600).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Grant {
    /// The GitLab the grant belongs to (`https://gitlab.example.com`).
    pub gitlab_url: String,
    pub client_id: String,
    pub scope: String,
    pub access_token: String,
    pub refresh_token: String,
    /// When the access token expires (seconds since the epoch).
    pub expires_at: u64,
    /// When it was issued (seconds since the epoch).
    pub obtained_at: u64,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("gitlab_url", &self.gitlab_url)
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Grant {
    /// Seconds left before the access token expires (0 once expired).
    pub fn remaining(&self) -> u64 {
        self.expires_at.saturating_sub(now())
    }

    /// Whether to refresh now: less than 5 minutes or a tenth of the
    /// lifetime left, whichever is shorter (GitLab: 5 of 120 minutes).
    fn due(&self) -> bool {
        let life = self.expires_at.saturating_sub(self.obtained_at);
        self.remaining() <= (life / 10).min(300)
    }

    /// The command that makes a new grant.
    pub fn login_command(&self, path: &Path) -> String {
        login_command(&self.gitlab_url, &self.client_id, &self.scope, path)
    }
}

/// `1 h 59 min`, `4 min`, `45 s`.
pub fn human(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

pub fn login_command(url: &str, client_id: &str, scope: &str, path: &Path) -> String {
    let scope = if scope.is_empty() || scope == "read_repository" {
        String::new()
    } else {
        format!(" --scope '{scope}'")
    };
    format!(
        "repofs login gitlab --url {url} --client-id {client_id}{scope} --grant-file {}",
        path.display()
    )
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum GrantError {
    #[error(
        "GitLab application: cannot read the grant file {path}: {cause}; run `repofs login gitlab --url URL --client-id {client_id} --grant-file {path}`"
    )]
    File {
        path: String,
        client_id: String,
        cause: String,
    },
    #[error(
        "GitLab application: {path} is not a grant file written by `repofs login gitlab` ({cause}); run the login again"
    )]
    Bad { path: String, cause: String },
    #[error("GitLab application: {path}: {message}")]
    Mismatch { path: String, message: String },
    #[error(
        "GitLab application: the grant in {path} was revoked or has expired (invalid_grant); run `{login}` again"
    )]
    Revoked { path: String, login: String },
    #[error("GitLab application: asking {url} for a token failed: {cause}")]
    Server { url: String, cause: String },
}

/// Identifies one version of the grant file on disk.
type Stamp = (u64, u64, i64, i64, u64);

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    (
        meta.dev(),
        meta.ino(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.len(),
    )
}

/// Reads and checks a grant file.
pub fn read_grant(path: &Path, client_id: &str) -> Result<(Grant, Option<Stamp>), GrantError> {
    let shown = path.display().to_string();
    let text = std::fs::read(path).map_err(|e| GrantError::File {
        path: shown.clone(),
        client_id: client_id.to_string(),
        cause: e.to_string(),
    })?;
    if text.len() > MAX_FILE {
        return Err(GrantError::Bad {
            path: shown,
            cause: "larger than 64 KiB".into(),
        });
    }
    let grant: Grant = serde_json::from_slice(&text).map_err(|e| GrantError::Bad {
        path: shown.clone(),
        // serde's message names the field, never the values of others.
        cause: format!("line {} column {}", e.line(), e.column()),
    })?;
    if grant.client_id != client_id {
        return Err(GrantError::Mismatch {
            path: shown,
            message: format!(
                "the grant is for the application {}, the config names client_id {client_id}; log in with that client id or fix the config",
                grant.client_id
            ),
        });
    }
    Ok((grant, std::fs::metadata(path).ok().map(|m| stamp(&m))))
}

/// Writes a grant file: 0600, atomically (temp file in the same directory,
/// fsync, rename, fsync of the directory).
pub fn write_grant(path: &Path, grant: &Grant) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let text = serde_json::to_vec_pretty(grant).map_err(|e| e.to_string())?;
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".repofs-grant-")
        .tempfile_in(dir)
        .map_err(fail)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(fail)?;
    tmp.write_all(&text).map_err(fail)?;
    tmp.write_all(b"\n").map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)?;
    Ok(())
}

struct State {
    grant: Option<Grant>,
    stamp: Option<Stamp>,
    /// The server answered `invalid_grant` for the grant in memory.
    revoked: bool,
    /// The newest grant could not be written; it is written again at the
    /// next use.
    unsaved: bool,
    /// When the access token in memory was obtained (this process).
    refreshed: Option<Instant>,
}

/// One grant file, shared by every repository that names it.
pub struct GitlabGrant {
    path: PathBuf,
    client_id: String,
    client: reqwest::Client,
    /// The grant's GitLab base URL (readable while a refresh holds `state`).
    base: Mutex<String>,
    state: tokio::sync::Mutex<State>,
    refreshes: AtomicU64,
}

/// Grants by file, so that repositories naming one file share one grant.
static GRANTS: Mutex<Option<HashMap<PathBuf, Weak<GitlabGrant>>>> = Mutex::new(None);

impl GitlabGrant {
    /// The grant for `config.grant_file`, shared with every other
    /// repository naming that file. The file is read now.
    pub fn shared(
        config: &GitlabAppConfig,
        timeout: Duration,
        ca_bundle: Option<std::path::PathBuf>,
    ) -> Result<Arc<Self>, GrantError> {
        let mut map = GRANTS.lock().unwrap_or_else(|e| e.into_inner());
        let map = map.get_or_insert_with(HashMap::new);
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(g) = map.get(&config.grant_file).and_then(Weak::upgrade) {
            if g.client_id != config.client_id {
                return Err(GrantError::Mismatch {
                    path: config.grant_file.display().to_string(),
                    message: format!(
                        "two repositories name this grant file with different client ids ({} and {})",
                        g.client_id, config.client_id
                    ),
                });
            }
            return Ok(g);
        }
        let (grant, stamp) = read_grant(&config.grant_file, &config.client_id)?;
        let client = http_client(timeout, ca_bundle).map_err(|cause| GrantError::Server {
            url: grant.gitlab_url.clone(),
            cause,
        })?;
        let g = Arc::new(GitlabGrant {
            path: config.grant_file.clone(),
            client_id: config.client_id.clone(),
            client,
            base: Mutex::new(grant.gitlab_url.clone()),
            state: tokio::sync::Mutex::new(State {
                grant: Some(grant),
                stamp,
                revoked: false,
                unsaved: false,
                refreshed: None,
            }),
            refreshes: AtomicU64::new(0),
        });
        map.insert(config.grant_file.clone(), Arc::downgrade(&g));
        Ok(g)
    }

    /// The GitLab base URL of the grant as it is in memory.
    pub fn gitlab_url(&self) -> String {
        self.base.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many refreshes this process made (for tests and status).
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// The current access token, refreshed first when it is due.
    pub async fn token(&self) -> Result<Secret, GrantError> {
        let mut st = self.state.lock().await;
        self.reload_if_changed(&mut st)?;
        self.usable(&mut st).await?;
        if st.grant.as_ref().is_some_and(Grant::due) {
            self.refresh(&mut st).await?;
        }
        Ok(Secret::new(
            st.grant
                .as_ref()
                .map(|g| g.access_token.as_str())
                .unwrap_or(""),
        ))
    }

    /// After the server refused the access token (HTTP 401) for a request
    /// sent at `sent`: refreshes, unless another request already did since.
    pub async fn after_401(&self, sent: Instant) -> Result<(), GrantError> {
        let mut st = self.state.lock().await;
        self.reload_if_changed(&mut st)?;
        self.usable(&mut st).await?;
        if st.refreshed.is_some_and(|t| t > sent) {
            return Ok(());
        }
        tracing::info!(grant_file = %self.path.display(), "GitLab refused the access token (HTTP 401): refreshing it");
        self.refresh(&mut st).await
    }

    /// The grant as it is now, refreshed if due (for `repofs check`).
    pub async fn describe(&self) -> Result<Grant, GrantError> {
        self.token().await?;
        let st = self.state.lock().await;
        st.grant.clone().ok_or_else(|| self.revoked_error(None))
    }

    fn revoked_error(&self, grant: Option<&Grant>) -> GrantError {
        GrantError::Revoked {
            path: self.path.display().to_string(),
            login: match grant {
                Some(g) => g.login_command(&self.path),
                None => login_command("URL", &self.client_id, "", &self.path),
            },
        }
    }

    /// Errs when the grant in memory was revoked; writes a grant whose
    /// earlier write failed.
    async fn usable(&self, st: &mut State) -> Result<(), GrantError> {
        if st.revoked {
            return Err(self.revoked_error(st.grant.as_ref()));
        }
        if st.unsaved
            && let Some(g) = st.grant.clone()
            && self.save(st, &g).is_ok()
        {
            tracing::info!(grant_file = %self.path.display(), "the refreshed GitLab grant is written now");
        }
        Ok(())
    }

    /// Reads the file again when it changed on disk (another login).
    fn reload_if_changed(&self, st: &mut State) -> Result<(), GrantError> {
        if st.unsaved {
            return Ok(());
        }
        let now_stamp = std::fs::metadata(&self.path).ok().map(|m| stamp(&m));
        if now_stamp.is_none() || now_stamp == st.stamp {
            return Ok(());
        }
        let (grant, stamp) = read_grant(&self.path, &self.client_id)?;
        if st.grant.as_ref() != Some(&grant) {
            tracing::info!(grant_file = %self.path.display(), "the GitLab grant file changed on disk: using the new grant");
            st.revoked = false;
            st.refreshed = None;
        }
        *self.base.lock().unwrap_or_else(|e| e.into_inner()) = grant.gitlab_url.clone();
        st.grant = Some(grant);
        st.stamp = stamp;
        Ok(())
    }

    fn save(&self, st: &mut State, grant: &Grant) -> Result<(), String> {
        match write_grant(&self.path, grant) {
            Ok(()) => {
                st.unsaved = false;
                st.stamp = std::fs::metadata(&self.path).ok().map(|m| stamp(&m));
                Ok(())
            }
            Err(e) => {
                st.unsaved = true;
                tracing::error!(grant_file = %self.path.display(), error = %e, "cannot write the refreshed GitLab grant: the refresh token in the file is revoked now; repofs keeps the new one in memory and tries again, but after a restart `repofs login gitlab` is needed unless the write succeeds");
                Err(e)
            }
        }
    }

    /// Refreshes the grant (`grant_type=refresh_token`), writes the rotated
    /// grant to the file, and only then puts it in memory.
    async fn refresh(&self, st: &mut State) -> Result<(), GrantError> {
        // Other processes (`repofs check`, another daemon) may share the
        // file: refreshes are serialized by a lock on it, and a grant
        // another one refreshed meanwhile is taken instead.
        let _lock = self.lock_file().await;
        if let Ok((on_disk, stamp)) = read_grant(&self.path, &self.client_id) {
            let mine = st.grant.as_ref().map(|g| g.refresh_token.as_str());
            if !st.unsaved && mine != Some(on_disk.refresh_token.as_str()) {
                tracing::info!(grant_file = %self.path.display(), "another process refreshed the GitLab grant: using its tokens");
                *self.base.lock().unwrap_or_else(|e| e.into_inner()) = on_disk.gitlab_url.clone();
                st.grant = Some(on_disk);
                st.stamp = stamp;
                st.refreshed = Some(Instant::now());
                return Ok(());
            }
        }
        let Some(old) = st.grant.clone() else {
            return Err(self.revoked_error(None));
        };
        let url = format!("{}/oauth/token", old.gitlab_url.trim_end_matches('/'));
        let server = |cause: String| GrantError::Server {
            url: url.clone(),
            cause,
        };
        let (status, body) = post_form(
            &self.client,
            &url,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &old.refresh_token),
                ("client_id", &old.client_id),
            ],
        )
        .await
        .map_err(server)?;
        let answer = token_answer(status, &body).map_err(server)?;
        let (access_token, refresh_token, expires_in, scope) = match answer {
            TokenAnswer::Token {
                access_token,
                refresh_token,
                expires_in,
                scope,
            } => (access_token, refresh_token, expires_in, scope),
            TokenAnswer::Error { error, .. } if error == "invalid_grant" => {
                st.revoked = true;
                let e = self.revoked_error(Some(&old));
                tracing::warn!("{e}");
                return Err(e);
            }
            TokenAnswer::Error { error, description } => {
                return Err(server(format!(
                    "HTTP {status}: {error}{}{description}",
                    if description.is_empty() { "" } else { ": " }
                )));
            }
        };
        crash_hook();
        let issued = now();
        let fresh = Grant {
            access_token,
            refresh_token: refresh_token.unwrap_or(old.refresh_token.clone()),
            expires_at: issued + expires_in.unwrap_or(DEFAULT_LIFETIME),
            obtained_at: issued,
            scope: scope.unwrap_or(old.scope.clone()),
            ..old
        };
        // The rotated refresh token is on disk before the access token is
        // used (a failed write is logged and tried again; see `save`).
        let _ = self.save(st, &fresh);
        let life = fresh.expires_at - fresh.obtained_at;
        st.grant = Some(fresh);
        st.refreshed = Some(Instant::now());
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        tracing::info!(grant_file = %self.path.display(), valid_for_secs = life, "GitLab access token refreshed");
        Ok(())
    }
}

impl GitlabGrant {
    /// An exclusive `flock` on the grant file (the inode a refresh will
    /// replace), waited for up to 30 s; `None` if the file cannot be
    /// opened or the wait ran out (then the refresh goes ahead unlocked).
    async fn lock_file(&self) -> Option<std::fs::File> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(&self.path).ok()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // SAFETY: flock(2) on a descriptor this function owns.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Some(f);
            }
            if Instant::now() >= deadline {
                tracing::warn!(grant_file = %self.path.display(), "the grant file stayed locked for 30 s: refreshing without the lock");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Tests only (debug builds): `REPOFS_TEST_CRASH_AFTER_REFRESH=1` makes the
/// process SIGKILL itself between the refresh answer and the file write.
fn crash_hook() {
    #[cfg(debug_assertions)]
    if std::env::var_os("REPOFS_TEST_CRASH_AFTER_REFRESH").is_some() {
        tracing::warn!(
            "test hook: killed after the refresh answer, before the grant file is written"
        );
        // SAFETY: kill(2) of this very process.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            gitlab_url: "https://gitlab.example.com".into(),
            client_id: "app1".into(),
            scope: "read_repository".into(),
            access_token: "at-secret".into(),
            refresh_token: "rt-secret".into(),
            expires_at: now() + 7200,
            obtained_at: now(),
        }
    }

    #[test]
    fn grant_file_round_trip_private_and_redacted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.json");
        write_grant(&path, &grant()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (g, _) = read_grant(&path, "app1").unwrap();
        assert_eq!(g, grant());
        let shown = format!("{g:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(matches!(
            read_grant(&path, "other"),
            Err(GrantError::Mismatch { .. })
        ));
        std::fs::write(&path, "{\"access_token\": \"at-secret\"").unwrap();
        let e = read_grant(&path, "app1").unwrap_err().to_string();
        assert!(
            e.contains("not a grant file") && !e.contains("secret"),
            "{e}"
        );
        // Only the grant file is left in the directory (no temp files).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn refresh_is_due_near_expiry() {
        let mut g = grant();
        assert!(!g.due());
        // GitLab's two hours: 5 minutes before the end.
        g.obtained_at = now() - 6901;
        g.expires_at = now() + 299;
        assert!(g.due());
        g.expires_at = now() + 320;
        assert!(!g.due());
        // A short lifetime (tests): a tenth of it.
        g.obtained_at = now();
        g.expires_at = now() + 20;
        assert!(!g.due());
        g.obtained_at = now() - 19;
        g.expires_at = now() + 1;
        assert!(g.due());
    }
}
