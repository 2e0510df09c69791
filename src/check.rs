//! `repofs check`: the "Test connection" step. For each repository it
//! reaches the server, authenticates, resolves the ref, and prints one line:
//! `ok` with the commit, or `FAIL` with the exact problem and what to do.

use crate::config::{Config, RepoConfig};
use crate::source::git::Remote;

/// The outcome for one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    pub name: String,
    pub ok: bool,
    pub message: String,
}

impl std::fmt::Display for CheckLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tag = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{tag} {}: {}", self.name, self.message)
    }
}

/// Checks one repository.
pub async fn check_repo(repo: &RepoConfig, config: &Config) -> CheckLine {
    let line = |ok, message| CheckLine {
        name: repo.name.clone(),
        ok,
        message,
    };
    let remote = match Remote::new(repo, config) {
        Ok(r) => r,
        Err(e) => return line(false, e),
    };
    let caps = match remote.capabilities().await {
        Ok(c) => c,
        Err(e) => return line(false, e.to_string()),
    };
    match remote.resolve_ref().await {
        Ok(commit) => {
            let mut notes = Vec::new();
            if !caps.supports_filter() {
                notes.push("server lacks `filter`: the first mount downloads every file once");
            }
            if !caps.object_info {
                notes.push("server lacks `object-info`: listing a directory downloads its files to learn sizes");
            }
            let auth = match &repo.token {
                Some(t) => format!("authenticated with {}", t.origin),
                None => "anonymous".to_string(),
            };
            let mut msg = format!(
                "{} -> {commit} ({}, {auth})",
                repo.reference.as_deref().unwrap_or("HEAD"),
                remote.transport.clone_url
            );
            for n in notes {
                msg.push_str("; note: ");
                msg.push_str(n);
            }
            line(true, msg)
        }
        Err(e) => line(false, e.to_string()),
    }
}

/// Checks the named repositories (all when `names` is empty), concurrently.
pub async fn check_all(config: &Config, names: &[String]) -> Result<Vec<CheckLine>, String> {
    for n in names {
        if !config.repositories.iter().any(|r| &r.name == n) {
            return Err(format!(
                "no repository named '{n}' in {}; known: {}",
                config.path.display(),
                config
                    .repositories
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    let selected: Vec<&RepoConfig> = config
        .repositories
        .iter()
        .filter(|r| names.is_empty() || names.contains(&r.name))
        .collect();
    let futures = selected.iter().map(|r| check_repo(r, config));
    Ok(futures_util::future::join_all(futures).await)
}
