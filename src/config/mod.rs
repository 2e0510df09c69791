//! The configuration file: serde types, validation and secret loading.
//!
//! This is the only module that reads TOML. Everything it hands out is
//! validated: names are unique and safe, URLs parse, sizes are numbers, and
//! tokens have been read from wherever the entry said they live. Errors name
//! the file, the repository and the key, and say what to do.
//!
//! This module holds the types handed out and the raw serde shapes of the
//! file; `load` reads and checks the file as a whole, `repo` validates one
//! `[[repository]]` (and `[shared_cache]`), `values` parses sizes and
//! durations.

mod load;
mod repo;
#[cfg(test)]
mod tests;
mod tls;
mod values;

pub use values::{parse_duration, parse_size};

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

    /// Whether the host kind has a REST/GraphQL API repofs uses (and so
    /// an `api_url`).
    pub fn has_host_api(self) -> bool {
        !matches!(self, Provider::Git | Provider::S3)
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
    /// A GitLab OAuth application grant (instead of a token).
    pub gitlab_app: Option<crate::auth::GitlabAppConfig>,
    /// The bucket side of a `provider = "s3"` entry.
    pub s3: Option<S3Config>,
    /// Where the daemon puts a writable overlay view of the mount.
    pub overlay: Option<PathBuf>,
    /// An LFS endpoint the operator trusts with the repository's
    /// credentials (instead of `<clone url>/info/lfs` or `.lfsconfig`).
    pub lfs_url: Option<String>,
    /// The host's REST API root, instead of the default derived from the
    /// clone URL (GHE.com, GitLab under a relative URL root, Bitbucket
    /// behind a proxy); it gets the repository's credentials.
    pub api_url: Option<String>,
    /// Whether files are served as `git checkout` writes them (the
    /// `.gitattributes` conversions: `text`/`eol`, `working-tree-encoding`,
    /// `ident`) rather than as their raw blobs. Git repositories only.
    pub checkout_filters: bool,
    /// Certificate authorities trusted beside the system's for this
    /// repository's git, LFS and API requests (`ca_bundle`, else the
    /// top-level one).
    pub ca_bundle: Option<PathBuf>,
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
    /// The floor under transfer speed (`low_speed_limit`, `low_speed_time`).
    pub low_speed: crate::fetch::speed::Floor,
    /// The longest a FUSE call waits for the network (`call_timeout`).
    pub call_timeout: Duration,
    /// The most bytes of trees one commit fetch may hold in memory.
    pub max_tree_bytes: u64,
    /// Certificate authorities trusted beside the system's, for every git
    /// repository without a `ca_bundle` of its own.
    pub ca_bundle: Option<PathBuf>,
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
    low_speed_limit: Option<toml::Value>,
    low_speed_time: Option<String>,
    call_timeout: Option<String>,
    max_tree_bytes: Option<toml::Value>,
    ca_bundle: Option<PathBuf>,
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
    gitlab_app: Option<RawGitlabApp>,
    lfs_url: Option<String>,
    api_url: Option<String>,
    checkout_filters: Option<bool>,
    ca_bundle: Option<PathBuf>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGitlabApp {
    client_id: String,
    grant_file: PathBuf,
}

const TOP_KEYS: &[&str] = &[
    "mount_root",
    "cache_dir",
    "cache_size",
    "allow_other",
    "request_timeout",
    "connect_timeout",
    "max_attempts",
    "low_speed_limit",
    "low_speed_time",
    "call_timeout",
    "max_tree_bytes",
    "ca_bundle",
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
    "gitlab_app",
    "lfs_url",
    "api_url",
    "checkout_filters",
    "ca_bundle",
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

/// Whose secrets a command resolves (reads from the environment or from
/// files) when it loads the config. Commands that send no request resolve
/// none, so they work where the secrets are not at hand (an operator's
/// shell beside a service that gets them from systemd's `LoadCredential`).
/// An entry whose secrets were not resolved holds empty placeholders in
/// their place (with their origin, for `repo list`); it is never used to
/// send a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secrets {
    All,
    None,
    /// Only the named repositories' (and not the shared tier's).
    Only(Vec<String>),
}

impl Secrets {
    pub fn wants(&self, name: &str) -> bool {
        match self {
            Secrets::All => true,
            Secrets::None => false,
            Secrets::Only(names) => names.iter().any(|n| n == name),
        }
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
