//! Reading the configuration file as a whole: TOML parsing, unknown keys
//! (with a hint at the key meant), the top-level settings, and each
//! repository handed to `repo` for its own checks.

use super::repo::{validate_repo, validate_shared};
use super::values::parse_duration_key;
use super::*;

impl Config {
    /// Reads and validates the file at `path`, resolving every secret.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with(path, &Secrets::All)
    }

    /// Reads and validates the file at `path`, resolving the secrets of
    /// the repositories `secrets` names.
    pub fn load_with(path: &Path, secrets: &Secrets) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            message: format!("cannot read the config file: {e}"),
        })?;
        let config = Self::parse_with(path, &text, &|var| std::env::var(var).ok(), secrets)?;
        // A file holding a secret must not be readable by everyone.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        let inline: Vec<&str> = config
            .repositories
            .iter()
            .filter(|r| {
                r.token.as_ref().is_some_and(|t| t.origin == "token")
                    || r.s3.as_ref().is_some_and(|s| s.inline_secret)
            })
            .map(|r| r.name.as_str())
            .collect();
        if mode & 0o004 != 0 && !inline.is_empty() {
            return Err(ConfigError {
                path: path.to_owned(),
                message: format!(
                    "the file holds a token (repository {}) and is readable by every user (mode {:o}); run `chmod 600 {}` (or 640 with a dedicated group), or move the token to token_file",
                    inline.join(", "),
                    mode & 0o777,
                    path.display()
                ),
            });
        }
        Ok(config)
    }

    /// Parses and validates config text. `env` looks up environment variables
    /// (injected so tests do not touch the process environment).
    pub fn parse(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::parse_with(path, text, env, &Secrets::All)
    }

    /// [`Config::parse`], resolving only the secrets `secrets` names.
    pub fn parse_with(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        secrets: &Secrets,
    ) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            path: path.to_owned(),
            message,
        };
        // First pass: a generic table, so unknown keys can be reported with
        // the repository they belong to (serde alone cannot say which).
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            err(format!("not valid TOML: {}", e.to_string().trim_end()))
        })?;
        check_keys(&table, TOP_KEYS, "at the top level").map_err(&err)?;
        if let Some(repos) = table.get("repository") {
            let Some(list) = repos.as_array() else {
                return Err(err(
                    "`repository` must be written as [[repository]] tables".into()
                ));
            };
            for (i, repo) in list.iter().enumerate() {
                let Some(t) = repo.as_table() else {
                    return Err(err(format!(
                        "repository #{} is not a table; write it as [[repository]]",
                        i + 1
                    )));
                };
                let label = match t.get("name").and_then(|v| v.as_str()) {
                    Some(n) => format!("in repository '{n}'"),
                    None => format!("in repository #{}", i + 1),
                };
                check_keys(t, REPO_KEYS, &label).map_err(&err)?;
            }
        }
        if let Some(t) = table.get("shared_cache") {
            let t = t
                .as_table()
                .ok_or_else(|| err("`shared_cache` must be a [shared_cache] table".into()))?;
            check_keys(t, SHARED_KEYS, "in [shared_cache]").map_err(&err)?;
        }
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| err(format!("invalid value: {}", e.to_string().trim_end())))?;

        let mount_root = raw.mount_root.ok_or_else(|| {
            err("missing key `mount_root` (the directory under which repositories appear, e.g. mount_root = \"/mnt/repos\")".into())
        })?;
        if !mount_root.is_absolute() {
            return Err(err(format!(
                "`mount_root` must be an absolute path, got {:?}",
                mount_root
            )));
        }
        let cache_dir = raw
            .cache_dir
            .unwrap_or_else(|| PathBuf::from("/var/cache/repofs"));
        let cache_size = match raw.cache_size {
            None => 20 * 1024 * 1024 * 1024,
            Some(toml::Value::Integer(n)) if n > 0 => n as u64,
            Some(toml::Value::String(s)) => {
                parse_size(&s).map_err(|m| err(format!("key `cache_size`: {m}")))?
            }
            Some(other) => {
                return Err(err(format!(
                    "key `cache_size`: expected a size such as \"20GiB\", got {other}"
                )));
            }
        };
        let request_timeout = parse_duration_key(raw.request_timeout.as_deref(), 30)
            .map_err(|m| err(format!("key `request_timeout`: {m}")))?;
        let connect_timeout = parse_duration_key(raw.connect_timeout.as_deref(), 10)
            .map_err(|m| err(format!("key `connect_timeout`: {m}")))?;
        let max_attempts = raw.max_attempts.unwrap_or(3);
        if !(1..=10).contains(&max_attempts) {
            return Err(err(format!(
                "key `max_attempts`: must be between 1 and 10, got {max_attempts}"
            )));
        }
        let low_speed_limit = match raw.low_speed_limit {
            None => crate::fetch::speed::DEFAULT_LIMIT,
            Some(toml::Value::Integer(n)) if n >= 0 => n as u64,
            Some(toml::Value::String(s)) => parse_size(s.trim_end_matches("/s"))
                .map_err(|m| err(format!("key `low_speed_limit`: {m}")))?,
            Some(other) => {
                return Err(err(format!(
                    "key `low_speed_limit`: expected bytes per second such as \"16KiB\" (0 turns the floor off), got {other}"
                )));
            }
        };
        let low_speed_time = parse_duration_key(
            raw.low_speed_time.as_deref(),
            crate::fetch::speed::DEFAULT_TIME.as_secs(),
        )
        .map_err(|m| err(format!("key `low_speed_time`: {m}")))?;
        let call_timeout = parse_duration_key(
            raw.call_timeout.as_deref(),
            crate::fetch::bridge::DEFAULT_CALL_TIMEOUT.as_secs(),
        )
        .map_err(|m| err(format!("key `call_timeout`: {m}")))?;

        let max_tree_bytes = match raw.max_tree_bytes {
            None => super::values::default_max_tree_bytes(),
            Some(toml::Value::Integer(n)) if n > 0 => n as u64,
            Some(toml::Value::String(s)) => {
                parse_size(&s).map_err(|m| err(format!("key `max_tree_bytes`: {m}")))?
            }
            Some(other) => {
                return Err(err(format!(
                    "key `max_tree_bytes`: expected a size such as \"1GiB\", got {other}"
                )));
            }
        };
        let metrics_listen = match raw.metrics_listen.as_deref() {
            None => None,
            Some(a) => Some(a.parse().map_err(|_| {
                err(format!(
                    "key `metrics_listen`: {a:?} is not an address and port such as \"127.0.0.1:9464\""
                ))
            })?),
        };
        let shared_cache = match raw.shared_cache {
            Some(r) => {
                Some(validate_shared(r, &mount_root, *secrets != Secrets::None).map_err(&err)?)
            }
            None => None,
        };
        let ca_bundle = match raw.ca_bundle {
            None => None,
            Some(p) => Some(
                super::tls::ca_bundle_of(&p).map_err(|m| err(format!("key `ca_bundle`: {m}")))?,
            ),
        };
        let mut names = HashSet::new();
        let mut mount_points = HashSet::new();
        let mut repositories = Vec::new();
        for (i, r) in raw.repository.into_iter().enumerate() {
            let resolve = r.name.as_deref().is_some_and(|n| secrets.wants(n));
            let repo = validate_repo(i, r, &mount_root, env, resolve).map_err(&err)?;
            if !names.insert(repo.name.clone()) {
                return Err(err(format!(
                    "repository '{}': key `name`: the name is used by more than one repository; names must be unique",
                    repo.name
                )));
            }
            if !mount_points.insert(repo.mount_point.clone()) {
                return Err(err(format!(
                    "repository '{}': key `mount_point`: {} is already used by another repository",
                    repo.name,
                    repo.mount_point.display()
                )));
            }
            let mut repo = repo;
            if repo.provider != super::Provider::S3 && repo.ca_bundle.is_none() {
                repo.ca_bundle = ca_bundle.clone();
            }
            repositories.push(repo);
        }
        // A mount inside another would be hidden by it (or hide it), and a
        // cache inside a mount could not be written: refuse both up front.
        for a in &repositories {
            for b in &repositories {
                if a.name != b.name && a.mount_point.starts_with(&b.mount_point) {
                    return Err(err(format!(
                        "repository '{}': key `mount_point`: {} is inside the mount point {} of repository '{}'; mount points must not be nested",
                        a.name,
                        a.mount_point.display(),
                        b.mount_point.display(),
                        b.name
                    )));
                }
            }
            if cache_dir.starts_with(&a.mount_point) {
                return Err(err(format!(
                    "key `cache_dir`: {} is inside the mount point of repository '{}' (read-only); choose a directory outside every mount point",
                    cache_dir.display(),
                    a.name
                )));
            }
        }
        Ok(Config {
            path: path.to_owned(),
            mount_root,
            cache_dir,
            cache_size,
            allow_other: raw.allow_other.unwrap_or(false),
            xattrs: raw.xattrs.unwrap_or(true),
            file_reads: raw.file_reads.unwrap_or_default(),
            request_timeout,
            connect_timeout,
            max_attempts,
            low_speed: crate::fetch::speed::Floor {
                limit: low_speed_limit,
                time: low_speed_time,
            },
            call_timeout,
            max_tree_bytes,
            ca_bundle,
            metrics_listen,
            shared_cache,
            repositories,
        })
    }
}

fn check_keys(table: &toml::Table, allowed: &[&str], place: &str) -> Result<(), String> {
    for key in table.keys() {
        if !allowed.contains(&key.as_str()) {
            let hint = allowed
                .iter()
                .find(|k| similar(k, key))
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            return Err(format!(
                "unknown key `{key}` {place}{hint}; allowed keys: {}",
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

/// Cheap typo detector: same letters ignoring `-`/`_` and case, or one edit apart.
fn similar(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let (a, b) = (norm(a), norm(b));
    if a == b {
        return true;
    }
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    // Levenshtein distance <= 1.
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()] <= 1
}
