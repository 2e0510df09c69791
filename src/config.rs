//! The configuration file: serde types, validation and secret loading.
//!
//! This is the only module that reads TOML. Everything it hands out is
//! validated: names are unique and safe, URLs parse, sizes are numbers, and
//! tokens have been read from wherever the entry said they live. Errors name
//! the file, the repository and the key, and say what to do.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/repofs/config.toml";

/// A configuration problem, already phrased for the user.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: PathBuf,
    pub message: String,
}

/// A secret value (token). Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself: only for building an authentication header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The kinds of remote repository repofs knows how to mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    Github,
    GithubEnterprise,
    Gitlab,
    GitlabEnterprise,
    BitbucketServer,
    Git,
    S3,
}

impl Provider {
    pub const ALL: &'static [(&'static str, Provider)] = &[
        ("github", Provider::Github),
        ("github-enterprise", Provider::GithubEnterprise),
        ("gitlab", Provider::Gitlab),
        ("gitlab-enterprise", Provider::GitlabEnterprise),
        ("bitbucket-server", Provider::BitbucketServer),
        ("git", Provider::Git),
        ("s3", Provider::S3),
    ];

    pub fn parse(s: &str) -> Option<Provider> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, p)| *p)
    }

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, p)| *p == self)
            .map(|(n, _)| *n)
            .unwrap_or("git")
    }
}

/// Where a repository's token came from (for messages), and the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub secret: Secret,
    /// Human description of the origin: `token`, `token_env SOME_VAR`, `token_file /path`.
    pub origin: String,
}

/// One validated `[[repository]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoConfig {
    pub name: String,
    pub provider: Provider,
    /// The URL as the user wrote it.
    pub url: String,
    /// Branch, tag or full commit id; `None` means the remote HEAD.
    pub reference: Option<String>,
    pub token: Option<Token>,
    /// User name for HTTP Basic auth on plain `git` servers (default: Bearer token).
    pub username: Option<String>,
    pub description: String,
    pub mount_point: PathBuf,
    /// How often to check whether the ref moved; `None` pins the commit.
    pub refresh: Option<Duration>,
    /// GitHub App credentials (instead of a token).
    pub github_app: Option<crate::auth::GithubAppConfig>,
    /// The bucket side of a `provider = "s3"` entry.
    pub s3: Option<S3Config>,
    /// Where the daemon puts a writable overlay view of the mount.
    pub overlay: Option<PathBuf>,
}

/// How an S3 repository signs its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Credentials {
    /// The standard AWS chain (environment, profile, instance/container
    /// roles, web identity), falling back to unsigned requests.
    Auto { profile: Option<String> },
    /// Unsigned requests only (public buckets).
    Anonymous,
    /// Keys from the entry.
    Static {
        access_key_id: String,
        secret_access_key: Secret,
        session_token: Option<Secret>,
    },
}

/// A `provider = "s3"` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix mounted as the root ("" or ending in "/").
    pub prefix: String,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub force_path_style: bool,
    pub credentials: S3Credentials,
    /// How long listings and attributes are trusted.
    pub metadata_ttl: Duration,
    /// The secret key is written in the config file itself.
    pub inline_secret: bool,
}

/// `[shared_cache]`: a bucket (or a prefix in one) that every node of a
/// fleet reads before the origins and writes what it fetched to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedCacheConfig {
    pub s3: S3Config,
    /// Connect and per-read inactivity limit for the shared tier only.
    pub timeout: Duration,
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub path: PathBuf,
    pub mount_root: PathBuf,
    pub cache_dir: PathBuf,
    pub cache_size: u64,
    pub allow_other: bool,
    /// Per-request inactivity timeout for remote servers.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// How many times a failed request (connection error, timeout, 5xx) is tried in all.
    pub max_attempts: u32,
    /// Where Prometheus metrics are served (`/metrics`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Whether the mounts answer extended attribute calls (`user.repofs.*`).
    pub xattrs: bool,
    /// How file reads reach the bytes.
    pub file_reads: FileReads,
    /// The fleet's shared cache tier, if any.
    pub shared_cache: Option<SharedCacheConfig>,
    pub repositories: Vec<RepoConfig>,
}

/// How file reads reach the bytes (README, "How reads reach the bytes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileReads {
    /// `no-open` for git mounts (many small files, content-addressed
    /// trees), `passthrough` for S3 mounts (large objects).
    #[default]
    Auto,
    /// `open` answers ENOSYS once: the kernel stops sending open and
    /// release, keeps every file's pages, and a warm read costs no round
    /// trip; reads of pages it lacks come to the daemon.
    NoOpen,
    /// Complete cached files are handed to the kernel at open (Linux 6.9+,
    /// CAP_SYS_ADMIN), the rest read through the daemon.
    Passthrough,
    /// Every read the kernel's page cache cannot answer comes to the daemon.
    Daemon,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    mount_root: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    cache_size: Option<toml::Value>,
    allow_other: Option<bool>,
    request_timeout: Option<String>,
    connect_timeout: Option<String>,
    max_attempts: Option<u32>,
    metrics_listen: Option<String>,
    xattrs: Option<bool>,
    file_reads: Option<FileReads>,
    shared_cache: Option<RawShared>,
    #[serde(default)]
    repository: Vec<RawRepo>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShared {
    bucket: Option<String>,
    prefix: Option<String>,
    region: Option<String>,
    endpoint_url: Option<String>,
    force_path_style: Option<bool>,
    profile: Option<String>,
    credentials: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    secret_access_key_file: Option<PathBuf>,
    session_token: Option<String>,
    timeout: Option<String>,
}

const SHARED_KEYS: &[&str] = &[
    "bucket",
    "prefix",
    "region",
    "endpoint_url",
    "force_path_style",
    "profile",
    "credentials",
    "access_key_id",
    "secret_access_key",
    "secret_access_key_file",
    "session_token",
    "timeout",
];

/// Validates `[shared_cache]` with the rules of an S3 repository.
fn validate_shared(r: RawShared, mount_root: &Path) -> Result<SharedCacheConfig, String> {
    let timeout = parse_duration_key(r.timeout.as_deref(), 5)
        .map_err(|m| format!("[shared_cache]: key `timeout`: {m}"))?;
    let repo = RawRepo {
        name: Some("shared_cache".into()),
        provider: Some("s3".into()),
        bucket: r.bucket,
        prefix: r.prefix,
        region: r.region,
        endpoint_url: r.endpoint_url,
        force_path_style: r.force_path_style,
        profile: r.profile,
        credentials: r.credentials,
        access_key_id: r.access_key_id,
        secret_access_key: r.secret_access_key,
        secret_access_key_file: r.secret_access_key_file,
        session_token: r.session_token,
        ..RawRepo::default()
    };
    let s3 = validate_s3("shared_cache".into(), repo, mount_root)
        .map_err(|e| e.replace("repository 'shared_cache':", "[shared_cache]:"))?
        .s3
        .ok_or("[shared_cache]: not an S3 location")?;
    Ok(SharedCacheConfig { s3, timeout })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRepo {
    name: Option<String>,
    provider: Option<String>,
    url: Option<String>,
    #[serde(rename = "ref")]
    reference: Option<String>,
    token: Option<String>,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    username: Option<String>,
    description: Option<String>,
    mount_point: Option<PathBuf>,
    overlay: Option<PathBuf>,
    refresh: Option<String>,
    github_app: Option<RawGithubApp>,
    bucket: Option<String>,
    prefix: Option<String>,
    region: Option<String>,
    endpoint_url: Option<String>,
    force_path_style: Option<bool>,
    profile: Option<String>,
    credentials: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    secret_access_key_file: Option<PathBuf>,
    session_token: Option<String>,
    metadata_ttl: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGithubApp {
    app_id: u64,
    installation_id: u64,
    private_key_file: PathBuf,
}

const TOP_KEYS: &[&str] = &[
    "mount_root",
    "cache_dir",
    "cache_size",
    "allow_other",
    "request_timeout",
    "connect_timeout",
    "max_attempts",
    "metrics_listen",
    "xattrs",
    "file_reads",
    "shared_cache",
    "repository",
];
const REPO_KEYS: &[&str] = &[
    "name",
    "provider",
    "url",
    "ref",
    "token",
    "token_env",
    "token_file",
    "username",
    "description",
    "mount_point",
    "overlay",
    "refresh",
    "github_app",
    "bucket",
    "prefix",
    "region",
    "endpoint_url",
    "force_path_style",
    "profile",
    "credentials",
    "access_key_id",
    "secret_access_key",
    "secret_access_key_file",
    "session_token",
    "metadata_ttl",
];

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            message: format!("cannot read the config file: {e}"),
        })?;
        let config = Self::parse(path, &text, &|var| std::env::var(var).ok())?;
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

        let metrics_listen = match raw.metrics_listen.as_deref() {
            None => None,
            Some(a) => Some(a.parse().map_err(|_| {
                err(format!(
                    "key `metrics_listen`: {a:?} is not an address and port such as \"127.0.0.1:9464\""
                ))
            })?),
        };
        let shared_cache = match raw.shared_cache {
            Some(r) => Some(validate_shared(r, &mount_root).map_err(&err)?),
            None => None,
        };
        let mut names = HashSet::new();
        let mut mount_points = HashSet::new();
        let mut repositories = Vec::new();
        for (i, r) in raw.repository.into_iter().enumerate() {
            let repo = validate_repo(i, r, &mount_root, env).map_err(&err)?;
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

fn validate_repo(
    index: usize,
    r: RawRepo,
    mount_root: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RepoConfig, String> {
    let name = r.name.clone().ok_or_else(|| {
        format!(
            "repository #{}: missing key `name` (letters, digits, '.', '_' and '-')",
            index + 1
        )
    })?;
    let ctx = |key: &str, msg: String| format!("repository '{name}': key `{key}`: {msg}");
    if name.is_empty()
        || name == "."
        || name == ".."
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(ctx(
            "name",
            "must be non-empty and use only letters, digits, '.', '_' and '-' (it becomes a directory name)".into(),
        ));
    }
    let provider_s = r
        .provider
        .clone()
        .ok_or_else(|| ctx("provider", format!("missing; one of: {}", provider_names())))?;
    let provider = Provider::parse(&provider_s).ok_or_else(|| {
        ctx(
            "provider",
            format!(
                "unknown provider '{provider_s}'; one of: {}",
                provider_names()
            ),
        )
    })?;
    if provider == Provider::S3 {
        return validate_s3(name, r, mount_root);
    }
    for (key, set) in [
        ("bucket", r.bucket.is_some()),
        ("prefix", r.prefix.is_some()),
        ("region", r.region.is_some()),
        ("endpoint_url", r.endpoint_url.is_some()),
        ("force_path_style", r.force_path_style.is_some()),
        ("profile", r.profile.is_some()),
        ("credentials", r.credentials.is_some()),
        ("access_key_id", r.access_key_id.is_some()),
        ("secret_access_key", r.secret_access_key.is_some()),
        ("secret_access_key_file", r.secret_access_key_file.is_some()),
        ("session_token", r.session_token.is_some()),
        ("metadata_ttl", r.metadata_ttl.is_some()),
    ] {
        if set {
            return Err(ctx(key, "only applies to provider = \"s3\"".into()));
        }
    }
    let url = r.url.ok_or_else(|| {
        ctx(
            "url",
            "missing; give the repository's address as shown in the browser or its HTTPS clone URL"
                .into(),
        )
    })?;
    crate::source::git::url::clone_url(provider, &url).map_err(|m| ctx("url", m))?;
    if let Some(reference) = &r.reference {
        if reference.trim().is_empty() || reference.contains(char::is_whitespace) {
            return Err(ctx(
                "ref",
                "must be a branch, tag or commit id without spaces".into(),
            ));
        }
    }

    let sources = [
        r.token.is_some(),
        r.token_env.is_some(),
        r.token_file.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if sources > 1 {
        return Err(ctx(
            "token",
            "give only one of `token`, `token_env` and `token_file`".into(),
        ));
    }
    let token = if let Some(t) = r.token {
        Some(Token {
            secret: Secret::new(t.trim()),
            origin: "token".into(),
        })
    } else if let Some(var) = r.token_env {
        let value = env(&var).ok_or_else(|| {
            ctx(
                "token_env",
                format!("environment variable {var} is not set; export it before starting repofs or use token_file"),
            )
        })?;
        Some(Token {
            secret: Secret::new(value.trim()),
            origin: format!("token_env {var}"),
        })
    } else if let Some(file) = r.token_file {
        let value = std::fs::read_to_string(&file).map_err(|e| {
            ctx(
                "token_file",
                format!(
                    "cannot read {}: {e}; check the path and that the repofs user may read it",
                    file.display()
                ),
            )
        })?;
        Some(Token {
            secret: Secret::new(value.trim()),
            origin: format!("token_file {}", file.display()),
        })
    } else {
        None
    };
    if let Some(t) = &token {
        if t.secret.expose().is_empty() {
            return Err(ctx(
                "token",
                format!("the token from {} is empty", t.origin),
            ));
        }
        if t.secret.expose().contains(['\n', '\r']) {
            return Err(ctx(
                "token",
                format!(
                    "the token from {} spans several lines; it must be a single line",
                    t.origin
                ),
            ));
        }
    }
    let mount_point = mount_point_of(r.mount_point.clone(), mount_root, &name)
        .map_err(|m| ctx("mount_point", m))?;
    let pinned = r
        .reference
        .as_deref()
        .is_some_and(|r| r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()));
    let refresh = match r.refresh.as_deref() {
        Some("never") => None,
        Some(_) if pinned => {
            return Err(ctx(
                "refresh",
                "the ref is a commit id, which never moves; remove `refresh` or use a branch"
                    .into(),
            ));
        }
        Some(d) => {
            Some(parse_duration(d).map_err(|m| ctx("refresh", format!("{m}, or \"never\"")))?)
        }
        None if pinned => None,
        None => Some(Duration::from_secs(300)),
    };
    let github_app = match r.github_app {
        None => None,
        Some(_) if !matches!(provider, Provider::Github | Provider::GithubEnterprise) => {
            return Err(ctx(
                "github_app",
                "GitHub App credentials work only with provider github or github-enterprise".into(),
            ));
        }
        Some(_) if token.is_some() => {
            return Err(ctx(
                "github_app",
                "give either a token or github_app, not both".into(),
            ));
        }
        Some(app) => {
            std::fs::File::open(&app.private_key_file).map_err(|e| {
                ctx(
                    "github_app",
                    format!(
                        "cannot read private_key_file {}: {e}",
                        app.private_key_file.display()
                    ),
                )
            })?;
            Some(crate::auth::GithubAppConfig {
                app_id: app.app_id,
                installation_id: app.installation_id,
                private_key_file: app.private_key_file,
            })
        }
    };
    Ok(RepoConfig {
        s3: None,
        github_app,
        overlay: overlay_of(r.overlay, &mount_point).map_err(|m| ctx("overlay", m))?,
        refresh,
        name,
        provider,
        url,
        reference: r.reference,
        token,
        username: r.username,
        description: r.description.unwrap_or_default(),
        mount_point,
    })
}

fn validate_s3(name: String, r: RawRepo, mount_root: &Path) -> Result<RepoConfig, String> {
    let ctx = |key: &str, msg: String| format!("repository '{name}': key `{key}`: {msg}");
    for (key, set) in [
        ("url", r.url.is_some()),
        ("ref", r.reference.is_some()),
        ("token", r.token.is_some()),
        ("token_env", r.token_env.is_some()),
        ("token_file", r.token_file.is_some()),
        ("username", r.username.is_some()),
        ("refresh", r.refresh.is_some()),
        ("github_app", r.github_app.is_some()),
    ] {
        if set {
            return Err(ctx(
                key,
                "does not apply to provider = \"s3\" (use bucket, prefix, access_key_id, ...)"
                    .into(),
            ));
        }
    }
    let bucket = r
        .bucket
        .ok_or_else(|| ctx("bucket", "missing: the bucket's name".into()))?;
    if bucket.is_empty() || bucket.len() > 63 || bucket.contains('/') {
        return Err(ctx(
            "bucket",
            format!("{bucket:?} is not a bucket name (no slashes; put a path in `prefix`)"),
        ));
    }
    let mut prefix = r
        .prefix
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    if let Some(e) = &r.endpoint_url {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(ctx(
                "endpoint_url",
                format!("{e:?} must start with http:// or https://"),
            ));
        }
    }
    let inline_secret = r.secret_access_key.is_some() || r.session_token.is_some();
    let secret = match (r.secret_access_key, r.secret_access_key_file) {
        (Some(_), Some(_)) => {
            return Err(ctx(
                "secret_access_key",
                "give secret_access_key or secret_access_key_file, not both".into(),
            ));
        }
        (Some(s), None) => Some(Secret::new(s.trim())),
        (None, Some(f)) => Some(Secret::new(
            std::fs::read_to_string(&f)
                .map_err(|e| {
                    ctx(
                        "secret_access_key_file",
                        format!("cannot read {}: {e}", f.display()),
                    )
                })?
                .trim(),
        )),
        (None, None) => None,
    };
    let mode = r.credentials.as_deref().unwrap_or("auto");
    let credentials = match (mode, r.access_key_id, secret) {
        ("anonymous", None, None) => S3Credentials::Anonymous,
        ("anonymous", _, _) => {
            return Err(ctx(
                "credentials",
                "\"anonymous\" cannot be combined with keys".into(),
            ));
        }
        ("auto", Some(id), Some(secret)) => S3Credentials::Static {
            access_key_id: id,
            secret_access_key: secret,
            session_token: r.session_token.as_ref().map(|t| Secret::new(t.trim())),
        },
        ("auto", Some(_), None) => {
            return Err(ctx("secret_access_key", "access_key_id is set but the secret is missing (secret_access_key or secret_access_key_file)".into()));
        }
        ("auto", None, Some(_)) => {
            return Err(ctx(
                "access_key_id",
                "a secret is set but access_key_id is missing".into(),
            ));
        }
        ("auto", None, None) => S3Credentials::Auto {
            profile: r.profile.clone(),
        },
        (other, _, _) => {
            return Err(ctx(
                "credentials",
                format!("{other:?}: use \"auto\" or \"anonymous\""),
            ));
        }
    };
    if r.session_token.is_some() && !matches!(credentials, S3Credentials::Static { .. }) {
        return Err(ctx(
            "session_token",
            "needs access_key_id and a secret".into(),
        ));
    }
    let force_path_style = r.force_path_style.unwrap_or(r.endpoint_url.is_some());
    let metadata_ttl = match r.metadata_ttl.as_deref() {
        None => Duration::from_secs(60),
        Some(t) => parse_duration(t).map_err(|m| ctx("metadata_ttl", m))?,
    };
    let mount_point = mount_point_of(r.mount_point.clone(), mount_root, &name)
        .map_err(|m| ctx("mount_point", m))?;
    let overlay = overlay_of(r.overlay, &mount_point).map_err(|m| ctx("overlay", m))?;
    Ok(RepoConfig {
        overlay,
        url: format!("s3://{bucket}/{prefix}"),
        name,
        provider: Provider::S3,
        reference: None,
        token: None,
        username: None,
        description: r.description.unwrap_or_default(),
        mount_point,
        refresh: None,
        github_app: None,
        s3: Some(S3Config {
            bucket,
            prefix,
            region: r.region,
            endpoint_url: r.endpoint_url,
            force_path_style,
            credentials,
            metadata_ttl,
            inline_secret,
        }),
    })
}

/// Checks an `overlay` directory: absolute, and neither inside the mount
/// nor holding it.
fn overlay_of(dir: Option<PathBuf>, mount_point: &Path) -> Result<Option<PathBuf>, String> {
    let Some(dir) = dir else { return Ok(None) };
    if !dir.is_absolute() {
        return Err(format!("must be an absolute path, got {}", dir.display()));
    }
    if dir.starts_with(mount_point) || mount_point.starts_with(&dir) {
        return Err(format!(
            "{} and the mount point {} must not contain each other",
            dir.display(),
            mount_point.display()
        ));
    }
    Ok(Some(dir))
}

/// Where a repository is mounted: `mount_point`, else `<mount_root>/<name>`.
fn mount_point_of(
    given: Option<PathBuf>,
    mount_root: &Path,
    name: &str,
) -> Result<PathBuf, String> {
    match given {
        Some(p) if p.is_absolute() => Ok(p),
        Some(p) => Err(format!("must be an absolute path, got {}", p.display())),
        None => Ok(mount_root.join(name)),
    }
}

fn provider_names() -> String {
    Provider::ALL
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses sizes such as `20GiB`, `512 MB`, `1.5G`, `4096`.
/// Binary units (KiB, MiB, GiB, TiB, and the bare K/M/G/T) are powers of 1024;
/// KB, MB, GB, TB are powers of 1000.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("expected a size such as \"20GiB\" or \"500MB\", got {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}; use B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB)"
            ));
        }
    };
    let bytes = num * mult as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("size {s:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// Parses durations such as `30s`, `500ms`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a duration such as \"30s\" or \"5m\", got {s:?}"))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}; use ms, s, m or h"
            ));
        }
    };
    if d.is_zero() {
        return Err(format!("duration {s:?} must be greater than zero"));
    }
    Ok(d)
}

fn parse_duration_key(s: Option<&str>, default_secs: u64) -> Result<Duration, String> {
    match s {
        None => Ok(Duration::from_secs(default_secs)),
        Some(s) => parse_duration(s),
    }
}

/// A map from repository name to entry, for quick lookup by commands.
pub fn by_name(config: &Config) -> BTreeMap<&str, &RepoConfig> {
    config
        .repositories
        .iter()
        .map(|r| (r.name.as_str(), r))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/repofs/config.toml"), text, &|v| {
            (v == "GOOD_TOKEN").then(|| "tok123\n".to_string())
        })
    }

    const BASE: &str = "mount_root = \"/mnt/repos\"\ncache_dir = \"/tmp/c\"\n";

    #[test]
    fn full_config_parses() {
        let c = parse(&format!(
            "{BASE}cache_size = \"2GiB\"\nallow_other = true\n\
             [[repository]]\nname = \"a\"\nprovider = \"github\"\nurl = \"https://github.com/acme/a\"\nref = \"main\"\ntoken_env = \"GOOD_TOKEN\"\ndescription = \"x\"\n\
             [[repository]]\nname = \"b.c_d-e\"\nprovider = \"git\"\nurl = \"http://127.0.0.1:1/b.git\"\nmount_point = \"/srv/b\"\n"
        ))
        .unwrap();
        assert_eq!(c.cache_size, 2 << 30);
        assert!(c.allow_other);
        assert_eq!(c.repositories.len(), 2);
        let a = &c.repositories[0];
        assert_eq!(a.mount_point, PathBuf::from("/mnt/repos/a"));
        assert_eq!(a.token.as_ref().unwrap().secret.expose(), "tok123");
        assert_eq!(c.repositories[1].mount_point, PathBuf::from("/srv/b"));
        assert_eq!(c.request_timeout, Duration::from_secs(30));
    }

    #[test]
    fn unknown_key_names_repository_and_key() {
        let e = parse(&format!(
            "{BASE}[[repository]]\nname = \"churn\"\nprovider = \"git\"\nurl = \"http://h/r\"\ntokn = \"x\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("/etc/repofs/config.toml"), "{e}");
        assert!(e.contains("repository 'churn'"), "{e}");
        assert!(e.contains("`tokn`"), "{e}");
        assert!(e.contains("did you mean `token`"), "{e}");
    }

    #[test]
    fn unknown_top_level_key() {
        let e = parse(&format!("{BASE}cache_sise = \"1GiB\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`cache_sise`") && e.contains("cache_size"),
            "{e}"
        );
    }

    #[test]
    fn missing_url_and_duplicate_names() {
        let e = parse(&format!(
            "{BASE}[[repository]]\nname = \"x\"\nprovider = \"git\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("repository 'x'") && e.contains("`url`"), "{e}");
        let e = parse(&format!(
            "{BASE}[[repository]]\nname = \"x\"\nprovider = \"git\"\nurl = \"http://h/a\"\n\
             [[repository]]\nname = \"x\"\nprovider = \"git\"\nurl = \"http://h/b\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("unique"), "{e}");
    }

    #[test]
    fn nested_mount_points_are_refused() {
        let e = parse(&format!(
            "{BASE}[[repository]]\nname = \"a\"\nprovider = \"git\"\nurl = \"http://h/a\"\nmount_point = \"/srv/a\"\n\
             [[repository]]\nname = \"b\"\nprovider = \"git\"\nurl = \"http://h/b\"\nmount_point = \"/srv/a/b\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("repository 'b'") && e.contains("nested"), "{e}");
        // Siblings with a common prefix in their names are fine.
        parse(&format!(
            "{BASE}[[repository]]\nname = \"a\"\nprovider = \"git\"\nurl = \"http://h/a\"\nmount_point = \"/srv/a\"\n\
             [[repository]]\nname = \"b\"\nprovider = \"git\"\nurl = \"http://h/b\"\nmount_point = \"/srv/ab\"\n"
        ))
        .unwrap();
    }

    #[test]
    fn bad_values() {
        let e = parse(&format!("{BASE}cache_size = \"12 parsecs\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`cache_size`"), "{e}");
        let e = parse(&format!(
            "{BASE}[[repository]]\nname = \"../x\"\nprovider = \"git\"\nurl = \"http://h/a\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("`name`"), "{e}");
        let e = parse(&format!(
            "{BASE}[[repository]]\nname = \"x\"\nprovider = \"svn\"\nurl = \"http://h/a\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown provider 'svn'"), "{e}");
        let e = parse("cache_dir = \"/x\"\n").unwrap_err().to_string();
        assert!(e.contains("mount_root"), "{e}");
        let e = parse("mount_root = [\n").unwrap_err().to_string();
        assert!(e.contains("not valid TOML"), "{e}");
    }

    #[test]
    fn token_sources() {
        let e = parse(&format!(
            "{BASE}[[repository]]\nname = \"x\"\nprovider = \"git\"\nurl = \"http://h/a\"\ntoken_file = \"/nonexistent/tok\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`token_file`") && e.contains("/nonexistent/tok"),
            "{e}"
        );
        let e = parse(&format!(
            "{BASE}[[repository]]\nname = \"x\"\nprovider = \"git\"\nurl = \"http://h/a\"\ntoken_env = \"MISSING_VAR\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("MISSING_VAR"), "{e}");
        let e = parse(&format!(
            "{BASE}[[repository]]\nname = \"x\"\nprovider = \"git\"\nurl = \"http://h/a\"\ntoken = \"a\"\ntoken_env = \"GOOD_TOKEN\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("only one"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "s3cr3t\n").unwrap();
        let c = parse(&format!(
            "{BASE}[[repository]]\nname = \"x\"\nprovider = \"git\"\nurl = \"http://h/a\"\ntoken_file = \"{}\"\n",
            f.display()
        ))
        .unwrap();
        let t = c.repositories[0].token.as_ref().unwrap();
        assert_eq!(t.secret.expose(), "s3cr3t");
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../config/example.toml");
        // Token files do not exist here: swap them for inline tokens.
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("token_file") {
                    "token = \"t\"".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::parse(Path::new("example.toml"), &text, &|v| {
            (v == "GHE_TOKEN").then(|| "t".to_string())
        })
        .unwrap();
        assert_eq!(c.repositories.len(), 7);
        for (name, _) in Provider::ALL {
            assert!(
                c.repositories.iter().any(|r| r.provider.as_str() == *name),
                "example lacks provider {name}"
            );
        }
    }

    #[test]
    fn refresh_defaults_and_values() {
        let repo = |extra: &str| {
            parse(&format!(
                "{BASE}[[repository]]\nname = \"x\"\nprovider = \"git\"\nurl = \"http://h/a\"\n{extra}\n"
            ))
        };
        assert_eq!(
            repo("").unwrap().repositories[0].refresh,
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            repo("refresh = \"never\"").unwrap().repositories[0].refresh,
            None
        );
        assert_eq!(
            repo("refresh = \"30s\"").unwrap().repositories[0].refresh,
            Some(Duration::from_secs(30))
        );
        let pinned = "ref = \"0123456789abcdef0123456789abcdef01234567\"";
        assert_eq!(repo(pinned).unwrap().repositories[0].refresh, None);
        let e = repo(&format!("{pinned}\nrefresh = \"5m\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`refresh`") && e.contains("commit id"), "{e}");
        let e = repo("refresh = \"often\"").unwrap_err().to_string();
        assert!(e.contains("`refresh`") && e.contains("never"), "{e}");
    }

    #[test]
    fn s3_entries() {
        let s3 = |extra: &str| {
            parse(&format!(
                "{BASE}[[repository]]\nname = \"d\"\nprovider = \"s3\"\nbucket = \"b\"\n{extra}\n"
            ))
        };
        let c = s3("prefix = \"/data\"").unwrap();
        let cfg = c.repositories[0].s3.as_ref().unwrap();
        assert_eq!(cfg.prefix, "data/");
        assert_eq!(cfg.metadata_ttl, Duration::from_secs(60));
        assert!(matches!(
            cfg.credentials,
            S3Credentials::Auto { profile: None }
        ));
        assert!(!cfg.force_path_style);
        let c =
            s3("endpoint_url = \"http://127.0.0.1:9000\"\ncredentials = \"anonymous\"").unwrap();
        let cfg = c.repositories[0].s3.as_ref().unwrap();
        assert!(cfg.force_path_style && cfg.credentials == S3Credentials::Anonymous);
        let c = s3("access_key_id = \"AK\"\nsecret_access_key = \"SK\"\nsession_token = \"ST\"")
            .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("\"SK\"") && !shown.contains("\"ST\""),
            "{shown}"
        );
        for (extra, key) in [
            ("access_key_id = \"AK\"", "secret"),
            ("secret_access_key = \"SK\"", "access_key_id"),
            (
                "credentials = \"anonymous\"\naccess_key_id = \"A\"\nsecret_access_key = \"S\"",
                "anonymous",
            ),
            ("session_token = \"T\"", "session_token"),
            ("url = \"https://x\"", "`url`"),
            ("metadata_ttl = \"soon\"", "metadata_ttl"),
            ("credentials = \"maybe\"", "credentials"),
        ] {
            let e = s3(extra).unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
        let e = parse(&format!(
            "{BASE}[[repository]]\nname = \"g\"\nprovider = \"git\"\nurl = \"http://h/a\"\nbucket = \"b\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("`bucket`") && e.contains("s3"), "{e}");
        let e = parse(&format!(
            "{BASE}[[repository]]\nname = \"d\"\nprovider = \"s3\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("`bucket`"), "{e}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("5 furlongs").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
